//! cuBLASLt GEMMs with the epilogue fused: y = act(x · wᵀ + bias) + C, on f32 activations read
//! as TF32, or (`LtGemm::bf16`) on bf16 operands.
//!
//! For activation-dominated linears on bf16 weights (M ≥ `LT_MIN_M_PER_N` · N: SAM's mask
//! decoder projects 64 prompts × 4096 image tokens through 256 × 128 weights) the bf16 path of
//! matmul.rs spends its time around the GEMM: a pass that rounds x to bf16, the GEMM writing
//! f32, and a pass for bias and residual. Here x is read once as f32 by TF32 tensor cores (10-bit mantissa: more
//! precise than the bf16 rounding it replaces; a bf16 weight is exact in TF32), and the bias
//! (plus ReLU) and the residual are applied as the GEMM writes y: one read of x, one write of y.
//! A residual shared by every batch entry (`linear`'s [1, ..] form) is a batched GEMM whose C
//! has batch stride 0.
//!
//! The same call on bf16 x and w (matmul.rs's bf16 path, x rounded once) replaces that path's
//! cuBLAS GEMM and epilogue pass for linears whose epilogue is a bias, ReLU and/or residual:
//! one launch writes y.
//!
//! Column-major view, as in matmul.rs: yᵀ [n, m] (ld n) = w [n, k] (row-major = column-major
//! [k, n], transposed) · xᵀ [k, m] (row-major x = column-major [k, m]).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::CudaSlice;

use super::CudaBackend;
use crate::error::{Error, Result};

/// Activation rows per weight row from which a linear takes this path (widening the weight to
/// f32 then costs less than rounding x to bf16).
pub(super) const LT_MIN_M_PER_N: usize = 8;
/// cuBLASLt workspace (the H100 kernels ask for up to 32 MiB).
const WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLASLt handle, its workspace and the algorithms chosen per problem.
pub(super) struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    /// Per problem, cuBLASLt's algorithm, or None when it has none (asked once).
    algos: Mutex<HashMap<LtKey, Option<sys::cublasLtMatmulAlgo_t>>>,
}

// SAFETY: a cuBLASLt handle may be used from any thread (calls are serialised by the one
// stream they are queued on); the algorithm structs are plain data.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `Lt::new` and is destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl std::fmt::Debug for Lt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lt").finish_non_exhaustive()
    }
}

