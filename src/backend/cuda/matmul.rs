//! Linear layers and batched matmul.
//!
//! * M ≤ `GEMV_MAX_M` rows (decode): kernels/gemv.cu streams each weight row once in its
//!   stored dtype (f32/f16/bf16) with 128-bit loads, bias/activation/residual fused.
//! * Larger M with bf16 weights (the default): the f32 activations are rounded to bf16 in one
//!   pass and cuBLAS multiplies bf16 × bf16 on the tensor cores, accumulating and writing f32;
//!   a bias, ReLU or residual is applied by cuBLASLt in the same call (lt.rs), other
//!   activations by the epilogue pass.
//!   This is the precision of bf16 inference everywhere (PyTorch's bf16 `Linear` rounds its
//!   output to bf16 as well; here only the operands are rounded), and it is what the 7B prefill
//!   and the ViT encoders need: cuBLAS's f32 SGEMM runs at ~50 TFLOP/s on an H100, bf16 at ~600+.
//!   `CudaBackend::set_bf16_gemm(false)` (or `VISWORD_CUDA_GEMM=f32`) selects the exact path below.
//!   Small problems (gemm.rs: up to 2²⁸ multiply-adds by default) skip the rounding pass and
//!   the epilogue: kernels/gemm.cu rounds x as it stages it and applies bias, activation and
//!   residual as it writes y, in one launch.
//! * Otherwise: cuBLAS SGEMM (f32 inputs, f32 compute, no TF32), then the fused epilogue kernel.
//!   f16 (and, on the exact path, bf16) weights are widened to f32 in row blocks of at most
//!   `WIDEN_CHUNK` elements right before their GEMM. f16 is never fed to cuBLAS as is: that
//!   would round the activations to f16, whose range (65504) real activations can exceed.

use std::ffi::c_void;

use cudarc::cublas::{result as blas, sys as bsys};
use cudarc::driver::{CudaSlice, LaunchConfig};

use super::lt::LtGemm;
use super::{act_code, grid_1d, kernels, launch, CudaBackend};
use crate::dtype::DType;
use crate::backend::Activation;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Largest M that takes the GEMV path (kernels/gemv.cu GEMV_MAX_M; the CPU's bound too).
pub(super) const GEMV_MAX_M: usize = 4;

/// The multi-weight GEMV families of kernels/gemv.cu; `Norm*` carry the fused RMSNorm's
/// weight pointer and eps.
#[derive(Clone, Copy)]
enum GemvMany {
    Plain,
    Norm { weight: u64, eps: f32 },
    NormSwiglu { weight: u64, eps: f32 },
}

impl GemvMany {
    fn kernel(self) -> &'static str {
        match self {
            GemvMany::Plain => "gemv_many",
            GemvMany::Norm { .. } => "gemv_norm_many",
            GemvMany::NormSwiglu { .. } => "gemv_norm_swiglu",
        }
    }

    fn norm(self) -> Option<(u64, f32)> {
        match self {
            GemvMany::Plain => None,
            GemvMany::Norm { weight, eps } | GemvMany::NormSwiglu { weight, eps } => Some((weight, eps)),
        }
    }
}
/// What cuBLASLt applies as it writes y (`lt_epilogue`): an f32 bias, ReLU, the residual as C
/// (pointer, shared by the batch entries) and the rows per batch entry.
#[derive(Clone, Copy)]
struct LtEpilogue {
    bias: Option<u64>,
    relu: bool,
    c: Option<(u64, bool)>,
    rows: usize,
}

/// Most weight elements widened to f32 at once (128 MB of scratch).
const WIDEN_CHUNK: usize = 1 << 25;

fn int(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::shape(op, format!("{what} = {v} exceeds cuBLAS's 32-bit sizes")))
}

/// One column-major GEMM (batched with strides): C = op(A) · op(B); A and B f32 (or both bf16
/// with `bf16`), C f32.
pub(super) struct Gemm {
    bf16: bool,
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: u64,
    lda: usize,
    stride_a: usize,
    b: u64,
    ldb: usize,
    stride_b: usize,
    c: u64,
    ldc: usize,
    stride_c: usize,
    batch: usize,
}

