//! Shared test support: the tolerance policy, fixture loading, a seeded RNG; scratch directories
//! in `files`, the vision-encoder checks in `vision`.
//!
//! Tolerance policy: |x − ref| ≤ atol + rtol·|ref| elementwise. f32 ops: 1e-5 / 1e-5; whole f32
//! models against transformers: 1e-4 / 1e-3 (reduction order differs over many layers); bf16
//! weights: ~1e-2 relative; attention for half-precision callers (CUDA's tensor cores, f16
//! operands) against the CPU on the same f16-rounded operands: 2e-3 / 2e-3 (tests/gpu/
//! attention.rs). On failure the report names the count, max and mean error and the worst
//! index, so a failing run says where to look.

#![allow(dead_code)]

pub mod backends;
pub mod files;
pub mod vision;

use std::path::{Path, PathBuf};

use visword::{Tensor, Weights};

/// tests/fixtures of the source tree, or `VISWORD_FIXTURES` where the test binary runs away from
/// the tree it was built in (scripts/gpu-check.sh on a machine without a Rust toolchain).
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("VISWORD_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures"),
    }
}

/// Open `tests/fixtures/<name>` as weights (file or directory).
pub fn fixture(name: &str) -> Weights {
    let p = fixtures_dir().join(name);
    Weights::open(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// Reference tensor `name` from a fixture file, as f32.
pub fn ref_f32(w: &Weights, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = w.get(name).unwrap_or_else(|e| panic!("reference tensor {name}: {e}"));
    (t.to_f32_vec().unwrap(), t.shape().to_vec())
}

#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

pub const F32_OP: Tol = Tol { atol: 1e-5, rtol: 1e-5 };
pub const F32_MODEL: Tol = Tol { atol: 1e-4, rtol: 1e-3 };

/// Error summary of `got` against `want`.
pub struct Report {
    pub n: usize,
    pub bad: usize,
    pub max_abs: f32,
    pub mean_abs: f32,
    pub worst: usize,
}

pub fn compare(got: &[f32], want: &[f32], tol: Tol) -> Report {
    assert_eq!(got.len(), want.len(), "length mismatch: got {} want {}", got.len(), want.len());
    let mut r = Report { n: got.len(), bad: 0, max_abs: 0.0, mean_abs: 0.0, worst: 0 };
    let mut sum = 0f64;
    let mut worst_excess = f32::NEG_INFINITY;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        let lim = tol.atol + tol.rtol * w.abs();
        let d = if g.is_nan() != w.is_nan() { f32::INFINITY } else if g.is_nan() { 0.0 } else { d };
        sum += d as f64;
        if d > r.max_abs {
            r.max_abs = d;
        }
        if d > lim {
            r.bad += 1;
        }
        if d - lim > worst_excess {
            worst_excess = d - lim;
            r.worst = i;
        }
    }
    r.mean_abs = (sum / got.len().max(1) as f64) as f32;
    r
}

/// Assert `got` matches `want` under `tol`, printing a report on failure.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: Tol) {
    let r = compare(got, want, tol);
    if r.bad > 0 {
        panic!(
            "{what}: {} of {} elements out of tolerance (atol {}, rtol {}); max |err| {:.3e}, mean |err| {:.3e}; worst at [{}]: got {} want {}",
            r.bad, r.n, tol.atol, tol.rtol, r.max_abs, r.mean_abs, r.worst, got[r.worst], want[r.worst]
        );
    }
    eprintln!("{what}: ok ({} elements, max |err| {:.3e}, mean {:.3e})", r.n, r.max_abs, r.mean_abs);
}

/// Assert a tensor matches a reference tensor (shape and values).
#[track_caller]
pub fn assert_tensor_close(what: &str, got: &Tensor, want: &Tensor, tol: Tol) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_close(what, &got.to_f32_vec().unwrap(), &want.to_f32_vec().unwrap(), tol);
}

/// Attention for half-precision callers against the CPU on f16-rounded operands (the policy
/// above).
pub const LOW_PRECISION_TOL: Tol = Tol { atol: 2e-3, rtol: 2e-3 };

