//! Every op on every GPU backend against the CPU backend (the spec), on seeded inputs over shape
//! sweeps: sizes not divisible by the workgroup/tile sizes, size 1, f16/bf16 weights,
//! broadcasting, and the 2-D dispatch fold for large grids.

use visword::backend::cuda::FusedGemm;
use visword::backend::wgpu::GemmKernel;
use visword::backend::BinaryOp;
use visword::{Activation, Backend, DType, Tensor, TwoWayParams};

use crate::common::backends::{gpus, Gpu};
use crate::common::{assert_close, f16_round, tf32_round, upscale_masks_f16_operands, Rng, Tol, TwoWayInputs, LOW_PRECISION_TOL};

const SEED: u64 = 0x5EED_0005;

fn rng(test: &str) -> Rng {
    eprintln!("{test}: seed {SEED:#x}");
    Rng::new(SEED)
}

fn up(g: &Gpu, t: &Tensor) -> Tensor {
    g.backend.upload(t).unwrap_or_else(|e| panic!("upload to {}: {e}", g.backend.name()))
}

/// Compare a GPU result with the CPU's (shape and values).
#[track_caller]
fn same(what: &str, g: &Gpu, got: &Tensor, want: &Tensor, tol: Tol) {
    assert_eq!(got.shape(), want.shape(), "{what} on {}: shape", g.backend.name());
    let got = g.backend.to_vec_f32(got).unwrap_or_else(|e| panic!("{what}: read-back from {}: {e}", g.backend.name()));
    assert_close(&format!("{what} on {}", g.backend.name()), &got, &want.to_f32_vec().unwrap(), tol);
}

fn cpu() -> Backend {
    Backend::cpu()
}

/// Lower the wgpu backend's workgroups-per-dimension limit so small grids take the 2-D fold.
fn fold_dispatches(g: &Gpu, max: u32) {
    if let Backend::Wgpu(w) = &g.backend {
        w.set_max_workgroups_per_dim(max);
    }
}

const ACTS: [Activation; 6] = [Activation::None, Activation::Gelu, Activation::GeluTanh, Activation::QuickGelu, Activation::Relu, Activation::Silu];

#[test]
fn activations_match_the_cpu() {
    let mut r = rng("activations");
    for g in gpus("activations") {
        for n in [1usize, 255, 256, 1000, 4099] {
            let x = Tensor::from_f32(r.vec(n).iter().map(|v| v * 8.0).collect(), vec![n]).unwrap();
            let xg = up(&g, &x);
            for act in ACTS {
                let want = cpu().activate(&x, act).unwrap();
                let got = g.backend.activate(&xg, act).unwrap();
                same(&format!("activate {act:?} n={n}"), &g, &got, &want, g.op_tol);
            }
        }
    }
}

/// WGSL has no erf: the shaders' own (exact GELU's core) must be within 1e-7 of the true erf
/// (f64 libm) on a dense grid that crosses every branch of its rational approximation
/// (0.84375, 1.25, 1/0.35, 6), and GELU must then agree with the CPU's to f32 rounding.
#[test]
fn erf_within_1e7_and_gelu_matches_the_cpu() {
    for g in gpus("erf") {
        let Backend::Wgpu(w) = &g.backend else { continue };
        let n = 40001;
        let xs: Vec<f32> = (0..n).map(|i| -8.0 + 16.0 * i as f32 / (n - 1) as f32).collect();
        let x = Tensor::from_f32(xs.clone(), vec![n]).unwrap();
        let got = g.backend.to_vec_f32(&w.erf(&up(&g, &x)).unwrap()).unwrap();
        let want: Vec<f32> = xs.iter().map(|&v| libm::erf(v as f64) as f32).collect();
        assert_close("erf vs f64 libm", &got, &want, Tol { atol: 1e-7, rtol: 0.0 });
        let xg: Vec<f32> = xs.iter().map(|v| v * 1.5).collect();
        let x = Tensor::from_f32(xg, vec![n]).unwrap();
        let want = cpu().activate(&x, Activation::Gelu).unwrap();
        same("gelu dense grid", &g, &g.backend.activate(&up(&g, &x), Activation::Gelu).unwrap(), &want, Tol { atol: 1e-6, rtol: 1e-6 });
    }
}

#[test]
fn silu_mul_affine_and_binary_with_broadcasting() {
    let mut r = rng("binary");
    for g in gpus("binary") {
        for shape in [vec![1usize], vec![7, 300], vec![2, 3, 17, 5]] {
            let (a, b) = (r.tensor(&shape), r.tensor(&shape));
            let (ag, bg) = (up(&g, &a), up(&g, &b));
            same(&format!("silu_mul {shape:?}"), &g, &g.backend.silu_mul(&ag, &bg).unwrap(), &cpu().silu_mul(&a, &b).unwrap(), g.op_tol);
            same(&format!("affine {shape:?}"), &g, &g.backend.affine(&ag, 1.7, -0.3).unwrap(), &cpu().affine(&a, 1.7, -0.3).unwrap(), g.op_tol);
        }
        let cases: [(&[usize], &[usize]); 6] = [
            (&[4, 5], &[4, 5]),
            (&[4, 5], &[5]),
            (&[4, 1], &[1, 5]),
            (&[2, 3, 17, 5], &[3, 1, 5]),
            (&[1], &[6, 7]),
            (&[2, 1, 33], &[2, 9, 1]),
        ];
        for (sa, sb) in cases {
            let (a, b) = (r.tensor(sa), r.tensor(sb));
            let (ag, bg) = (up(&g, &a), up(&g, &b));
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul] {
                let want = cpu().binary_op(&a, &b, op);
                let got = match op {
                    BinaryOp::Add => g.backend.add(&ag, &bg),
                    BinaryOp::Sub => g.backend.sub(&ag, &bg),
                    BinaryOp::Mul => g.backend.mul(&ag, &bg),
                }
                .unwrap();
                same(&format!("{op:?} {sa:?} with {sb:?}"), &g, &got, &want, g.op_tol);
            }
        }
        assert!(g.backend.add(&up(&g, &r.tensor(&[3, 4])), &up(&g, &r.tensor(&[5]))).is_err(), "a bad broadcast must be an error");
    }
}

trait BinaryOpExt {
    fn binary_op(&self, a: &Tensor, b: &Tensor, op: BinaryOp) -> Tensor;
}

impl BinaryOpExt for Backend {
    fn binary_op(&self, a: &Tensor, b: &Tensor, op: BinaryOp) -> Tensor {
        match op {
            BinaryOp::Add => self.add(a, b),
            BinaryOp::Sub => self.sub(a, b),
            BinaryOp::Mul => self.mul(a, b),
        }
        .unwrap()
    }
}

#[test]
fn softmax_rows_including_masked_ones() {
    let mut r = rng("softmax");
    for g in gpus("softmax") {
        for (rows, d) in [(1usize, 1usize), (3, 7), (5, 256), (2, 1000), (65, 33)] {
            let mut v: Vec<f32> = r.vec(rows * d).iter().map(|x| x * 10.0).collect();
            // A fully masked row and a partly masked one.
            if rows > 1 {
                v[..d].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                v[d] = f32::NEG_INFINITY;
            }
            let x = Tensor::from_f32(v, vec![rows, d]).unwrap();
            same(&format!("softmax {rows}×{d}"), &g, &g.backend.softmax(&up(&g, &x)).unwrap(), &cpu().softmax(&x).unwrap(), g.op_tol);
        }
    }
}

#[test]
fn rope_with_offsets() {
    let mut r = rng("rope");
    for g in gpus("rope") {
        for (b, h, n, d, off) in [(1usize, 1usize, 1usize, 2usize, 0usize), (2, 3, 5, 64, 7), (1, 4, 9, 80, 0)] {
            let x = r.tensor(&[b, h, n, d]);
            let (cos, sin) = (r.tensor(&[n + off + 3, d / 2]), r.tensor(&[n + off + 3, d / 2]));
            let want = cpu().rope(&x, &cos, &sin, off).unwrap();
            let got = g.backend.rope(&up(&g, &x), &up(&g, &cos), &up(&g, &sin), off).unwrap();
            same(&format!("rope [{b},{h},{n},{d}] +{off}"), &g, &got, &want, g.op_tol);
        }
    }
}

/// `rope_qk_write_kv` against two ropes and two write_kvs on the CPU: a prefill then decode
/// steps into caches that already hold other rows (2 batches × 3 KV heads, so the cache's row
/// stride matters; 6 query heads, GQA).
#[test]
fn rope_qk_write_kv_matches_rope_then_write_kv() {
    let mut r = rng("rope_qk_write_kv");
    for g in gpus("rope_qk_write_kv") {
        for d in [2usize, 64] {
            let (cos, sin) = (r.tensor(&[20, d / 2]), r.tensor(&[20, d / 2]));
            let (cg, sg) = (up(&g, &cos), up(&g, &sin));
            let (mut kc, mut vc) = (r.tensor(&[2, 3, 11, d]), r.tensor(&[2, 3, 11, d]));
            let (mut kcg, mut vcg) = (up(&g, &kc), up(&g, &vc));
            for (pos, n) in [(0usize, 5usize), (5, 1), (6, 1), (9, 2)] {
                let (q, k, v) = (r.tensor(&[2, 6, n, d]), r.tensor(&[2, 3, n, d]), r.tensor(&[2, 3, n, d]));
                cpu().write_kv(&mut kc, &cpu().rope(&k, &cos, &sin, pos).unwrap(), pos).unwrap();
                cpu().write_kv(&mut vc, &v, pos).unwrap();
                let want = cpu().rope(&q, &cos, &sin, pos).unwrap();
                let got = g.backend.rope_qk_write_kv(&up(&g, &q), &up(&g, &k), &up(&g, &v), &mut kcg, &mut vcg, &cg, &sg, pos).unwrap();
                same(&format!("rope_qk_write_kv d {d} q after {pos}+{n}"), &g, &got, &want, g.op_tol);
                same(&format!("rope_qk_write_kv d {d} k cache after {pos}+{n}"), &g, &kcg, &kc, g.op_tol);
                same(&format!("rope_qk_write_kv d {d} v cache after {pos}+{n}"), &g, &vcg, &vc, Tol { atol: 0.0, rtol: 0.0 });
            }
            let (q, k, v) = (up(&g, &r.tensor(&[2, 6, 2, d])), up(&g, &r.tensor(&[2, 3, 2, d])), up(&g, &r.tensor(&[2, 3, 2, d])));
            assert!(g.backend.rope_qk_write_kv(&q, &k, &v, &mut kcg, &mut vcg, &cg, &sg, 10).is_err(), "a write past the cache must be an error");
            let v1 = up(&g, &r.tensor(&[2, 3, 1, d]));
            assert!(g.backend.rope_qk_write_kv(&q, &k, &v1, &mut kcg, &mut vcg, &cg, &sg, 0).is_err(), "k and v of different shapes must be an error");
            assert!(g.backend.rope_qk_write_kv(&q, &k, &v, &mut kcg, &mut vcg, &cg, &sg, 19).is_err(), "positions past the tables must be an error");
        }
    }
}

