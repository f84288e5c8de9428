//! Fixed-shape stage benchmarks beside the per-projector rows: the LLM at the token counts the
//! performance targets name (576 + 40 and 40 + 40 prefill, then decode), the scatter-mean pooling
//! op alone, and on a GPU backend the card's copy bandwidth and the engine's GEMM rate (the two
//! roofline limits).
//!
//! Every timing brackets real device work: the backend is drained before the clock starts and
//! again before it is read, and the first call of each shape is an untimed warm-up. Short ops are
//! repeated in batches long enough for a host clock (the repeat count doubles until a batch takes
//! `MIN_BATCH_MS`), and the median batch is reported.

use std::time::Instant;

use crate::backend::{Activation, Backend};
use crate::dtype::DType;
use crate::error::Result;
use crate::models::llama::{Input, KvCache, Llama, Logits};
use crate::tensor::Tensor;

use super::report::median;

/// A batch of repeated calls must take at least this long to be timed by a host clock.
const MIN_BATCH_MS: f64 = 20.0;
/// Batches per measurement (the median is reported).
const BATCHES: usize = 5;
/// A size step of the peak measurements that takes longer than this is the last one tried
/// (keeps a software rasteriser such as lavapipe from running GPU-sized work for minutes).
const SLOW_STEP_MS: f64 = 50.0;

/// Milliseconds per call of `f`: one warm-up call, then the repeat count doubles (up to
/// `max_reps`) until a batch takes `MIN_BATCH_MS`; the median of `BATCHES` batches.
pub fn time_per_call(be: &Backend, max_reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    be.synchronize()?;
    let mut batch = |reps: usize| -> Result<f64> {
        be.synchronize()?;
        let start = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        be.synchronize()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    let mut reps = 1;
    loop {
        let ms = batch(reps)?;
        if ms >= MIN_BATCH_MS || reps >= max_reps {
            break;
        }
        reps = (reps * 2).min(max_reps.max(1));
    }
    let mut per_call = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        per_call.push(batch(reps)? / reps as f64);
    }
    Ok(median(&per_call).unwrap_or(0.0))
}

