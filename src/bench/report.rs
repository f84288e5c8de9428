//! The benchmark's result: one row per projector, rendered as a table or as one JSON object.

use serde::Serialize;

/// Median time of each stage, in milliseconds. `None` for a stage that did not run:
/// `superpixels` outside the svp row, `decode_per_token` with 0 decode tokens.
#[derive(Clone, Debug, Serialize)]
pub struct StagesMs {
    pub vision_encoder: f64,
    pub sam_encoder: f64,
    /// Both encoders run together (`Backend::overlap`: the vision encoder beside SAM's on a
    /// second stream), wall time; None where the backend runs them one after the other (or, in
    /// `visword segment`, where they overlap the superpixels too and only end_to_end_ms says
    /// what that saved).
    pub encoders_overlapped: Option<f64>,
    pub superpixels: Option<f64>,
    /// The superpixels' time in SAM's prompt encoder + mask decoder over the point grid (until
    /// its IoU scores are on the host), and in everything after it (`mask_stats` where the
    /// logits are, reading its rows back, the host steps).
    pub superpixels_decoder: Option<f64>,
    pub superpixels_postprocess: Option<f64>,
    pub projector: f64,
    pub prefill: f64,
    pub decode_per_token: Option<f64>,
    pub mask_decoder: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub projector: String,
    /// Median over the timed runs (svp's count depends on the photo).
    pub visual_tokens: usize,
    /// Visual tokens plus the text around them.
    pub prompt_tokens: usize,
    pub stages_ms: StagesMs,
    /// vision + SAM (or both overlapped) + superpixels + projector + prefill + N·decode + mask
    /// decoder.
    pub end_to_end_ms: f64,
    /// Peak resident memory while this row's pipeline ran (VmHWM; None off Linux).
    pub peak_memory_bytes: Option<u64>,
    /// mlp's end-to-end time over this row's.
    pub speedup_vs_mlp: Option<f64>,
    /// mlp's prefill time over this row's.
    pub prefill_speedup_vs_mlp: Option<f64>,
}

/// The card's limits, measured in the same run (GPU backends only).
#[derive(Clone, Debug, Serialize)]
pub struct DevicePeaks {
    /// Device-to-device copy, bytes read + written per second, in GB/s.
    pub copy_gb_per_s: f64,
    /// The engine's `linear` ([n, n] f32 input × [n, n] weight) in TFLOP/s.
    pub gemm_tflops: f64,
    pub gemm_n: usize,
    pub gemm_weight_dtype: String,
}

/// One line of the performance table (issue 4's stages): the measured time next to the least
/// time the stage's work allows at the card's measured limits, and the target.
#[derive(Clone, Debug, Serialize)]
pub struct PerfRow {
    /// Stable key shared with tools/bench_torch.py: decode, prefill_616, prefill_80, vision, sam,
    /// superpixels, scatter_pool, end_to_end.
    pub stage: String,
    pub label: String,
    /// Median time per call (per token for decode); None when the stage did not run.
    pub ms: Option<f64>,
    /// Decode only: 1000 / ms.
    pub tokens_per_s: Option<f64>,
    /// Matmul-shaped work and the bytes the stage must at least move (None where not modelled).
    pub flops: Option<f64>,
    pub bytes: Option<f64>,
    /// max(flops / GEMM rate, bytes / copy bandwidth) where the binding limit was measured.
    pub roofline_ms: Option<f64>,
    /// roofline_ms / ms: 1.0 is the hardware limit.
    pub roofline_fraction: Option<f64>,
    /// The target time (issue 4, an H200); None where the preset or stage has none.
    pub target_ms: Option<f64>,
    pub target: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    /// The device in words (`Backend::device_name`): "cpu" or the GPU's name.
    pub device: String,
    /// The git commit visword was built from (`-dirty` with uncommitted changes).
    pub commit: String,
    pub preset: String,
    pub models: String,
    pub threads: usize,
    pub cpu_model: Option<String>,
    pub weight_dtype: String,
    /// The LLM's KV cache (`Backend::kv_cache_dtype`: bf16 on CUDA for half-precision weights).
    pub kv_cache_dtype: String,
    pub text_tokens: usize,
    /// Photos the timed runs cycle through.
    pub photos: usize,
    pub decode_tokens: usize,
    /// Timed repetitions per stage (medians reported), after `warmup_runs` untimed ones.
    pub timed_runs: usize,
    pub warmup_runs: usize,
    pub runs: Vec<RunReport>,
    /// Measured on GPU backends only.
    pub device_peaks: Option<DevicePeaks>,
    pub performance: Vec<PerfRow>,
    /// The superpixel stage at several points per batch (GPU backends only; batches.rs).
    pub superpixel_batches: Vec<super::batches::BatchTiming>,
}