/// The KV cache in the dtype the backend keeps a half-precision model's (`kv_cache_dtype`): on
/// CUDA bf16 caches, which `rope_qk_write_kv` must fill with the CPU's rows rounded to bf16 (a
/// relative 2⁻⁸ at most) and which `attention` must read as the CPU reads those rounded values
/// (decode, f32 flash and, for half-precision callers, tensor-core kernels). Caches of two
/// dtypes, and bf16 caches on a backend that keeps f32 ones (the CPU too), are errors.
#[test]
fn rope_qk_write_kv_and_attention_on_the_kv_cache_dtype() {
    let mut r = rng("kv_cache_dtype");
    let d = 64;
    let (cos, sin) = (r.tensor(&[16, d / 2]), r.tensor(&[16, d / 2]));
    let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let (q1, k1, v1) = (r.tensor(&[1, 4, 1, d]), r.tensor(&[1, 2, 1, d]), r.tensor(&[1, 2, 1, d]));
    let zeros = Tensor::zeros(vec![1, 2, 16, d]);
    let refused = cpu().rope_qk_write_kv(&q1, &k1, &v1, &mut bf16(&zeros), &mut bf16(&zeros), &cos, &sin, 0);
    assert!(refused.is_err(), "the CPU keeps f32 caches: bf16 ones must be an error");
    assert_eq!(cpu().kv_cache_dtype(true), DType::F32);
    for g in gpus("kv_cache_dtype") {
        let be = &g.backend;
        let (cg, sg) = (up(&g, &cos), up(&g, &sin));
        let (q1g, k1g, v1g) = (up(&g, &q1), up(&g, &k1), up(&g, &v1));
        let mixed = be.rope_qk_write_kv(&q1g, &k1g, &v1g, &mut up(&g, &zeros), &mut up(&g, &bf16(&zeros)), &cg, &sg, 0);
        assert!(mixed.is_err(), "{}: caches of two dtypes must be an error", be.name());
        let dt = be.kv_cache_dtype(true);
        if dt == DType::F32 {
            let r = be.rope_qk_write_kv(&q1g, &k1g, &v1g, &mut up(&g, &bf16(&zeros)), &mut up(&g, &bf16(&zeros)), &cg, &sg, 0);
            assert!(r.is_err(), "{} keeps f32 caches: bf16 ones must be an error", be.name());
            continue;
        }
        assert_eq!(dt, DType::BF16, "{}", be.name());
        let (mut kc, mut vc) = (zeros.clone(), zeros.clone());
        let (mut kcg, mut vcg) = (up(&g, &bf16(&zeros)), up(&g, &bf16(&zeros)));
        for (pos, n) in [(0usize, 5usize), (5, 1), (6, 10)] {
            let (q, k, v) = (r.tensor(&[1, 4, n, d]), r.tensor(&[1, 2, n, d]), r.tensor(&[1, 2, n, d]));
            cpu().write_kv(&mut kc, &cpu().rope(&k, &cos, &sin, pos).unwrap(), pos).unwrap();
            cpu().write_kv(&mut vc, &v, pos).unwrap();
            let want = cpu().rope(&q, &cos, &sin, pos).unwrap();
            let got = be.rope_qk_write_kv(&up(&g, &q), &up(&g, &k), &up(&g, &v), &mut kcg, &mut vcg, &cg, &sg, pos).unwrap();
            same(&format!("bf16-cache rope_qk_write_kv q after {pos}+{n}"), &g, &got, &want, g.op_tol);
        }
        assert_eq!((kcg.dtype(), vcg.dtype()), (DType::BF16, DType::BF16));
        let rounding = Tol { atol: 1e-6, rtol: 1.0 / 256.0 };
        same("bf16 k cache", &g, &kcg, &kc, rounding);
        same("bf16 v cache", &g, &vcg, &vc, rounding);
        // Attention over the cache as written, against the CPU on the values it holds.
        let (kr, vr) = (be.to_host(&kcg).unwrap().to_f32().unwrap(), be.to_host(&vcg).unwrap().to_f32().unwrap());
        for (nq, kv_len, low_precision) in [(1usize, 6usize, false), (4, 16, false), (12, 16, false), (12, 16, true)] {
            let q = r.tensor(&[1, 4, nq, d]);
            let p = visword::AttnParams { causal: true, kv_len: Some(kv_len), low_precision, ..visword::AttnParams::new(d) };
            // A half-precision caller's kernel rounds q·scale, k and v to f16 (the policy of
            // tests/gpu/attention.rs): the CPU sees them so.
            let want = if low_precision {
                cpu().attention(&f16_round(&cpu(), &q, p.scale), &f16_round(&cpu(), &kr, 1.0), &f16_round(&cpu(), &vr, 1.0), &p).unwrap()
            } else {
                cpu().attention(&q, &kr, &vr, &p).unwrap()
            };
            let got = be.attention(&up(&g, &q), &kcg, &vcg, &p).unwrap();
            let tol = if low_precision { LOW_PRECISION_TOL } else { g.op_tol };
            same(&format!("attention over a bf16 cache, {nq} queries, {kv_len} keys, low precision {low_precision}"), &g, &got, &want, tol);
        }
    }
}

/// More workgroups than the per-dimension limit: the backend folds the grid to 2-D. The limit is
/// lowered for the test (the real one, 65535, would need 16.7M elements per op here).
#[test]
fn large_grids_fold_into_two_dimensions() {
    let mut r = rng("fold");
    for g in gpus("fold") {
        fold_dispatches(&g, 7);
        let n = 256 * 40 + 3; // 41 workgroups → a 7 × 6 grid
        let (a, b) = (r.tensor(&[n]), r.tensor(&[n]));
        same("add folded", &g, &g.backend.add(&up(&g, &a), &up(&g, &b)).unwrap(), &cpu().add(&a, &b).unwrap(), g.op_tol);
        let x = r.tensor(&[45, 9]);
        same("softmax folded", &g, &g.backend.softmax(&up(&g, &x)).unwrap(), &cpu().softmax(&x).unwrap(), g.op_tol);
        fold_dispatches(&g, u32::MAX);
    }
}

#[test]
fn upload_keeps_or_converts_dtypes() {
    let mut r = rng("upload");
    for g in gpus("upload") {
        let v = r.vec(33);
        let t = Tensor::from_f32(v.clone(), vec![3, 11]).unwrap();
        let back = g.backend.to_host(&up(&g, &t)).unwrap();
        assert_eq!(back.dtype(), DType::F32);
        assert_eq!(back.as_f32().unwrap(), &v[..], "f32 round trip");
        let bf = t.to_dtype(DType::BF16).unwrap();
        let w = g.backend.upload_weight(&bf).unwrap();
        if let Backend::Wgpu(wb) = &g.backend {
            assert_eq!(w.dtype(), if wb.has_f16() { DType::F16 } else { DType::F32 }, "bf16 in f16 range");
            let big = Tensor::from_f32(vec![1.0, 7.0e4], vec![2]).unwrap().to_dtype(DType::BF16).unwrap();
            assert_eq!(g.backend.upload_weight(&big).unwrap().dtype(), DType::F32, "bf16 beyond f16's range stays exact as f32");
        }
        // Every bf16 value in f16's normal range converts exactly.
        assert_eq!(g.backend.to_vec_f32(&w).unwrap(), bf.to_f32_vec().unwrap(), "bf16 values");
        let ints = Tensor::from_i32(vec![1, -2, 3], vec![3]).unwrap();
        assert_eq!(g.backend.to_host(&up(&g, &ints)).unwrap().as_i32().unwrap(), &[1, -2, 3]);
        let empty = Tensor::from_f32(vec![], vec![0, 4]).unwrap();
        assert_eq!(g.backend.to_host(&up(&g, &empty)).unwrap().shape(), &[0, 4]);
        g.backend.synchronize().unwrap();
        assert!(!g.backend.device_name().is_empty());
    }
}

/// Sums over K terms in another order (and with FMAs): allow error growing with K.
fn tol_k(g: &Gpu, k: usize) -> Tol {
    Tol { atol: g.op_tol.atol.max(4e-6 * (k as f32).sqrt()), rtol: g.op_tol.rtol }
}

