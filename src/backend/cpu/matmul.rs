//! GEMM and GEMV.
//!
//! * 4 < M ≤ `GEMM_NT_MAX_M` (prefill) on AVX-512: `gemm_nt`, dot products along k that read
//!   the weight rows as stored (no packing); fused Q/K/V and gate/up run as one parallel region.
//! * Larger M, or no AVX-512: the `gemm` crate's packed kernels on f32, with the weight rows
//!   split across threads; half weights are widened 256 rows at a time into a per-thread buffer.
//! * M ≤ `GEMV_MAX_M` (decode): our own GEMV that streams each weight row once, in its stored
//!   dtype, with AVX-512 (or AVX2/FMA) dot products, software prefetch, and rows split across
//!   threads. Napkin math: a decode step of SmolLM2-135M reads 0.54 GB of f32 weights (0.27 GB
//!   bf16); at the ~24 GB/s this class of machine copies, that is a ~22 ms (~11 ms) floor, so the
//!   kernel must be bandwidth-bound, not compute-bound.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{check_f32, gemm_nt};
use crate::backend::Activation;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// GEMVs over at most this many weights run on the calling thread (a decode step has hundreds
/// of small ones; larger ones are split, since they stream from memory).
const GEMV_SERIAL_MAX: usize = 1 << 15;

/// Largest M that takes the GEMV path.
pub const GEMV_MAX_M: usize = 4;

/// c[m×n] (+)= a[m×k] · b[k×n], with arbitrary row/column strides for a and b; c row-major.
/// Multi-threaded; call `sgemm_serial` from inside a parallel region.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, c: &mut [f32], accumulate: bool) {
    gemm_impl(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, accumulate, gemm::Parallelism::Rayon(rayon::current_num_threads()))
}

#[allow(clippy::too_many_arguments)]
pub fn sgemm_serial(m: usize, n: usize, k: usize, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, c: &mut [f32], accumulate: bool) {
    gemm_impl(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, accumulate, gemm::Parallelism::None)
}

#[allow(clippy::too_many_arguments)]
fn gemm_impl(m: usize, n: usize, k: usize, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, c: &mut [f32], accumulate: bool, par: gemm::Parallelism) {
    if m == 0 || n == 0 {
        return;
    }
    // Every index the kernel can touch must be inside the slices.
    let last = |rs: usize, cs: usize, r: usize, cc: usize| if r == 0 || cc == 0 { 0 } else { (r - 1) * rs + (cc - 1) * cs + 1 };
    assert!(last(a_rs, a_cs, m, k) <= a.len() && last(b_rs, b_cs, k, n) <= b.len() && m * n <= c.len(), "sgemm operand out of bounds");
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    // SAFETY: the assert above proves every (row, col) the kernel reads or writes lies inside
    // the given slices; c is uniquely borrowed, a and b are shared borrows that outlive the call.
    unsafe {
        gemm::gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize, accumulate,
            a.as_ptr(), a_cs as isize, a_rs as isize,
            b.as_ptr(), b_cs as isize, b_rs as isize,
            1.0, 1.0, false, false, false, par,
        );
    }
}