impl Gemm {
    /// One unbatched GEMM.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn single(trans_a: bool, trans_b: bool, m: usize, n: usize, k: usize, a: u64, lda: usize, b: u64, ldb: usize, c: u64, ldc: usize) -> Gemm {
        Gemm { bf16: false, trans_a, trans_b, m, n, k, a, lda, stride_a: 0, b, ldb, stride_b: 0, c, ldc, stride_c: 0, batch: 1 }
    }
}

impl CudaBackend {
    /// C = op(A) · op(B) in cuBLAS's column-major terms (k ≥ 1; callers zero C for k = 0).
    pub(super) fn sgemm(&self, op: &'static str, g: &Gemm) -> Result<()> {
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        let t = |x: bool| if x { bsys::cublasOperation_t::CUBLAS_OP_T } else { bsys::cublasOperation_t::CUBLAS_OP_N };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let f32t = bsys::cudaDataType::CUDA_R_32F;
        let abt = if g.bf16 { bsys::cudaDataType::CUDA_R_16BF } else { f32t };
        let (m, n, k) = (int(op, "m", g.m)?, int(op, "n", g.n)?, int(op, "k", g.k.max(1))?);
        let (lda, ldb, ldc) = (int(op, "lda", g.lda.max(1))?, int(op, "ldb", g.ldb.max(1))?, int(op, "ldc", g.ldc.max(1))?);
        let batch = int(op, "batch", g.batch)?;
        // cuBLAS runs in the calling thread's current context: make it ours.
        self.stream().context().bind_to_thread().map_err(super::dev_err(op))?;
        // SAFETY: every pointer is a live device buffer of this context holding the strided
        // operands described by the sizes (checked by the callers' shape validation); alpha and
        // beta are host scalars (the handle's default pointer mode).
        unsafe {
            blas::gemm_strided_batched_ex(
                *self.blas().handle(),
                t(g.trans_a),
                t(g.trans_b),
                m,
                n,
                k,
                &alpha as *const f32 as *const c_void,
                g.a as *const c_void,
                abt,
                lda,
                g.stride_a as i64,
                g.b as *const c_void,
                abt,
                ldb,
                g.stride_b as i64,
                &beta as *const f32 as *const c_void,
                g.c as *mut c_void,
                f32t,
                ldc,
                g.stride_c as i64,
                batch,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::BackendUnavailable { backend: "cuda".into(), reason: format!("{op}: cuBLAS GEMM failed ({e:?})") })
    }

    /// `n` elements at `src` (dtype code `dt`) → f32 at `dst`.
    fn to_f32_into(&self, op: &'static str, src: u64, dt: i32, dst: u64, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(self, op, self.function(&kernels::ELEMENTWISE, "to_f32")?, grid_1d(n), src, dt, dst, n64)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemv(&self, op: &'static str, xp: u64, w: &Tensor, y: &CudaSlice<f32>, m: usize, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<()> {
        let (n, k) = (w.dim(0), w.dim(1));
        if n == 0 || m == 0 {
            return Ok(());
        }
        let k32 = u32::try_from(k).map_err(|_| Error::shape(op, format!("K = {k} exceeds u32")))?;
        let (wp, dt) = self.any_float(w, op)?;
        // gemv_m1_*: the same kernel built for one row of x (fewer registers, more warps per SM).
        let name = match (m, dt) {
            (1, 0) => "gemv_m1_f32",
            (1, 1) => "gemv_m1_f16",
            (1, _) => "gemv_m1_bf16",
            (_, 0) => "gemv_f32",
            (_, 1) => "gemv_f16",
            _ => "gemv_bf16",
        };
        let (bp, bdt) = self.any_float_or_null(bias, op)?;
        let rp = match residual {
            Some(r) => self.f32_ptr(r, op)?,
            None => 0u64,
        };
        // One warp per weight row, 8 rows per block; warps stride over the rest.
        let blocks = n.div_ceil(8).min(65_535 * 8) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (yp, m32, n64, a) = (self.ptr(y), m as u32, n as u64, act_code(act));
        launch!(self, op, self.function(&kernels::GEMV, name)?, cfg, xp, wp, yp, m32, n64, k32, bp, bdt, a, rp)
    }

    /// y [m, n] = x [m, k] · wᵀ with cuBLAS (k ≥ 1): bf16 tensor cores for a bf16 weight (unless
    /// switched off; `xb`, when given, is x already rounded to bf16), else f32 SGEMM, widening a
    /// half weight block by block.
    pub(super) fn gemm_nt(&self, op: &'static str, xp: u64, xb: Option<u64>, w: &Tensor, y: &CudaSlice<f32>, m: usize) -> Result<()> {
        let (n, k) = (w.dim(0), w.dim(1));
        if n == 0 || m == 0 {
            return Ok(());
        }
        let yp = self.ptr(y);
        let (wp, dt) = self.any_float(w, op)?;
        // Column-major view: y is [n, m] (ld n) = op(w)[n, k] · xᵀ[k, m]; w row-major [n, k]
        // is column-major [k, n] (ld k), transposed.
        let gemm = |bf16: bool, a: u64, b: u64, rows: usize, row0: usize| Gemm {
            bf16,
            trans_a: true,
            trans_b: false,
            m: rows,
            n: m,
            k,
            a,
            lda: k,
            stride_a: 0,
            b,
            ldb: k,
            stride_b: 0,
            c: yp + (row0 * 4) as u64,
            ldc: n,
            stride_c: 0,
            batch: 1,
        };
        if dt == 0 {
            return self.sgemm(op, &gemm(false, wp, xp, n, 0));
        }
        if dt == 2 && self.bf16_gemm() {
            if let Some(xbp) = xb {
                return self.sgemm(op, &gemm(true, wp, xbp, n, 0));
            }
            let xb = self.to_bf16(op, xp, m * k)?;
            return self.sgemm(op, &gemm(true, wp, self.ptr(&xb), n, 0));
        }
        let rows_per = (WIDEN_CHUNK / k).clamp(1, n);
        let scratch = self.alloc::<f32>(rows_per * k, op)?;
        let sp = self.ptr(&scratch);
        let mut row0 = 0;
        while row0 < n {
            let rows = rows_per.min(n - row0);
            self.to_f32_into(op, wp + (row0 * k * 2) as u64, dt, sp, rows * k)?;
            self.sgemm(op, &gemm(false, sp, xp, rows, row0))?;
            row0 += rows;
        }
        Ok(())
    }

    fn check_linear(op: &'static str, x: &Tensor, w: &Tensor) -> Result<(usize, usize, Vec<usize>)> {
        if w.dims() != 2 || x.dims() == 0 {
            return Err(Error::shape(op, format!("x {:?}, weight {:?}: weight must be [N, K]", x.shape(), w.shape())));
        }
        let (n, k) = (w.dim(0), w.dim(1));
        if *x.shape().last().unwrap_or(&0) != k {
            return Err(Error::shape(op, format!("x {:?} has last dim ≠ K = {k} of weight {:?}", x.shape(), w.shape())));
        }
        let mut out_shape = x.shape().to_vec();
        if let Some(l) = out_shape.last_mut() {
            *l = n;
        }
        let m = x.numel().checked_div(k).unwrap_or_else(|| x.shape()[..x.dims() - 1].iter().product());
        Ok((m, n, out_shape))
    }

    pub fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        let (m, n, out_shape) = Self::check_linear(OP, x, w)?;
        if let Some(b) = bias {
            if b.numel() != n {
                return Err(Error::shape(OP, format!("bias has {} elements, expected {n}", b.numel())));
            }
        }
        let shared = match residual {
            Some(r) => crate::backend::shared_residual(OP, x, w, r)?,
            None => false,
        };
        let xp = self.f32_ptr(x, OP)?;
        let k = w.dim(1);
        let y = if k == 0 { self.zeros_f32(m * n, OP)? } else { self.alloc_f32(&out_shape)? };
        if m <= GEMV_MAX_M {
            // The GEMV adds a residual of the output's shape itself; a shared one afterwards.
            self.gemv(OP, xp, w, &y, m, bias, act, residual.filter(|_| !shared))?;
            if shared {
                self.epilogue(OP, &y, m * n, n, None, Activation::None, residual)?;
            }
        } else if k == 0 {
            self.epilogue(OP, &y, m * n, n, bias, act, residual)?;
        } else if !self.lt_linear(OP, xp, w, bias, act, residual, &y, m)? && !self.fused_linear(OP, xp, w, &y, m, bias, act, residual)? {
            self.gemm_epilogue(OP, xp, w, &y, m, bias, act, residual)?;
        }
        Ok(self.wrap_f32(y, out_shape))
    }

    /// Which path `linear` takes for `m` rows of x on `w` (the profile's label).
    pub fn linear_path(&self, m: usize, w: &Tensor) -> &'static str {
        let n = w.dims().checked_sub(2).map_or(0, |_| w.dim(0));
        if m <= GEMV_MAX_M {
            "linear, M ≤ 4 (GEMV)"
        } else if self.takes_lt(m, n, w) {
            "linear, M > 4 (cuBLASLt TF32)"
        } else if self.fused_fits(m, w) {
            "linear, M > 4 (fused bf16 GEMM)"
        } else if w.dtype() == DType::BF16 && self.bf16_gemm() {
            "linear, M > 4 (bf16 GEMM)"
        } else {
            "linear, M > 4 (f32 GEMM)"
        }
    }

