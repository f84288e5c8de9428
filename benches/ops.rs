//! Per-op CPU benchmarks. GEMMs report FLOP throughput (elements = 2·M·N·K flops); GEMVs report
//! weight bytes streamed per second, to compare with the machine's copy bandwidth (also
//! measured here, as `copy/…`).
//!
//! `cargo bench --bench ops` — `tools/bench_cpu.sh` runs it next to PyTorch.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use visword::{Activation, AttnParams, Backend, DType, Tensor};

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
            b.iter(|| black_box(be.linear(&x, &w, None, Activation::None, None).unwrap()))
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
                b.iter(|| black_box(be.linear(&x, &w, None, Activation::None, None).unwrap()))
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
        g.bench_function(name, |b| b.iter(|| black_box(be.attention(&q, &k, &v, &p).unwrap())));
    }
    g.finish();
}

criterion_group!(benches, gemm, gemv, attention);
criterion_main!(benches);