/// y = act(x · wᵀ + bias) + residual.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
    if w.dims() != 2 || x.dims() == 0 {
        return Err(Error::shape("linear", format!("x {:?}, weight {:?}: weight must be [N, K]", x.shape(), w.shape())));
    }
    let (n, k) = (w.dim(0), w.dim(1));
    if *x.shape().last().unwrap_or(&0) != k {
        return Err(Error::shape("linear", format!("x {:?} has last dim ≠ K = {k} of weight {:?}", x.shape(), w.shape())));
    }
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap_or(&mut 0) = n;
    if let Some(b) = bias {
        if b.numel() != n {
            return Err(Error::shape("linear", format!("bias has {} elements, expected {n}", b.numel())));
        }
    }
    if let Some(r) = residual {
        // The output's shape, or shared by its first dim ([1, ..]).
        crate::backend::shared_residual("linear", x, w, r)?;
    }
    let xs = check_f32("linear", x)?;
    let m = xs.len() / k.max(1);
    let mut out = vec![0f32; m * n];
    if m <= GEMV_MAX_M {
        match w.dtype() {
            DType::F32 => gemv(xs, m, k, w.as_f32()?, n, &mut out),
            DType::F16 => gemv(xs, m, k, w.as_f16()?, n, &mut out),
            DType::BF16 => gemv(xs, m, k, w.as_bf16()?, n, &mut out),
            dt => return Err(Error::shape("linear", format!("weight dtype {dt} is not a float type"))),
        }
    } else if use_gemm_nt(m) {
        let outs = &mut [out.as_mut_slice()];
        match w.dtype() {
            DType::F32 => gemm_nt::gemm_nt(xs, m, k, &[w.as_f32()?], &[n], outs),
            DType::F16 => gemm_nt::gemm_nt(xs, m, k, &[w.as_f16()?], &[n], outs),
            DType::BF16 => gemm_nt::gemm_nt(xs, m, k, &[w.as_bf16()?], &[n], outs),
            dt => return Err(Error::shape("linear", format!("weight dtype {dt} is not a float type"))),
        }
    } else {
        match w.dtype() {
            DType::F32 => sgemm_nt(m, n, k, xs, w.as_f32()?, &mut out),
            DType::F16 => sgemm_nt(m, n, k, xs, w.as_f16()?, &mut out),
            DType::BF16 => sgemm_nt(m, n, k, xs, w.as_bf16()?, &mut out),
            dt => return Err(Error::shape("linear", format!("weight dtype {dt} is not a float type"))),
        }
    }
    epilogue(&mut out, n, bias.map(|b| b.as_f32()).transpose()?, act, residual.map(|r| r.as_f32()).transpose()?);
    Tensor::from_f32(out, out_shape)
}

/// Rows of x up to which the unpacked `gemm_nt` kernel beats the packed one (the weight-panel
/// packing it skips costs n·k per call, the multiply m·n·k).
const GEMM_NT_MAX_M: usize = 384;

/// `VISWORD_CPU_GEMM=packed` sends every M > 4 product to the packed kernels (for A/B runs).
fn use_gemm_nt(m: usize) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    m <= GEMM_NT_MAX_M && *ON.get_or_init(|| gemm_nt::available() && std::env::var("VISWORD_CPU_GEMM").map_or(true, |v| v.trim() != "packed"))
}

/// out[m×n] = x[m×k] · w[n×k]ᵀ with the gemm crate's packed kernels (AVX-512 where present).
/// Measured on the benchmark shapes (2 threads): splitting N across threads, each running the
/// kernel serially on its own weight rows, beats letting the crate thread the whole problem
/// (128×576×576: 0.35 vs 0.61 ms; 128×576×1536: 0.86 vs 0.97 ms).
fn sgemm_nt<W: Widen>(m: usize, n: usize, k: usize, x: &[f32], w: &[W], out: &mut [f32]) {
    // Split N (weight rows) across threads, each running the packed kernel serially on its
    // slice: every thread streams only its own weights and packs A for itself. Half-precision
    // weights are widened a block of rows at a time into a per-thread buffer (never the whole
    // matrix at once).
    const WIDEN_ROWS: usize = 256;
    let threads = rayon::current_num_threads().max(1);
    let chunk = n.div_ceil(threads).next_multiple_of(16).max(16);
    let ptr = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|t| {
        let ptr = &ptr;
        let (j0, j1) = (t * chunk, ((t + 1) * chunk).min(n));
        let mut buf = Vec::new();
        let mut b0 = j0;
        while b0 < j1 {
            let b1 = if W::IS_F32 { j1 } else { (b0 + WIDEN_ROWS).min(j1) };
            let wb = W::widen(&w[b0 * k..b1 * k], &mut buf);
            // SAFETY: task t writes only columns b0..b1 ⊂ j0..j1 of every row (disjoint across
            // tasks); wb holds (b1 − b0)·k floats, x holds m·k, out holds m·n (checked by the
            // caller), so every strided access stays in bounds.
            unsafe {
                gemm::gemm(
                    m, b1 - b0, k,
                    ptr.0.add(b0), 1, n as isize, false,
                    x.as_ptr(), 1, k as isize,
                    wb.as_ptr(), k as isize, 1,
                    1.0, 1.0, false, false, false, gemm::Parallelism::None,
                );
            }
            b0 = b1;
        }
    });
}