#[test]
fn linear_gemv_and_gemm_for_every_weight_dtype_and_epilogue() {
    let mut r = rng("linear");
    for g in gpus("linear") {
        // M = 1 takes the GEMV; odd K exercises the element-wise f16 path; sizes straddle the
        // 64-wide tiles and the 8-row GEMV workgroups. K = 2056 is one chunk of 8 past CUDA's
        // first batch of loads (2048 weights a warp for f16/bf16, 1024 for f32).
        for (m, k, n) in [(1usize, 1usize, 1usize), (1, 37, 5), (1, 256, 17), (1, 301, 129), (1, 44, 9), (1, 1030, 300), (1, 2048, 70), (1, 2056, 33), (3, 2056, 9), (2, 64, 17), (5, 19, 7), (65, 130, 67), (33, 257, 40), (70, 136, 72), (6, 64, 130)] {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let x = r.tensor(&[m, k]);
                let w = r.tensor(&[n, k]).to_dtype(dtype).unwrap();
                let (b, res) = (r.tensor(&[n]), r.tensor(&[m, n]));
                let (xg, wg, bg, rg) = (up(&g, &x), g.backend.upload_weight(&w).unwrap(), up(&g, &b), up(&g, &res));
                // CUDA's GEMM (M > 4) on bf16 weights rounds the activations to bf16 for the
                // tensor cores: the reference is the CPU on those rounded activations, to the
                // same f32 tolerance. The exact f32 path must match the plain CPU result.
                let tensor_cores = matches!(&g.backend, Backend::Cuda(cb) if cb.bf16_gemm()) && dtype == DType::BF16 && m > 4;
                let x_ref = if tensor_cores { x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap() } else { x.clone() };
                for act in ACTS {
                    let want = cpu().linear(&x_ref, &w, Some(&b), act, Some(&res)).unwrap();
                    let got = g.backend.linear(&xg, &wg, Some(&bg), act, Some(&rg)).unwrap();
                    same(&format!("linear {m}×{k}×{n} {dtype} {act:?}"), &g, &got, &want, tol_k(&g, k));
                }
                if let (true, Backend::Cuda(cb)) = (tensor_cores, &g.backend) {
                    cb.set_bf16_gemm(false);
                    let want = cpu().linear(&x, &w, Some(&b), Activation::Gelu, Some(&res)).unwrap();
                    let got = g.backend.linear(&xg, &wg, Some(&bg), Activation::Gelu, Some(&rg)).unwrap();
                    cb.set_bf16_gemm(true);
                    same(&format!("linear {m}×{k}×{n} {dtype} exact f32 GEMM"), &g, &got, &want, tol_k(&g, k));
                    // The one-launch kernel (kernels/gemm.cu; K a multiple of 8) and the
                    // three-launch cuBLAS path round x alike: both match the same reference.
                    let want = cpu().linear(&x_ref, &w, Some(&b), Activation::QuickGelu, Some(&res)).unwrap();
                    for mode in [FusedGemm::All, FusedGemm::Off] {
                        cb.set_fused_gemm(mode);
                        let path = cb.linear_path(m, &wg);
                        let got = g.backend.linear(&xg, &wg, Some(&bg), Activation::QuickGelu, Some(&rg)).unwrap();
                        cb.set_fused_gemm(FusedGemm::Small);
                        assert_eq!(path.contains("fused"), mode == FusedGemm::All && k % 8 == 0, "linear {m}×{k}×{n}: {path}");
                        same(&format!("linear {m}×{k}×{n} {dtype} {path}"), &g, &got, &want, tol_k(&g, k));
                    }
                }
                // The GEMV's other builds on wgpu: the plain fallback (on adapters whose subgroup
                // variant ran above) and the batched loads, with and without subgroups.
                if let (1, Backend::Wgpu(wb)) = (m, &g.backend) {
                    let was = wb.gemv_batched();
                    let want = cpu().linear(&x, &w, Some(&b), Activation::Silu, Some(&res)).unwrap();
                    for (subgroups, batched) in [(false, false), (true, true), (false, true)] {
                        wb.set_use_subgroups(subgroups);
                        wb.set_gemv_batched(batched);
                        let build = format!("{}{}", if subgroups { "" } else { " plain" }, if batched { " batched" } else { "" });
                        same(&format!("linear {m}×{k}×{n} {dtype} GEMV{build}"), &g, &g.backend.linear(&xg, &wg, Some(&bg), Activation::Silu, Some(&rg)).unwrap(), &want, tol_k(&g, k));
                    }
                    wb.set_use_subgroups(true);
                    wb.set_gemv_batched(was);
                }
                // wgpu's cooperative-matrix GEMM on adapters that have it: f16 weights, the
                // activations rounded to f16 as it stages them (so the reference rounds them too).
                if let (true, Backend::Wgpu(wb)) = (m > 1, &g.backend) {
                    if wb.has_coop_gemm() && wg.dtype() == DType::F16 {
                        let x16 = x.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
                        let want = cpu().linear(&x16, &w, Some(&b), Activation::Gelu, Some(&res)).unwrap();
                        let was = wb.coop_gemm();
                        wb.set_coop_gemm(true);
                        let got = g.backend.linear(&xg, &wg, Some(&bg), Activation::Gelu, Some(&rg)).unwrap();
                        wb.set_coop_gemm(was);
                        same(&format!("linear {m}×{k}×{n} {dtype} cooperative-matrix GEMM"), &g, &got, &want, tol_k(&g, k));
                    }
                }
                let want = cpu().linear(&x_ref, &w, None, Activation::None, None).unwrap();
                same(&format!("linear {m}×{k}×{n} {dtype} bare"), &g, &g.backend.linear(&xg, &wg, None, Activation::None, None).unwrap(), &want, tol_k(&g, k));
            }
        }
        // Leading batch dims and linear_many.
        let x = r.tensor(&[2, 3, 24]);
        let (w1, w2) = (r.tensor(&[10, 24]), r.tensor(&[7, 24]).to_dtype(DType::F16).unwrap());
        let (w1g, w2g) = (up(&g, &w1), g.backend.upload_weight(&w2).unwrap());
        for xs in [x.clone(), r.tensor(&[1, 1, 24])] {
            let want = cpu().linear_many(&xs, &[&w1, &w2]).unwrap();
            let got = g.backend.linear_many(&up(&g, &xs), &[&w1g, &w2g]).unwrap();
            for (i, (gt, wt)) in got.iter().zip(&want).enumerate() {
                same(&format!("linear_many {:?} #{i}", xs.shape()), &g, gt, wt, tol_k(&g, 24));
            }
        }
        // Same-dtype weights: CUDA runs them as one GEMV over all their rows (M ≤ 4, up to
        // three weights) or shares one bf16 copy of x between the tensor-core GEMMs.
        // wgpu: one input row is one fused dispatch (16-byte loads at K = 64, element loads at
        // K = 13; K = 12 takes the vector path for f32 weights only).
        for (m, k) in [(1usize, 64usize), (1, 13), (1, 12), (3, 13), (6, 40)] {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let xs = r.tensor(&[m, k]);
                let ws: Vec<Tensor> = [33usize, 8, 17].iter().map(|&n| r.tensor(&[n, k]).to_dtype(dtype).unwrap()).collect();
                let wsg: Vec<Tensor> = ws.iter().map(|w| g.backend.upload_weight(w).unwrap()).collect();
                let tensor_cores = matches!(&g.backend, Backend::Cuda(cb) if cb.bf16_gemm()) && dtype == DType::BF16 && m > 4;
                let x_ref = if tensor_cores { xs.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap() } else { xs.clone() };
                for count in [1, 2, 3] {
                    let want = cpu().linear_many(&x_ref, &ws.iter().take(count).collect::<Vec<_>>()).unwrap();
                    let got = g.backend.linear_many(&up(&g, &xs), &wsg.iter().take(count).collect::<Vec<_>>()).unwrap();
                    assert_eq!(got.len(), count);
                    for (i, (gt, wt)) in got.iter().zip(&want).enumerate() {
                        same(&format!("linear_many {m}×{k} {dtype} {count} weights #{i}"), &g, gt, wt, tol_k(&g, k));
                    }
                }
            }
        }
        assert!(g.backend.linear(&up(&g, &x), &up(&g, &r.tensor(&[10, 23])), None, Activation::None, None).is_err(), "K mismatch must be an error");
    }
}