impl StagesMs {
    /// The stages' sum, with the encoders overlapped where they were.
    pub fn end_to_end(&self, decode_tokens: usize) -> f64 {
        self.encoders_overlapped.unwrap_or(self.vision_encoder + self.sam_encoder)
            + self.superpixels.unwrap_or(0.0)
            + self.projector
            + self.prefill
            + self.decode_per_token.unwrap_or(0.0) * decode_tokens as f64
            + self.mask_decoder
    }
}

/// Fill in each row's speed-ups against the `mlp` row.
pub fn fill_speedups(runs: &mut [RunReport]) {
    let Some(base) = runs.iter().find(|r| r.projector == "mlp").map(|r| (r.end_to_end_ms, r.stages_ms.prefill)) else {
        return;
    };
    for r in runs {
        r.speedup_vs_mlp = ratio(base.0, r.end_to_end_ms);
        r.prefill_speedup_vs_mlp = ratio(base.1, r.stages_ms.prefill);
    }
}

fn ratio(base: f64, x: f64) -> Option<f64> {
    (x > 0.0 && base.is_finite()).then(|| base / x)
}

/// Median of samples (mean of the middle two for an even count); None for no samples.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn ms(x: Option<f64>) -> String {
    match x {
        None => "—".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn mib(x: Option<u64>) -> String {
    x.map_or("—".into(), |b| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64))
}

fn times(x: Option<f64>) -> String {
    x.map_or("—".into(), |x| format!("{x:.2}×"))
}

impl BenchReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Header lines and a right-aligned table, stage times in ms.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("backend:  {}\n", self.backend));
        out.push_str(&format!("device:   {}\n", self.device));
        if let Some(p) = &self.device_peaks {
            out.push_str(&format!(
                "peaks:    copy {:.0} GB/s (read + write); linear {}³ f32 × {} {:.1} TFLOP/s\n",
                p.copy_gb_per_s, p.gemm_n, p.gemm_weight_dtype, p.gemm_tflops
            ));
        }
        out.push_str(&format!("commit:   {}\n", self.commit));
        out.push_str(&format!("preset:   {} ({}, random weights)\n", self.preset, self.models));
        out.push_str(&format!("threads:  {}\n", self.threads));
        out.push_str(&format!("cpu:      {}\n", self.cpu_model.as_deref().unwrap_or("unknown")));
        out.push_str(&format!("weights:  {} (KV cache {})\n", self.weight_dtype, self.kv_cache_dtype));
        out.push_str(&format!(
            "timing:   median of {} run(s) after {} warm-up over {} photo(s); {} text tokens; {} decode tokens; times in ms\n\n",
            self.timed_runs, self.warmup_runs, self.photos, self.text_tokens, self.decode_tokens
        ));
        let header = [
            "projector", "visual", "prompt", "vision_enc", "sam_enc", "enc ∥", "superpixels", "projector", "prefill", "decode/tok",
            "mask_dec", "end_to_end", "peak_mem", "e2e vs mlp", "prefill vs mlp",
        ];
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                let s = &r.stages_ms;
                vec![
                    r.projector.clone(),
                    r.visual_tokens.to_string(),
                    r.prompt_tokens.to_string(),
                    ms(Some(s.vision_encoder)),
                    ms(Some(s.sam_encoder)),
                    ms(s.encoders_overlapped),
                    ms(s.superpixels),
                    ms(Some(s.projector)),
                    ms(Some(s.prefill)),
                    ms(s.decode_per_token),
                    ms(Some(s.mask_decoder)),
                    ms(Some(r.end_to_end_ms)),
                    mib(r.peak_memory_bytes),
                    times(r.speedup_vs_mlp),
                    times(r.prefill_speedup_vs_mlp),
                ]
            })
            .collect();
        out.push_str(&render_rows(&header.map(String::from), &rows));
        if !self.performance.is_empty() {
            out.push('\n');
            out.push_str(&self.render_performance());
        }
        if !self.superpixel_batches.is_empty() {
            out.push_str(&format!("\nsuperpixels by points per batch: {}\n", super::batches::render(&self.superpixel_batches)));
        }
        out
    }
}