/// `x` rounded to f16 and back, after multiplying by `s` (then divided by it again): operands
/// as a kernel with f16 operands sees them.
pub fn f16_round(cpu: &visword::Backend, x: &Tensor, s: f32) -> Tensor {
    let r = cpu.affine(x, s, 0.0).unwrap().to_dtype(visword::DType::F16).unwrap().to_dtype(visword::DType::F32).unwrap();
    cpu.affine(&r, 1.0 / s, 0.0).unwrap()
}

/// `x` rounded to TF32 (10 mantissa bits, nearest with ties away from zero, as cvt.rna does):
/// operands as a kernel on TF32 tensor cores sees them.
pub fn tf32_round(x: &Tensor) -> Tensor {
    let v = x.to_f32_vec().unwrap().iter().map(|&f| if f.is_finite() { f32::from_bits((f.to_bits() + 0x1000) & !0x1fff) } else { f }).collect();
    Tensor::from_f32(v, x.shape().to_vec()).unwrap()
}

/// `upscale_masks` on the CPU with the CUDA tensor-core kernel's rounding: the features after
/// LayerNorm + GELU and w2 rounded to f16 before their product, everything else in f32 (the
/// composed ops of src/backend/upscale.rs).
pub fn upscale_masks_f16_operands(y: &Tensor, lw: &Tensor, lb: &Tensor, w2: &Tensor, b2: &Tensor, hyper: &Tensor) -> Tensor {
    use visword::{Activation, DType};
    let (c, round) = (visword::Backend::cpu(), |t: &Tensor| t.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap());
    let (p, e, c1, c2, m) = (y.dim(0), y.dim(1), w2.dim(1), b2.dim(0), hyper.dim(1));
    let g = c.activate(&c.layer_norm(&y.reshape(&[p * e * e * 4, c1]).unwrap(), lw, lb, 1e-6).unwrap(), Activation::Gelu).unwrap();
    let bias4 = c.concat(&[b2, b2, b2, b2], 0).unwrap();
    let z = c.linear(&round(&g), &round(w2), Some(&bias4), Activation::Gelu, None).unwrap().reshape(&[p, e, e, 2, 2, 2, 2, c2]).unwrap();
    let z = c.permute(&z, &[0, 7, 1, 3, 5, 2, 4, 6]).unwrap().reshape(&[p, c2, 16 * e * e]).unwrap();
    c.matmul(hyper, &z, false).unwrap().reshape(&[p, m, 4 * e, 4 * e]).unwrap()
}

/// A small seeded RNG (SplitMix64) for test inputs; print the seed in the test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        Tensor::from_f32(self.vec(shape.iter().product()), shape.to_vec()).unwrap()
    }
}

/// stderr without the `notice:` lines `--backend auto` prints when it falls back to the CPU, so
/// tests can check that an error is the only other thing said.
pub fn without_notices(stderr: &str) -> String {
    stderr.lines().filter(|l| !l.starts_with("notice: ")).map(|l| format!("{l}\n")).collect()
}

/// Seeded operands of SAM's two-way ops (`Backend::two_way_update` / `two_way_pool`) for
/// (B, Bx, N, C, groups, T, Dy): scores of a few units, as SAM's scaled projections give, so the
/// softmax is neither flat nor one-hot.
pub struct TwoWayInputs {
    pub x: Tensor,
    pub y: Tensor,
    pub ax: Tensor,
    pub ay: Tensor,
    pub u: Tensor,
    pub bias: Tensor,
    pub ln_w: Tensor,
    pub ln_b: Tensor,
}

impl TwoWayInputs {
    pub fn new(r: &mut Rng, (b, bx, n, c, groups, t, dy): (usize, usize, usize, usize, usize, usize, usize)) -> TwoWayInputs {
        let rows = groups * t;
        let x = r.tensor(&[bx, n, c]);
        let y = r.tensor(&[1, n, groups * dy]);
        let scale = 2.0 / (c as f32).sqrt();
        let ax = Tensor::from_f32(r.vec(b * rows * c).iter().map(|v| v * scale).collect(), vec![b, rows, c]).unwrap();
        let (ay, u) = (r.tensor(&[b, rows, dy]), r.tensor(&[b, rows, c]));
        let (bias, ln_w, ln_b) = (r.tensor(&[c]), r.tensor(&[c]), r.tensor(&[c]));
        TwoWayInputs { x, y, ax, ay, u, bias, ln_w, ln_b }
    }
}