    fn takes_lt(&self, m: usize, n: usize, w: &Tensor) -> bool {
        self.bf16_gemm() && self.lt_gemm() && w.dtype() == DType::BF16 && m >= super::lt::LT_MIN_M_PER_N * n && self.lt().is_some()
    }

    /// y = act(x · wᵀ + bias) + residual through cuBLASLt (lt.rs) when the activations
    /// dominate (M ≥ 8·N) and the weight is bf16 in the bf16 GEMM mode: the weight is
    /// widened to f32 (exact), x is read as f32 by the TF32 tensor cores, and the bias (an f32
    /// one), ReLU and the residual are fused when the activation allows. Ok(false): not taken,
    /// nothing queued but the widening.
    #[allow(clippy::too_many_arguments)]
    fn lt_linear(&self, op: &'static str, xp: u64, w: &Tensor, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>, y: &CudaSlice<f32>, m: usize) -> Result<bool> {
        let (n, k) = (w.dim(0), w.dim(1));
        if !self.takes_lt(m, n, w) {
            return Ok(false);
        }
        let Some(wide) = self.widen(op, w)? else { return Ok(false) };
        let epi = self.lt_epilogue(op, bias, act, residual, m, n)?;
        let e = epi.unwrap_or(LtEpilogue { bias: None, relu: false, c: None, rows: m });
        let g = LtGemm { bf16: false, m, n, k, x: xp, w: self.ptr(&wide), bias: e.bias, relu: e.relu, c: e.c, rows: e.rows, y: self.ptr(y) };
        if !self.run_lt(op, &g)? {
            return Ok(false);
        }
        if epi.is_none() {
            self.epilogue(op, y, m * n, n, bias, act, residual)?;
        }
        Ok(true)
    }