/// A residual shared by every batch entry ([1, ..] for a [B, ..] output), and the path CUDA
/// gives activation-dominated linears on bf16 weights (M ≥ 8·N: cuBLASLt, x read as TF32 with
/// bias, ReLU and residual fused). TF32 keeps 10 mantissa bits of x (the weight is exact), so
/// each output may differ from the f32 result by 2⁻¹⁰·Σ|x||w| (times GELU's slope ≤ 1.13), plus
/// the f32 tolerance: checked element by element.
#[test]
fn linear_with_a_shared_residual_and_fused_epilogues() {
    let mut r = rng("linear_shared_residual");
    for g in gpus("linear_shared_residual") {
        for (b, rows, k, n) in [(3usize, 200usize, 64usize, 24usize), (2, 100, 37, 12), (5, 1, 16, 8)] {
            let x = r.tensor(&[b, rows, k]);
            let w = r.tensor(&[n, k]).to_dtype(DType::BF16).unwrap();
            let bias = r.tensor(&[n]);
            let (shared, full) = (r.tensor(&[1, rows, n]), r.tensor(&[b, rows, n]));
            // Σ|x||w| per output: the TF32 rounding bound's scale.
            let abs = |t: &Tensor| Tensor::from_f32(t.to_f32_vec().unwrap().iter().map(|v| v.abs()).collect(), t.shape().to_vec()).unwrap();
            let bound = cpu().linear(&abs(&x), &abs(&w), None, Activation::None, None).unwrap().to_f32_vec().unwrap();
            let (xg, wg, bg) = (up(&g, &x), g.backend.upload_weight(&w).unwrap(), up(&g, &bias));
            let (sg, fg) = (up(&g, &shared), up(&g, &full));
            // CUDA: cuBLASLt on and off, and the one-launch kernel off (so the bf16 path's
            // cuBLASLt GEMM with the epilogue fused runs the small cases too).
            let modes: &[(bool, FusedGemm)] = if matches!(g.backend, Backend::Cuda(_)) { &[(true, FusedGemm::Small), (false, FusedGemm::Small), (true, FusedGemm::Off)] } else { &[(true, FusedGemm::Small)] };
            for &(lt, fused) in modes {
                let mut path = "";
                if let Backend::Cuda(cb) = &g.backend {
                    cb.set_lt_gemm(lt);
                    cb.set_fused_gemm(fused);
                    path = cb.linear_path(b * rows, &wg);
                }
                // CUDA's bf16 paths (M > 4, not the TF32 one) round x to bf16: the reference
                // takes the same rounding.
                let bf16_x = path.contains("bf16");
                let x_ref = if bf16_x { x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap() } else { x.clone() };
                for act in [Activation::None, Activation::Relu, Activation::Gelu] {
                    for (res, rg, with_bias) in [(Some(&shared), Some(&sg), true), (Some(&full), Some(&fg), true), (None, None, false), (Some(&shared), Some(&sg), false)] {
                        let bias_c = with_bias.then_some(&bias);
                        let want = cpu().linear(&x_ref, &w, bias_c, act, res).unwrap();
                        let got = g.backend.linear(&xg, &wg, with_bias.then_some(&bg), act, rg).unwrap();
                        let what = format!("linear [{b}, {rows}, {k}]·[{n}, {k}]ᵀ {act:?} bias {with_bias} residual {:?} cuBLASLt {lt} ({path}) on {}", res.map(|t| t.shape().to_vec()), g.backend.name());
                        assert_eq!(got.shape(), [b, rows, n], "{what}");
                        let (got, want) = (g.backend.to_vec_f32(&got).unwrap(), want.to_f32_vec().unwrap());
                        let t = tol_k(&g, k);
                        for (i, (&gv, &wv)) in got.iter().zip(&want).enumerate() {
                            let tf32 = if path.contains("TF32") { 1.13 * bound[i] / 1024.0 } else { 0.0 };
                            let allowed = t.atol + t.rtol * wv.abs() + tf32;
                            assert!((gv - wv).abs() <= allowed, "{what}: element {i}: {gv} vs {wv} (allowed {allowed:.2e})");
                        }
                    }
                }
            }
            if let Backend::Cuda(cb) = &g.backend {
                cb.set_lt_gemm(true);
                cb.set_fused_gemm(FusedGemm::Small);
            }
            // A residual that is neither the output's shape nor shared by its first dim.
            let bad = up(&g, &r.tensor(&[2, rows, n]));
            if b != 2 {
                assert!(g.backend.linear(&xg, &wg, None, Activation::None, Some(&bad)).is_err(), "residual [2, ..] for [{b}, ..] must be an error");
            }
        }
    }
}

/// Forces one of wgpu's plain GEMM kernels until dropped (also when a check fails), then puts
/// back the backend's choice from before.
struct ForceGemm<'a> {
    wb: &'a visword::backend::wgpu::WgpuBackend,
    was: GemmKernel,
}

impl<'a> ForceGemm<'a> {
    fn new(wb: &'a visword::backend::wgpu::WgpuBackend, k: GemmKernel) -> ForceGemm<'a> {
        let was = wb.gemm_kernel();
        wb.set_gemm_kernel(k);
        ForceGemm { wb, was }
    }
}

impl Drop for ForceGemm<'_> {
    fn drop(&mut self) {
        self.wb.set_gemm_kernel(self.was);
    }
}

/// wgpu's wide GEMM (128×128 tiles, quad loads along k) forced on small shapes, against the
/// CPU: M and N 1–3 past a tile or short of one, K a multiple of its 16-deep steps or 4, 8 or
/// 12 past one, K = 4, f32 and f16 weights, every epilogue; batches through a matmul with a
/// transposed B (its own per entry, and shared); a residual shared by a linear's batch; and
/// operands it cannot read (K or strides not multiples of 4, B along n), which must fall back.
/// The auto choice takes it on a grid of 153 of its tiles.
#[test]
fn wide_gemm_at_tile_and_k_edges() {
    let mut r = rng("wide_gemm");
    for g in gpus("wide_gemm") {
        let Backend::Wgpu(wb) = &g.backend else { continue };
        let force = ForceGemm::new(wb, GemmKernel::Wide);
        let shapes = [(129usize, 20usize, 131usize), (130, 36, 129), (131, 4, 130), (128, 64, 256), (67, 48, 70), (200, 100, 150), (2, 16, 3), (255, 52, 127), (5, 19, 7), (70, 37, 131)];
        for (i, &(m, k, n)) in shapes.iter().enumerate() {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let x = r.tensor(&[m, k]);
                let w = r.tensor(&[n, k]).to_dtype(dtype).unwrap();
                let (b, res) = (r.tensor(&[n]), r.tensor(&[m, n]));
                let (xg, wg, bg, rg) = (up(&g, &x), g.backend.upload_weight(&w).unwrap(), up(&g, &b), up(&g, &res));
                let act = ACTS[i % ACTS.len()];
                let want = cpu().linear(&x, &w, Some(&b), act, Some(&res)).unwrap();
                let got = g.backend.linear(&xg, &wg, Some(&bg), act, Some(&rg)).unwrap();
                same(&format!("wide linear {m}×{k}×{n} {dtype} {act:?}"), &g, &got, &want, tol_k(&g, k));
                let want = cpu().linear(&x, &w, None, Activation::None, None).unwrap();
                same(&format!("wide linear {m}×{k}×{n} {dtype} bare"), &g, &g.backend.linear(&xg, &wg, None, Activation::None, None).unwrap(), &want, tol_k(&g, k));
            }
        }
        // Batches on grid z: A·Bᵀ with B per entry or shared (Bᵀ is read along k), and A·B,
        // which falls back.
        for (batch, m, k, n) in [(3usize, 131usize, 36usize, 129usize), (2, 7, 8, 9), (2, 130, 22, 3)] {
            let a = r.tensor(&[batch, m, k]);
            for dtype in [DType::F32, DType::F16] {
                for (trans, shared) in [(true, false), (true, true), (false, false)] {
                    let bshape = if trans { vec![n, k] } else { vec![k, n] };
                    let b = if shared { r.tensor(&bshape) } else { r.tensor(&[vec![batch], bshape].concat()) }.to_dtype(dtype).unwrap();
                    let got = g.backend.matmul(&up(&g, &a), &g.backend.upload_weight(&b).unwrap(), trans).unwrap();
                    same(&format!("wide matmul [{batch}, {m}, {k}] {dtype} trans={trans} shared={shared}"), &g, &got, &cpu().matmul(&a, &b, trans).unwrap(), tol_k(&g, k));
                }
            }
        }
        // A linear on a 3-D input with a residual shared by its first dim (a period) and GELU.
        let (x, w) = (r.tensor(&[3, 70, 40]), r.tensor(&[133, 40]).to_dtype(DType::F16).unwrap());
        let (bias, shared) = (r.tensor(&[133]), r.tensor(&[1, 70, 133]));
        let want = cpu().linear(&x, &w, Some(&bias), Activation::Gelu, Some(&shared)).unwrap();
        let got = g.backend.linear(&up(&g, &x), &g.backend.upload_weight(&w).unwrap(), Some(&up(&g, &bias)), Activation::Gelu, Some(&up(&g, &shared))).unwrap();
        same("wide linear [3, 70, 40] shared residual", &g, &got, &want, tol_k(&g, 40));
        // The default choice on a grid of 9·17 = 153 wide tiles, and the 64×64 kernel forced.
        let (x, w) = (r.tensor(&[1030, 8]), r.tensor(&[2050, 8]).to_dtype(DType::F16).unwrap());
        let (xg, wg) = (up(&g, &x), g.backend.upload_weight(&w).unwrap());
        let want = cpu().linear(&x, &w, None, Activation::Relu, None).unwrap();
        for kernel in [GemmKernel::Auto, GemmKernel::Tile64] {
            wb.set_gemm_kernel(kernel);
            same(&format!("linear 1030×8×2050 {kernel:?}"), &g, &g.backend.linear(&xg, &wg, None, Activation::Relu, None).unwrap(), &want, tol_k(&g, 8));
        }
        drop(force);
    }
}

