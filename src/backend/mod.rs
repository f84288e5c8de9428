//! The op set every model is written against, and the backends that implement it.
//!
//! Models call `Backend` methods only; they never touch storage. Each op validates shapes and
//! returns `Error::Shape` instead of panicking. Activations are f32 (the CPU backend's only
//! activation dtype); weights passed to `linear`/`embedding` may be f32, f16 or bf16.
//!
//! Layout conventions: tensors are contiguous and row-major. `attention` takes
//! `[batch, heads, seq, head_dim]`, `attention_tokens` `[batch, seq, heads·head_dim]`,
//! `attention_packed` `[batch, seq, 3·heads·head_dim]` (q, k and v side by side).

pub mod cpu;
pub mod cuda;
pub mod mask_select;
mod mlp;
mod overlap;
mod packed_attention;
pub mod profile;
mod two_way;
mod upscale;
pub mod wgpu;
mod windows;

pub use cpu::BinaryOp;
pub use mask_select::{MaskCandidate, Selection};
pub use mlp::Mlp;
pub use overlap::Overlapped;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Pointwise activation, also used as a fused GEMM epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// Exact GELU: x·Φ(x) with erf (HF "gelu").
    Gelu,
    /// tanh approximation (HF "gelu_pytorch_tanh", "gelu_new").
    GeluTanh,
    /// x·σ(1.702x) (HF "quick_gelu", CLIP).
    QuickGelu,
    Relu,
    /// x·σ(x) (HF "silu").
    Silu,
}

impl Activation {
    /// The code the GPU kernels take (ACT_* in kernels/common.cuh and shaders/common.wgsl).
    pub fn kernel_code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::GeluTanh => 2,
            Activation::QuickGelu => 3,
            Activation::Relu => 4,
            Activation::Silu => 5,
        }
    }

    /// Parse an HF `hidden_act` string.
    pub fn from_hf(name: &str) -> Option<Activation> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }
}

/// Additive attention bias.
#[derive(Clone, Copy, Debug)]
pub enum AttnBias<'a> {
    None,
    /// SAM's decomposed relative position bias: for a query q and a key at grid cell
    /// (kh, kw) of a `k_h × k_w` key grid, bias = rel_h[b, h, q, kh] + rel_w[b, h, q, kw].
    /// `rel_h` is `[B, H, Nq, k_h]`, `rel_w` is `[B, H, Nq, k_w]`, and Nk = k_h·k_w.
    DecomposedRelPos { rel_h: &'a Tensor, rel_w: &'a Tensor, k_h: usize, k_w: usize },
}

/// Parameters of `Backend::attention`.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams<'a> {
    /// Softmax scale, usually 1/sqrt(head_dim).
    pub scale: f32,
    /// Causal mask: query i sits at absolute position `kv_len - Nq + i` and sees keys `0..=pos`.
    pub causal: bool,
    /// Only the first `kv_len` keys are valid (a KV cache larger than the sequence); `None` = all.
    pub kv_len: Option<usize>,
    pub bias: AttnBias<'a>,
    /// The caller's weights are half precision, so q, k, v and the softmax weights may be
    /// rounded to f16 for the tensor cores (CUDA's `attention_fwd_mma_*`, for more than 8
    /// queries); scores, softmax statistics and outputs stay f32, and q·scale, k and v must then
    /// fit f16 (magnitudes below 65504), as a half-precision model's do. The CPU and wgpu ignore
    /// it.
    pub low_precision: bool,
}

impl<'a> AttnParams<'a> {
    pub fn new(head_dim: usize) -> Self {
        AttnParams { scale: 1.0 / (head_dim as f32).sqrt(), causal: false, kv_len: None, bias: AttnBias::None, low_precision: false }
    }
}

/// The sizes of one `attention` call, checked the same way on every backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnShape {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    pub nq: usize,
    /// Rows of the key/value tensors (the cache's capacity).
    pub nk_all: usize,
    /// Valid keys (`kv_len`, or every row).
    pub nk: usize,
    pub d: usize,
}

/// Check `attention`'s operands: q [B, H, Nq, D], k = v [B, Hkv, Nk, D] with H a multiple of Hkv,
/// kv_len ≤ Nk, at least one key when there are queries (softmax over nothing is undefined), no
/// more causal queries than keys, and a decomposed relative-position bias that fits the key grid.
pub(crate) fn attention_shape(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams) -> Result<AttnShape> {
    let (qs, ks) = (q.shape(), k.shape());
    if qs.len() != 4 || ks.len() != 4 || k.shape() != v.shape() || qs[0] != ks[0] || qs[3] != ks[3] || ks[1] == 0 || qs[1] % ks[1] != 0 {
        return Err(Error::shape("attention", format!("q {qs:?}, k {ks:?}, v {:?}: need [B, H, N, D] with H a multiple of Hkv", v.shape())));
    }
    attention_keys("attention", qs[0], qs[1], ks[1], qs[2], ks[2], qs[3], p)
}

/// The sizes of one `attention_tokens` call: the heads-split problem, and which operand is one
/// batch entry shared by all.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenAttnShape {
    pub s: AttnShape,
    pub q_shared: bool,
    pub kv_shared: bool,
}

