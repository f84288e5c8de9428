//! `visword bench`: a LISA-style referring-segmentation stack on random weights at a preset
//! sized for the machine, timed stage by stage, with the projectors compared side by side.
//!
//! One iteration runs the two image encoders once (and, on a backend that can overlap them,
//! once more together, for the end-to-end figure), then each projector's path (projector →
//! LLM prefill → greedy decode → SAM mask decoder) on the same features; the first iteration is
//! an untimed warm-up, and every stage reports the median of the timed ones. Encoder times are
//! shared by the rows (the work is identical); a row's peak memory is the larger of the encoders'
//! peak and its own path's peak.
//!
//! After the rows, fixed-shape stages (`stages`): the LLM prefill at 576 + 40 and 40 + 40 tokens
//! with decode after the first, the scatter-mean pooling op alone, and on a GPU backend the
//! card's copy bandwidth and the engine's GEMM rate; `perf` puts them in the performance table
//! with their rooflines (`roofline`) and targets.

pub mod batches;
pub mod machine;
pub mod perf;
pub mod photos;
pub mod presets;
pub mod report;
pub mod roofline;
pub mod stack;
pub mod stages;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backend::{Backend, BackendKind};
use crate::dtype::DType;
use crate::error::{Error, Result};

use crate::models::llama::KvCache;
use crate::models::projector::ProjectorKind;
use report::{median, BenchReport, DevicePeaks, RunReport, StagesMs};
use stack::Stack;

/// Seed of the random weights and inputs (fixed: runs are comparable across machines).
const SEED: u64 = 0x5eed;
/// Decode steps of the warm-up iteration: enough to touch the decode path.
const WARMUP_DECODE_TOKENS: usize = 2;
/// The prefill lengths of the performance table: 576 patch tokens (mlp) or 40 superpixels (svp)
/// plus 40 text tokens.
const PREFILL_LONG: usize = 576 + 40;
const PREFILL_SHORT: usize = 40 + 40;
/// Superpixels in the scatter-pooling measurement (the paper's mean count).
const POOL_SUPERPIXELS: usize = 40;

#[derive(Clone, Debug)]
pub struct Options {
    /// None: the backend's default preset.
    pub preset: Option<String>,
    pub backend: BackendKind,
    /// Timed iterations (at least 1).
    pub runs: usize,
    pub decode_tokens: usize,
    /// None: the preset's dtype.
    pub weight_dtype: Option<DType>,
    /// rayon pool size; None: all cores.
    pub threads: Option<usize>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Superpixel point grid side (None: the preset's).
    pub points_per_side: Option<usize>,
}

/// Samples of one projector row across the timed iterations.
#[derive(Default)]
struct Samples {
    visual_tokens: Vec<f64>,
    prompt_tokens: Vec<f64>,
    superpixels: Vec<f64>,
    superpixels_decoder: Vec<f64>,
    superpixels_postprocess: Vec<f64>,
    vision: Vec<f64>,
    sam: Vec<f64>,
    overlapped: Vec<f64>,
    projector: Vec<f64>,
    prefill: Vec<f64>,
    decode: Vec<f64>,
    mask: Vec<f64>,
    peak: Option<u64>,
}

pub fn run(opts: &Options) -> Result<BenchReport> {
    if opts.runs == 0 {
        return Err(Error::arg("--runs", "must be at least 1"));
    }
    if opts.threads == Some(0) {
        return Err(Error::arg("--threads", "must be at least 1"));
    }
    // Check the name before creating a backend or any weights.
    if let Some(name) = &opts.preset {
        presets::preset(name)?;
    }
    let be = Backend::new(opts.backend)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::arg("--threads", format!("cannot start the thread pool: {e}")))?;
    pool.install(|| run_with(opts, &be))
}