/// Weight element types the GEMM path reads: f32 in place, halves widened into a buffer.
trait Widen: Copy + Send + Sync {
    const IS_F32: bool;
    fn widen<'a>(src: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];
}

impl Widen for f32 {
    const IS_F32: bool = true;
    fn widen<'a>(src: &'a [f32], _buf: &'a mut Vec<f32>) -> &'a [f32] {
        src
    }
}

impl Widen for f16 {
    const IS_F32: bool = false;
    fn widen<'a>(src: &'a [f16], buf: &'a mut Vec<f32>) -> &'a [f32] {
        buf.clear();
        buf.extend(src.iter().map(|v| v.to_f32()));
        buf
    }
}

impl Widen for bf16 {
    const IS_F32: bool = false;
    fn widen<'a>(src: &'a [bf16], buf: &'a mut Vec<f32>) -> &'a [f32] {
        buf.clear();
        buf.extend(src.iter().map(|v| v.to_f32()));
        buf
    }
}

/// Bias, activation, then the residual; a residual with fewer rows than `out` (one batch entry
/// shared by all) repeats.
fn epilogue(out: &mut [f32], n: usize, bias: Option<&[f32]>, act: Activation, residual: Option<&[f32]>) {
    if bias.is_none() && act == Activation::None && residual.is_none() {
        return;
    }
    let residual_rows = residual.map_or(1, |r| (r.len() / n.max(1)).max(1));
    super::for_chunks(out, n, |row, o| {
        let row = row % residual_rows;
        if let Some(b) = bias {
            o.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
        if act != Activation::None {
            super::vmath::act_slice(o, act);
        }
        if let Some(r) = residual {
            o.iter_mut().zip(&r[row * n..(row + 1) * n]).for_each(|(o, r)| *o += r);
        }
    });
}

/// A weight element type the GEMV can stream.
pub trait WeightElem: Copy + Send + Sync {
    fn dot(w: &[Self], x: &[f32]) -> f32;
}

impl WeightElem for f32 {
    fn dot(w: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx512() {
            // SAFETY: the CPU supports AVX-512F (checked at run time); slices have equal length.
            return unsafe { simd::dot_f32_512(w, x) };
        }
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2+FMA (checked at run time); slices have equal length.
            return unsafe { simd::dot_f32(w, x) };
        }
        w.iter().zip(x).map(|(a, b)| a * b).sum()
    }
}

impl WeightElem for bf16 {
    fn dot(w: &[bf16], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx512() {
            // SAFETY: as above.
            return unsafe { simd::dot_bf16_512(w, x) };
        }
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx2_fma() {
            // SAFETY: as above.
            return unsafe { simd::dot_bf16(w, x) };
        }
        w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
    }
}

impl WeightElem for f16 {
    fn dot(w: &[f16], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx512() {
            // SAFETY: as above (AVX-512F includes the 512-bit half→float conversion).
            return unsafe { simd::dot_f16_512(w, x) };
        }
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx2_fma() && std::is_x86_feature_detected!("f16c") {
            // SAFETY: as above, plus F16C checked.
            return unsafe { simd::dot_f16(w, x) };
        }
        w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
    }
}

/// out[m×n] = x[m×k] · w[n×k]ᵀ, streaming w once.
pub fn gemv<W: WeightElem>(x: &[f32], m: usize, k: usize, w: &[W], n: usize, out: &mut [f32]) {
    gemv_multi(x, m, k, &[w], &[n], out)
}