/// Median wall time in seconds of `runs` calls of `f`, each between device syncs (for the
/// timing tests run on request).
fn median_secs(be: &Backend, runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            be.synchronize().unwrap();
            let t0 = std::time::Instant::now();
            f();
            be.synchronize().unwrap();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Wall time of CUDA linears at the mask decoder's image-side shapes (64 prompts × 4096 image
/// tokens), on cuBLASLt and on the bf16 path, with the bytes they must move: a measurement, run
/// on request (`gpu linear_timings -- --ignored --nocapture`).
#[test]
#[ignore]
fn linear_timings_at_mask_decoder_shapes() {
    let mut r = rng("linear_timings");
    for g in gpus("linear_timings") {
        let Backend::Cuda(cb) = &g.backend else { continue };
        let be = &g.backend;
        let (p, rows) = (64usize, 4096usize);
        for (k, n, residual, bias) in [(256usize, 128usize, Some(true), false), (256, 128, None, true), (128, 256, Some(true), true), (128, 256, Some(false), true), (256, 256, None, true)] {
            let x = up(&g, &r.tensor(&[p, rows, k]));
            let w = be.upload_weight(&r.tensor(&[n, k]).to_dtype(DType::BF16).unwrap()).unwrap();
            let b = up(&g, &r.tensor(&[n]));
            let res = residual.map(|shared| up(&g, &r.tensor(&[if shared { 1 } else { p }, rows, n])));
            let bytes = 4.0 * (p * rows * (k + n)) as f64 + residual.map_or(0.0, |shared| 4.0 * ((if shared { 1 } else { p }) * rows * n) as f64);
            for lt in [true, false] {
                cb.set_lt_gemm(lt);
                let t = median_secs(be, 6, || drop(be.linear(&x, &w, bias.then_some(&b), Activation::None, res.as_ref()).unwrap()));
                eprintln!("linear [{p}·{rows}, {k}] → {n}, bias {bias}, residual {residual:?} ({}): {:.1} µs, {:.0} GB/s of the bytes it must move", cb.linear_path(p * rows, &w), t * 1e6, bytes / t / 1e9);
            }
            cb.set_lt_gemm(true);
        }
    }
}

/// wgpu's GEMM kernels (the 64×64-tile one, the wide one, and the cooperative-matrix one where
/// the adapter has it) timed at the stack's shapes (4096³, 7B prefill, CLIP-L and SAM-H
/// projections; f16 weights), on request (`gpu wgpu_gemm_timings -- --ignored --nocapture`).
#[test]
#[ignore]
fn wgpu_gemm_timings() {
    let mut r = rng("wgpu_gemm_timings");
    for g in gpus("wgpu_gemm_timings") {
        let Backend::Wgpu(wb) = &g.backend else { continue };
        let be = &g.backend;
        let force = ForceGemm::new(wb, GemmKernel::Auto);
        for (m, k, n) in [(4096usize, 4096usize, 4096usize), (616, 4096, 4096), (616, 4096, 11008), (80, 4096, 4096), (577, 1024, 1024), (577, 1024, 4096), (4096, 1280, 3840), (4096, 5120, 1280)] {
            let x = up(&g, &r.tensor(&[m, k]));
            let w = be.upload_weight(&r.tensor(&[n, k]).to_dtype(DType::F16).unwrap()).unwrap();
            let coop = wb.has_coop_gemm();
            for (name, kernel, on) in [("matmul", GemmKernel::Tile64, false), ("matmul_wide", GemmKernel::Wide, false), ("auto", GemmKernel::Auto, false), ("matmul_coop", GemmKernel::Auto, true)] {
                if on && !coop {
                    eprintln!("wgpu GEMM {m}×{k}×{n}: no cooperative matrices on {}", be.device_name());
                    continue;
                }
                wb.set_coop_gemm(on);
                wb.set_gemm_kernel(kernel);
                let t = median_secs(be, 4, || drop(be.linear(&x, &w, None, Activation::None, None).unwrap()));
                eprintln!("wgpu GEMM {m}×{k}×{n} f16 weight, {name}: {:.1} µs, {:.1} TFLOP/s", t * 1e6, 2.0 * (m * k * n) as f64 / t / 1e12);
            }
            wb.set_coop_gemm(false);
        }
        drop(force);
    }
}

/// RMSNorm fused into the projections that follow it (Q/K/V; SwiGLU gate and up): one GEMV
/// launch on CUDA for M ≤ 4 (K a multiple of 8 or not), the separate ops above that.
#[test]
fn rms_norm_fused_into_linear_many_and_swiglu() {
    let mut r = rng("rms_norm_linear");
    for g in gpus("rms_norm_linear") {
        // One row at K = 64 (16-byte loads), 13 (element loads), 12 (16-byte loads for f32
        // weights, element loads for f16), 1030 (several loads per lane) and 2056 (a second,
        // partial batch of CUDA's loads).
        for (m, k) in [(1usize, 64usize), (1, 13), (1, 12), (1, 1030), (1, 2056), (2, 13), (3, 2056), (4, 96), (6, 40)] {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let x = r.tensor(&[m, k]);
                let nw = r.tensor(&[k]);
                let ws: Vec<Tensor> = [33usize, 8, 17].iter().map(|&n| r.tensor(&[n, k]).to_dtype(dtype).unwrap()).collect();
                let wsg: Vec<Tensor> = ws.iter().map(|w| g.backend.upload_weight(w).unwrap()).collect();
                // Above M = 4 the norm output is the GEMM's input (bf16-rounded on CUDA's tensor cores).
                let tensor_cores = matches!(&g.backend, Backend::Cuda(cb) if cb.bf16_gemm()) && dtype == DType::BF16 && m > 4;
                let normed = cpu().rms_norm(&x, &nw, 1e-5).unwrap();
                let normed = if tensor_cores { normed.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap() } else { normed };
                let (xg, nwg) = (up(&g, &x), up(&g, &nw));
                let want = cpu().linear_many(&normed, &ws.iter().collect::<Vec<_>>()).unwrap();
                let got = g.backend.rms_norm_linear_many(&xg, &nwg, 1e-5, &wsg.iter().collect::<Vec<_>>()).unwrap();
                assert_eq!(got.len(), 3);
                for (i, (gt, wt)) in got.iter().zip(&want).enumerate() {
                    same(&format!("rms_norm_linear_many {m}×{k} {dtype} #{i}"), &g, gt, wt, tol_k(&g, k));
                }
                let (gate, upw) = (&ws[0], &r.tensor(&[33, k]).to_dtype(dtype).unwrap());
                let gu = cpu().linear_many(&normed, &[gate, upw]).unwrap();
                let want = cpu().silu_mul(&gu[0], &gu[1]).unwrap();
                let upg = g.backend.upload_weight(upw).unwrap();
                let got = g.backend.rms_norm_swiglu(&xg, &nwg, 1e-5, &wsg[0], &upg).unwrap();
                same(&format!("rms_norm_swiglu {m}×{k} {dtype}"), &g, &got, &want, tol_k(&g, k));
                // The fused GEMVs' other builds on wgpu: the plain fallback (on adapters whose
                // subgroup variant ran above) and the batched loads, with and without subgroups.
                if let (1, Backend::Wgpu(wb)) = (m, &g.backend) {
                    let was = wb.gemv_batched();
                    let linear_want = cpu().linear_many(&normed, &ws.iter().collect::<Vec<_>>()).unwrap();
                    for (subgroups, batched) in [(false, false), (true, true), (false, true)] {
                        wb.set_use_subgroups(subgroups);
                        wb.set_gemv_batched(batched);
                        let build = format!("{}{}", if subgroups { "" } else { " plain" }, if batched { " batched" } else { "" });
                        let got = g.backend.rms_norm_swiglu(&xg, &nwg, 1e-5, &wsg[0], &upg).unwrap();
                        same(&format!("rms_norm_swiglu {m}×{k} {dtype}{build}"), &g, &got, &want, tol_k(&g, k));
                        let got = g.backend.rms_norm_linear_many(&xg, &nwg, 1e-5, &wsg.iter().collect::<Vec<_>>()).unwrap();
                        for (i, (gt, wt)) in got.iter().zip(&linear_want).enumerate() {
                            same(&format!("rms_norm_linear_many {m}×{k} {dtype} #{i}{build}"), &g, gt, wt, tol_k(&g, k));
                        }
                    }
                    wb.set_use_subgroups(true);
                    wb.set_gemv_batched(was);
                }
            }
        }
        let x = r.tensor(&[1, 16]);
        assert!(g.backend.rms_norm_swiglu(&up(&g, &x), &up(&g, &r.tensor(&[16])), 1e-5, &up(&g, &r.tensor(&[8, 16])), &up(&g, &r.tensor(&[9, 16]))).is_err(), "gate and up of different shapes");
        assert!(g.backend.rms_norm_linear_many(&up(&g, &x), &up(&g, &r.tensor(&[15])), 1e-5, &[&up(&g, &r.tensor(&[8, 16]))]).is_err(), "norm weight of the wrong length");
    }
}

#[test]
fn batched_matmul_plain_transposed_and_shared() {
    let mut r = rng("matmul");
    for g in gpus("matmul") {
        for (batch, m, k, n) in [(vec![1usize], 1usize, 1usize, 1usize), (vec![3], 7, 5, 9), (vec![2, 3], 65, 33, 70), (vec![2], 1, 130, 64)] {
            let a = r.tensor(&[batch.clone(), vec![m, k]].concat());
            for trans in [false, true] {
                let bshape = if trans { vec![n, k] } else { vec![k, n] };
                for shared in [false, true] {
                    let b = if shared { r.tensor(&bshape) } else { r.tensor(&[batch.clone(), bshape.clone()].concat()) };
                    let want = cpu().matmul(&a, &b, trans).unwrap();
                    let got = g.backend.matmul(&up(&g, &a), &up(&g, &b), trans).unwrap();
                    same(&format!("matmul {batch:?} {m}×{k}×{n} trans={trans} shared={shared}"), &g, &got, &want, tol_k(&g, k));
                }
            }
        }
        // An f16 right operand (a weight used through matmul), batched and shared, plain and
        // transposed; on wgpu also through the cooperative-matrix GEMM where the adapter has it.
        for (trans, shared) in [(false, true), (true, true), (false, false), (true, false)] {
            let a = r.tensor(&[2, 67, 40]);
            let bshape = if trans { vec![70, 40] } else { vec![40, 70] };
            let b = if shared { r.tensor(&bshape) } else { r.tensor(&[vec![2], bshape].concat()) }.to_dtype(DType::F16).unwrap();
            let (ag, bg) = (up(&g, &a), g.backend.upload_weight(&b).unwrap());
            let what = format!("matmul f16 b trans={trans} shared={shared}");
            same(&what, &g, &g.backend.matmul(&ag, &bg, trans).unwrap(), &cpu().matmul(&a, &b, trans).unwrap(), tol_k(&g, 40));
            if let Backend::Wgpu(wb) = &g.backend {
                if wb.has_coop_gemm() {
                    let a16 = a.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
                    let was = wb.coop_gemm();
                    wb.set_coop_gemm(true);
                    let got = g.backend.matmul(&ag, &bg, trans).unwrap();
                    wb.set_coop_gemm(was);
                    same(&format!("{what} cooperative-matrix GEMM"), &g, &got, &cpu().matmul(&a16, &b, trans).unwrap(), tol_k(&g, 40));
                }
            }
        }
    }
}

