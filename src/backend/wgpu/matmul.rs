//! linear and batched matmul: the GEMMs for M > 1 and the GEMV (shaders/gemv.wgsl) for M = 1.
//! `gemm` is also the multiply-add half of the convolutions. It runs, in order of preference:
//! shaders/matmul_coop.wgsl on cooperative matrices for f16 weights (where the adapter has them
//! and they are switched on); shaders/matmul_wide.wgsl, 128×128 tiles of 8×8 outputs per
//! invocation, for operands read along k in aligned quads (the linear case) on grids of many
//! tiles (matmul_wide.rs decides; VISWORD_WGPU_GEMM forces it or the next); shaders/matmul.wgsl,
//! 64×64 tiles, any strides.

use super::matmul_wide::{use_wide, MATMUL_WIDE, WIDE_TILE};
use super::{u32_of, Shader, WgpuBackend};
use crate::backend::Activation;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const MATMUL: Shader = Shader { name: "matmul", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/matmul_store.wgsl"), include_str!("../../../shaders/matmul.wgsl")) };
/// The cooperative-matrix GEMM: its `enable` directives must precede everything, so they lead
/// the concatenation (the file's `// enables:` line names the same two).
pub(super) const MATMUL_COOP: Shader = Shader {
    name: "matmul_coop",
    source: concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        include_str!("../../../shaders/common.wgsl"),
        include_str!("../../../shaders/matmul_store.wgsl"),
        include_str!("../../../shaders/matmul.wgsl"),
        include_str!("../../../shaders/matmul_coop.wgsl")
    ),
};
const GEMV: Shader = Shader { name: "gemv", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/gemv_batch1.wgsl"), include_str!("../../../shaders/gemv.wgsl")) };
const GEMV_SUBGROUP: Shader = Shader { name: "gemv_subgroup", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/gemv_batch1.wgsl"), include_str!("../../../shaders/gemv.wgsl"), include_str!("../../../shaders/gemv_subgroup.wgsl")) };
/// The batched builds (VISWORD_WGPU_GEMV=batched): eight weight loads in flight per lane.
pub(super) const GEMV_BATCHED: Shader = Shader { name: "gemv_batched", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/gemv_batch8.wgsl"), include_str!("../../../shaders/gemv.wgsl")) };
pub(super) const GEMV_SUBGROUP_BATCHED: Shader = Shader { name: "gemv_subgroup_batched", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/gemv_batch8.wgsl"), include_str!("../../../shaders/gemv.wgsl"), include_str!("../../../shaders/gemv_subgroup.wgsl")) };

/// Output tile of the GEMM (rows and columns per workgroup).
const TILE: usize = 64;
/// Output rows per plain GEMV workgroup (256 threads, 32 per row).
const GEMV_ROWS: usize = 8;
/// Threads per GEMV workgroup.
const GEMV_THREADS: u32 = 256;

/// Element strides of one GEMM operand: batch, then row and column of the operand as it enters
/// the product (for B: row = the k stride, col = the n stride).
#[derive(Clone, Copy, Debug)]
pub(super) struct Strides {
    pub batch: usize,
    pub row: usize,
    pub col: usize,
}

/// One GEMM: C[z, m, n] = act(Σ_k A[z, m, k]·B[z, k, n] + bias[n]) + residual, every operand
/// strided. A, bias, residual f32; B f32 or f16. The caller has checked shapes; this checks
/// dtypes and index ranges.
pub(super) struct Gemm<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub a: (&'a Tensor, Strides),
    pub b: (&'a Tensor, Strides),
    pub c: (&'a Tensor, Strides),
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
    /// Added at the output's own element index, modulo `residual_period` elements when that is
    /// not 0 (a residual shared by every entry of a contiguous output's first dim).
    pub residual: Option<&'a Tensor>,
    pub residual_period: usize,
}

/// Largest element index an operand with these strides reaches.
fn last_index(s: Strides, batch: usize, rows: usize, cols: usize) -> usize {
    (batch.max(1) - 1) * s.batch + (rows.max(1) - 1) * s.row + (cols.max(1) - 1) * s.col
}

pub(super) fn weight_is_f16(op: &'static str, t: &Tensor) -> Result<bool> {
    match t.dtype() {
        DType::F32 => Ok(false),
        DType::F16 => Ok(true),
        dt => Err(Error::shape(op, format!("weight {:?} is {dt}; the wgpu backend reads f32 or f16 (bf16 is converted at upload)", t.shape()))),
    }
}

pub(super) fn need_f32(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("{what} {:?} is {}, expected f32", t.shape(), t.dtype())));
    }
    Ok(())
}

pub(super) fn gemm(be: &WgpuBackend, op: &'static str, g: &Gemm) -> Result<()> {
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    need_f32(op, "input", g.a.0)?;
    need_f32(op, "output", g.c.0)?;
    let b_f16 = weight_is_f16(op, g.b.0)?;
    for (t, s, rows, cols, what) in [(g.a.0, g.a.1, g.m, g.k, "input"), (g.b.0, g.b.1, g.k, g.n, "weight"), (g.c.0, g.c.1, g.m, g.n, "output")] {
        if rows > 0 && cols > 0 && last_index(s, g.batch, rows, cols) >= t.numel() {
            return Err(Error::shape(op, format!("{what} {:?} is too small for a {}×{rows}×{cols} operand", t.shape(), g.batch)));
        }
    }
    if let Some(b) = g.bias {
        need_f32(op, "bias", b)?;
        if b.numel() != g.n {
            return Err(Error::shape(op, format!("bias has {} elements, expected {}", b.numel(), g.n)));
        }
    }
    if let Some(r) = g.residual {
        need_f32(op, "residual", r)?;
        let fits = match g.residual_period {
            0 => r.numel() == g.c.0.numel(),
            p => r.numel() == p && g.c.0.numel().is_multiple_of(p),
        };
        if !fits {
            return Err(Error::shape(op, format!("residual {:?} ≠ output {:?}", r.shape(), g.c.0.shape())));
        }
    }
    let (gx, gy) = (g.n.div_ceil(TILE), g.m.div_ceil(TILE));
    if gx > 65535 || gy > 65535 || g.batch > 65535 {
        return Err(Error::shape(op, format!("a {}×{}×{} GEMM over {} batches exceeds the dispatch grid", g.m, g.n, g.k, g.batch)));
    }
    let a = be.buffer(g.a.0, op)?;
    let buffers = [a, be.buffer(g.b.0, op)?, g.bias.map(|b| be.buffer(b, op)).transpose()?.unwrap_or(a), g.residual.map(|r| be.buffer(r, op)).transpose()?.unwrap_or(a), be.buffer(g.c.0, op)?];
    let mut params = vec![u32_of(op, g.m)?, u32_of(op, g.n)?, u32_of(op, g.k)?];
    for s in [g.a.1, g.b.1, g.c.1] {
        params.extend([u32_of(op, s.batch)?, u32_of(op, s.row)?, u32_of(op, s.col)?]);
    }
    params.extend([b_f16 as u32, g.bias.is_some() as u32, g.act.kernel_code(), g.residual.is_some() as u32, u32_of(op, g.residual_period)?]);
    // The cooperative-matrix kernel first (when on, for f16 weights), then the wide kernel
    // where the operands and the grid suit it (matmul_wide.rs), else the 64×64 one.
    let (shader, entry, tile) = if b_f16 && be.rt.coop_gemm() {
        (&MATMUL_COOP, "matmul_coop", TILE)
    } else if use_wide(g, be.rt.gemm_kernel()) {
        (&MATMUL_WIDE, "matmul_wide", WIDE_TILE)
    } else {
        (&MATMUL, "matmul", TILE)
    };
    be.dispatch(shader, entry, &buffers, &params, [g.n.div_ceil(tile) as u32, g.m.div_ceil(tile) as u32, g.batch as u32])
}

/// y = act(x · wᵀ + bias) + residual; the residual is y's shape, or (for M > 1) y's shape with a
/// leading 1, shared by every entry of y's first dim.
pub(super) fn linear(be: &WgpuBackend, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
    if w.dims() != 2 || x.dims() == 0 {
        return Err(Error::shape("linear", format!("x {:?}, weight {:?}: weight must be [N, K]", x.shape(), w.shape())));
    }
    let (n, k) = (w.dim(0), w.dim(1));
    if x.shape().last() != Some(&k) {
        return Err(Error::shape("linear", format!("x {:?} has last dim ≠ K = {k} of weight {:?}", x.shape(), w.shape())));
    }
    let mut out_shape = x.shape().to_vec();
    if let Some(last) = out_shape.last_mut() {
        *last = n;
    }
    let m = x.numel() / k.max(1);
    // `shared_residual` errs on a residual that is neither y's shape nor shared; a shared one
    // needs y's first dim above 1, so M = 1 never has one.
    let residual_period = match residual {
        Some(r) if crate::backend::shared_residual("linear", x, w, r)? => r.numel(),
        _ => 0,
    };
    let out = be.alloc(out_shape, DType::F32)?;
    if m == 1 && k > 0 {
        gemv(be, x, w, bias, act, residual, &out)?;
    } else {
        let g = Gemm {
            m,
            n,
            k,
            batch: 1,
            a: (x, Strides { batch: 0, row: k, col: 1 }),
            b: (w, Strides { batch: 0, row: 1, col: k }),
            c: (&out, Strides { batch: 0, row: n, col: 1 }),
            bias,
            act,
            residual,
            residual_period,
        };
        gemm(be, "linear", &g)?;
    }
    Ok(out)
}

fn gemv(be: &WgpuBackend, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>, out: &Tensor) -> Result<()> {
    let (n, k) = (w.dim(0), w.dim(1));
    need_f32("linear", "input", x)?;
    let w_f16 = weight_is_f16("linear", w)?;
    if let Some(b) = bias {
        need_f32("linear", "bias", b)?;
        if b.numel() != n {
            return Err(Error::shape("linear", format!("bias has {} elements, expected {n}", b.numel())));
        }
    }
    if let Some(r) = residual {
        need_f32("linear", "residual", r)?;
    }
    let xb = be.buffer(x, "linear")?;
    let buffers = [xb, be.buffer(w, "linear")?, bias.map(|b| be.buffer(b, "linear")).transpose()?.unwrap_or(xb), residual.map(|r| be.buffer(r, "linear")).transpose()?.unwrap_or(xb), be.buffer(out, "linear")?];
    u32_of("linear", w.numel())?;
    // One subgroup per row where the adapter has subgroups: as many rows per workgroup as its
    // smallest subgroups would give.
    let batched = be.rt.gemv_batched();
    let (shader, entry, rows) = match be.rt.subgroup_min_size() {
        Some(min) => (if batched { &GEMV_SUBGROUP_BATCHED } else { &GEMV_SUBGROUP }, "gemv_subgroup", (GEMV_THREADS / min).max(1) as usize),
        None => (if batched { &GEMV_BATCHED } else { &GEMV }, "gemv", GEMV_ROWS),
    };
    let params = [n as u32, k as u32, w_f16 as u32, bias.is_some() as u32, act.kernel_code(), residual.is_some() as u32, rows as u32];
    be.dispatch(shader, entry, &buffers, &params, [n.div_ceil(rows) as u32, 1, 1])
}

/// a [.., M, K] · b [.., K, N] (or [.., N, K] when trans_b); b may be 2-D and shared.
pub(super) fn batched_matmul(be: &WgpuBackend, a: &Tensor, b: &Tensor, trans_b: bool) -> Result<Tensor> {
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
    let mut shape = sa[..sa.len() - 2].to_vec();
    shape.extend([m, n]);
    let out = be.alloc(shape, DType::F32)?;
    let (b_row, b_col) = if trans_b { (1, k) } else { (n, 1) };
    let g = Gemm {
        m,
        n,
        k,
        batch,
        a: (a, Strides { batch: m * k, row: k, col: 1 }),
        b: (b, Strides { batch: if shared { 0 } else { k * n }, row: b_row, col: b_col }),
        c: (&out, Strides { batch: m * n, row: n, col: 1 }),
        bias: None,
        act: Activation::None,
        residual: None,
        residual_period: 0,
    };
    gemm(be, "matmul", &g)?;
    Ok(out)
}

/// The cooperative-matrix GEMM against the plain one on a small problem whose products and sums
/// are exact in f32 either way (inputs are multiples of 1/8 in [-1, 1], so f16 holds them; M, N
/// and K are not multiples of the tiles), with a bias, GELU and a residual. `Ok(Err(why))` when
/// they disagree.
pub(super) fn coop_self_check(be: &WgpuBackend) -> Result<std::result::Result<(), String>> {
    let (m, n, k) = (70usize, 72usize, 48usize);
    let val = |i: usize, a: usize, b: usize| ((i * a + b) % 17) as f32 / 8.0 - 1.0;
    let host = |len: usize, a: usize, b: usize, shape: Vec<usize>| Tensor::from_f32((0..len).map(|i| val(i, a, b)).collect(), shape);
    let x = be.upload(&host(m * k, 37, 11, vec![m, k])?)?;
    let w = be.upload_weight(&host(n * k, 29, 5, vec![n, k])?.to_dtype(DType::F16)?)?;
    let bias = be.upload(&host(n, 13, 3, vec![n])?)?;
    let res = be.upload(&host(m * n, 7, 1, vec![m, n])?)?;
    let was = be.rt.use_coop.swap(true, std::sync::atomic::Ordering::Relaxed);
    let coop = linear(be, &x, &w, Some(&bias), Activation::Gelu, Some(&res)).and_then(|t| be.to_host(&t));
    be.rt.use_coop.store(false, std::sync::atomic::Ordering::Relaxed);
    let plain = linear(be, &x, &w, Some(&bias), Activation::Gelu, Some(&res)).and_then(|t| be.to_host(&t));
    be.rt.use_coop.store(was, std::sync::atomic::Ordering::Relaxed);
    let (coop, plain) = (coop?.to_f32_vec()?, plain?.to_f32_vec()?);
    let worst = coop.iter().zip(&plain).map(|(a, b)| if a.is_finite() { (a - b).abs() } else { f32::INFINITY }).fold(0.0f32, f32::max);
    Ok(if worst <= 1e-4 { Ok(()) } else { Err(format!("differs from the plain GEMM by up to {worst}")) })
}