/// Several GEMVs on the same x in one parallel region (fused QKV / gate-up without copying
/// the mmap'd weights): segment s writes `out[off_s·m ..]` as an [m × n_s] block, where off_s is
/// the sum of the earlier segments' n. One region instead of three saves two pool wake-ups per
/// layer — at 576-wide decode that is a measurable share of a ~1 ms layer.
pub fn gemv_multi<W: WeightElem>(x: &[f32], m: usize, k: usize, ws: &[&[W]], ns: &[usize], out: &mut [f32]) {
    let total: usize = ns.iter().sum();
    debug_assert!(out.len() >= m * total);
    let mut starts = Vec::with_capacity(ns.len() + 1);
    starts.push(0usize);
    for n in ns {
        starts.push(starts.last().copied().unwrap_or(0) + n);
    }
    // ~64 KB of weights per task; small problems stay on the calling thread.
    let rows = (16384 / k.max(1)).clamp(1, 256);
    let tasks = total.div_ceil(rows);
    let ptr = SendPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let ptr = &ptr;
        let (lo, hi) = (t * rows, ((t + 1) * rows).min(total));
        for g in lo..hi {
            let s = starts.partition_point(|&st| st <= g) - 1;
            let (j, n) = (g - starts[s], ns[s]);
            let wr = &ws[s][j * k..(j + 1) * k];
            for i in 0..m {
                let v = W::dot(wr, &x[i * k..(i + 1) * k]);
                // SAFETY: global row g belongs to exactly one task, so (s, i, j) is written once;
                // starts[s]·m + i·n + j < total·m = the checked output length.
                unsafe { *ptr.0.add(starts[s] * m + i * n + j) = v };
            }
        }
    };
    if total * k <= GEMV_SERIAL_MAX {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// x · wᵢᵀ for several weights sharing x (no bias, no activation): one pass for M ≤ GEMV_MAX_M.
pub fn linear_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let first = ws.first().ok_or_else(|| Error::shape("linear_many", "no weights"))?;
    let k = *x.shape().last().unwrap_or(&0);
    let same = ws.iter().all(|w| w.dims() == 2 && w.dim(1) == k && w.dtype() == first.dtype());
    let xs = check_f32("linear_many", x)?;
    let m = xs.len() / k.max(1);
    let out_shape = |n: usize| {
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        shape
    };
    let ns: Vec<usize> = ws.iter().map(|w| w.dim(0)).collect();
    if same && x.dims() > 0 && m > GEMV_MAX_M && use_gemm_nt(m) {
        // One parallel region over all the weights' rows, each output its own tensor.
        let mut outs: Vec<Vec<f32>> = ns.iter().map(|&n| vec![0f32; m * n]).collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        match first.dtype() {
            DType::F32 => gemm_nt::gemm_nt(xs, m, k, &ws.iter().map(|w| w.as_f32()).collect::<Result<Vec<_>>>()?, &ns, &mut refs),
            DType::F16 => gemm_nt::gemm_nt(xs, m, k, &ws.iter().map(|w| w.as_f16()).collect::<Result<Vec<_>>>()?, &ns, &mut refs),
            DType::BF16 => gemm_nt::gemm_nt(xs, m, k, &ws.iter().map(|w| w.as_bf16()).collect::<Result<Vec<_>>>()?, &ns, &mut refs),
            dt => return Err(Error::shape("linear_many", format!("weight dtype {dt} is not a float type"))),
        }
        return outs.into_iter().zip(&ns).map(|(o, &n)| Tensor::from_f32(o, out_shape(n))).collect();
    }
    if !same || m > GEMV_MAX_M || x.dims() == 0 {
        return ws.iter().map(|w| linear(x, w, None, Activation::None, None)).collect();
    }
    let total: usize = ns.iter().sum();
    let mut out = vec![0f32; m * total];
    match first.dtype() {
        DType::F32 => gemv_multi(xs, m, k, &ws.iter().map(|w| w.as_f32()).collect::<Result<Vec<_>>>()?, &ns, &mut out),
        DType::F16 => gemv_multi(xs, m, k, &ws.iter().map(|w| w.as_f16()).collect::<Result<Vec<_>>>()?, &ns, &mut out),
        DType::BF16 => gemv_multi(xs, m, k, &ws.iter().map(|w| w.as_bf16()).collect::<Result<Vec<_>>>()?, &ns, &mut out),
        dt => return Err(Error::shape("linear_many", format!("weight dtype {dt} is not a float type"))),
    }
    let mut res = Vec::with_capacity(ws.len());
    let mut off = 0;
    for n in ns {
        res.push(Tensor::from_f32(out[off * m..(off + n) * m].to_vec(), out_shape(n))?);
        off += n;
    }
    Ok(res)
}

