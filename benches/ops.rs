//! Per-op CPU benchmarks. GEMMs report FLOP throughput (elements = 2·M·N·K flops); GEMVs report
//! weight bytes streamed per second, to compare with the machine's copy bandwidth and its
//! read bandwidth over all pool threads (also measured here, as `copy/…` and `read/…`).
//!
//! `cargo bench --bench ops` — `tools/bench_cpu.sh` runs it next to PyTorch.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use visword::{Activation, AttnParams, Backend, DType, Tensor};

/// The allocator the `visword` binary uses, so that freed activations are reused here too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The pool the measured ops run on. The `visword` binary runs each command on a worker of its
/// pool (see main.rs), so an op's parallel regions start from inside the pool; timing them from
/// outside would add a cross-thread wake-up per op that the binary does not pay.
static POOL: std::sync::LazyLock<rayon::ThreadPool> = std::sync::LazyLock::new(|| rayon::ThreadPoolBuilder::new().build().expect("thread pool"));

/// Criterion's `iter`, with the timed loop running on a worker of `POOL`.
fn pooled<R>(b: &mut criterion::Bencher, mut f: impl FnMut() -> R + Send) {
    b.iter_custom(|iters| {
        POOL.install(|| {
            let t = std::time::Instant::now();
            for _ in 0..iters {
                black_box(f());
            }
            t.elapsed()
        })
    });
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    Tensor::from_f32(v, shape.to_vec()).unwrap()
}

fn gemm(c: &mut Criterion) {
    let be = Backend::cpu();
    let mut g = c.benchmark_group("gemm_f32");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    for &(m, k, n) in &[(128, 576, 1536), (577, 1024, 4096), (128, 576, 576)] {
        let (x, w) = (rand(&[m, k], 1), rand(&[n, k], 2));
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{m}x{k}x{n}")), |b| {
            pooled(b, || be.linear(&x, &w, None, Activation::None, None).unwrap())
        });
    }
    g.finish();
}

fn gemv(c: &mut Criterion) {
    let be = Backend::cpu();
    let mut g = c.benchmark_group("gemv");
    g.measurement_time(Duration::from_secs(3)).sample_size(30);
    // SmolLM2-135M shapes: MLP up (576→1536) and the tied lm_head (576→49152).
    for &(k, n) in &[(576, 1536), (576, 49152)] {
        let x = rand(&[1, k], 3);
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let w = rand(&[n, k], 4).to_dtype(dt).unwrap();
            g.throughput(Throughput::Bytes((n * k * dt.size()) as u64));
            g.bench_function(BenchmarkId::new(format!("{dt}"), format!("{k}x{n}")), |b| {
                pooled(b, || be.linear(&x, &w, None, Activation::None, None).unwrap())
            });
        }
    }
    g.finish();
    // Reference: the machine's copy bandwidth (read + write) on a buffer far larger than cache.
    let mut g = c.benchmark_group("copy");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    let src = vec![1u8; 256 << 20];
    let mut dst = vec![0u8; 256 << 20];
    g.throughput(Throughput::Bytes(2 * src.len() as u64));
    g.bench_function("256MiB", |b| b.iter(|| dst.copy_from_slice(black_box(&src))));
    g.finish();
    // The read bandwidth every pool thread together gets with plain loads (the hardware
    // prefetchers only): the floor a weight-streaming decode step is held to.
    let mut g = c.benchmark_group("read");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    let words: Vec<u64> = (0..(512usize << 20) / 8).map(|i| i as u64).collect();
    g.throughput(Throughput::Bytes(8 * words.len() as u64));
    g.bench_function("512MiB", |b| {
        use rayon::prelude::*;
        pooled(b, || words.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &w| a ^ w)).reduce(|| 0, |a, b| a ^ b))
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    let be = Backend::cpu();
    let mut g = c.benchmark_group("attention");
    g.measurement_time(Duration::from_secs(3)).sample_size(10);
    // CLIP-L/336 layer (577 tokens, 16 heads × 64) and a causal SmolLM2 prefill (128, 9×64, 3 kv).
    let cases = [("vit_577x16x64", 577, 16, 16, 64, false), ("causal_128x9x64_gqa3", 128, 9, 3, 64, true)];
    for (name, n, h, hkv, d, causal) in cases {
        let (q, k, v) = (rand(&[1, h, n, d], 5), rand(&[1, hkv, n, d], 6), rand(&[1, hkv, n, d], 7));
        let mut p = AttnParams::new(d);
        p.causal = causal;
        g.throughput(Throughput::Elements((4 * h * n * n * d) as u64));
        g.bench_function(name, |b| pooled(b, || be.attention(&q, &k, &v, &p).unwrap()));
    }
    g.finish();
}

/// SmolLM2-135M prefill (128 tokens) and one decode step, on the converted checkpoints that
/// `tools/bench_cpu.sh` writes under .models/ (skipped with a note when they are absent).
fn llm(c: &mut Criterion) {
    use visword::models::llama::{Input, Llama, Logits};
    let be = Backend::cpu();
    let mut g = c.benchmark_group("llm");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    let ids: Vec<u32> = (0..128u32).map(|i| 100 + (i * 7919) % 48000).collect();
    for (dt, dir) in [("f32", ".models/smollm2"), ("bf16", ".models/smollm2-bf16")] {
        let model = match Llama::load(std::path::Path::new(dir), &be) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("llm/{dt}: skipped ({e})");
                continue;
            }
        };
        let mut cache = model.new_cache(&be, 256).unwrap();
        g.throughput(Throughput::Elements(ids.len() as u64));
        g.bench_function(BenchmarkId::new("prefill128", dt), |b| {
            pooled(b, || {
                cache.clear();
                model.forward(&be, Input::Ids(&ids), &mut cache, Logits::Last, false).unwrap()
            })
        });
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("decode_at128", dt), |b| {
            pooled(b, || {
                cache.truncate(128);
                model.forward(&be, Input::Ids(&ids[..1]), &mut cache, Logits::Last, false).unwrap()
            })
        });
    }
    g.finish();
    if visword::backend::profile::enabled() {
        eprintln!("{}", visword::backend::profile::report());
    }
}

/// The pointwise and layout ops of a SmolLM2 prefill layer (128 tokens).
fn small_ops(c: &mut Criterion) {
    let be = Backend::cpu();
    let mut g = c.benchmark_group("small_ops");
    g.measurement_time(Duration::from_secs(2)).sample_size(20);
    let (gate, up) = (rand(&[128, 1536], 8), rand(&[128, 1536], 9));
    let (x, w) = (rand(&[128, 576], 10), rand(&[576], 11));
    g.bench_function("silu_mul_128x1536", |b| pooled(b, || be.silu_mul(&gate, &up).unwrap()));
    g.bench_function("rms_norm_128x576", |b| pooled(b, || be.rms_norm(&x, &w, 1e-5).unwrap()));
    let xh = x.reshape(&[1, 128, 9, 64]).unwrap();
    g.bench_function("permute_128x9x64", |b| pooled(b, || be.permute(&xh, &[0, 2, 1, 3]).unwrap()));
    g.finish();
}

criterion_group!(benches, gemm, gemv, attention, llm, small_ops);
criterion_main!(benches);
