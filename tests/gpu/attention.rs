//! `Backend::attention` and `attention_tokens` on every GPU backend against the CPU reference, on
//! seeded inputs.
//!
//! The sweeps aim at the places a tiled kernel goes wrong: head dims that are not multiples of
//! the vector width (1) or of the per-lane share (80) and the largest one (128); query and key
//! counts of 1 and not multiples of any tile (7, 65, 200); GQA; causal prefill continuing a cache
//! (Nq < kv_len) and caches larger than the valid keys; SAM's windowed and global layers with
//! the decomposed relative-position bias; and a long decode context, which the GPUs split along
//! the sequence and combine.
//!
//! Sizes stay small because CI runs them on a software Vulkan driver. Tolerance: the backends'
//! f32 op tolerance (1e-4 / 1e-4) against the CPU backend (GPU dot products and softmax sums run
//! in another order and with fused multiply-adds, and the online softmax rescales as it goes),
//! and the design's rule for attention: the largest error against an f64 reference at most twice
//! that of a naive f32 implementation. Half-precision callers (`AttnParams::low_precision`, which
//! CUDA runs on the tensor cores for more than 8 queries) are checked against the CPU on the same
//! inputs rounded as the kernel rounds them (q·scale, k and v to f16), within `LOW_PRECISION_TOL`:
//! what is left is the f16 rounding of the softmax weights (relative 2⁻¹¹) and the order of sums.

use std::time::Instant;

use visword::{AttnBias, AttnParams, Backend, Tensor};

use crate::common::backends::{gpus, Gpu};
use crate::common::{assert_close, f16_round, Rng, LOW_PRECISION_TOL};

/// One attention problem: q [b, h, nq, d], k/v [b, hkv, nk, d].
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    h: usize,
    hkv: usize,
    nq: usize,
    nk: usize,
    d: usize,
    causal: bool,
    kv_len: Option<usize>,
    /// SAM rel-pos bias over a (k_h, k_w) key grid.
    grid: Option<(usize, usize)>,
    /// Spread of the query values: larger makes the softmax peakier, so the running max moves
    /// and the online rescaling is exercised.
    q_amp: f32,
}

impl Case {
    fn new(b: usize, h: usize, hkv: usize, nq: usize, nk: usize, d: usize) -> Case {
        Case { b, h, hkv, nq, nk, d, causal: false, kv_len: None, grid: None, q_amp: 1.0 }
    }
    fn causal(self) -> Case {
        Case { causal: true, ..self }
    }
    fn kv_len(self, n: usize) -> Case {
        Case { kv_len: Some(n), ..self }
    }
    fn bias(self, k_h: usize, k_w: usize) -> Case {
        Case { grid: Some((k_h, k_w)), ..self }
    }
    fn q_amp(self, a: f32) -> Case {
        Case { q_amp: a, ..self }
    }
}

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Option<(Tensor, Tensor)>,
}

fn inputs(c: &Case, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let qv: Vec<f32> = rng.vec(c.b * c.h * c.nq * c.d).into_iter().map(|x| x * c.q_amp).collect();
    let q = Tensor::from_f32(qv, vec![c.b, c.h, c.nq, c.d]).unwrap();
    let k = rng.tensor(&[c.b, c.hkv, c.nk, c.d]);
    let v = rng.tensor(&[c.b, c.hkv, c.nk, c.d]);
    let rel = c.grid.map(|(kh, kw)| (rng.tensor(&[c.b, c.h, c.nq, kh]), rng.tensor(&[c.b, c.h, c.nq, kw])));
    Inputs { q, k, v, rel }
}

fn params<'a>(c: &Case, rel: Option<&'a (Tensor, Tensor)>) -> AttnParams<'a> {
    let mut p = AttnParams::new(c.d);
    p.causal = c.causal;
    p.kv_len = c.kv_len;
    if let (Some((rel_h, rel_w)), Some((k_h, k_w))) = (rel, c.grid) {
        p.bias = AttnBias::DecomposedRelPos { rel_h, rel_w, k_h, k_w };
    }
    p
}