/// An output pointer that parallel tasks share; each writes only its own disjoint elements.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: used only to write disjoint elements from parallel tasks (see gemv and gemm_nt).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// a [.., M, K] · b [.., K, N] (or [.., N, K] when trans_b); b may be 2-D and shared.
pub fn batched_matmul(a: &Tensor, b: &Tensor, trans_b: bool) -> Result<Tensor> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() < 2 || sb.len() < 2 {
        return Err(Error::shape("matmul", format!("{sa:?} · {sb:?}: need at least 2 dims")));
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (kb, n) = if trans_b { (sb[sb.len() - 1], sb[sb.len() - 2]) } else { (sb[sb.len() - 2], sb[sb.len() - 1]) };
    let batch: usize = sa[..sa.len() - 2].iter().product();
    let shared = sb.len() == 2;
    if kb != k || (!shared && sb[..sb.len() - 2] != sa[..sa.len() - 2]) {
        return Err(Error::shape("matmul", format!("{sa:?} · {sb:?} (trans_b = {trans_b})")));
    }
    let bf;
    let bv: &[f32] = if b.dtype() == DType::F32 { check_f32("matmul", b)? } else { bf = b.to_f32_vec()?; &bf };
    let av = check_f32("matmul", a)?;
    let (b_rs, b_cs) = if trans_b { (1, k) } else { (n, 1) };
    let mut out = vec![0f32; batch * m * n];
    if shared {
        // One big GEMM: rows of all batches stacked.
        sgemm(batch * m, n, k, av, k, 1, bv, b_rs, b_cs, &mut out, false);
    } else if batch >= rayon::current_num_threads() && m * n * k < 1 << 24 {
        out.par_chunks_mut(m * n).enumerate().for_each(|(i, o)| {
            sgemm_serial(m, n, k, &av[i * m * k..][..m * k], k, 1, &bv[i * k * n..][..k * n], b_rs, b_cs, o, false)
        });
    } else {
        for (i, o) in out.chunks_mut(m * n).enumerate() {
            sgemm(m, n, k, &av[i * m * k..][..m * k], k, 1, &bv[i * k * n..][..k * n], b_rs, b_cs, o, false);
        }
    }
    let mut shape = sa[..sa.len() - 2].to_vec();
    shape.extend([m, n]);
    Tensor::from_f32(out, shape)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    const PREFETCH_BYTES: usize = 8192;

    pub fn has_avx512() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    /// 512-bit dot product: `load` widens 16 weights to f32; four accumulators (64 weights per
    /// iteration) keep enough loads in flight to stream from DRAM.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot512<W>(w: *const W, x: *const f32, n: usize, load: impl Fn(*const W) -> __m512, scalar: impl Fn(*const W) -> f32) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // Prefetch PREFETCH_BYTES ahead into L2 (T1): rows of a GEMV task are contiguous, so
        // this runs into the next row and keeps DRAM busy across row boundaries. L2 tracks more
        // misses in flight than L1, so one core streams faster this way: on a 2-core EPYC
        // (Zen 4) VM a decode-shaped GEMV went from ~20 GB/s (2 KB ahead into L1) to ~35-45.
        let ahead = PREFETCH_BYTES / std::mem::size_of::<W>();
        while i + 64 <= n {
            // One prefetch per 64-byte line this iteration consumes (64 weights).
            for line in 0..std::mem::size_of::<W>() {
                _mm_prefetch::<_MM_HINT_T1>((w.wrapping_add(i + ahead) as *const i8).wrapping_add(64 * line));
            }
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(load(w.add(i + 16 * j)), _mm512_loadu_ps(x.add(i + 16 * j)), *a);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(load(w.add(i)), _mm512_loadu_ps(x.add(i)), acc[0]);
            i += 16;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
        while i < n {
            s += scalar(w.add(i)) * *x.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f32_512(w: &[f32], x: &[f32]) -> f32 {
        dot512(w.as_ptr(), x.as_ptr(), w.len().min(x.len()), |p| _mm512_loadu_ps(p), |p| *p)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_bf16_512(w: &[bf16], x: &[f32]) -> f32 {
        let load = |p: *const bf16| _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)), 16));
        dot512(w.as_ptr(), x.as_ptr(), w.len().min(x.len()), load, |p| (*p).to_f32())
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f16_512(w: &[f16], x: &[f32]) -> f32 {
        let load = |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        dot512(w.as_ptr(), x.as_ptr(), w.len().min(x.len()), load, |p| (*p).to_f32())
    }

    pub fn has_avx2_fma() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// 256-bit dot product for CPUs without AVX-512: `load` widens 8 weights to f32; four
    /// accumulators hide the FMA latency.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot256<W>(w: *const W, x: *const f32, n: usize, load: impl Fn(*const W) -> __m256, scalar: impl Fn(*const W) -> f32) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(load(w.add(i + 8 * j)), _mm256_loadu_ps(x.add(i + 8 * j)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(load(w.add(i)), _mm256_loadu_ps(x.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        while i < n {
            s += scalar(w.add(i)) * *x.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        dot256(w.as_ptr(), x.as_ptr(), w.len().min(x.len()), |p| _mm256_loadu_ps(p), |p| *p)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        let load = |p: *const bf16| _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16));
        dot256(w.as_ptr(), x.as_ptr(), w.len().min(x.len()), load, |p| (*p).to_f32())
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        let load = |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        dot256(w.as_ptr(), x.as_ptr(), w.len().min(x.len()), load, |p| (*p).to_f32())
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::simd;
    use half::{bf16, f16};

    /// Both SIMD widths against a scalar f64 dot, on lengths around every unroll boundary.
    #[test]
    fn simd_dots_match_scalar_for_every_width_and_dtype() {
        let mut s = 12345u64;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for n in [0, 1, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 100, 576, 1000] {
            let x: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let exact = |w: &dyn Fn(usize) -> f32| (0..n).map(|i| w(i) as f64 * x[i] as f64).sum::<f64>() as f32;
            let (e32, eb, eh) = (exact(&|i| w[i]), exact(&|i| wb[i].to_f32()), exact(&|i| wh[i].to_f32()));
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + b.abs()) * (n as f32).sqrt().max(1.0);
            // SAFETY: each kernel runs only when the CPU reports its features.
            unsafe {
                if simd::has_avx2_fma() && std::is_x86_feature_detected!("f16c") {
                    assert!(close(simd::dot_f32(&w, &x), e32), "avx2 f32 n={n}");
                    assert!(close(simd::dot_bf16(&wb, &x), eb), "avx2 bf16 n={n}");
                    assert!(close(simd::dot_f16(&wh, &x), eh), "avx2 f16 n={n}");
                }
                if simd::has_avx512() {
                    assert!(close(simd::dot_f32_512(&w, &x), e32), "avx512 f32 n={n}");
                    assert!(close(simd::dot_bf16_512(&wb, &x), eb), "avx512 bf16 n={n}");
                    assert!(close(simd::dot_f16_512(&wh, &x), eh), "avx512 f16 n={n}");
                }
            }
        }
    }
}