#[test]
fn layer_norm_rms_norm_and_channel_norm() {
    let mut r = rng("norms");
    for g in gpus("norms") {
        // CUDA takes rows that are whole float4s up to 1024 one warp each (4, 128, 256, 388, 1000,
        // 1024: 1, 2, 4 and 8 float4s per lane; row counts around its 8 rows per block), the
        // others one block each. wgpu: rows up to 2048 wide a subgroup each (and, with subgroups
        // off, 32 threads each, 8 rows per workgroup: 300 rows leave a partial workgroup), wider
        // ones (2049, 4100) a workgroup each.
        for (rows, d) in [(1usize, 1usize), (3, 7), (4, 256), (5, 1000), (70, 33), (13, 1024), (9, 1028), (17, 4), (3, 128), (6, 388), (300, 256), (2, 2049), (3, 4100)] {
            let x = Tensor::from_f32(r.vec(rows * d).iter().map(|v| v * 3.0 + 0.5).collect(), vec![rows, d]).unwrap();
            let (w, b) = (r.tensor(&[d]), r.tensor(&[d]));
            let (xg, wg, bg) = (up(&g, &x), up(&g, &w), up(&g, &b));
            let (ln, rms) = (cpu().layer_norm(&x, &w, &b, 1e-5).unwrap(), cpu().rms_norm(&x, &w, 1e-6).unwrap());
            same(&format!("layer_norm {rows}×{d}"), &g, &g.backend.layer_norm(&xg, &wg, &bg, 1e-5).unwrap(), &ln, g.op_tol);
            same(&format!("rms_norm {rows}×{d}"), &g, &g.backend.rms_norm(&xg, &wg, 1e-6).unwrap(), &rms, g.op_tol);
            if let Backend::Wgpu(wb) = &g.backend {
                wb.set_use_subgroups(false);
                let (got_ln, got_rms) = (g.backend.layer_norm(&xg, &wg, &bg, 1e-5).unwrap(), g.backend.rms_norm(&xg, &wg, 1e-6).unwrap());
                wb.set_use_subgroups(true);
                same(&format!("layer_norm {rows}×{d} without subgroups"), &g, &got_ln, &ln, g.op_tol);
                same(&format!("rms_norm {rows}×{d} without subgroups"), &g, &got_rms, &rms, g.op_tol);
            }
        }
        for shape in [[1usize, 1, 1, 1], [2, 5, 3, 7], [1, 32, 16, 17]] {
            let x = r.tensor(&shape);
            let (w, b) = (r.tensor(&[shape[1]]), r.tensor(&[shape[1]]));
            let want = cpu().layer_norm_channels(&x, &w, &b, 1e-6).unwrap();
            same(&format!("layer_norm_channels {shape:?}"), &g, &g.backend.layer_norm_channels(&up(&g, &x), &up(&g, &w), &up(&g, &b), 1e-6).unwrap(), &want, g.op_tol);
        }
    }
}

#[test]
fn permute_narrow_concat_pad_and_kv_writes() {
    let mut r = rng("layout");
    for g in gpus("layout") {
        let x = r.tensor(&[2, 3, 5, 7]);
        let xg = up(&g, &x);
        for dims in [[0usize, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            same(&format!("permute {dims:?}"), &g, &g.backend.permute(&xg, &dims).unwrap(), &cpu().permute(&x, &dims).unwrap(), Tol { atol: 0.0, rtol: 0.0 });
        }
        // A single element (every dim of size 1) and size-1 dims around one real dim.
        for shape in [vec![1usize, 1, 1], vec![1, 5, 1]] {
            let t = r.tensor(&shape);
            let got = g.backend.permute(&up(&g, &t), &[2, 0, 1]).unwrap();
            same(&format!("permute of {shape:?}"), &g, &got, &cpu().permute(&t, &[2, 0, 1]).unwrap(), Tol { atol: 0.0, rtol: 0.0 });
        }
        for (dim, start, len) in [(0usize, 1usize, 1usize), (1, 1, 2), (2, 0, 5), (3, 6, 1), (3, 2, 3)] {
            same(&format!("narrow dim {dim} {start}+{len}"), &g, &g.backend.narrow(&xg, dim, start, len).unwrap(), &cpu().narrow(&x, dim, start, len).unwrap(), Tol { atol: 0.0, rtol: 0.0 });
        }
        for dim in 0..4 {
            let mut shape = vec![2, 3, 5, 7];
            shape[dim] = 4;
            let y = r.tensor(&shape);
            shape[dim] = 1;
            let z = r.tensor(&shape);
            let want = cpu().concat(&[&x, &y, &z], dim).unwrap();
            same(&format!("concat dim {dim}"), &g, &g.backend.concat(&[&xg, &up(&g, &y), &up(&g, &z)], dim).unwrap(), &want, Tol { atol: 0.0, rtol: 0.0 });
        }
        // One tensor repeated (CUDA: one launch when the leading dims are 1), odd and float4 sizes.
        for shape in [vec![1usize, 7, 3], vec![1, 4, 8], vec![2, 3, 4]] {
            let t = r.tensor(&shape);
            let tg = up(&g, &t);
            for dim in 0..shape.len() {
                let want = cpu().concat(&[&t; 5], dim).unwrap();
                same(&format!("concat of one {shape:?} ×5 along {dim}"), &g, &g.backend.concat(&[&tg; 5], dim).unwrap(), &want, Tol { atol: 0.0, rtol: 0.0 });
            }
        }
        for (t, b, l, rt) in [(0usize, 0usize, 0usize, 0usize), (1, 2, 3, 0), (0, 3, 0, 5)] {
            same(&format!("pad2d {t},{b},{l},{rt}"), &g, &g.backend.pad2d(&xg, t, b, l, rt).unwrap(), &cpu().pad2d(&x, t, b, l, rt).unwrap(), Tol { atol: 0.0, rtol: 0.0 });
        }
        // i32 tensors (the superpixel stats rows) move as bits.
        let ints: Vec<i32> = (0..2 * 3 * 5).map(|_| r.next_u64() as i32).collect();
        let it = Tensor::from_i32(ints, vec![2, 3, 5]).unwrap();
        let itg = up(&g, &it);
        let host = |t: &Tensor| g.backend.to_host(t).unwrap().as_i32().unwrap().to_vec();
        assert_eq!(host(&g.backend.narrow(&itg, 1, 1, 2).unwrap()), cpu().narrow(&it, 1, 1, 2).unwrap().as_i32().unwrap(), "i32 narrow on {}", g.backend.name());
        assert_eq!(host(&g.backend.concat(&[&itg, &itg], 0).unwrap()), cpu().concat(&[&it, &it], 0).unwrap().as_i32().unwrap(), "i32 concat on {}", g.backend.name());
        assert!(g.backend.concat(&[&itg, &xg], 0).is_err(), "concat of i32 and f32 must be an error");
        // KV cache: prefill 5 positions, then decode 2 single steps.
        let mut cache_cpu = Tensor::zeros(vec![1, 2, 9, 4]);
        let mut cache_gpu = up(&g, &cache_cpu);
        for (pos, n) in [(0usize, 5usize), (5, 1), (6, 1)] {
            let new = r.tensor(&[1, 2, n, 4]);
            cpu().write_kv(&mut cache_cpu, &new, pos).unwrap();
            g.backend.write_kv(&mut cache_gpu, &up(&g, &new), pos).unwrap();
        }
        same("write_kv", &g, &cache_gpu, &cache_cpu, Tol { atol: 0.0, rtol: 0.0 });
        assert!(g.backend.write_kv(&mut cache_gpu, &up(&g, &r.tensor(&[1, 2, 3, 4])), 7).is_err(), "a write past the cache must be an error");
    }
}

#[test]
fn embedding_gathers_f32_and_half_tables() {
    let mut r = rng("embedding");
    for g in gpus("embedding") {
        for d in [1usize, 7, 64] {
            let table = r.tensor(&[11, d]);
            let ids = [0u32, 10, 3, 3, 7];
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let t = table.to_dtype(dtype).unwrap();
                let want = cpu().embedding(&t, &ids).unwrap();
                same(&format!("embedding d={d} {dtype}"), &g, &g.backend.embedding(&g.backend.upload_weight(&t).unwrap(), &ids).unwrap(), &want, Tol { atol: 0.0, rtol: 0.0 });
            }
            assert!(g.backend.embedding(&up(&g, &table), &[11]).is_err(), "an id past the vocabulary must be an error");
        }
    }
}

#[test]
fn conv2d_for_every_weight_dtype() {
    let mut r = rng("conv");
    for g in gpus("conv") {
        // (batch, cin, h, w, cout, k, stride, padding): patch embeddings, SAM's neck 3×3, the
        // mask-downscaling stride-2 convs, 1×1.
        for (b, cin, h, w, cout, k, stride, pad) in [(1usize, 3usize, 16usize, 16usize, 8usize, 4usize, 4usize, 0usize), (2, 5, 9, 7, 6, 3, 1, 1), (1, 4, 10, 10, 3, 2, 2, 0), (1, 7, 5, 6, 9, 1, 1, 0), (1, 2, 6, 5, 4, 3, 2, 2)] {
            let x = r.tensor(&[b, cin, h, w]);
            for dtype in [DType::F32, DType::F16] {
                let wt = r.tensor(&[cout, cin, k, k]).to_dtype(dtype).unwrap();
                let bias = r.tensor(&[cout]);
                for with_bias in [true, false] {
                    let bias_cpu = with_bias.then_some(&bias);
                    let want = cpu().conv2d(&x, &wt, bias_cpu, stride, pad).unwrap();
                    let bg = up(&g, &bias);
                    let got = g.backend.conv2d(&up(&g, &x), &g.backend.upload_weight(&wt).unwrap(), with_bias.then_some(&bg), stride, pad).unwrap();
                    same(&format!("conv2d b{b} {cin}→{cout} {h}×{w} k{k} s{stride} p{pad} {dtype} bias={with_bias}"), &g, &got, &want, tol_k(&g, cin * k * k));
                }
            }
        }
    }
}