    /// The epilogue cuBLASLt applies itself: an f32 bias and ReLU, and the residual as C (added
    /// before that epilogue, so only without an activation). None when the activation or the
    /// bias's dtype rules it out.
    fn lt_epilogue(&self, op: &'static str, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>, m: usize, n: usize) -> Result<Option<LtEpilogue>> {
        let bias_ok = bias.is_none_or(|b| b.dtype() == DType::F32);
        if !bias_ok || !(act == Activation::None || (act == Activation::Relu && residual.is_none())) {
            return Ok(None);
        }
        let (mut rows, mut c) = (m, None);
        if let Some(r) = residual {
            let shared = r.numel() < m * n;
            rows = if shared { r.numel() / n.max(1) } else { m };
            c = Some((self.f32_ptr(r, op)?, shared));
        }
        let bias = bias.map(|b| self.f32_ptr(b, op)).transpose()?;
        Ok(Some(LtEpilogue { bias, relu: act == Activation::Relu, c, rows }))
    }

    /// The GEMM and epilogue of a linear with M > 4 that neither cuBLASLt's TF32 path nor the
    /// fused kernel took: on a bf16 weight in the bf16 mode, x rounded once and
    /// `bf16_gemm_epilogue`; otherwise cuBLAS (widening a half weight on the exact path) and the
    /// epilogue pass.
    #[allow(clippy::too_many_arguments)]
    fn gemm_epilogue(&self, op: &'static str, xp: u64, w: &Tensor, y: &CudaSlice<f32>, m: usize, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<()> {
        let (n, k) = (w.dim(0), w.dim(1));
        if w.dtype() == DType::BF16 && self.bf16_gemm() {
            let xb = self.to_bf16(op, xp, m * k)?;
            return self.bf16_gemm_epilogue(op, self.ptr(&xb), w, y, m, bias, act, residual);
        }
        self.gemm_nt(op, xp, None, w, y, m)?;
        self.epilogue(op, y, m * n, n, bias, act, residual)
    }

