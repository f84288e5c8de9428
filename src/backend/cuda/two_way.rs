//! SAM's two-way attention on factored weights (`Backend::two_way_update` / `two_way_pool`):
//! the update in one kernel per 32 image tokens of a prompt, the pool as per-chunk partials (256
//! image tokens each) merged in chunk order by a second kernel. Half-precision callers
//! (`TwoWayParams::low_precision`) get the tensor-core builds (kernels/two_way_mma.cu, TF32
//! operands), the others the f32 kernels on the CUDA cores (kernels/two_way.cu).
//!
//! `VISWORD_CUDA_TWO_WAY` (read once per process) or `CudaBackend::set_two_way_mode` chooses:
//! `simt` runs the f32 kernels for every caller, `composed` sends both ops to the composed path
//! (matmuls, softmax and LayerNorm). The switch is process-wide: `two_way_fits` is asked before
//! a backend is at hand.

use std::sync::atomic::{AtomicU8, Ordering};

use super::{grid_rows, kernels, launch, CudaBackend};
use crate::backend::TwoWayShape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Threads per block of every two-way kernel (TW_THREADS).
const THREADS: u32 = 256;
/// Image tokens per block of the update (TW_ROWS).
const ROWS: usize = 32;
/// Image tokens per partial of the pool (TWP_CHUNK).
const CHUNK: usize = 256;
/// Channel and query-row limits of the kernels (TW_C, TW_R).
const MAX_C: usize = 256;
const MAX_R: usize = 64;

/// How the two-way ops run on CUDA (`VISWORD_CUDA_TWO_WAY`, `CudaBackend::set_two_way_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwoWayMode {
    /// Tensor cores (TF32) for half-precision callers, f32 kernels for the rest (the default).
    Mma,
    /// The f32 kernels for every caller (`simt`).
    Simt,
    /// The composed ops (`composed`).
    Composed,
}

/// The mode: 0 = not decided yet (the environment decides on first use), else 1 + the index of
/// a `TwoWayMode`.
static MODE: AtomicU8 = AtomicU8::new(0);

fn mode() -> TwoWayMode {
    const MODES: [TwoWayMode; 3] = [TwoWayMode::Mma, TwoWayMode::Simt, TwoWayMode::Composed];
    if MODE.load(Ordering::Relaxed) == 0 {
        let m = match std::env::var("VISWORD_CUDA_TWO_WAY").as_deref().map(str::trim) {
            Ok("composed") => TwoWayMode::Composed,
            Ok("simt") => TwoWayMode::Simt,
            _ => TwoWayMode::Mma,
        };
        // A setter call that raced this one wins.
        let _ = MODE.compare_exchange(0, 1 + m as u8, Ordering::Relaxed, Ordering::Relaxed);
    }
    MODES[(MODE.load(Ordering::Relaxed) - 1) as usize]
}

impl CudaBackend {
    /// Whether the kernels take these sizes (C ≤ 256 channels and R ≤ 64 query rows, their
    /// shared-memory tiles; N, B and G·Dy within u32) and are switched on; the composed path
    /// runs otherwise.
    pub(crate) fn two_way_fits(s: &TwoWayShape) -> bool {
        let small = |v: usize| v <= (u32::MAX >> 1) as usize;
        mode() != TwoWayMode::Composed && s.c <= MAX_C && s.r <= MAX_R && small(s.n) && small(s.b) && small(s.groups * s.dy)
    }

    /// How `two_way_update` / `two_way_pool` run (`VISWORD_CUDA_TWO_WAY=simt|composed` at
    /// start-up, or `set_two_way_mode`).
    pub fn two_way_mode(&self) -> TwoWayMode {
        mode()
    }

    /// Set how the two-way ops run, for every CUDA backend of the process.
    pub fn set_two_way_mode(&self, m: TwoWayMode) {
        MODE.store(1 + m as u8, Ordering::Relaxed)
    }