/// Deterministic values in [-1, 1) (xorshift), for inputs whose contents do not matter.
fn filler(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `Backend::scatter_mean_pool` of `[P, C]` features (and position table) into `s` superpixels,
/// microseconds per call. The weights are a row-normalised coverage: superpixel i covers the
/// patches p with p mod s = i.
pub fn scatter_pool_us(be: &Backend, s: usize, p: usize, c: usize) -> Result<f64> {
    let mut w = vec![0f32; s * p];
    let mut counts = vec![0usize; s];
    for q in 0..p {
        counts[q % s] += 1;
    }
    for q in 0..p {
        w[(q % s) * p + q] = 1.0 / counts[q % s] as f32;
    }
    let weights = be.upload(&Tensor::from_f32(w, vec![s, p])?)?;
    let feats = be.upload(&Tensor::from_f32(filler(11, p * c), vec![p, c])?)?;
    let pos = be.upload(&Tensor::from_f32(filler(12, p * c), vec![p, c])?)?;
    let ms = time_per_call(be, 100_000, || be.scatter_mean_pool(&weights, &feats, &pos).map(drop))?;
    Ok(ms * 1e3)
}

/// The card's copy bandwidth in GB/s (bytes read + bytes written per second) from a large
/// device-to-device copy: `narrow` of half of a `[2, m]` f32 tensor. The copied half grows ×4
/// from 16 MiB to 256 MiB and stops early where one copy is slow (a software adapter) or the
/// device refuses the size (the last size that worked is measured).
pub fn copy_bandwidth_gb_per_s(be: &Backend) -> Result<f64> {
    const FIRST: usize = 4 << 20;
    let mut m = FIRST;
    let mut x = be.upload(&Tensor::zeros(vec![2, m]))?;
    // The first copy may compile the kernel: not a measure of the size.
    be.narrow(&x, 0, 1, 1)?;
    be.synchronize()?;
    loop {
        let start = Instant::now();
        be.narrow(&x, 0, 1, 1)?;
        be.synchronize()?;
        // 64 Mi floats (256 MiB read + 256 MiB written) is far beyond any cache; the 512 MiB
        // tensor also stays inside every wgpu adapter's storage binding limit.
        if start.elapsed().as_secs_f64() * 1e3 > SLOW_STEP_MS || m >= 64 << 20 {
            break;
        }
        // A larger size the device refuses ends the search at the last one that worked.
        let Ok(bigger) = be.upload(&Tensor::zeros(vec![2, m * 4])) else { break };
        if be.narrow(&bigger, 0, 1, 1).and_then(|_| be.synchronize()).is_err() {
            break;
        }
        (x, m) = (bigger, m * 4);
    }
    let ms = time_per_call(be, 1000, || be.narrow(&x, 0, 1, 1).map(drop))?;
    Ok(2.0 * (m * 4) as f64 / (ms * 1e-3) / 1e9)
}

/// The engine's GEMM rate in TFLOP/s: `Backend::linear` of an `[n, n]` f32 input by an `[n, n]`
/// weight of `weight_dtype` (how every model layer runs), n growing ×2 from 512 to 4096 and
/// stopping early where one call is slow.
pub fn gemm_tflops(be: &Backend, weight_dtype: DType) -> Result<(f64, usize)> {
    let mut best: Option<(Tensor, Tensor, usize)> = None;
    let mut n = 512;
    while n <= 4096 {
        let x = be.upload(&Tensor::from_f32(filler(21, n * n), vec![n, n])?)?;
        let w = be.upload_weight(&Tensor::from_f32(filler(22, n * n), vec![n, n])?.to_dtype(weight_dtype)?)?;
        // The first call of a shape may compile kernels: time the second.
        be.linear(&x, &w, None, Activation::None, None)?;
        be.synchronize()?;
        let start = Instant::now();
        be.linear(&x, &w, None, Activation::None, None)?;
        be.synchronize()?;
        let slow = start.elapsed().as_secs_f64() * 1e3 > SLOW_STEP_MS;
        best = Some((x, w, n));
        if slow {
            break;
        }
        n *= 2;
    }
    let Some((x, w, n)) = best else { return Ok((0.0, 0)) };
    let ms = time_per_call(be, 1000, || be.linear(&x, &w, None, Activation::None, None).map(drop))?;
    Ok((2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e12, n))
}

/// One LLM measurement: prefill of `tokens` input embeddings into an empty cache (last-position
/// logits and the host's argmax, as a generator does), then `decode_tokens` greedy steps.
pub struct LlmTimes {
    pub prefill_ms: f64,
    /// None when no decode step was asked for.
    pub decode_ms_per_token: Option<f64>,
    /// Host time spent issuing each decode step's ops (before waiting for its token): close
    /// to `decode_ms_per_token` means the host, not the device, sets the pace.
    pub decode_issue_ms_per_token: Option<f64>,
}

/// Time one prefill of `tokens` random embeddings and `decode_tokens` steps after it. The
/// embeddings are made before the clock starts, and the cache is `cache` from earlier runs
/// (cleared; see `stack::kept_cache`).
pub fn llm_prefill_decode(be: &Backend, llm: &Llama, tokens: usize, decode_tokens: usize, seed: u64, cache: &mut Option<KvCache>) -> Result<LlmTimes> {
    let hidden = llm.config.hidden_size;
    // Embedding-sized values (the table's rows are ~1/√hidden in magnitude).
    let scale = 1.0 / (hidden as f32).sqrt();
    let embeds: Vec<f32> = filler(seed, tokens * hidden).into_iter().map(|v| v * scale).collect();
    let embeds = be.upload(&Tensor::from_f32(embeds, vec![tokens, hidden])?)?;
    let cache = super::stack::kept_cache(be, llm, cache, tokens + decode_tokens + 1)?;
    be.synchronize()?;

    let section = crate::backend::profile::Section::start(&format!("prefill, {tokens} tokens"));
    let start = Instant::now();
    let out = llm.forward(be, Input::Embeds(&embeds), cache, Logits::Last, false)?;
    let mut token = super::stack::next_token(be, out.logits)?;
    be.synchronize()?;
    let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
    drop(section);

    let _section = (decode_tokens > 0).then(|| crate::backend::profile::Section::start("decode"));
    let start = Instant::now();
    let mut issue = 0.0;
    for _ in 0..decode_tokens {
        let t0 = Instant::now();
        let out = llm.forward(be, Input::Ids(&[token]), cache, Logits::Last, false)?;
        issue += t0.elapsed().as_secs_f64() * 1e3;
        token = super::stack::next_token(be, out.logits)?;
    }
    be.synchronize()?;
    let per_token = |ms: f64| (decode_tokens > 0).then(|| ms / decode_tokens as f64);
    Ok(LlmTimes { prefill_ms, decode_ms_per_token: per_token(start.elapsed().as_secs_f64() * 1e3), decode_issue_ms_per_token: per_token(issue) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_timing_is_positive_and_counts_every_call() {
        let be = Backend::cpu();
        let mut calls = 0usize;
        let ms = time_per_call(&be, 8, || {
            calls += 1;
            std::thread::sleep(std::time::Duration::from_micros(200));
            Ok(())
        })
        .unwrap();
        assert!((0.2..50.0).contains(&ms), "{ms}");
        // warm-up 1, calibration 1+2+4+8 (capped at 8), then 5 batches of 8.
        assert_eq!(calls, 1 + 1 + 2 + 4 + 8 + 5 * 8);
    }

    #[test]
    fn scatter_pool_and_peaks_run_on_the_cpu() {
        let be = Backend::cpu();
        assert!(scatter_pool_us(&be, 4, 36, 8).unwrap() > 0.0);
        let (tflops, n) = gemm_tflops(&be, DType::BF16).unwrap();
        assert!(tflops > 0.0 && n >= 512, "{tflops} at {n}");
    }
}