fn run_with(opts: &Options, be: &Backend) -> Result<BenchReport> {
    let preset = presets::preset(opts.preset.as_deref().unwrap_or(presets::default_preset_name(be)))?;
    let dtype = opts.weight_dtype.unwrap_or(preset.weight_dtype);
    let kinds = ProjectorKind::ALL;
    let iterations = 1 + opts.runs;
    let bar = progress_bar(opts.progress, (4 + iterations * (2 + kinds.len()) + 2) as u64);

    let mut stack = Stack::build(&preset, be, dtype, SEED, &|part| {
        bar.set_message(format!("random weights: {part}"));
        bar.inc(1);
    })?;
    if let Some(n) = opts.points_per_side {
        let cfg = crate::superpixels::SuperpixelConfig { points_per_side: n, ..preset.superpixels.clone() };
        cfg.validate("--points-per-side")?;
        stack.set_superpixel_config(cfg);
    }
    let projectors = kinds.iter().map(|&k| stack.projector(be, k)).collect::<Result<Vec<_>>>()?;
    let mut samples: Vec<Samples> = kinds.iter().map(|_| Samples::default()).collect();
    // One KV cache per path, kept across runs (with the decode step a backend recorded on it).
    let mut caches: Vec<Option<KvCache>> = kinds.iter().map(|_| None).collect();

    for it in 0..iterations {
        let warmup = it == 0;
        let label = if warmup { "warm-up".to_string() } else { format!("run {it}/{}", opts.runs) };
        let decode_tokens = if warmup { opts.decode_tokens.min(WARMUP_DECODE_TOKENS) } else { opts.decode_tokens };

        bar.set_message(format!("{label}: encoders"));
        machine::reset_peak_memory();
        // Each iteration takes the next photo, so the timed runs cover them all in turn.
        let enc = stack.encode(be, it)?;
        // Where the backend can, the encoders again, run together: the end-to-end figure's.
        let overlapped_ms = if be.overlaps() { stack.encode_overlapped(be, it)?.overlapped_ms } else { None };
        let enc_peak = machine::peak_memory_bytes();
        bar.inc(1);

        for ((p, s), cache) in projectors.iter().zip(samples.iter_mut()).zip(caches.iter_mut()) {
            bar.set_message(format!("{label}: {}", p.kind.name()));
            machine::reset_peak_memory();
            let t = stack.run_path(be, &enc, p, decode_tokens, cache)?;
            let peak = enc_peak.max(machine::peak_memory_bytes());
            bar.inc(1);
            if warmup {
                continue;
            }
            s.visual_tokens.push(t.visual_tokens as f64);
            s.prompt_tokens.push(t.prompt_tokens as f64);
            s.superpixels.extend(t.superpixels_ms);
            s.superpixels_decoder.extend(t.superpixels_split_ms.map(|x| x.0));
            s.superpixels_postprocess.extend(t.superpixels_split_ms.map(|x| x.1));
            s.vision.push(enc.vision_ms);
            s.sam.push(enc.sam_ms);
            s.overlapped.extend(overlapped_ms);
            s.projector.push(t.projector_ms);
            s.prefill.push(t.prefill_ms);
            s.decode.extend(t.decode_ms_per_token);
            s.mask.push(t.mask_decoder_ms);
            s.peak = s.peak.max(peak);
        }
    }
    // The LLM at the table's fixed token counts, decode after the long prefill.
    let (mut prefill_long, mut prefill_short, mut decode, mut issue) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut long_cache, mut short_cache) = (None, None);
    for it in 0..iterations {
        bar.set_message(format!("LLM {PREFILL_LONG} and {PREFILL_SHORT} tokens ({})", if it == 0 { "warm-up".into() } else { format!("run {it}/{}", opts.runs) }));
        let decode_tokens = if it == 0 { opts.decode_tokens.min(WARMUP_DECODE_TOKENS) } else { opts.decode_tokens };
        let long = stages::llm_prefill_decode(be, stack.llm(), PREFILL_LONG, decode_tokens, SEED ^ it as u64, &mut long_cache)?;
        let short = stages::llm_prefill_decode(be, stack.llm(), PREFILL_SHORT, 0, SEED ^ 0x80 ^ it as u64, &mut short_cache)?;
        bar.inc(1);
        if it > 0 {
            prefill_long.push(long.prefill_ms);
            prefill_short.push(short.prefill_ms);
            decode.extend(long.decode_ms_per_token);
            issue.extend(long.decode_issue_ms_per_token);
        }
    }
    if let (Some(total), Some(host)) = (median(&decode), median(&issue)) {
        if be.name() != "cpu" {
            bar.suspend(|| eprintln!("decode: the host issues a step's ops in {host:.2} ms of its {total:.2} ms"));
        }
    }
    // On a GPU: what larger prompt batches buy the superpixel stage (same photo, same embeddings).
    let superpixel_batches = if be.name() == "cpu" {
        Vec::new()
    } else {
        bar.set_message("superpixels by points per batch");
        let enc = stack.encode(be, 0)?;
        let cfg = stack.superpixel_config();
        let sizes = batches::sizes(cfg.points_per_batch, cfg.points_per_side * cfg.points_per_side);
        batches::sweep(be, &stack, &enc, &sizes, opts.runs.clamp(1, 2))
    };
    bar.inc(1);
    bar.set_message("scatter-mean pooling");
    let grid = stack.grid;
    let pool_us = stages::scatter_pool_us(be, POOL_SUPERPIXELS, grid * grid, stack.vision_width())?;
    bar.inc(1);
    let peaks = if be.name() == "cpu" {
        None
    } else {
        bar.set_message("copy bandwidth and GEMM rate");
        let copy_gb_per_s = stages::copy_bandwidth_gb_per_s(be)?;
        let (gemm_tflops, gemm_n) = stages::gemm_tflops(be, dtype)?;
        Some(DevicePeaks { copy_gb_per_s, gemm_tflops, gemm_n, gemm_weight_dtype: dtype.to_string() })
    };
    bar.finish_and_clear();

    let mut runs: Vec<RunReport> = kinds
        .iter()
        .zip(&samples)
        .map(|(&kind, s)| {
            // Microsecond resolution is all a wall clock around a stage can claim.
            let us = |x: f64| (x * 1e3).round() / 1e3;
            let m = |v: &[f64]| us(median(v).unwrap_or(0.0));
            let stages_ms = StagesMs {
                vision_encoder: m(&s.vision),
                sam_encoder: m(&s.sam),
                encoders_overlapped: median(&s.overlapped).map(us),
                superpixels: median(&s.superpixels).map(us),
                superpixels_decoder: median(&s.superpixels_decoder).map(us),
                superpixels_postprocess: median(&s.superpixels_postprocess).map(us),
                projector: m(&s.projector),
                prefill: m(&s.prefill),
                decode_per_token: median(&s.decode).map(us),
                mask_decoder: m(&s.mask),
            };
            // svp's count varies with the photo: the median over the timed runs.
            let count = |v: &[f64]| median(v).unwrap_or(0.0).round() as usize;
            let (visual_tokens, prompt_tokens) = (count(&s.visual_tokens), count(&s.prompt_tokens));
            RunReport {
                projector: kind.name(),
                visual_tokens,
                prompt_tokens,
                end_to_end_ms: us(stages_ms.end_to_end(opts.decode_tokens)),
                stages_ms,
                peak_memory_bytes: s.peak,
                speedup_vs_mlp: None,
                prefill_speedup_vs_mlp: None,
            }
        })
        .collect();
    report::fill_speedups(&mut runs);

    let llm_cfg = &stack.llm().config;
    let wsize = dtype.size();
    let enc = runs.first().map(|r| (r.stages_ms.vision_encoder, r.stages_ms.sam_encoder)).unwrap_or_default();
    let svp = runs.iter().find(|r| r.projector == "svp");
    let performance = perf::rows(&perf::PerfInputs {
        seven_b: preset.name.ends_with("-7b"),
        clip: stack.is_clip(),
        points_per_side: stack.superpixel_config().points_per_side,
        vision_width: stack.vision_width(),
        decode_tokens: opts.decode_tokens,
        decode: (median(&decode), roofline::llama_decode(llm_cfg, PREFILL_LONG, wsize)),
        prefill_616: (median(&prefill_long).unwrap_or(0.0), roofline::llama_prefill(llm_cfg, PREFILL_LONG, wsize)),
        prefill_80: (median(&prefill_short).unwrap_or(0.0), roofline::llama_prefill(llm_cfg, PREFILL_SHORT, wsize)),
        vision: (enc.0, stack.vision_cost(dtype)?),
        sam: (enc.1, stack.sam_cost(dtype)),
        superpixels_ms: svp.and_then(|r| r.stages_ms.superpixels),
        scatter_pool: (pool_us * 1e-3, roofline::scatter_pool(POOL_SUPERPIXELS, grid * grid, stack.vision_width())),
        end_to_end_ms: svp.map(|r| r.end_to_end_ms),
        peaks: peaks.clone(),
    });

    Ok(BenchReport {
        commit: env!("VISWORD_BUILD_COMMIT").to_string(),
        backend: be.name().to_string(),
        device: be.device_name(),
        preset: preset.name.to_string(),
        models: preset.summary.to_string(),
        threads: rayon::current_num_threads(),
        cpu_model: machine::cpu_model(),
        weight_dtype: dtype.to_string(),
        kv_cache_dtype: be.kv_cache_dtype(dtype.is_half()).to_string(),
        text_tokens: stack.text_tokens(),
        photos: stack.photo_count(),
        decode_tokens: opts.decode_tokens,
        timed_runs: opts.runs,
        warmup_runs: 1,
        runs,
        device_peaks: peaks,
        performance,
        superpixel_batches,
    })
}

fn progress_bar(visible: bool, len: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