    /// y = act(xb · wᵀ + bias) + residual for `m` rows of bf16 x at `xb` on a bf16 weight: one
    /// cuBLASLt call when it can apply the epilogue (a bias, ReLU, a residual) and cuBLASLt is
    /// on; otherwise cuBLAS and the epilogue pass.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bf16_gemm_epilogue(&self, op: &'static str, xb: u64, w: &Tensor, y: &CudaSlice<f32>, m: usize, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<()> {
        let (n, k) = (w.dim(0), w.dim(1));
        let something = bias.is_some() || residual.is_some() || act == Activation::Relu;
        if something && self.lt_gemm() {
            if let Some(e) = self.lt_epilogue(op, bias, act, residual, m, n)? {
                let (wp, _) = self.any_float(w, op)?;
                let g = LtGemm { bf16: true, m, n, k, x: xb, w: wp, bias: e.bias, relu: e.relu, c: e.c, rows: e.rows, y: self.ptr(y) };
                if self.run_lt(op, &g)? {
                    return Ok(());
                }
            }
        }
        // A bf16 weight in the bf16 mode: gemm_nt multiplies xb (its f32 x is never read).
        self.gemm_nt(op, xb, Some(xb), w, y, m)?;
        self.epilogue(op, y, m * n, n, bias, act, residual)
    }

    /// Several weights on one x: one GEMV launch over all their rows for M ≤ 4 (up to three
    /// weights of one dtype), and for the bf16 tensor-core GEMMs one bf16 copy of x.
    pub fn linear_many(&self, x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        const OP: &str = "linear_many";
        if ws.is_empty() {
            return Err(Error::shape(OP, "no weights"));
        }
        let shapes = ws.iter().map(|w| Self::check_linear(OP, x, w)).collect::<Result<Vec<_>>>()?;
        let (m, k) = (shapes[0].0, ws[0].dim(1));
        if k == 0 || m == 0 || ws.len() > 3 || ws.iter().any(|w| w.dtype() != ws[0].dtype()) {
            return ws.iter().map(|w| self.linear(x, w, None, Activation::None, None)).collect();
        }
        let xp = self.f32_ptr(x, OP)?;
        if m > GEMV_MAX_M {
            // One bf16 copy of x for the weights that do not take the fused kernel.
            let round = ws[0].dtype() == DType::BF16 && self.bf16_gemm() && ws.iter().any(|w| !self.fused_fits(m, w));
            let xb = if round { Some(self.to_bf16(OP, xp, m * k)?) } else { None };
            return self.gemm_each(OP, xp, xb.as_ref().map(|b| self.ptr(b)), true, ws, shapes, m);
        }
        let ys = shapes.iter().map(|(_, _, s)| self.alloc_f32(s)).collect::<Result<Vec<_>>>()?;
        self.gemv_many(OP, xp, ws, &ys, m)?;
        Ok(ys.into_iter().zip(shapes).map(|(y, (_, _, s))| self.wrap_f32(y, s)).collect())
    }

    /// `gemv_many_*`: the rows of up to three same-dtype weights [nᵢ, K] on x [m, K], m ≤ 4.
    fn gemv_many(&self, op: &'static str, xp: u64, ws: &[&Tensor], ys: &[CudaSlice<f32>], m: usize) -> Result<()> {
        self.gemv_many_launch(op, GemvMany::Plain, xp, ws, ys, m)
    }

    /// Launch one `GemvMany` family of kernels/gemv.cu over the weights' rows. The caller
    /// checked shapes and dtypes.
    fn gemv_many_launch(&self, op: &'static str, family: GemvMany, xp: u64, ws: &[&Tensor], ys: &[CudaSlice<f32>], m: usize) -> Result<()> {
        let k32 = u32::try_from(ws[0].dim(1)).map_err(|_| Error::shape(op, format!("K = {} exceeds u32", ws[0].dim(1))))?;
        let (mut wp, mut n) = ([0u64; 3], [0u64; 3]);
        let mut yp = [0u64; 3];
        let mut dt = 0;
        for (i, w) in ws.iter().enumerate() {
            (wp[i], dt) = self.any_float(w, op)?;
            n[i] = w.dim(0) as u64;
        }
        for (i, y) in ys.iter().enumerate() {
            yp[i] = self.ptr(y);
        }
        // The SwiGLU kernel takes gate row r and up row r together: n0 outputs.
        let total: u64 = if matches!(family, GemvMany::NormSwiglu { .. }) { n[0] } else { n.iter().sum() };
        if total == 0 || m == 0 {
            return Ok(());
        }
        let name = format!(
            "{}{}_{}",
            family.kernel(),
            if m == 1 { "_m1" } else { "" },
            match dt {
                0 => "f32",
                1 => "f16",
                _ => "bf16",
            }
        );
        let blocks = (total as usize).div_ceil(8).min(65_535 * 8) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (gp, eps) = family.norm().unwrap_or((0, 0.0));
        let ([w0, w1, w2], [y0, y1, y2], [n0, n1, n2], m32) = (wp, yp, n, m as u32);
        launch!(self, op, self.function(&kernels::GEMV, &name)?, cfg, xp, gp, eps, w0, w1, w2, y0, y1, y2, m32, n0, n1, n2, k32)
    }

    /// The rows of x when a norm of weight `norm_w` (length K ≥ 1) and then 1..=3 weights
    /// [N, K] of one dtype fit x (last dim K); None otherwise.
    fn norm_linear_rows(x: &Tensor, norm_w: &Tensor, ws: &[&Tensor]) -> Option<usize> {
        let k = norm_w.numel();
        let fits = k > 0
            && x.shape().last() == Some(&k)
            && (1..=3).contains(&ws.len())
            && ws.iter().all(|w| w.dims() == 2 && w.dim(1) == k && w.dtype() == ws[0].dtype());
        fits.then(|| x.numel() / k)
    }

    /// Whether the fused RMSNorm GEMVs take these operands: M ≤ 4 rows of x, at most three
    /// weights of one dtype, an f32 norm weight of length K ≥ 1.
    pub(crate) fn norm_gemv_fits(x: &Tensor, norm_w: &Tensor, ws: &[&Tensor]) -> bool {
        norm_w.dtype() == DType::F32 && Self::norm_linear_rows(x, norm_w, ws).is_some_and(|m| (1..=GEMV_MAX_M).contains(&m))
    }

    /// Whether the RMSNorm in front of bf16 tensor-core GEMMs writes their bf16 operand itself
    /// (`rms_norm_linear_many_gemm`): more than 4 rows of f32 x, 1..=3 bf16 weights [N, K] and
    /// a norm weight of length K ≥ 1, in the bf16 GEMM mode.
    pub(crate) fn norm_gemm_fits(&self, x: &Tensor, norm_w: &Tensor, ws: &[&Tensor]) -> bool {
        self.bf16_gemm()
            && x.dtype() == DType::F32
            && ws.first().is_some_and(|w| w.dtype() == DType::BF16)
            && Self::norm_linear_rows(x, norm_w, ws).is_some_and(|m| m > GEMV_MAX_M)
    }

    /// `Backend::rms_norm_linear_many` for prefill-sized M (operands checked by
    /// `norm_gemm_fits`): the norm writes the bf16 operand (one launch where the norm and a
    /// rounding pass were two), then one cuBLAS GEMM per weight.
    pub(crate) fn rms_norm_linear_many_gemm(&self, x: &Tensor, norm_w: &Tensor, eps: f32, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        const OP: &str = "rms_norm_linear_many";
        let shapes = ws.iter().map(|w| Self::check_linear(OP, x, w)).collect::<Result<Vec<_>>>()?;
        let m = shapes[0].0;
        let xb = self.rms_norm_bf16(x, norm_w, eps)?;
        // The fused kernel would read x, not its norm: off here.
        self.gemm_each(OP, self.f32_ptr(x, OP)?, Some(self.ptr(&xb)), false, ws, shapes, m)
    }

    /// y_i = x · w_iᵀ for each weight into new tensors of the `check_linear` shapes: one
    /// `gemm_nt` each (`xb`: the operand already rounded to bf16), or with `fused` the fused
    /// kernel on x where it fits.
    #[allow(clippy::too_many_arguments)]
    fn gemm_each(&self, op: &'static str, xp: u64, xb: Option<u64>, fused: bool, ws: &[&Tensor], shapes: Vec<(usize, usize, Vec<usize>)>, m: usize) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(ws.len());
        for (w, (_, _, shape)) in ws.iter().zip(shapes) {
            let y = self.alloc_f32(&shape)?;
            if !(fused && self.fused_linear(op, xp, w, &y, m, None, Activation::None, None)?) {
                self.gemm_nt(op, xp, xb, w, &y, m)?;
            }
            out.push(self.wrap_f32(y, shape));
        }
        Ok(out)
    }

    /// `Backend::rms_norm_linear_many` in one launch (operands checked by `norm_gemv_fits`).
    pub(crate) fn rms_norm_linear_many(&self, x: &Tensor, norm_w: &Tensor, eps: f32, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        const OP: &str = "rms_norm_linear_many";
        let shapes = ws.iter().map(|w| Self::check_linear(OP, x, w)).collect::<Result<Vec<_>>>()?;
        let m = shapes[0].0;
        let ys = shapes.iter().map(|(_, _, s)| self.alloc_f32(s)).collect::<Result<Vec<_>>>()?;
        let (xp, gp) = (self.f32_ptr(x, OP)?, self.f32_ptr(norm_w, OP)?);
        self.gemv_many_launch(OP, GemvMany::Norm { weight: gp, eps }, xp, ws, &ys, m)?;
        Ok(ys.into_iter().zip(shapes).map(|(y, (_, _, s))| self.wrap_f32(y, s)).collect())
    }

    /// `Backend::rms_norm_swiglu` in one launch (operands checked by `norm_gemv_fits` and the
    /// caller: gate and up of one shape).
    pub(crate) fn rms_norm_swiglu(&self, x: &Tensor, norm_w: &Tensor, eps: f32, w_gate: &Tensor, w_up: &Tensor) -> Result<Tensor> {
        const OP: &str = "rms_norm_swiglu";
        let (m, _, shape) = Self::check_linear(OP, x, w_gate)?;
        let y = self.alloc_f32(&shape)?;
        let (xp, gp) = (self.f32_ptr(x, OP)?, self.f32_ptr(norm_w, OP)?);
        self.gemv_many_launch(OP, GemvMany::NormSwiglu { weight: gp, eps }, xp, &[w_gate, w_up], std::slice::from_ref(&y), m)?;
        Ok(self.wrap_f32(y, shape))
    }

    /// x [n] f32 at `xp` rounded to a new bf16 buffer (the tensor cores' operand).
    fn to_bf16(&self, op: &'static str, xp: u64, n: usize) -> Result<CudaSlice<half::bf16>> {
        let xb = self.alloc::<half::bf16>(n, op)?;
        if n.is_multiple_of(4) && n / 4 < 1 << 31 {
            let (xbp, n4) = (self.ptr(&xb), (n / 4) as u32);
            launch!(self, op, self.function(&kernels::ELEMENTWISE, "f32_to_bf16_rn_x4")?, grid_1d(n / 4), xp, xbp, n4)?;
            return Ok(xb);
        }
        let (xbp, n64) = (self.ptr(&xb), n as u64);
        launch!(self, op, self.function(&kernels::ELEMENTWISE, "f32_to_bf16_rn")?, grid_1d(n), xp, xbp, n64)?;
        Ok(xb)
    }

    pub fn matmul(&self, a: &Tensor, b: &Tensor, trans_b: bool) -> Result<Tensor> {
        const OP: &str = "matmul";
        let (sa, sb) = (a.shape(), b.shape());
        if sa.len() < 2 || sb.len() < 2 {
            return Err(Error::shape(OP, format!("{sa:?} · {sb:?}: need at least 2 dims")));
        }
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (kb, n) = if trans_b { (sb[sb.len() - 1], sb[sb.len() - 2]) } else { (sb[sb.len() - 2], sb[sb.len() - 1]) };
        let batch: usize = sa[..sa.len() - 2].iter().product();
        let shared = sb.len() == 2;
        if kb != k || (!shared && sb[..sb.len() - 2] != sa[..sa.len() - 2]) {
            return Err(Error::shape(OP, format!("{sa:?} · {sb:?} (trans_b = {trans_b})")));
        }
        let ap = self.f32_ptr(a, OP)?;
        let widened = self.widen(OP, b)?;
        let bp = match &widened {
            Some(s) => self.ptr(s),
            None => self.f32_ptr(b, OP)?,
        };
        let mut shape = sa[..sa.len() - 2].to_vec();
        shape.extend([m, n]);
        let total = batch * m * n;
        if k == 0 {
            let y = self.zeros_f32(total, OP)?;
            return Ok(self.wrap_f32(y, shape));
        }
        let y = self.alloc_f32(&shape)?;
        let yp = self.ptr(&y);
        // Column-major: C [n, m] (ld n) = op(B) [n, k] · A [k, m] (A row-major [m, k] is
        // column-major [k, m], ld k). B row-major [k, n] is column-major [n, k] (ld n); with
        // trans_b, B row-major [n, k] is column-major [k, n] (ld k), transposed.
        let (ldb_, trans) = if trans_b { (k, true) } else { (n, false) };
        let g = if shared {
            Gemm { bf16: false, trans_a: trans, trans_b: false, m: n, n: batch * m, k, a: bp, lda: ldb_, stride_a: 0, b: ap, ldb: k, stride_b: 0, c: yp, ldc: n, stride_c: 0, batch: 1 }
        } else {
            Gemm { bf16: false, trans_a: trans, trans_b: false, m: n, n: m, k, a: bp, lda: ldb_, stride_a: k * n, b: ap, ldb: k, stride_b: m * k, c: yp, ldc: n, stride_c: m * n, batch }
        };
        self.sgemm(OP, &g)?;
        drop(widened);
        Ok(self.wrap_f32(y, shape))
    }
}