/// Right-aligned columns (the first left-aligned), two spaces apart.
fn render_rows(header: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).chain([header[c].chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, s)| {
                let pad = " ".repeat(widths[c] - s.chars().count());
                if c == 0 { format!("{s}{pad}") } else { format!("{pad}{s}") }
            })
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn flops_rate(per_s: f64) -> String {
    if per_s >= 1e12 { format!("{:.1} TFLOP/s", per_s / 1e12) } else { format!("{:.1} GFLOP/s", per_s / 1e9) }
}

/// A time in ms, or in µs below 0.1 ms.
fn time(ms: Option<f64>) -> String {
    match ms {
        None => "—".into(),
        Some(x) if x < 0.1 => format!("{:.2} µs", x * 1e3),
        Some(x) => format!("{} ms", self::ms(Some(x))),
    }
}

impl BenchReport {
    /// The stage table: time, rate, roofline and target.
    pub fn render_performance(&self) -> String {
        let header = ["stage", "time", "rate", "roofline", "of roofline", "target (H200)"].map(String::from);
        let rows: Vec<Vec<String>> = self
            .performance
            .iter()
            .map(|r| {
                let rate = match (r.tokens_per_s, r.ms, r.flops, r.bytes) {
                    (Some(t), ..) => format!("{t:.1} tok/s"),
                    (None, Some(ms), Some(f), _) if f > 0.0 && r.stage != "scatter_pool" => flops_rate(f / (ms * 1e-3)),
                    (None, Some(ms), _, Some(b)) if b > 0.0 => format!("{:.0} GB/s", b / (ms * 1e-3) / 1e9),
                    _ => "—".into(),
                };
                vec![
                    r.label.clone(),
                    time(r.ms),
                    rate,
                    time(r.roofline_ms),
                    r.roofline_fraction.map_or("—".into(), |f| format!("{:.0}%", f * 100.0)),
                    r.target.clone().unwrap_or_else(|| "—".into()),
                ]
            })
            .collect();
        render_rows(&header, &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, prefill: f64) -> RunReport {
        let stages_ms = StagesMs {
            vision_encoder: 1.0,
            sam_encoder: 2.0,
            encoders_overlapped: None,
            superpixels: None,
            superpixels_decoder: None,
            superpixels_postprocess: None,
            projector: 0.5,
            prefill,
            decode_per_token: Some(1.0),
            mask_decoder: 0.5,
        };
        RunReport {
            projector: name.into(),
            visual_tokens: 1,
            prompt_tokens: 2,
            end_to_end_ms: stages_ms.end_to_end(4),
            stages_ms,
            peak_memory_bytes: None,
            speedup_vs_mlp: None,
            prefill_speedup_vs_mlp: None,
        }
    }

    #[test]
    fn end_to_end_and_speedups() {
        let mut runs = vec![row("mlp", 8.0), row("pool2", 2.0)];
        assert_eq!(runs[0].end_to_end_ms, 1.0 + 2.0 + 0.5 + 8.0 + 4.0 + 0.5);
        fill_speedups(&mut runs);
        assert_eq!(runs[0].speedup_vs_mlp, Some(1.0));
        assert_eq!(runs[1].prefill_speedup_vs_mlp, Some(4.0));
        assert_eq!(runs[1].speedup_vs_mlp, Some(16.0 / 10.0));
    }

    #[test]
    fn overlapped_encoders_replace_their_sum_end_to_end() {
        let mut r = row("svp", 2.0);
        r.stages_ms.encoders_overlapped = Some(2.25);
        assert_eq!(r.stages_ms.end_to_end(4), 2.25 + 0.5 + 2.0 + 4.0 + 0.5);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