/// Check `attention_tokens`' operands: q [Bq, Nq, H·D], k = v [Bk, Nk, Hkv·D] with Bq, Bk ∈ {1, B},
/// D ≥ 1 and H a multiple of Hkv; then as `attention_shape`.
pub(crate) fn attention_tokens_shape(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, p: &AttnParams) -> Result<TokenAttnShape> {
    const OP: &str = "attention_tokens";
    let (qs, ks) = (q.shape(), k.shape());
    let bad = || Error::shape(OP, format!("q {qs:?}, k {ks:?}, v {:?} with {heads} heads: need [Bq, Nq, H·D] and [Bk, Nk, Hkv·D], Bq and Bk 1 or B, H a multiple of Hkv", v.shape()));
    if qs.len() != 3 || ks.len() != 3 || ks != v.shape() || heads == 0 || qs[2] % heads != 0 || qs[2] == 0 {
        return Err(bad());
    }
    let d = qs[2] / heads;
    if !ks[2].is_multiple_of(d) || ks[2] == 0 || !heads.is_multiple_of(ks[2] / d) {
        return Err(bad());
    }
    let b = qs[0].max(ks[0]);
    if (qs[0] != b && qs[0] != 1) || (ks[0] != b && ks[0] != 1) {
        return Err(bad());
    }
    let s = attention_keys(OP, b, heads, ks[2] / d, qs[1], ks[1], d, p)?;
    Ok(TokenAttnShape { s, q_shared: qs[0] != b, kv_shared: ks[0] != b })
}

/// The checks `attention` and `attention_tokens` share, on the heads-split sizes.
#[allow(clippy::too_many_arguments)]
fn attention_keys(op: &'static str, b: usize, h: usize, hkv: usize, nq: usize, nk_all: usize, d: usize, p: &AttnParams) -> Result<AttnShape> {
    let nk = p.kv_len.unwrap_or(nk_all);
    if nk > nk_all {
        return Err(Error::shape(op, format!("kv_len {nk} > {nk_all} keys")));
    }
    if nk == 0 && b * h * nq > 0 {
        return Err(Error::shape(op, format!("{nq} queries over no keys (kv_len 0)")));
    }
    if p.causal && nq > nk {
        return Err(Error::shape(op, format!("causal attention with {nq} queries but {nk} keys")));
    }
    if let AttnBias::DecomposedRelPos { rel_h, rel_w, k_h, k_w } = p.bias {
        if k_h.checked_mul(k_w) != Some(nk) || rel_h.shape() != [b, h, nq, k_h] || rel_w.shape() != [b, h, nq, k_w] {
            return Err(Error::shape(
                op,
                format!("rel_h {:?} / rel_w {:?} do not fit {nq} queries over a {k_h}×{k_w} key grid of {nk}", rel_h.shape(), rel_w.shape()),
            ));
        }
    }
    Ok(AttnShape { b, h, hkv, nq, nk_all, nk, d })
}

/// Whether `residual` is `linear`'s shared form (y's shape with a leading 1, y's first dim
/// larger) rather than y's own shape; an error when it is neither.
pub(crate) fn shared_residual(op: &'static str, x: &Tensor, w: &Tensor, r: &Tensor) -> Result<bool> {
    let mut y = x.shape().to_vec();
    match (y.last_mut(), w.shape()) {
        (Some(last), &[n, _]) => *last = n,
        _ => return Err(Error::shape(op, format!("x {:?}, weight {:?}: weight must be [N, K]", x.shape(), w.shape()))),
    }
    let rs = r.shape();
    if rs == y.as_slice() {
        return Ok(false);
    }
    if y.len() >= 2 && rs.len() == y.len() && rs[0] == 1 && rs[1..] == y[1..] {
        return Ok(true);
    }
    Err(Error::shape(op, format!("residual {rs:?} is neither the output's shape {y:?} nor shared by its first dim")))
}

/// Header words of each `mask_stats` row: area, stable count, loose count, box x0, y0, x1, y1,
/// and one reserved 0.
pub const MASK_STATS_HEADER: usize = 8;

/// The sizes of one `mask_stats` call: (planes, plane height, plane width, u32 bit words per
/// row of the rectangle).
pub(crate) fn mask_stats_shape(logits: &Tensor, rect: [usize; 4]) -> Result<(usize, usize, usize, usize)> {
    let s = logits.shape();
    let [y0, x0, h, w] = rect;
    if s.len() < 2 || logits.dtype() != DType::F32 {
        return Err(Error::shape("mask_stats", format!("logits {s:?} {}: expected f32 [..., H, W]", logits.dtype())));
    }
    let (ph, pw) = (s[s.len() - 2], s[s.len() - 1]);
    if h == 0 || w == 0 || y0 + h > ph || x0 + w > pw {
        return Err(Error::shape("mask_stats", format!("rectangle y0 {y0}, x0 {x0}, {h}×{w} does not fit {ph}×{pw} planes")));
    }
    let planes = s[..s.len() - 2].iter().product();
    Ok((planes, ph, pw, w.div_ceil(32)))
}

/// The geometry of `rope_qk_write_kv`: n new tokens, h = D/2 rotation pairs per row, and the
/// caches' capacity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RopeKvShape {
    pub n: usize,
    pub h: usize,
    pub q_pairs: usize,
    pub kv_pairs: usize,
    pub max: usize,
}