/// The fused upscaler tail: SAM's sizes and small ones take the CUDA kernel and the WGSL shader
/// (grids wider than one CUDA block's 128 threads, one mask, up to 8); sizes a fused path does
/// not take go through the composed ops (CUDA: C1 not a multiple of 4, w2 over its shared
/// memory; both: C1 > 64, more than 8 masks). On CUDA, SAM's sizes (C1 64, C2 32, M ≤ 8) take
/// the tensor-core kernel by default (f16 GEMM operands, checked against a CPU reference that
/// rounds the same operands; 4E² rows from 4 to 324: partial 64-row tiles and 256-row blocks),
/// and the f32 CUDA-core kernel when switched off.
#[test]
fn upscale_masks_fused_and_composed() {
    let mut r = rng("upscale_masks");
    for g in gpus("upscale_masks") {
        let shapes = [(2usize, 4usize, 8usize, 4usize, 3usize), (2, 5, 64, 32, 3), (1, 70, 8, 4, 1), (1, 3, 4, 3, 8), (1, 3, 6, 3, 1), (1, 2, 64, 64, 2), (1, 2, 68, 2, 1), (2, 2, 4, 2, 9), (1, 1, 64, 32, 1), (2, 9, 64, 32, 8), (3, 8, 64, 32, 4)];
        for (p, e, c1, c2, m) in shapes {
            let y = r.tensor(&[p, e, e, 4 * c1]);
            let (lw, lb) = (r.tensor(&[c1]), r.tensor(&[c1]));
            let (w2, b2, hyper) = (r.tensor(&[4 * c2, c1]), r.tensor(&[c2]), r.tensor(&[p, m, c2]));
            let want = cpu().upscale_masks(&y, (&lw, &lb, 1e-6), &w2, &b2, &hyper).unwrap();
            let args = (up(&g, &y), up(&g, &lw), up(&g, &lb), up(&g, &w2), up(&g, &b2), up(&g, &hyper));
            let run = || g.backend.upscale_masks(&args.0, (&args.1, &args.2, 1e-6), &args.3, &args.4, &args.5).unwrap();
            let what = format!("upscale_masks P{p} E{e} C1 {c1} C2 {c2} M{m}");
            match &g.backend {
                Backend::Cuda(cb) if cb.mma_upscale() && c1 == 64 && c2 == 32 && m <= 8 => {
                    let rounded = upscale_masks_f16_operands(&y, &lw, &lb, &w2, &b2, &hyper);
                    same(&format!("{what} tensor cores"), &g, &run(), &rounded, Tol { atol: 2e-3, rtol: 2e-3 });
                    cb.set_mma_upscale(false);
                    let got = run();
                    cb.set_mma_upscale(true);
                    same(&format!("{what} CUDA cores"), &g, &got, &want, tol_k(&g, c1 * c2));
                }
                _ => same(&what, &g, &run(), &want, tol_k(&g, c1 * c2)),
            }
        }
    }
}

#[test]
fn scatter_mean_pool_is_the_coverage_weighted_mean() {
    let mut r = rng("scatter_pool");
    for g in gpus("scatter_pool") {
        // Sparse: each superpixel covers about one patch in 32, as SVP's ~40 regions of 576
        // patches do (the kernels skip the rest); P = 2100 spans more than one of wgpu's
        // 1024-weight chunks.
        for (s, p, c, sparse) in [(1usize, 1usize, 1usize, false), (3, 10, 7, false), (2, 9, 33, false), (40, 576, 300, false), (40, 576, 70, true), (3, 2100, 40, false), (2, 2100, 9, true), (0, 5, 4, false)] {
            // Row-normalised non-negative coverage, as the projector builds it.
            let mut w: Vec<f32> = r.vec(s * p).iter().map(|v| v.abs()).collect();
            if sparse {
                w.iter_mut().for_each(|v| *v = if r.uniform() < 1.0 / 32.0 { *v + 0.1 } else { 0.0 });
            }
            for row in w.chunks_mut(p.max(1)) {
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum.max(1e-6));
            }
            let w = Tensor::from_f32(w, vec![s, p]).unwrap();
            let (f, pos) = (r.tensor(&[p, c]), r.tensor(&[p, c]));
            let want = cpu().scatter_mean_pool(&w, &f, &pos).unwrap();
            let (wg, fg, pg) = (up(&g, &w), up(&g, &f), up(&g, &pos));
            let got = g.backend.scatter_mean_pool(&wg, &fg, &pg).unwrap();
            same(&format!("scatter_mean_pool {s}×{p}×{c}"), &g, &got, &want, g.op_tol);
            // Deterministic: a second run is bit-identical.
            let again = g.backend.scatter_mean_pool(&wg, &fg, &pg).unwrap();
            assert_eq!(g.backend.to_vec_f32(&again).unwrap(), g.backend.to_vec_f32(&got).unwrap(), "scatter_mean_pool {s}×{p}×{c} is not deterministic");
        }
    }
}

#[test]
fn mask_stats_match_the_cpu_exactly() {
    let mut r = rng("mask_stats");
    for g in gpus("mask_stats") {
        // (planes, H, W, rect [y0, x0, h, w]): SAM's 256² planes with a crop, widths around the
        // 32-bit words, a single cell, and more planes than one grid dimension holds.
        for (planes, ph, pw, rect) in [(6usize, 256usize, 256usize, [0usize, 0usize, 256usize, 192usize]), (3, 40, 70, [3, 5, 30, 65]), (2, 9, 33, [8, 32, 1, 1]), (4, 17, 64, [0, 0, 17, 64]), (70_000, 2, 3, [0, 1, 2, 2])] {
            // Values on a coarse lattice in [−3, 3] so many sit exactly on 0 and ±1 (the
            // thresholds), plus NaN and ±∞; some planes are entirely negative (empty masks).
            let mut v: Vec<f32> = (0..planes * ph * pw).map(|_| (r.uniform() * 6.0).round() / 2.0).collect();
            for plane in v.chunks_mut(ph * pw).step_by(3) {
                plane.iter_mut().for_each(|x| *x = -x.abs() - 0.5);
            }
            v[1] = f32::NAN;
            v[2] = f32::INFINITY;
            v[4] = f32::NEG_INFINITY;
            let t = Tensor::from_f32(v, vec![planes, ph, pw]).unwrap();
            for offset in [1.0f32, 0.0] {
                let want = cpu().mask_stats(&t, rect, offset).unwrap();
                let got = g.backend.mask_stats(&up(&g, &t), rect, offset).unwrap();
                assert_eq!(got.shape(), want.shape());
                let got = g.backend.to_host(&got).unwrap();
                assert!(got.as_i32().unwrap() == want.as_i32().unwrap(), "mask_stats {planes}×{ph}×{pw} rect {rect:?} offset {offset} on {}: differs from the CPU", g.backend.name());
            }
        }
        let t = up(&g, &r.tensor(&[2, 8, 8]));
        assert!(g.backend.mask_stats(&t, [0, 0, 9, 1], 1.0).is_err(), "a rectangle outside the plane must be an error");
    }
}

/// Random masks over an `h × w` rectangle: each plane the union of 1–3 random rectangles, some
/// small and some nearly the whole view, so boxes both clash and nest. Returns the CPU's
/// `mask_stats` rows.
fn random_mask_rows(r: &mut crate::common::Rng, planes: usize, h: usize, w: usize) -> Tensor {
    let mut v = vec![-1f32; planes * h * w];
    let mut pick = |n: usize| (r.next_u64() % n as u64) as usize;
    for plane in v.chunks_mut(h * w) {
        for _ in 0..1 + pick(3) {
            let (x0, y0) = (pick(w), pick(h));
            let (x1, y1) = ((x0 + 1 + pick(w)).min(w), (y0 + 1 + pick(h)).min(h));
            for y in y0..y1 {
                plane[y * w + x0..y * w + x1].fill(1.0);
            }
        }
    }
    cpu().mask_stats(&Tensor::from_f32(v, vec![planes, h, w]).unwrap(), [0, 0, h, w], 0.5).unwrap()
}

#[test]
fn mask_select_and_paint_match_the_cpu_exactly() {
    use visword::backend::MaskCandidate;
    let mut r = rng("mask_select");
    for g in gpus("mask_select") {
        // (planes, h, w): SAM's largest view (the kernels' whole bitmap), ragged widths, one
        // cell, and a view too large for the kernels' workgroup bitmap (the host fallback).
        for (planes, h, w) in [(700usize, 256usize, 256usize), (300, 37, 70), (5, 1, 1), (40, 300, 300)] {
            let stats = random_mask_rows(&mut r, planes, h, w);
            let rows = stats.as_i32().unwrap();
            let row_len = stats.dim(1);
            // Candidates in a shuffled visiting order; one in three a whole-object mask.
            let mut cands: Vec<MaskCandidate> = (0..planes)
                .map(|p| {
                    let head = &rows[p * row_len..];
                    let bbox = [head[3] as usize, head[4] as usize, head[5] as usize, head[6] as usize];
                    MaskCandidate { plane: p, whole: p % 3 == 0, area: head[0] as u32, bbox }
                })
                .collect();
            for i in (1..cands.len()).rev() {
                cands.swap(i, (r.next_u64() % (i as u64 + 1)) as usize);
            }
            let sg = up(&g, &stats);
            // 1000: nothing clashes, so more survivors than a workgroup has threads.
            for (nms, overlap) in [(700u32, 300u32), (1000, 300), (0, 1000), (500, 0), (1000, 1000)] {
                let want = cpu().mask_select(&stats, h, &cands, nms, overlap).unwrap();
                let got = g.backend.mask_select(&sg, h, &cands, nms, overlap).unwrap();
                assert!(got == want, "mask_select {planes} masks over {h}×{w}, nms {nms}‰, overlap {overlap}‰ on {}: differs from the CPU", g.backend.name());
            }
            // Paint every other mask, later entries on top, regions numbered backwards.
            let masks: Vec<(usize, i32)> = cands.iter().step_by(2).enumerate().map(|(i, c)| (c.plane, 1000 - i as i32)).collect();
            for list in [&masks[..], &masks[..1], &[]] {
                let want = cpu().mask_paint(&stats, h, w, list).unwrap();
                let got = g.backend.mask_paint(&sg, h, w, list).unwrap();
                assert!(got == want, "mask_paint of {} masks over {h}×{w} on {}: differs from the CPU", list.len(), g.backend.name());
            }
        }
        let stats = up(&g, &random_mask_rows(&mut r, 2, 4, 4));
        let bad = MaskCandidate { plane: 2, whole: true, area: 1, bbox: [0, 0, 0, 0] };
        assert!(g.backend.mask_select(&stats, 4, &[bad], 700, 300).is_err(), "a plane past the rows must be an error");
        assert!(g.backend.mask_paint(&stats, 4, 33, &[]).is_err(), "a width past the bitmap must be an error");
    }
}