/// The arithmetic the naive reference runs in (f32 to measure a same-precision error, f64 as
/// the truth).
trait Real: Copy + PartialOrd + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self> + std::ops::Div<Output = Self> {
    fn of(x: f32) -> Self;
    fn exp(self) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    fn of(x: f32) -> Self {
        x
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(x: f32) -> Self {
        x as f64
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Textbook attention, one query at a time: scores, masked max, exp, sum, weighted sum of V.
fn naive<T: Real>(c: &Case, x: &Inputs) -> Vec<f64> {
    let (q, k, v) = (x.q.as_f32().unwrap(), x.k.as_f32().unwrap(), x.v.as_f32().unwrap());
    let rel = x.rel.as_ref().map(|(h, w)| (h.as_f32().unwrap(), w.as_f32().unwrap()));
    let (d, kv_len) = (c.d, c.kv_len.unwrap_or(c.nk));
    let scale = T::of(AttnParams::new(d).scale);
    let mut out = Vec::with_capacity(c.b * c.h * c.nq * d);
    for bh in 0..c.b * c.h {
        let kvh = (bh / c.h) * c.hkv + (bh % c.h) / (c.h / c.hkv);
        for i in 0..c.nq {
            let visible = if c.causal { kv_len - c.nq + i + 1 } else { kv_len };
            let qr = &q[(bh * c.nq + i) * d..][..d];
            let scores: Vec<T> = (0..visible)
                .map(|j| {
                    let kr = &k[(kvh * c.nk + j) * d..][..d];
                    let dot = qr.iter().zip(kr).fold(T::of(0.0), |a, (&x, &y)| a + T::of(x) * T::of(y));
                    let mut s = dot * scale;
                    if let (Some((rh, rw)), Some((kh, kw))) = (rel, c.grid) {
                        s = s + (T::of(rh[(bh * c.nq + i) * kh + j / kw]) + T::of(rw[(bh * c.nq + i) * kw + j % kw]));
                    }
                    s
                })
                .collect();
            let m = scores.iter().copied().fold(scores[0], |a, b| if b > a { b } else { a });
            let p: Vec<T> = scores.iter().map(|&s| (s - m).exp()).collect();
            let sum = p.iter().copied().fold(T::of(0.0), |a, b| a + b);
            for e in 0..d {
                let o = p.iter().enumerate().fold(T::of(0.0), |a, (j, &pj)| a + pj * T::of(v[(kvh * c.nk + j) * d + e]));
                out.push((o / sum).to_f64());
            }
        }
    }
    out
}

fn max_err(got: &[f32], truth: &[f64]) -> f64 {
    got.iter().zip(truth).map(|(&g, &t)| (g as f64 - t).abs()).fold(0.0, f64::max)
}

/// Run `c` on the CPU and on every GPU backend and compare, twice over: elementwise against the
/// CPU backend within the GPU's op tolerance, and (the design's attention rule) the largest error
/// against an f64 reference within twice that of a naive f32 implementation, plus a 1e-7 floor
/// for cases where the naive sums happen to be exact. Each line printed carries the GPU wall time
/// of a second, warm call (upload excluded, read-back included). Then the same problem
/// token-major through `attention_tokens`, against the same CPU result.
fn check(name: &str, gpus: &[Gpu], c: Case) {
    let seed = 0xA77E_0000 ^ (c.nq * 131 + c.nk * 7 + c.d) as u64;
    let x = inputs(&c, seed);
    let cpu = Backend::cpu();
    let want = cpu.attention(&x.q, &x.k, &x.v, &params(&c, x.rel.as_ref())).unwrap();
    let want = want.to_f32_vec().unwrap();
    assert!(want.iter().all(|v| v.is_finite()), "{name}: CPU reference not finite");
    let truth = naive::<f64>(&c, &x);
    let naive_err = max_err(&naive::<f32>(&c, &x).iter().map(|&v| v as f32).collect::<Vec<_>>(), &truth);
    for gpu in gpus {
        let be = &gpu.backend;
        let up = |t: &Tensor| be.upload(t).unwrap_or_else(|e| panic!("{name}: upload on {}: {e}", be.name()));
        let (q, k, v) = (up(&x.q), up(&x.k), up(&x.v));
        let rel = x.rel.as_ref().map(|(h, w)| (up(h), up(w)));
        let p = params(&c, rel.as_ref());
        let run = || {
            let t0 = Instant::now();
            let out = be.attention(&q, &k, &v, &p).unwrap_or_else(|e| panic!("{name}: attention on {}: {e}", be.name()));
            assert_eq!(out.shape(), [c.b, c.h, c.nq, c.d], "{name}: output shape on {}", be.name());
            let got = be.to_vec_f32(&out).unwrap();
            (got, t0.elapsed().as_secs_f64() * 1e3)
        };
        let (got, _cold_ms) = run();
        let (_, ms) = run();
        let what = format!("{name} {c:?} seed {seed:#x} on {} ({ms:.1} ms warm)", be.name());
        assert_close(&what, &got, &want, gpu.op_tol);
        let err = max_err(&got, &truth);
        eprintln!("    max error against f64: {} {err:.2e}, naive f32 {naive_err:.2e}", be.name());
        assert!(err <= 2.0 * naive_err + 1e-7, "{what}: max error {err:.3e} against f64 exceeds twice a naive f32 implementation's ({naive_err:.3e})");

        // The same problem token-major ([B, N, H·D] in and out): same kernels, other strides.
        let tokens = |t: &Tensor| {
            let s = t.shape();
            cpu.permute(t, &[0, 2, 1, 3]).unwrap().reshape(&[s[0], s[2], s[1] * s[3]]).unwrap()
        };
        let (qt, kt, vt) = (up(&tokens(&x.q)), up(&tokens(&x.k)), up(&tokens(&x.v)));
        // A token-major output back in the head-major layout of `want`.
        let head_major = |out: &Tensor| {
            assert_eq!(out.shape(), [c.b, c.nq, c.h * c.d], "{name}: token-major output shape on {}", be.name());
            let heads = be.to_host(out).unwrap().reshape(&[c.b, c.nq, c.h, c.d]).unwrap();
            cpu.permute(&heads, &[0, 2, 1, 3]).unwrap().to_f32_vec().unwrap()
        };
        let out = be.attention_tokens(&qt, &kt, &vt, c.h, &p).unwrap_or_else(|e| panic!("{name}: attention_tokens on {}: {e}", be.name()));
        assert_close(&format!("{what}, token-major"), &head_major(&out), &want, gpu.op_tol);

        // A half-precision caller, head-major and token-major.
        let lp = AttnParams { low_precision: true, ..p };
        let (qr, kr, vr) = (f16_round(&cpu, &x.q, lp.scale), f16_round(&cpu, &x.k, 1.0), f16_round(&cpu, &x.v, 1.0));
        let want_lp = cpu.attention(&qr, &kr, &vr, &params(&c, x.rel.as_ref())).unwrap().to_f32_vec().unwrap();
        let got = be.to_vec_f32(&be.attention(&q, &k, &v, &lp).unwrap_or_else(|e| panic!("{name}: low-precision attention on {}: {e}", be.name()))).unwrap();
        assert_close(&format!("{what}, low precision"), &got, &want_lp, LOW_PRECISION_TOL);
        let out = be.attention_tokens(&qt, &kt, &vt, c.h, &lp).unwrap_or_else(|e| panic!("{name}: low-precision attention_tokens on {}: {e}", be.name()));
        assert_close(&format!("{what}, token-major, low precision"), &head_major(&out), &want_lp, LOW_PRECISION_TOL);
    }
}

#[test]
fn head_dims_and_ragged_tiles() {
    let name = "attention::head_dims_and_ragged_tiles";
    let g = gpus(name);
    for d in [1, 16, 64, 80, 128] {
        for (nq, nk) in [(7, 65), (65, 7), (33, 200)] {
            check(name, &g, Case::new(1, 2, 2, nq, nk, d));
        }
    }
}

#[test]
fn query_and_key_counts() {
    let name = "attention::query_and_key_counts";
    let g = gpus(name);
    for nq in [1, 7, 65, 200] {
        for nk in [1, 7, 65, 200] {
            check(name, &g, Case::new(2, 2, 2, nq, nk, 64).q_amp(3.0));
        }
    }
}

#[test]
fn few_queries_over_many_heads() {
    // Nq ≤ 8 with ≥ 512 batch·heads (SAM's token-to-image attention: 7 tokens per prompt, 8
    // heads, head dim 16): CUDA takes the forward kernel's 8-query blocks here, not the decode
    // kernel; wgpu its forward kernel with 8-query tiles.
    let name = "attention::few_queries_over_many_heads";
    let g = gpus(name);
    for (b, nq) in [(64, 7), (64, 2), (128, 8)] {
        check(name, &g, Case::new(b, 8, 8, nq, 300, 16).q_amp(3.0));
    }
    check(name, &g, Case::new(64, 8, 8, 7, 300, 16).causal());
    check(name, &g, Case::new(64, 8, 8, 5, 300, 16).kv_len(97));
    // A few queries over long key ranges with GQA, causal rows, kv_len and an odd head dim.
    check(name, &g, Case::new(2, 8, 2, 8, 4096, 32).causal().q_amp(3.0));
    check(name, &g, Case::new(1, 4, 4, 3, 1000, 20).kv_len(777));
    // Few queries with the rel-pos bias (wgpu's 8-query forward tiles; CUDA's decode kernel).
    check(name, &g, Case::new(3, 2, 1, 6, 12, 16).bias(3, 4).q_amp(3.0));
}

#[test]
fn forward_key_splits() {
    // Few query tiles over hundreds of keys: wgpu's forward kernel splits the keys (chunks of at
    // least 256) and combines the partials, as for SAM's token-to-image attention (7 tokens per
    // head over 4096 keys); with 8-query and 32-query tiles, GQA, causal rows whose later chunks
    // see nothing, a cache longer than kv_len, and the rel-pos bias.
    let name = "attention::forward_key_splits";
    let g = gpus(name);
    check(name, &g, Case::new(4, 2, 2, 7, 1030, 16).q_amp(3.0));
    check(name, &g, Case::new(1, 2, 1, 40, 700, 64).q_amp(3.0));
    check(name, &g, Case::new(1, 2, 2, 600, 600, 16).causal());
    check(name, &g, Case::new(1, 2, 2, 40, 800, 32).kv_len(600));
    check(name, &g, Case::new(1, 2, 2, 20, 576, 16).bias(24, 24).q_amp(3.0));
}

#[test]
fn token_major_with_a_shared_batch() {
    // SAM's mask decoder: one set of image queries against every prompt's tokens (q shared),
    // and every prompt's tokens against one shared image (k/v shared); then the same through
    // every path a shared operand can take: decode (one query over a cache longer than kv_len,
    // split and unsplit), causal rows, GQA, the rel-pos bias, head dims 1 and 128, and a k/v
    // shared by unshared, non-causal, bias-free queries (which wgpu folds into one batch entry).
    let name = "attention::token_major_with_a_shared_batch";
    let g = gpus(name);
    let cpu = Backend::cpu();
    let cases = [
        (true, Case::new(5, 8, 8, 300, 7, 16)),
        (false, Case::new(5, 8, 8, 7, 300, 16)),
        (true, Case::new(5, 8, 2, 5, 65, 16).kv_len(40)),
        (false, Case::new(5, 8, 4, 40, 33, 16).kv_len(33)),
        // Decode: 40 heads over 600 of 700 keys take two splits, over 65 keys one.
        (true, Case::new(5, 8, 2, 1, 700, 64).kv_len(600).q_amp(3.0)),
        (false, Case::new(5, 8, 2, 1, 700, 64).kv_len(600).causal()),
        (true, Case::new(5, 8, 2, 1, 65, 16)),
        (false, Case::new(5, 8, 8, 1, 90, 128).kv_len(77)),
        (true, Case::new(5, 4, 4, 33, 70, 32).causal().kv_len(50).q_amp(3.0)),
        (false, Case::new(5, 8, 2, 33, 70, 32).causal()),
        (true, Case::new(5, 2, 2, 20, 12, 16).bias(3, 4)),
        (false, Case::new(5, 2, 1, 20, 12, 16).bias(4, 3).q_amp(3.0)),
        (true, Case::new(5, 3, 3, 65, 33, 1)),
        (false, Case::new(5, 3, 1, 33, 65, 1).causal()),
        (false, Case::new(3, 2, 2, 65, 100, 128).q_amp(3.0)),
        (true, Case::new(3, 2, 1, 65, 100, 128).causal()),
        // Few query tiles over many keys: wgpu splits the keys of its forward kernel (here the
        // 3 × 7 queries over one shared set of 1030 keys fold into one 32-query tile per head).
        (false, Case::new(3, 2, 2, 7, 1030, 16).q_amp(3.0)),
    ];
    for (i, &(q_shared, c)) in cases.iter().enumerate() {
        let (b, h, d) = (c.b, c.h, c.d);
        let mut rng = Rng::new(0x70C3 + i as u64);
        let (bq, bk) = if q_shared { (1, b) } else { (b, 1) };
        let qv: Vec<f32> = rng.vec(bq * c.nq * h * d).into_iter().map(|x| x * c.q_amp).collect();
        let q = Tensor::from_f32(qv, vec![bq, c.nq, h * d]).unwrap();
        let k = rng.tensor(&[bk, c.nk, c.hkv * d]);
        let v = rng.tensor(&[bk, c.nk, c.hkv * d]);
        let rel = c.grid.map(|(kh, kw)| (rng.tensor(&[b, h, c.nq, kh]), rng.tensor(&[b, h, c.nq, kw])));
        let what = format!("{name} case {i} ({} shared, {c:?})", if q_shared { "q" } else { "k/v" });
        // Reference: every batch entry on its own, the shared operand repeated.
        let entry = |t: &Tensor, j: usize| if t.dim(0) == 1 { t.clone() } else { cpu.narrow(t, 0, j, 1).unwrap() };
        let parts: Vec<Tensor> = (0..b)
            .map(|j| {
                let rel_j = rel.as_ref().map(|(rh, rw)| (entry(rh, j), entry(rw, j)));
                cpu.attention_tokens(&entry(&q, j), &entry(&k, j), &entry(&v, j), h, &params(&c, rel_j.as_ref())).unwrap()
            })
            .collect();
        let want = cpu.concat(&parts.iter().collect::<Vec<_>>(), 0).unwrap().to_f32_vec().unwrap();
        let shared = cpu.attention_tokens(&q, &k, &v, h, &params(&c, rel.as_ref())).unwrap();
        assert_eq!(shared.shape(), [b, c.nq, h * d]);
        assert_close(&format!("{what} on the CPU"), &shared.to_f32_vec().unwrap(), &want, crate::common::Tol { atol: 0.0, rtol: 0.0 });
        for gpu in &g {
            let be = &gpu.backend;
            let up = |t: &Tensor| be.upload(t).unwrap();
            let rel = rel.as_ref().map(|(rh, rw)| (up(rh), up(rw)));
            let out = be.attention_tokens(&up(&q), &up(&k), &up(&v), h, &params(&c, rel.as_ref())).unwrap_or_else(|e| panic!("{what} on {}: {e}", be.name()));
            assert_eq!(out.shape(), [b, c.nq, h * d], "{what} on {}", be.name());
            assert_close(&format!("{what} on {}", be.name()), &be.to_vec_f32(&out).unwrap(), &want, gpu.op_tol);
        }
    }
}

#[test]
fn a_handful_of_keys() {
    // At most 64 keys with d ≤ 32 and no bias: CUDA's one-thread-per-query kernel (SAM's
    // image-to-token attention), with GQA, causal rows, kv_len and 64 keys exactly; wgpu's twin
    // takes at most 32 keys with d ≤ 16 (the last four cases: causal with GQA, 32 valid keys
    // of a longer cache at an odd d, d = 1 over 129 queries, one key).
    let name = "attention::a_handful_of_keys";
    let g = gpus(name);
    check(name, &g, Case::new(3, 8, 8, 300, 7, 16).q_amp(3.0));
    check(name, &g, Case::new(2, 4, 2, 40, 60, 32).causal());
    check(name, &g, Case::new(1, 3, 1, 200, 64, 20).kv_len(50).q_amp(3.0));
    check(name, &g, Case::new(1, 2, 2, 9, 64, 5));
    check(name, &g, Case::new(2, 4, 2, 20, 30, 16).causal().q_amp(3.0));
    check(name, &g, Case::new(1, 3, 1, 200, 64, 13).kv_len(32).q_amp(3.0));
    check(name, &g, Case::new(1, 2, 2, 129, 32, 1));
    check(name, &g, Case::new(2, 2, 1, 5, 1, 8));
}

#[test]
fn grouped_query_heads() {
    // 4 query heads per KV head, batch 2 (the KV head index mixes batch and group).
    let name = "attention::grouped_query_heads";
    let g = gpus(name);
    for (nq, nk) in [(1, 65), (7, 7), (65, 200)] {
        check(name, &g, Case::new(2, 8, 2, nq, nk, 64));
        check(name, &g, Case::new(2, 8, 2, nq, nk, 64).causal());
    }
}

#[test]
fn causal_prefill_over_a_cache() {
    // Prefill with no cache (Nq = kv_len), continuing a cache (Nq < kv_len), in a cache larger
    // than the valid keys, with peaky scores so masked keys would dominate if let through.
    let name = "attention::causal_prefill_over_a_cache";
    let g = gpus(name);
    check(name, &g, Case::new(1, 4, 4, 65, 65, 64).causal().q_amp(4.0));
    check(name, &g, Case::new(1, 4, 4, 7, 65, 64).causal().q_amp(4.0));
    check(name, &g, Case::new(1, 4, 2, 65, 256, 128).causal().kv_len(200).q_amp(4.0));
    check(name, &g, Case::new(2, 3, 1, 33, 96, 80).causal().kv_len(40));
    check(name, &g, Case::new(1, 2, 2, 200, 200, 16).causal());
}

#[test]
fn kv_len_shorter_than_the_cache() {
    let name = "attention::kv_len_shorter_than_the_cache";
    let g = gpus(name);
    check(name, &g, Case::new(1, 2, 2, 7, 128, 64).kv_len(65).q_amp(3.0));
    check(name, &g, Case::new(2, 4, 1, 1, 128, 128).kv_len(1));
    check(name, &g, Case::new(2, 4, 1, 1, 300, 128).kv_len(201));
}

#[test]
fn sam_windowed_rel_pos() {
    // SAM's windowed layers: 14×14 windows as a batch (here 3 windows of 2 heads), Nq = Nk = 196.
    let name = "attention::sam_windowed_rel_pos";
    let g = gpus(name);
    check(name, &g, Case::new(3, 2, 2, 196, 196, 64).bias(14, 14));
    check(name, &g, Case::new(2, 1, 1, 196, 196, 80).bias(14, 14).q_amp(3.0));
}

#[test]
fn sam_global_rel_pos() {
    // A global layer on a small, non-square grid (so rows and columns cannot be mixed up).
    let name = "attention::sam_global_rel_pos";
    let g = gpus(name);
    check(name, &g, Case::new(1, 3, 3, 96, 96, 80).bias(8, 12));
    check(name, &g, Case::new(1, 2, 2, 150, 150, 16).bias(15, 10).q_amp(3.0));
    // A single query with a bias (not the decode path's case, but part of the op's contract).
    check(name, &g, Case::new(1, 2, 2, 1, 12, 16).bias(3, 4));
}

#[test]
fn decode_long_context() {
    // One query over a 4096-key cache: split along the sequence and combined on the GPUs.
    let name = "attention::decode_long_context";
    let g = gpus(name);
    check(name, &g, Case::new(1, 8, 2, 1, 4096, 128).causal().q_amp(3.0));
    check(name, &g, Case::new(2, 4, 4, 1, 4096, 64).kv_len(3001));
    check(name, &g, Case::new(1, 4, 1, 1, 4096, 80).kv_len(4095).causal());
}

#[test]
fn decode_is_deterministic() {
    let c = Case::new(1, 4, 2, 1, 4096, 128).q_amp(3.0);
    let x = inputs(&c, 7);
    for gpu in gpus("attention::decode_is_deterministic") {
        let be = &gpu.backend;
        let (q, k, v) = (be.upload(&x.q).unwrap(), be.upload(&x.k).unwrap(), be.upload(&x.v).unwrap());
        let p = params(&c, None);
        let a = be.to_vec_f32(&be.attention(&q, &k, &v, &p).unwrap()).unwrap();
        let b = be.to_vec_f32(&be.attention(&q, &k, &v, &p).unwrap()).unwrap();
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "attention::decode_is_deterministic: two runs differ on {}", be.name());
    }
}

#[test]
fn bad_shapes_are_errors() {
    let mut rng = Rng::new(11);
    let q = rng.tensor(&[1, 4, 3, 16]);
    let k = rng.tensor(&[1, 2, 5, 16]);
    let v = rng.tensor(&[1, 2, 5, 16]);
    let k3 = rng.tensor(&[1, 3, 5, 16]);
    let k_d8 = rng.tensor(&[1, 2, 5, 8]);
    let rel_h = rng.tensor(&[1, 4, 3, 2]);
    let rel_w = rng.tensor(&[1, 4, 3, 3]);
    for gpu in gpus("attention::bad_shapes_are_errors") {
        let be = &gpu.backend;
        let up = |t: &Tensor| be.upload(t).unwrap();
        let (q, k, v, k3, k_d8) = (up(&q), up(&k), up(&v), up(&k3), up(&k_d8));
        let (rel_h, rel_w) = (up(&rel_h), up(&rel_w));
        let base = AttnParams::new(16);
        let cases: Vec<(&str, &Tensor, &Tensor, &Tensor, AttnParams)> = vec![
            ("H not a multiple of Hkv", &q, &k3, &k3, base),
            ("head dims differ", &q, &k_d8, &k_d8, base),
            ("k and v differ", &q, &k, &k3, base),
            ("kv_len beyond the cache", &q, &k, &v, AttnParams { kv_len: Some(6), ..base }),
            ("queries over no keys", &q, &k, &v, AttnParams { kv_len: Some(0), ..base }),
            ("causal with more queries than keys", &q, &k, &v, AttnParams { causal: true, kv_len: Some(2), ..base }),
            (
                "bias grid does not cover the keys",
                &q,
                &k,
                &v,
                AttnParams { bias: AttnBias::DecomposedRelPos { rel_h: &rel_h, rel_w: &rel_w, k_h: 2, k_w: 2 }, ..base },
            ),
        ];
        for (what, q, k, v, p) in cases {
            match be.attention(q, k, v, &p) {
                Err(e) => eprintln!("attention::bad_shapes_are_errors on {}: {what}: {e}", be.name()),
                Ok(_) => panic!("attention::bad_shapes_are_errors on {}: {what} was accepted", be.name()),
            }
        }
    }
}

#[test]
fn head_dim_above_128_is_an_error_or_right() {
    // The GPU kernels are built for D ≤ 128 (every model here): a larger head dim must be refused
    // with an error, never computed wrongly.
    let c = Case::new(1, 2, 2, 5, 9, 160);
    let x = inputs(&c, 13);
    let want = Backend::cpu().attention(&x.q, &x.k, &x.v, &params(&c, None)).unwrap().to_f32_vec().unwrap();
    for gpu in gpus("attention::head_dim_above_128_is_an_error_or_right") {
        let be = &gpu.backend;
        let (q, k, v) = (be.upload(&x.q).unwrap(), be.upload(&x.k).unwrap(), be.upload(&x.v).unwrap());
        match be.attention(&q, &k, &v, &params(&c, None)) {
            Err(e) => eprintln!("attention::head_dim_above_128_is_an_error_or_right on {}: {e}", be.name()),
            Ok(out) => assert_close("attention D = 160", &be.to_vec_f32(&out).unwrap(), &want, gpu.op_tol),
        }
        // Token-major: [B, N, H·D] in, and the result compared head-major.
        let tokens = |t: &Tensor| {
            let s = t.shape();
            let t = Backend::cpu().permute(t, &[0, 2, 1, 3]).unwrap().reshape(&[s[0], s[2], s[1] * s[3]]).unwrap();
            be.upload(&t).unwrap()
        };
        match be.attention_tokens(&tokens(&x.q), &tokens(&x.k), &tokens(&x.v), c.h, &params(&c, None)) {
            Err(e) => eprintln!("attention::head_dim_above_128_is_an_error_or_right on {}, token-major: {e}", be.name()),
            Ok(out) => {
                let heads = be.to_host(&out).unwrap().reshape(&[c.b, c.nq, c.h, c.d]).unwrap();
                let got = Backend::cpu().permute(&heads, &[0, 2, 1, 3]).unwrap().to_f32_vec().unwrap();
                assert_close("attention_tokens D = 160", &got, &want, gpu.op_tol);
            }
        }
    }
}

#[test]
fn folded_workgroup_grids() {
    // More workgroups than the per-dimension limit are folded into a 2-D grid with surplus
    // workgroups at the end; lowering wgpu's limit to 9 reaches that at test sizes: the forward
    // kernel's 24 workgroups run as 9 × 3, decode's 64 (4 heads × 16 splits of 64 keys) as
    // 9 × 8, and the combine pass's 4 unfolded; head-major and token-major alike.
    let name = "attention::folded_workgroup_grids";
    let g = gpus(name);
    for gpu in &g {
        if let Backend::Wgpu(w) = &gpu.backend {
            w.set_max_workgroups_per_dim(9);
        }
    }
    check(name, &g, Case::new(2, 4, 2, 65, 70, 64).causal());
    check(name, &g, Case::new(1, 4, 2, 1, 1000, 64));
}

/// Wall times at model shapes on the CPU and every GPU backend (median of 3 warm calls, upload
/// excluded, read-back included), with the usual comparison. Too slow for a software driver in
/// every CI run, so it runs on request: `cargo test --release --test gpu attention::timings --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn timings_at_model_shapes() {
    let name = "attention::timings_at_model_shapes";
    let g = gpus(name);
    let cases = [
        ("SAM ViT-B windowed layer (25 windows of 14×14, 12 heads)", Case::new(25, 12, 12, 196, 196, 64).bias(14, 14)),
        ("CLIP ViT-L/14-336 layer (577 tokens, 16 heads)", Case::new(1, 16, 16, 577, 577, 64)),
        ("7B prefill, 104 tokens (32 heads, D 128)", Case::new(1, 32, 32, 104, 104, 128).causal()),
        ("7B decode at 4096 keys (32 heads, D 128)", Case::new(1, 32, 32, 1, 4096, 128).causal()),
    ];
    let median = |f: &dyn Fn() -> f64| {
        let mut t: Vec<f64> = (0..3).map(|_| f()).collect();
        t.sort_by(f64::total_cmp);
        t[1]
    };
    for (what, c) in cases {
        let x = inputs(&c, 1);
        let cpu = Backend::cpu();
        let p = params(&c, x.rel.as_ref());
        let want = cpu.attention(&x.q, &x.k, &x.v, &p).unwrap().to_f32_vec().unwrap();
        let cpu_ms = median(&|| {
            let t0 = Instant::now();
            cpu.attention(&x.q, &x.k, &x.v, &p).unwrap();
            t0.elapsed().as_secs_f64() * 1e3
        });
        eprintln!("{what}: cpu {cpu_ms:.2} ms");
        for gpu in &g {
            let be = &gpu.backend;
            let (q, k, v) = (be.upload(&x.q).unwrap(), be.upload(&x.k).unwrap(), be.upload(&x.v).unwrap());
            let rel = x.rel.as_ref().map(|(h, w)| (be.upload(h).unwrap(), be.upload(w).unwrap()));
            let p = params(&c, rel.as_ref());
            let got = be.to_vec_f32(&be.attention(&q, &k, &v, &p).unwrap()).unwrap();
            assert_close(&format!("{what} on {}", be.name()), &got, &want, gpu.op_tol);
            let ms = median(&|| {
                let t0 = Instant::now();
                let out = be.attention(&q, &k, &v, &p).unwrap();
                be.to_host(&out).unwrap();
                t0.elapsed().as_secs_f64() * 1e3
            });
            eprintln!("{what}: {} ({}) {ms:.2} ms", be.name(), be.device_name());
        }
    }
}

/// `attention_packed` (SAM's image-encoder attention read straight from its packed qkv
/// projection, the decomposed bias computed from the same q) on every GPU backend against the
/// CPU's composition of split heads, bias matmuls and `attention`: windows of 14 × 14 tokens,
/// a global grid at head dim 80, and no bias. Half-precision callers against the CPU on q·scale,
/// k and v rounded to f16, with the bias from the unrounded q (CUDA computes it in f32).
#[test]
fn packed_projection_with_rel_pos() {
    let name = "attention::packed_projection_with_rel_pos";
    let gpus = gpus(name);
    let cpu = Backend::cpu();
    let mut r = Rng::new(0xA77E_9000);
    for (b, h, side, d, with_bias) in [(3usize, 2usize, 14usize, 16usize, true), (1, 2, 9, 80, true), (2, 3, 5, 24, false)] {
        let n = side * side;
        let qkv = r.tensor(&[b, n, 3 * h * d]);
        let tables = with_bias.then(|| (r.tensor(&[side, side, d]), r.tensor(&[side, side, d])));
        let rel = tables.as_ref().map(|(th, tw)| (th, tw));
        let want = cpu.attention_packed(&qkv, h, rel, false).unwrap();
        assert_eq!(want.shape(), [b, n, h * d]);
        let want = want.to_f32_vec().unwrap();

        // The half-precision reference, head-major: q, k, v split from qkv, the bias by its
        // definition, then back to [B, N, H·D].
        let heads = cpu.permute(&qkv.reshape(&[b, n, 3, h, d]).unwrap(), &[2, 0, 3, 1, 4]).unwrap();
        let part = |i: usize| cpu.narrow(&heads, 0, i, 1).unwrap().reshape(&[b, h, n, d]).unwrap();
        let (q, k, v) = (part(0), part(1), part(2));
        let bias = tables.as_ref().map(|(th, tw)| {
            let (qv, thv, twv) = (q.to_f32_vec().unwrap(), th.to_f32_vec().unwrap(), tw.to_f32_vec().unwrap());
            let (mut bh, mut bw) = (vec![0f32; b * h * n * side], vec![0f32; b * h * n * side]);
            for row in 0..b * h * n {
                let (t, qr) = (row % n, &qv[row * d..][..d]);
                let (y, x) = (t / side, t % side);
                for kk in 0..side {
                    bh[row * side + kk] = qr.iter().zip(&thv[(y * side + kk) * d..][..d]).map(|(a, c)| a * c).sum();
                    bw[row * side + kk] = qr.iter().zip(&twv[(x * side + kk) * d..][..d]).map(|(a, c)| a * c).sum();
                }
            }
            (Tensor::from_f32(bh, vec![b, h, n, side]).unwrap(), Tensor::from_f32(bw, vec![b, h, n, side]).unwrap())
        });
        let mut p = AttnParams::new(d);
        if let Some((bh, bw)) = &bias {
            p.bias = AttnBias::DecomposedRelPos { rel_h: bh, rel_w: bw, k_h: side, k_w: side };
        }
        // The bias by its definition gives the composed op's result on unrounded operands.
        let by_definition = cpu.permute(&cpu.attention(&q, &k, &v, &p).unwrap(), &[0, 2, 1, 3]).unwrap().to_f32_vec().unwrap();
        assert_close(&format!("{name}: composed against the definition"), &by_definition, &want, crate::common::Tol { atol: 1e-5, rtol: 1e-5 });
        let (qr, kr, vr) = (f16_round(&cpu, &q, p.scale), f16_round(&cpu, &k, 1.0), f16_round(&cpu, &v, 1.0));
        let lp = cpu.attention(&qr, &kr, &vr, &p).unwrap();
        let want_lp = cpu.permute(&lp, &[0, 2, 1, 3]).unwrap().to_f32_vec().unwrap();

        for g in &gpus {
            let be = &g.backend;
            let qkv_g = be.upload(&qkv).unwrap();
            let rel_g = tables.as_ref().map(|(th, tw)| (be.upload(th).unwrap(), be.upload(tw).unwrap()));
            let rel_g = rel_g.as_ref().map(|(th, tw)| (th, tw));
            let what = format!("{name} B {b} H {h} side {side} d {d} bias {with_bias} on {}", be.name());
            let got = be.to_vec_f32(&be.attention_packed(&qkv_g, h, rel_g, false).unwrap()).unwrap();
            assert_close(&what, &got, &want, g.op_tol);
            let got = be.to_vec_f32(&be.attention_packed(&qkv_g, h, rel_g, true).unwrap()).unwrap();
            assert_close(&format!("{what}, low precision"), &got, &want_lp, LOW_PRECISION_TOL);
        }
    }
    // Bad shapes are errors: channels not 3·H·D, a bias grid that is not the tokens' square.
    let qkv = r.tensor(&[1, 16, 24]);
    assert!(cpu.attention_packed(&qkv, 5, None, false).is_err());
    let t = r.tensor(&[3, 3, 4]);
    assert!(cpu.attention_packed(&qkv, 2, Some((&t, &t)), false).is_err());
}