/// Check `rope_qk_write_kv`'s operands: q [B, H, n, D], k = v [B, Hkv, n, D] (D even), caches
/// [B, Hkv, max, D] with pos + n ≤ max, tables [max_pos, D/2] covering pos + n, all f32 but the
/// caches, which may both be `cache_dtype` instead (a backend's bf16 KV cache).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_kv_shape(q: &Tensor, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, cos: &Tensor, sin: &Tensor, pos: usize, cache_dtype: DType) -> Result<RopeKvShape> {
    const OP: &str = "rope_qk_write_kv";
    let (qs, ks, cs) = (q.shape(), k.shape(), k_cache.shape());
    let bad = |what: String| Err(Error::shape(OP, what));
    if qs.len() != 4 || ks.len() != 4 || cs.len() != 4 || !ks[3].is_multiple_of(2) {
        return bad(format!("q {qs:?}, k {ks:?}, cache {cs:?}: expected [B, H, n, D] with even D and a [B, Hkv, max, D] cache"));
    }
    let (n, d) = (ks[2], ks[3]);
    if v.shape() != ks || v_cache.shape() != cs || qs[0] != ks[0] || qs[2] != n || qs[3] != d || cs[0] != ks[0] || cs[1] != ks[1] || cs[3] != d || pos + n > cs[2] {
        return bad(format!("q {qs:?}, k {ks:?}, v {:?}, caches {cs:?} / {:?} at position {pos}", v.shape(), v_cache.shape()));
    }
    let h = d / 2;
    if cos.dims() != 2 || cos.dim(1) != h || cos.shape() != sin.shape() || pos + n > cos.dim(0) {
        return bad(format!("cos/sin {:?} / {:?}: expected [≥ {}, {h}]", cos.shape(), sin.shape(), pos + n));
    }
    for (t, what) in [(q, "q"), (k, "k"), (v, "v"), (cos, "cos"), (sin, "sin")] {
        if t.dtype() != DType::F32 {
            return bad(format!("{what} is {}, expected f32", t.dtype()));
        }
    }
    let (kc, vc) = (k_cache.dtype(), v_cache.dtype());
    if kc != vc || (kc != DType::F32 && kc != cache_dtype) {
        let allowed = if cache_dtype == DType::F32 { "f32".to_string() } else { format!("both f32 or both {cache_dtype}") };
        return bad(format!("caches are {kc} and {vc}, expected {allowed}"));
    }
    Ok(RopeKvShape { n, h, q_pairs: q.numel() / 2, kv_pairs: k.numel() / 2, max: cs[2] })
}

pub(crate) use two_way::TwoWayShape;
pub use two_way::TwoWayParams;

/// The sizes of one `upscale_masks` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UpscaleShape {
    /// Prompts P, feature grid side E, first and second upscaler widths C1 and C2, masks M.
    pub p: usize,
    pub e: usize,
    pub c1: usize,
    pub c2: usize,
    pub m: usize,
}

/// Check `upscale_masks`' operands: y [P, E, E, 4·C1] f32, ln_w/ln_b [C1], w2 [4·C2, C1] f32,
/// b2 [C2], hyper [P, M, C2] f32.
pub(crate) fn upscale_masks_shape(y: &Tensor, ln_w: &Tensor, ln_b: &Tensor, w2: &Tensor, b2: &Tensor, hyper: &Tensor) -> Result<UpscaleShape> {
    let (ys, ws, hs) = (y.shape(), w2.shape(), hyper.shape());
    let f32s = [y, ln_w, ln_b, w2, b2, hyper].iter().all(|t| t.dtype() == DType::F32);
    let ok = f32s
        && ys.len() == 4
        && ys[1] == ys[2]
        && ys[3] % 4 == 0
        && ys[3] > 0
        && ws.len() == 2
        && ws[0] % 4 == 0
        && ws[0] > 0
        && ws[1] * 4 == ys[3]
        && ln_w.shape() == [ws[1]]
        && ln_b.shape() == [ws[1]]
        && b2.shape() == [ws[0] / 4]
        && hs.len() == 3
        && hs[0] == ys[0]
        && hs[2] == ws[0] / 4;
    if !ok {
        return Err(Error::shape(
            "upscale_masks",
            format!(
                "y {ys:?}, norm {:?}/{:?}, w2 {ws:?}, b2 {:?}, hyper {hs:?}: expected f32 [P, E, E, 4·C1], [C1], [C1], [4·C2, C1], [C2], [P, M, C2]",
                ln_w.shape(),
                ln_b.shape(),
                b2.shape()
            ),
        ));
    }
    Ok(UpscaleShape { p: ys[0], e: ys[1], c1: ws[1], c2: ws[0] / 4, m: hs[1] })
}

/// Which backend the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Auto,
    Cpu,
    Cuda,
    Wgpu,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "wgpu" => Ok(BackendKind::Wgpu),
            _ => Err(Error::arg("--backend", format!("`{s}`: expected auto, cpu, cuda or wgpu"))),
        }
    }
}

/// A decode step recorded for replay (a CUDA graph; `Backend::capture_decode`).
#[derive(Debug)]
pub enum StepGraph {
    Cuda(cuda::DecodeGraph),
}

/// A compute backend. Every variant implements the same methods; tensors live on the backend
/// that made them (`upload` moves host tensors on, `to_host` brings them back).
#[derive(Debug)]
pub enum Backend {
    Cpu(cpu::CpuBackend),
    Cuda(cuda::CudaBackend),
    Wgpu(wgpu::WgpuBackend),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Backend::Cpu($b) => $e,
            Backend::Cuda($b) => $e,
            Backend::Wgpu($b) => $e,
        }
    };
}

/// `dispatch!` for one op, timed under `name` when profiling is on (profile.rs).
macro_rules! op {
    ($self:ident, $name:expr, $b:ident => $e:expr) => {{
        let _span = profile::Span::start($self, || $name.to_string());
        dispatch!($self, $b => $e)
    }};
}