/// SAM's two-way ops on factored weights against the CPU: SAM's sizes (N = 4096 image tokens
/// of 256 channels, 8 heads × 7 tokens, Dy 16) with shared and per-prompt image tokens, and
/// small ragged ones (size 1, N and C off every block size, one group, R over 256 which a fused
/// kernel may hand to the composed ops). Each also as a half-precision caller
/// (`TwoWayParams::low_precision`: CUDA's TF32 kernels), against the CPU on operands rounded to
/// TF32 as the tensor cores take them, at the low-precision tolerance.
#[test]
fn two_way_update_and_pool() {
    let mut r = rng("two_way");
    for g in gpus("two_way") {
        // (B, Bx, N, C, groups, T, Dy)
        let shapes = [(1usize, 1usize, 1usize, 1usize, 1usize, 1usize, 1usize), (2, 2, 37, 32, 2, 7, 8), (3, 1, 70, 16, 8, 3, 2), (2, 2, 4096, 256, 8, 7, 16), (3, 1, 4096, 256, 8, 7, 16), (1, 1, 33, 40, 1, 5, 3), (2, 2, 20, 24, 2, 150, 4), (3, 3, 70, 37, 3, 5, 5)];
        for (b, bx, n, c, groups, t, dy) in shapes {
            let rows = groups * t;
            let TwoWayInputs { x, y, ax, ay, u, bias, ln_w: lw, ln_b: lb } = TwoWayInputs::new(&mut r, (b, bx, n, c, groups, t, dy));
            for low_precision in [false, true] {
                let (x, ax, u) = if low_precision { (tf32_round(&x), tf32_round(&ax), tf32_round(&u)) } else { (x.clone(), ax.clone(), u.clone()) };
                let p = TwoWayParams { low_precision, ..TwoWayParams::new(groups) };
                let tol = |k: usize| if low_precision { LOW_PRECISION_TOL } else { tol_k(&g, k) };
                let what = format!("B{b} Bx{bx} N{n} C{c} G{groups} T{t} Dy{dy} low_precision {low_precision}");
                let want = cpu().two_way_update(&x, &y, &ax, &ay, &u, &bias, (&lw, &lb, 1e-6), p).unwrap();
                let a = (up(&g, &x), up(&g, &y), up(&g, &ax), up(&g, &ay), up(&g, &u), up(&g, &bias), up(&g, &lw), up(&g, &lb));
                let got = g.backend.two_way_update(&a.0, &a.1, &a.2, &a.3, &a.4, &a.5, (&a.6, &a.7, 1e-6), p).unwrap();
                same(&format!("two_way_update {what}"), &g, &got, &want, tol(c.max(rows)));
                let want = cpu().two_way_pool(&x, &y, &ax, &ay, p).unwrap();
                let got = g.backend.two_way_pool(&a.0, &a.1, &a.2, &a.3, p).unwrap();
                same(&format!("two_way_pool {what}"), &g, &got, &want, tol(c.max(n)));
            }
        }
    }
}

/// SAM's window partition and its inverse on every GPU backend against the CPU's composition
/// (pads, permute, narrows): grids that need padding and ones that do not, channel counts with
/// and without whole float4s, and the round trip.
#[test]
fn window_partition_and_back() {
    let mut r = rng("windows");
    for g in gpus("windows") {
        for (side, w, d) in [(10usize, 4usize, 8usize), (14, 14, 6), (9, 4, 5), (3, 8, 4)] {
            let x = r.tensor(&[side, side, d]);
            let want = cpu().window_partition(&x, w).unwrap();
            let got = g.backend.window_partition(&up(&g, &x), w).unwrap();
            assert_eq!(got.shape(), want.shape());
            assert_eq!(g.backend.to_vec_f32(&got).unwrap(), want.to_f32_vec().unwrap(), "window_partition G {side} w {w} D {d} on {}", g.backend.name());
            let back = g.backend.window_unpartition(&got, w, side).unwrap();
            assert_eq!(g.backend.to_vec_f32(&back).unwrap(), x.to_f32_vec().unwrap(), "window_unpartition G {side} w {w} D {d} on {}", g.backend.name());
        }
        assert!(g.backend.window_unpartition(&up(&g, &r.tensor(&[4, 9, 2])), 2, 4).is_err());
    }
}

/// `layer_norm_mlp` (x + fc2(act(fc1(LN(x))))) on every GPU backend against the CPU. CUDA on
/// bf16 weights rounds the norm and the hidden layer to bf16 before each GEMM, on the fused
/// path (the one-launch kernel off, so small sizes take it too: the norm and the epilogue
/// writing bf16, cuBLASLt adding the residual) and on the composed one alike: the reference
/// takes the same roundings. Rows of whole float4s (the warp-per-row norm) and not (the
/// block-per-row one); f32 weights, which no GPU rounds.
#[test]
fn layer_norm_mlp_against_the_cpu() {
    let mut r = rng("layer_norm_mlp");
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    for g in gpus("layer_norm_mlp") {
        for (rows, d, h, act, dtype) in [(70usize, 64usize, 256usize, Activation::QuickGelu, DType::BF16), (9, 36, 100, Activation::Gelu, DType::BF16), (6, 30, 40, Activation::Gelu, DType::BF16), (12, 32, 64, Activation::Gelu, DType::F32)] {
            let x = r.tensor(&[1, rows, d]);
            let (lw, lb) = (r.tensor(&[d]), r.tensor(&[d]));
            let s1 = 1.0 / (d as f32).sqrt();
            let fc1 = Tensor::from_f32(r.vec(h * d).iter().map(|v| v * s1).collect(), vec![h, d]).unwrap().to_dtype(dtype).unwrap();
            let fc2 = r.tensor(&[d, h]).to_dtype(dtype).unwrap();
            let (b1, b2) = (r.tensor(&[h]), r.tensor(&[d]));
            let bf16_path = matches!(&g.backend, Backend::Cuda(cb) if cb.bf16_gemm()) && dtype == DType::BF16;
            // The reference: the CPU's ops, with CUDA's roundings where it takes them.
            let c = cpu();
            let n = c.layer_norm(&x, &lw, &lb, 1e-5).unwrap();
            let n = if bf16_path { round(&n) } else { n };
            let hid = c.linear(&n, &fc1, Some(&b1), act, None).unwrap();
            let hid = if bf16_path { round(&hid) } else { hid };
            let want = c.linear(&hid, &fc2, Some(&b2), Activation::None, Some(&x)).unwrap();
            let (xg, lwg, lbg, b1g, b2g) = (up(&g, &x), up(&g, &lw), up(&g, &lb), up(&g, &b1), up(&g, &b2));
            let (f1g, f2g) = (g.backend.upload_weight(&fc1).unwrap(), g.backend.upload_weight(&fc2).unwrap());
            let mlp = visword::Mlp { fc1: &f1g, b1: Some(&b1g), act, fc2: &f2g, b2: Some(&b2g) };
            let modes: &[FusedGemm] = if matches!(g.backend, Backend::Cuda(_)) { &[FusedGemm::Off, FusedGemm::Small] } else { &[FusedGemm::Small] };
            for &mode in modes {
                if let Backend::Cuda(cb) = &g.backend {
                    cb.set_fused_gemm(mode);
                }
                let got = g.backend.layer_norm_mlp(&xg, (&lwg, &lbg, 1e-5), mlp);
                if let Backend::Cuda(cb) = &g.backend {
                    cb.set_fused_gemm(FusedGemm::Small);
                }
                let got = got.unwrap();
                assert_eq!(got.shape(), x.shape());
                // Rounding the hidden layer can flip a bf16 ulp of it where the two sides'
                // f32 sums differ in the last bit: allow one such ulp through fc2 (2⁻⁸ of Σ|w2|).
                let tol = if bf16_path { Tol { atol: tol_k(&g, h).atol + 4e-3, rtol: 4e-3 } } else { tol_k(&g, h) };
                same(&format!("layer_norm_mlp {rows}×{d}→{h} {act:?} {dtype} ({mode:?})"), &g, &got, &want, tol);
            }
        }
        let bad = r.tensor(&[3, 7]);
        let w = up(&g, &r.tensor(&[4, 8]));
        assert!(g.backend.layer_norm_mlp(&up(&g, &bad), (&up(&g, &r.tensor(&[7])), &up(&g, &r.tensor(&[7])), 1e-5), visword::Mlp { fc1: &w, b1: None, act: Activation::Gelu, fc2: &w, b2: None }).is_err());
    }
}