impl Lt {
    /// A handle and workspace, or None when libcublasLt is missing or does not initialise (the
    /// callers then take matmul.rs's paths).
    pub(super) fn new(be: &CudaBackend) -> Option<Lt> {
        // SAFETY: only tries to open the library by name.
        if !unsafe { sys::is_culib_present() } {
            return None;
        }
        be.stream().context().bind_to_thread().ok()?;
        let handle = lt::create_handle().ok()?;
        let Ok(workspace) = be.alloc::<u8>(WORKSPACE_BYTES, "cublasLt workspace") else {
            // SAFETY: created just above, not used since.
            let _ = unsafe { lt::destroy_handle(handle) };
            return None;
        };
        Some(Lt { handle, workspace, algos: Mutex::new(HashMap::new()) })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LtKey {
    bf16: bool,
    rows: usize,
    n: usize,
    k: usize,
    batch: usize,
    bias: bool,
    relu: bool,
    c: Option<bool>,
}

/// One fused GEMM: y [m, n] = act(x [m, k] · w [n, k]ᵀ + bias) + c, all f32 device pointers
/// but x and w with `bf16`. `c` is (pointer, shared): y's size, or with `shared` `rows` × n
/// repeated over the m / rows batch entries.
pub(super) struct LtGemm {
    /// x and w are bf16 (f32 accumulation); else f32, multiplied as TF32.
    pub bf16: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: u64,
    pub w: u64,
    pub bias: Option<u64>,
    pub relu: bool,
    pub c: Option<(u64, bool)>,
    /// Rows of x per batch entry (m when unbatched).
    pub rows: usize,
    pub y: u64,
}

/// RAII guards for the descriptors of one call.
struct Desc(sys::cublasLtMatmulDesc_t);
struct Layout(sys::cublasLtMatrixLayout_t);
struct Pref(sys::cublasLtMatmulPreference_t);

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

fn lt_err<'a>(op: &'static str, what: &'a str) -> impl Fn(lt::CublasError) -> Error + 'a {
    move |e| Error::BackendUnavailable { backend: "cuda".into(), reason: format!("{op}: cuBLASLt {what} failed ({e:?})") }
}

/// A column-major layout of `rows` × `cols` (ld `ld`) elements of `dt`, `batch` of them
/// `stride` apart.
fn layout(op: &'static str, dt: sys::cudaDataType, rows: usize, cols: usize, ld: usize, batch: usize, stride: usize) -> Result<Layout> {
    let l = Layout(lt::create_matrix_layout(dt, rows as u64, cols as u64, ld as i64).map_err(lt_err(op, "layout"))?);
    if batch > 1 {
        let (count, stride) = (batch as i32, stride as i64);
        // SAFETY: l is a live layout; the buffers are the attribute's documented types.
        unsafe {
            lt::set_matrix_layout_attribute(l.0, sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count as *const i32 as *const c_void, 4)
                .map_err(lt_err(op, "batch count"))?;
            lt::set_matrix_layout_attribute(l.0, sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride as *const i64 as *const c_void, 8)
                .map_err(lt_err(op, "batch stride"))?;
        }
    }
    Ok(l)
}

impl CudaBackend {
    /// Run `g` on cuBLASLt. Ok(false) when cuBLASLt is unavailable or has no algorithm for
    /// this problem (nothing was queued; the caller takes another path).
    pub(super) fn run_lt(&self, op: &'static str, g: &LtGemm) -> Result<bool> {
        let Some(lt) = self.lt() else { return Ok(false) };
        let batch = g.m / g.rows.max(1);
        if g.m == 0 || g.n == 0 || g.k == 0 || batch * g.rows != g.m || g.rows > i32::MAX as usize || g.n > i32::MAX as usize || g.k > i32::MAX as usize || batch > i32::MAX as usize {
            return Ok(false);
        }
        self.stream().context().bind_to_thread().map_err(super::dev_err(op))?;
        let compute = if g.bf16 { sys::cublasComputeType_t::CUBLAS_COMPUTE_32F } else { sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32 };
        let desc = Desc(lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F).map_err(lt_err(op, "descriptor"))?);
        let epilogue = match (g.bias.is_some(), g.relu) {
            (false, false) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            (false, true) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU,
            (true, false) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            (true, true) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS,
        };
        let (trans_a, trans_b) = (1i32, 0i32); // CUBLAS_OP_T, CUBLAS_OP_N
        let set = |attr: sys::cublasLtMatmulDescAttributes_t, p: *const c_void, size: usize| {
            // SAFETY: desc is live; p points to a value of the attribute's documented type.
            unsafe { lt::set_matmul_desc_attribute(desc.0, attr, p, size) }.map_err(lt_err(op, "descriptor attribute"))
        };
        set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &trans_a as *const i32 as *const c_void, 4)?;
        set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &trans_b as *const i32 as *const c_void, 4)?;
        let epi = epilogue as u32;
        set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi as *const u32 as *const c_void, 4)?;
        if let Some(b) = &g.bias {
            set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, b as *const u64 as *const c_void, 8)?;
        }
        let (n, k, rows) = (g.n, g.k, g.rows);
        let (f32t, ab) = (sys::cudaDataType::CUDA_R_32F, if g.bf16 { sys::cudaDataType::CUDA_R_16BF } else { sys::cudaDataType::CUDA_R_32F });
        let a_l = layout(op, ab, k, n, k, batch, 0)?;
        let b_l = layout(op, ab, k, rows, k, batch, rows * k)?;
        let c_stride = match g.c {
            Some((_, true)) => 0,
            _ => rows * n,
        };
        let c_l = layout(op, f32t, n, rows, n, batch, c_stride)?;
        let d_l = layout(op, f32t, n, rows, n, batch, rows * n)?;

        let key = LtKey { bf16: g.bf16, rows, n, k, batch, bias: g.bias.is_some(), relu: g.relu, c: g.c.map(|c| c.1) };
        let cached = lt.algos.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
        let algo = match cached {
            Some(a) => a,
            None => {
                let pref = Pref(lt::create_matmul_pref().map_err(lt_err(op, "preference"))?);
                let ws = WORKSPACE_BYTES;
                // SAFETY: pref is live; the value is the attribute's documented u64.
                unsafe {
                    lt::set_matmul_pref_attribute(pref.0, sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws as *const usize as *const c_void, 8)
                }
                .map_err(lt_err(op, "preference attribute"))?;
                // SAFETY: every descriptor is live and describes this problem.
                let a = unsafe { lt::get_matmul_algo_heuristic(lt.handle, desc.0, a_l.0, b_l.0, c_l.0, d_l.0, pref.0) }.ok().map(|h| h.algo);
                lt.algos.lock().unwrap_or_else(|p| p.into_inner()).insert(key, a);
                a
            }
        };
        let Some(algo) = algo else { return Ok(false) };
        let (alpha, beta) = (1.0f32, if g.c.is_some() { 1.0f32 } else { 0.0f32 });
        let c_ptr = g.c.map_or(g.y, |c| c.0);
        let ws_ptr = self.ptr(&lt.workspace);
        let stream = self.stream().cu_stream() as sys::cudaStream_t;
        // SAFETY: x [m, k], w [n, k] (bf16 with g.bf16, else f32), y [m, n], c (y's size, or
        // rows × n when shared) and the bias [n] (f32) are live device buffers of this context
        // (the caller's shape checks); the layouts describe exactly those extents; the workspace
        // holds WORKSPACE_BYTES, the most the heuristic was allowed; the call is queued on the
        // backend's one stream.
        unsafe {
            lt::matmul(
                lt.handle,
                desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                g.w as *const c_void,
                a_l.0,
                g.x as *const c_void,
                b_l.0,
                c_ptr as *const c_void,
                c_l.0,
                g.y as *mut c_void,
                d_l.0,
                &algo,
                ws_ptr as *mut c_void,
                WORKSPACE_BYTES,
                stream,
            )
        }
        .map_err(lt_err(op, "matmul"))?;
        Ok(true)
    }
}