impl Backend {
    /// Create the requested backend. `Auto` picks the fastest one available: CUDA when a device
    /// exists, else wgpu on a hardware GPU adapter, else the CPU (with a one-line notice on
    /// stderr saying why the GPUs were passed over, when one was expected).
    pub fn new(kind: BackendKind) -> Result<Backend> {
        match kind {
            BackendKind::Cpu => Ok(Backend::cpu()),
            BackendKind::Cuda => Ok(Backend::Cuda(cuda::CudaBackend::new()?)),
            BackendKind::Wgpu => Ok(Backend::Wgpu(wgpu::WgpuBackend::new()?)),
            BackendKind::Auto => {
                let cuda_err = match cuda::CudaBackend::new() {
                    Ok(b) => return Ok(Backend::Cuda(b)),
                    Err(e) => e,
                };
                match wgpu::WgpuBackend::new_hardware() {
                    Ok(b) => Ok(Backend::Wgpu(b)),
                    Err(wgpu_err) => {
                        eprintln!("notice: running on the CPU ({cuda_err}; {wgpu_err})");
                        Ok(Backend::cpu())
                    }
                }
            }
        }
    }

    pub fn cpu() -> Backend {
        Backend::Cpu(cpu::CpuBackend::new())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu(_) => "cpu",
            Backend::Cuda(_) => "cuda",
            Backend::Wgpu(_) => "wgpu",
        }
    }

    /// The device in words (for reports): "cpu", or the GPU's name.
    pub fn device_name(&self) -> String {
        match self {
            Backend::Cpu(_) => "cpu".into(),
            Backend::Cuda(b) => b.device_name(),
            Backend::Wgpu(b) => b.device_name(),
        }
    }

    /// Move a host tensor (any dtype) onto the backend. Free on the CPU.
    pub fn upload(&self, t: &Tensor) -> Result<Tensor> {
        match self {
            Backend::Cpu(_) => Ok(t.clone()),
            Backend::Cuda(b) => b.upload(t),
            Backend::Wgpu(b) => b.upload(t),
        }
    }

    /// Upload a weight, possibly converting to the backend's preferred weight dtype.
    pub fn upload_weight(&self, t: &Tensor) -> Result<Tensor> {
        match self {
            Backend::Cpu(_) => Ok(t.clone()),
            Backend::Cuda(b) => b.upload_weight(t),
            Backend::Wgpu(b) => b.upload_weight(t),
        }
    }

    /// Host copy of a backend tensor (a host tensor comes back as it is).
    pub fn to_host(&self, t: &Tensor) -> Result<Tensor> {
        if t.cpu_data().is_some() {
            return Ok(t.clone());
        }
        let _span = profile::Span::start(self, || "to_host".into());
        match self {
            Backend::Cpu(_) => Err(Error::shape("to_host", format!("tensor is on {}, not the CPU backend", t.device_name()))),
            Backend::Cuda(b) => b.to_host(t),
            Backend::Wgpu(b) => b.to_host(t),
        }
    }

    /// Host f32 values of a backend tensor.
    pub fn to_vec_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.to_host(t)?.to_f32_vec()
    }

    /// y = act(x · wᵀ + bias) (+ residual). x: [.., K] f32; w: [N, K] f32/f16/bf16; bias: [N];
    /// residual: y's shape, or y's shape with a leading 1 (one residual shared by every entry of
    /// y's first dim), added after the activation; every backend adds a shared residual in the
    /// GEMM's epilogue.
    pub fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
        let m = x.numel() / x.shape().last().copied().unwrap_or(1).max(1);
        let _span = profile::Span::start(self, || match self {
            Backend::Cuda(b) => b.linear_path(m, w).to_string(),
            _ => (if m <= 4 { "linear, M ≤ 4" } else { "linear, M > 4" }).to_string(),
        });
        dispatch!(self, b => b.linear(x, w, bias, act, residual))
    }

    /// x · wᵢᵀ for several weights that share the input (fused Q/K/V or gate/up projections
    /// without concatenating the stored weights). No bias or activation.
    pub fn linear_many(&self, x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        op!(self, "linear_many", b => b.linear_many(x, ws))
    }

    /// rms_norm(x, norm_w, eps) · wᵢᵀ for each weight (no bias): the pre-attention norm and the
    /// Q/K/V projections. On CUDA for M ≤ 4 rows, and on wgpu for one row, one GEMV dispatch
    /// in which each row's threads normalise x themselves; on CUDA for more rows on bf16
    /// weights, the norm writes the tensor-core GEMMs' bf16 operand itself; elsewhere the two
    /// ops.
    pub fn rms_norm_linear_many(&self, x: &Tensor, norm_w: &Tensor, eps: f32, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        let span = || profile::Span::start(self, || "rms_norm_linear_many".to_string());
        match self {
            Backend::Cuda(b) if cuda::CudaBackend::norm_gemv_fits(x, norm_w, ws) => {
                let _span = span();
                return b.rms_norm_linear_many(x, norm_w, eps, ws);
            }
            Backend::Cuda(b) if b.norm_gemm_fits(x, norm_w, ws) => {
                let _span = span();
                return b.rms_norm_linear_many_gemm(x, norm_w, eps, ws);
            }
            Backend::Wgpu(b) if b.gemv_many_fits(x, ws) => {
                let _span = span();
                return b.rms_norm_linear_many(x, norm_w, eps, ws);
            }
            _ => {}
        }
        self.linear_many(&self.rms_norm(x, norm_w, eps)?, ws)
    }

    /// silu(n · w_gateᵀ) ⊙ (n · w_upᵀ) with n = rms_norm(x, norm_w, eps): the post-attention
    /// norm and a SwiGLU MLP's first half. On CUDA for M ≤ 4 rows, and on wgpu for one row, one
    /// GEMV dispatch; elsewhere `rms_norm_linear_many` (which, on CUDA for more rows on bf16
    /// weights, has the norm write the GEMMs' bf16 operand) and `silu_mul`.
    pub fn rms_norm_swiglu(&self, x: &Tensor, norm_w: &Tensor, eps: f32, w_gate: &Tensor, w_up: &Tensor) -> Result<Tensor> {
        let span = || profile::Span::start(self, || "rms_norm_swiglu".to_string());
        let one_shape = w_gate.shape() == w_up.shape();
        match self {
            Backend::Cuda(b) if one_shape && cuda::CudaBackend::norm_gemv_fits(x, norm_w, &[w_gate, w_up]) => {
                let _span = span();
                return b.rms_norm_swiglu(x, norm_w, eps, w_gate, w_up);
            }
            Backend::Wgpu(b) if one_shape && b.gemv_many_fits(x, &[w_gate, w_up]) => {
                let _span = span();
                return b.rms_norm_swiglu(x, norm_w, eps, w_gate, w_up);
            }
            _ => {}
        }
        match self.rms_norm_linear_many(x, norm_w, eps, &[w_gate, w_up])?.as_slice() {
            [gate, up] => self.silu_mul(gate, up),
            _ => Err(Error::shape("rms_norm_swiglu", "linear_many did not return two outputs")),
        }
    }

    /// Batched matmul: a [.., M, K] · b [.., K, N] (or b [.., N, K] when `trans_b`). b may have
    /// no batch dims (shared by every batch) or the same batch dims as a.
    pub fn matmul(&self, a: &Tensor, b: &Tensor, trans_b: bool) -> Result<Tensor> {
        op!(self, "matmul", be => be.matmul(a, b, trans_b))
    }

    /// LayerNorm over the last dim.
    pub fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        op!(self, "layer_norm", be => be.layer_norm(x, w, b, eps))
    }

    /// LayerNorm over the channel dim of an NCHW tensor (SAM's LayerNorm2d).
    pub fn layer_norm_channels(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        op!(self, "layer_norm_channels", be => be.layer_norm_channels(x, w, b, eps))
    }

    /// RMSNorm over the last dim: x / sqrt(mean(x²) + eps) · w.
    pub fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        op!(self, "rms_norm", be => be.rms_norm(x, w, eps))
    }

    /// Softmax over the last dim.
    pub fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        op!(self, "softmax", be => be.softmax(x))
    }

    /// Pointwise activation.
    pub fn activate(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        op!(self, "activate", be => be.activate(x, act))
    }

    /// silu(gate) · up, elementwise (SwiGLU).
    pub fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        op!(self, "silu_mul", be => be.silu_mul(gate, up))
    }

    /// a + b with numpy broadcasting.
    pub fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        op!(self, "add", be => be.binary(a, b, BinaryOp::Add))
    }

    /// a − b with numpy broadcasting.
    pub fn sub(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        op!(self, "sub", be => be.binary(a, b, BinaryOp::Sub))
    }

    /// a · b with numpy broadcasting.
    pub fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        op!(self, "mul", be => be.binary(a, b, BinaryOp::Mul))
    }

    /// x · s + t.
    pub fn affine(&self, x: &Tensor, s: f32, t: f32) -> Result<Tensor> {
        op!(self, "affine", be => be.affine(x, s, t))
    }

    /// Attention: q [B, H, Nq, D]; k, v [B, Hkv, Nk, D] with H a multiple of Hkv (GQA).
    /// Returns [B, H, Nq, D]. Never materialises more than a block of scores.
    pub fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams) -> Result<Tensor> {
        let _span = profile::Span::start(self, || match (self, attention_shape(q, k, v, p)) {
            (Backend::Cuda(b), Ok(s)) => format!("attention, {}", b.attention_family(&s, p, k.dtype()).label()),
            _ => (if q.dims() == 4 && q.dim(2) <= 8 { "attention, Nq ≤ 8" } else { "attention" }).to_string(),
        });
        dispatch!(self, be => be.attention(q, k, v, p))
    }

    /// Attention on token-major tensors: q [Bq, Nq, H·D]; k, v [Bk, Nk, Hkv·D], where a batch
    /// of 1 is shared by every entry of the other operand's batch B (Bq, Bk ∈ {1, B}). Returns
    /// [B, Nq, H·D]: what splitting the heads, `attention` and merging them would give. Every
    /// backend reads and writes this layout directly through strides (no permutes, no copies
    /// of a shared batch). Params as for `attention` (a bias is [B, H, Nq, k_*]).
    pub fn attention_tokens(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, p: &AttnParams) -> Result<Tensor> {
        let t = attention_tokens_shape(q, k, v, heads, p)?;
        let _span = profile::Span::start(self, || match self {
            Backend::Cuda(b) => format!("attention_tokens, {}", b.attention_family(&t.s, p, k.dtype()).label()),
            _ => format!("attention_tokens, Nq {} 8", if t.s.nq <= 8 { "≤" } else { ">" }),
        });
        dispatch!(self, be => be.attention_tokens(q, k, v, &t, p))
    }

    /// Self-attention on a packed projection: qkv [B, N, 3·H·D] holds q, k and v side by side
    /// (SAM's `qkv` linear, read as [B, N, 3, H, D]), with SAM's decomposed relative-position
    /// bias when `rel` gives its tables rh, rw [S, S, D] for tokens on an S × S grid (N = S²;
    /// query (y, x) and key (ky, kx) add q·rh[y, ky] + q·rw[x, kx] to their score). Scale
    /// 1/√D, no mask; `low_precision` as `AttnParams::low_precision`. Returns [B, N, H·D], the
    /// heads merged. CUDA reads q, k and v in place; the other backends compose it
    /// (packed_attention.rs).
    pub fn attention_packed(&self, qkv: &Tensor, heads: usize, rel: Option<(&Tensor, &Tensor)>, low_precision: bool) -> Result<Tensor> {
        let s = packed_attention::packed_shape(qkv, heads, rel)?;
        match self {
            Backend::Cuda(b) if b.packed_attention_fits(&s) => {
                let _span = profile::Span::start(self, || "attention_packed".to_string());
                b.attention_packed(qkv, rel, low_precision, &s)
            }
            _ => packed_attention::composed(self, qkv, rel, low_precision, &s),
        }
    }

    /// Whether models should project q, k and v with one packed linear for `attention_packed`
    /// (heads of `head_dim`, no relative positions): where it reads q, k and v in place (CUDA);
    /// elsewhere it is composed from copies, and three linears into `attention_tokens` are
    /// cheaper.
    pub fn packs_qkv(&self, head_dim: usize) -> bool {
        match self {
            Backend::Cuda(b) => b.packed_attention_fits(&packed_attention::PackedShape { b: 1, n: 1, heads: 1, head_dim, side: None }),
            _ => false,
        }
    }

    /// A pre-norm transformer layer's MLP half: x + fc2(act(fc1(LN(x)) + b1)) + b2, x [.., D]
    /// f32, the LayerNorm (weight, bias, eps) over D, fc1 [H, D], fc2 [D, H] (mlp.rs). Returns
    /// x's shape. CUDA on bf16 weights writes the norm and the hidden layer as bf16 (the
    /// values its bf16 GEMMs would round them to anyway); elsewhere `layer_norm` and two
    /// `linear`s.
    pub fn layer_norm_mlp(&self, x: &Tensor, ln: (&Tensor, &Tensor, f32), m: Mlp) -> Result<Tensor> {
        let (rows, _, h) = mlp::mlp_shape(x, ln, &m)?;
        match self {
            Backend::Cuda(b) if b.layer_norm_mlp_fits(x, &m, rows) => {
                let _span = profile::Span::start(self, || "layer_norm_mlp".to_string());
                b.layer_norm_mlp(x, ln, &m, rows, h)
            }
            _ => mlp::composed(self, x, ln, &m),
        }
    }

    /// SAM's window partition: x [G, G, D] zero-padded bottom/right to a multiple of `w` and cut
    /// into windows [n², w·w, D], n = ⌈G / w⌉ (windows and their tokens row-major).
    pub fn window_partition(&self, x: &Tensor, w: usize) -> Result<Tensor> {
        let (g, d) = windows::grid_shape(x, w)?;
        match self {
            Backend::Cuda(b) => {
                let _span = profile::Span::start(self, || "window_partition".to_string());
                b.window_partition(x, w, g, d)
            }
            _ => windows::composed_partition(self, x, w, g, d),
        }
    }

    /// The inverse of `window_partition` for a grid of side `g`: [n², w·w, D] → [G, G, D], the
    /// padding dropped.
    pub fn window_unpartition(&self, x: &Tensor, w: usize, g: usize) -> Result<Tensor> {
        let d = windows::windows_shape(x, w, g)?;
        match self {
            Backend::Cuda(b) => {
                let _span = profile::Span::start(self, || "window_unpartition".to_string());
                b.window_unpartition(x, w, g, d)
            }
            _ => windows::composed_unpartition(self, x, w, g, d),
        }
    }

    /// Rotary embedding, HF "rotate_half" layout: x [B, H, N, D]; cos, sin [max_pos, D/2];
    /// token i uses row `pos_offset + i`.
    pub fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, pos_offset: usize) -> Result<Tensor> {
        op!(self, "rope", be => be.rope(x, cos, sin, pos_offset))
    }

    /// Rows of `table` [V, D] (any float dtype) for `ids` → [ids.len(), D] f32. Errors on an
    /// id ≥ V.
    pub fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        op!(self, "embedding", be => be.embedding(table, ids))
    }

    /// Permute dimensions (a copy).
    pub fn permute(&self, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
        op!(self, "permute", be => be.permute(x, dims))
    }

    /// `len` entries of dim `dim` starting at `start` (a copy; f32 or i32).
    pub fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        op!(self, "narrow", be => be.narrow(x, dim, start, len))
    }

    /// Concatenate along `dim` (f32 or i32, all of one dtype).
    pub fn concat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        op!(self, "concat", be => be.concat(xs, dim))
    }

    /// Zero-pad the last two dims of an [.., H, W] tensor: (top, bottom, left, right).
    pub fn pad2d(&self, x: &Tensor, top: usize, bottom: usize, left: usize, right: usize) -> Result<Tensor> {
        op!(self, "pad2d", be => be.pad2d(x, top, bottom, left, right))
    }

    /// 2-D convolution, NCHW: x [B, Cin, H, W], w [Cout, Cin, kh, kw], symmetric zero padding.
    pub fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
        op!(self, "conv2d", be => be.conv2d(x, w, bias, stride, padding))
    }

    /// Write `new` [B, H, n, D] into `cache` [B, H, max, D] at positions `pos..pos+n`, in place.
    pub fn write_kv(&self, cache: &mut Tensor, new: &Tensor, pos: usize) -> Result<()> {
        op!(self, "write_kv", be => be.write_kv(cache, new, pos))
    }

    /// A step's queries and keys roped and its keys and values cached: returns rope(q) and
    /// writes rope(k) into `k_cache` and v into `v_cache` ([B, Hkv, max, D]) at positions
    /// pos..pos+n (q [B, H, n, D], k and v [B, Hkv, n, D]): what two `rope`s and two
    /// `write_kv`s do. One launch on CUDA, two dispatches on wgpu (a third binding set would pass
    /// WebGPU's eight), those ops on the CPU.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_qk_write_kv(&self, q: &Tensor, k: &Tensor, v: &Tensor, k_cache: &mut Tensor, v_cache: &mut Tensor, cos: &Tensor, sin: &Tensor, pos: usize) -> Result<Tensor> {
        let cache_dtype = if matches!(self, Backend::Cuda(_)) { DType::BF16 } else { DType::F32 };
        let s = rope_kv_shape(q, k, v, k_cache, v_cache, cos, sin, pos, cache_dtype)?;
        let _span = profile::Span::start(self, || "rope_qk_write_kv".to_string());
        match self {
            Backend::Cuda(b) => b.rope_qk_write_kv(q, k, v, k_cache, v_cache, cos, sin, pos, s),
            Backend::Wgpu(b) => b.rope_qk_write_kv(q, k, v, k_cache, v_cache, cos, sin, pos, s),
            Backend::Cpu(b) => {
                let k = b.rope(k, cos, sin, pos)?;
                b.write_kv(k_cache, &k, pos)?;
                b.write_kv(v_cache, v, pos)?;
                b.rope(q, cos, sin, pos)
            }
        }
    }

    /// Superpixel scatter-mean pooling with the SSPE inputs in one pass:
    /// out[s, c] = Σ_p weights[s, p] · (feats[p, c] + pos[p, c]). weights [S, P] are the
    /// row-normalised coverage (each row sums to 1), feats and pos [P, C]. Deterministic: every
    /// output is one ordered sum over p (no atomics).
    pub fn scatter_mean_pool(&self, weights: &Tensor, feats: &Tensor, pos: &Tensor) -> Result<Tensor> {
        op!(self, "scatter_mean_pool", be => be.scatter_mean_pool(weights, feats, pos))
    }

    /// Per mask plane of `logits` (f32 [..., H, W]), over the cell rectangle `rect` =
    /// [y0, x0, h, w]: what SAM's mask filters need, so the full logits never leave the device.
    /// Returns I32 [planes, MASK_STATS_HEADER + h·⌈w/32⌉]; row i holds
    /// `[area, stable, loose, bx0, by0, bx1, by1, 0]` — the counts of cells with logit > 0, with
    /// logit > offset and with logit > −offset, the inclusive rectangle-relative box of the
    /// logit > 0 cells (all −1 when there are none) — then the binary mask: word j of rectangle
    /// row r has bit b set where logit[y0 + r, x0 + 32j + b] > 0. Integer results: identical on
    /// every backend.
    pub fn mask_stats(&self, logits: &Tensor, rect: [usize; 4], offset: f32) -> Result<Tensor> {
        op!(self, "mask_stats", be => be.mask_stats(logits, rect, offset))
    }

    /// The second half of SAM's upscaler fused with the hypernetwork product (the mask
    /// decoder's output). `y` [P, E, E, 4·C1] is the first transposed conv (kernel = stride = 2)
    /// as a channels-last linear: pixel (i, j), sub-position a·2 + b, C1 channels, which is
    /// output pixel (2i + a, 2j + b) of the 2E × 2E map. Each such pixel gets LayerNorm over its
    /// C1 channels (`ln_w`, `ln_b`, `eps`) and GELU, then the second transposed conv: `w2`
    /// [4·C2, C1], row (c·2 + d)·C2 + o holding HF's weight[:, o, c, d], plus `b2` [C2], GELU,
    /// giving C2 features at output pixel (4i + 2a + c, 4j + 2b + d); mask m there is their dot
    /// product with `hyper[p, m]` [P, M, C2]. Returns [P, M, 4E, 4E]. The upscaled features
    /// ([P, C2, 4E, 4E], 16× the input's pixels) never exist in memory.
    pub fn upscale_masks(&self, y: &Tensor, ln: (&Tensor, &Tensor, f32), w2: &Tensor, b2: &Tensor, hyper: &Tensor) -> Result<Tensor> {
        let s = upscale_masks_shape(y, ln.0, ln.1, w2, b2, hyper)?;
        // The composed path's ops are profiled one by one.
        let span = || profile::Span::start(self, || "upscale_masks".to_string());
        match self {
            Backend::Cpu(b) => {
                let _span = span();
                b.upscale_masks(y, ln, w2, b2, hyper)
            }
            Backend::Cuda(b) if cuda::CudaBackend::upscale_masks_fits(&s) => {
                let _span = span();
                b.upscale_masks(y, ln, w2, b2, hyper, s)
            }
            Backend::Wgpu(b) if wgpu::WgpuBackend::upscale_masks_fits(&s) => {
                let _span = span();
                b.upscale_masks(y, ln, w2, b2, hyper, s)
            }
            _ => upscale::composed(self, y, ln, w2, b2, hyper, s),
        }
    }

    /// SAM's image-to-token attention, its output projection, residual and LayerNorm, on
    /// factored weights (two_way.rs): every image token j of prompt b scores the prompt's R
    /// rows, s[b, j, r] = x[b, j]·ax[b, r] + y[j, g(r)]·ay[b, r], takes a softmax within each
    /// group of T = R / G rows (one per head), and becomes
    /// LN(x[b, j] + bias + Σ_r p[b, j, r]·u[b, r]). x [B or 1, N, C] (one set shared by every
    /// prompt), y [1, N, G·Dy] (shared), ax [B, R, C], ay [B, R, Dy], u [B, R, C], bias and the
    /// LayerNorm [C], all f32; G = `p.groups`. Returns [B, N, C]. No [B, N, C] intermediate is
    /// formed.
    #[allow(clippy::too_many_arguments)]
    pub fn two_way_update(&self, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, u: &Tensor, bias: &Tensor, ln: (&Tensor, &Tensor, f32), p: TwoWayParams) -> Result<Tensor> {
        let s = two_way::two_way_shape("two_way_update", x, y, ax, ay, p)?;
        two_way::check_update(&s, u, bias, ln)?;
        let span = || profile::Span::start(self, || "two_way_update".to_string());
        match self {
            Backend::Cpu(b) => {
                let _span = span();
                b.two_way_update(x, y, ax, ay, u, bias, ln, s)
            }
            Backend::Cuda(b) if cuda::CudaBackend::two_way_fits(&s) => {
                let _span = span();
                b.two_way_update(x, y, ax, ay, u, bias, ln, s)
            }
            Backend::Wgpu(b) if wgpu::WgpuBackend::two_way_fits(&s) => {
                let _span = span();
                b.two_way_update(x, y, ax, ay, u, bias, ln, s)
            }
            _ => two_way::composed_update(self, x, y, ax, ay, u, bias, ln, &s),
        }
    }

    /// SAM's token-to-image attention before its value and output projections, on factored
    /// weights: with the scores of `two_way_update`, row r of prompt b takes a softmax over the
    /// N image tokens and returns their weighted sum, Σ_j p[b, r, j]·x[b, j]. Shapes as there;
    /// returns [B, R, C].
    pub fn two_way_pool(&self, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, p: TwoWayParams) -> Result<Tensor> {
        let s = two_way::two_way_shape("two_way_pool", x, y, ax, ay, p)?;
        let span = || profile::Span::start(self, || "two_way_pool".to_string());
        match self {
            Backend::Cpu(b) => {
                let _span = span();
                b.two_way_pool(x, y, ax, ay, s)
            }
            Backend::Cuda(b) if cuda::CudaBackend::two_way_fits(&s) => {
                let _span = span();
                b.two_way_pool(x, y, ax, ay, s)
            }
            Backend::Wgpu(b) if wgpu::WgpuBackend::two_way_fits(&s) => {
                let _span = span();
                b.two_way_pool(x, y, ax, ay, s)
            }
            _ => two_way::composed_pool(self, x, y, ax, ay, &s),
        }
    }

    /// Whether this backend records a decode step once and replays it per token (CUDA graphs;
    /// `VISWORD_CUDA_GRAPH=0` keeps CUDA eager, and profiling turns it off). The other backends
    /// run every step eagerly.
    pub fn step_graphs(&self) -> bool {
        matches!(self, Backend::Cuda(b) if b.step_graphs())
    }

    /// The dtype a model's KV cache is kept in here, for a model whose weights are half
    /// precision (`half_weights`) or not. CUDA keeps half-precision models' keys and values as
    /// bf16 (what a bf16 model's k_proj and v_proj would round them to; decode attention then
    /// reads half the bytes) unless `VISWORD_CUDA_KV=f32` at start-up or `set_kv_bf16(false)`;
    /// everything else is f32. `rope_qk_write_kv` and `attention` take caches of this dtype.
    pub fn kv_cache_dtype(&self, half_weights: bool) -> DType {
        match self {
            Backend::Cuda(b) if half_weights && b.kv_bf16() => DType::BF16,
            _ => DType::F32,
        }
    }

    /// Record `step`, the ops of one decode step for token `id` at position `pos` (whose kernels
    /// have all run once before, so they are loaded), returning f32 outputs of `shapes`; the
    /// step runs once and its outputs come back with the graph. The embedding of one id,
    /// `rope_qk_write_kv` of one token and single-query attention with a `kv_len` read their
    /// id, position and key count on the device when replayed. On an error nothing has run.
    /// Everything queued on the backend while `step` runs is recorded, so no other thread may
    /// use the backend meanwhile.
    pub fn capture_decode(&self, id: u32, pos: usize, shapes: &[Vec<usize>], step: impl FnOnce() -> Result<Vec<Tensor>>) -> Result<(StepGraph, Vec<Tensor>)> {
        match self {
            Backend::Cuda(b) => b.capture_decode(id, pos, shapes, step).map(|(g, out)| (StepGraph::Cuda(g), out)),
            _ => Err(Error::shape("decode graph", format!("the {} backend does not record decode steps", self.name()))),
        }
    }

    /// Replay a recorded decode step for token `id` at position `pos` (checked by the caller
    /// against the model and the cache the step was recorded with); returns its outputs.
    pub fn replay_decode(&self, g: &StepGraph, id: u32, pos: usize) -> Result<Vec<Tensor>> {
        match (self, g) {
            (Backend::Cuda(b), StepGraph::Cuda(g)) => b.replay_decode(g, id, pos),
            _ => Err(Error::shape("decode graph", format!("a CUDA graph cannot run on the {} backend", self.name()))),
        }
    }

    /// A device timestamp queued on this backend's stream now, for the profiler (profile.rs);
    /// `end` when it closes an op. None on the CPU, on an adapter without timestamp queries
    /// inside compute passes, or when the device refuses one.
    pub(crate) fn profile_stamp(&self, end: bool) -> Option<profile::Stamp> {
        match self {
            Backend::Cpu(_) => None,
            Backend::Cuda(b) => b.mark().ok().map(profile::Stamp::Cuda),
            Backend::Wgpu(b) => b.profile_stamp(end),
        }
    }

    /// Block until every op queued so far has finished, so a host clock brackets real work
    /// (benchmarks). The CPU runs ops synchronously: nothing to wait for.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Backend::Cpu(_) => Ok(()),
            Backend::Cuda(b) => b.synchronize(),
            Backend::Wgpu(b) => b.synchronize(),
        }
    }
}