    /// `Backend::two_way_update` in one kernel (operands checked by the caller, sizes by
    /// `two_way_fits`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn two_way_update(&self, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, u: &Tensor, bias: &Tensor, ln: (&Tensor, &Tensor, f32), s: TwoWayShape) -> Result<Tensor> {
        const OP: &str = "two_way_update";
        let (b32, n32, c32, r32, t32, dy32) = sizes(OP, &s)?;
        let out = self.alloc_f32(&[s.b, s.n, s.c])?;
        let (xp, yp, axp, ayp, up) = (self.f32_ptr(x, OP)?, self.f32_ptr(y, OP)?, self.f32_ptr(ax, OP)?, self.f32_ptr(ay, OP)?, self.f32_ptr(u, OP)?);
        let (bp, lwp, lbp, eps, op) = (self.f32_ptr(bias, OP)?, self.f32_ptr(ln.0, OP)?, self.f32_ptr(ln.1, OP)?, ln.2, self.ptr(&out));
        let xstride = x_batch_stride(&s);
        let cfg = grid_rows(s.b * s.n.div_ceil(ROWS), THREADS, 0);
        let (module, name) = if tensor_cores(&s) { (&kernels::TWO_WAY_MMA, "two_way_update_tf32") } else { (&kernels::TWO_WAY, "two_way_update_f32") };
        launch!(self, OP, self.function(module, name)?, cfg, xp, xstride, yp, axp, ayp, up, bp, lwp, lbp, eps, op, b32, n32, c32, r32, t32, dy32)?;
        Ok(self.wrap_f32(out, vec![s.b, s.n, s.c]))
    }

    /// `Backend::two_way_pool`: partials per chunk of image tokens, then their merge (operands
    /// checked by the caller, sizes by `two_way_fits`).
    pub(crate) fn two_way_pool(&self, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, s: TwoWayShape) -> Result<Tensor> {
        const OP: &str = "two_way_pool";
        let (b32, n32, c32, r32, t32, dy32) = sizes(OP, &s)?;
        let chunks = s.n.div_ceil(CHUNK);
        // Maxima [B, K, R], sums [B, K, R], weighted sums [B, K, R, C].
        let part = self.alloc::<f32>(s.b * chunks * s.r * (s.c + 2), OP)?;
        let out = self.alloc_f32(&[s.b, s.r, s.c])?;
        let (xp, yp, axp, ayp, pp, op) = (self.f32_ptr(x, OP)?, self.f32_ptr(y, OP)?, self.f32_ptr(ax, OP)?, self.f32_ptr(ay, OP)?, self.ptr(&part), self.ptr(&out));
        let xstride = x_batch_stride(&s);
        let cfg = grid_rows(s.b * chunks, THREADS, 0);
        let (module, name) = if tensor_cores(&s) { (&kernels::TWO_WAY_MMA, "two_way_pool_part_tf32") } else { (&kernels::TWO_WAY, "two_way_pool_part_f32") };
        launch!(self, OP, self.function(module, name)?, cfg, xp, xstride, yp, axp, ayp, pp, b32, n32, c32, r32, t32, dy32)?;
        let cfg = grid_rows(s.b * s.r, THREADS, 0);
        launch!(self, OP, self.function(&kernels::TWO_WAY, "two_way_pool_combine_f32")?, cfg, pp, op, b32, n32, c32, r32)?;
        Ok(self.wrap_f32(out, vec![s.b, s.r, s.c]))
    }
}

/// Whether a call takes the tensor-core builds: a half-precision caller in the default mode.
fn tensor_cores(s: &TwoWayShape) -> bool {
    s.low_precision && mode() == TwoWayMode::Mma
}

/// Elements between two prompts' image tokens: 0 when one set is shared.
fn x_batch_stride(s: &TwoWayShape) -> u64 {
    if s.bx == 1 {
        0
    } else {
        (s.n * s.c) as u64
    }
}

/// B, N, C, R, T and Dy as the kernels take them.
fn sizes(op: &'static str, s: &TwoWayShape) -> Result<(u32, u32, u32, u32, u32, u32)> {
    let u = |v: usize| u32::try_from(v).map_err(|_| Error::shape(op, format!("{s:?}: a size exceeds u32")));
    Ok((u(s.b)?, u(s.n)?, u(s.c)?, u(s.r)?, u(s.t())?, u(s.dy)?))
}
