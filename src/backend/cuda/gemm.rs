//! One-launch linears on bf16 weights (kernels/gemm.cu `gemm_bf16_f32`): x rounded to bf16 as
//! it is staged, the tensor cores, bias + activation + residual applied as y is written. The
//! bf16 path of matmul.rs takes three launches for the same values (a rounding pass, cuBLAS,
//! an epilogue pass); for the stack's small linears (SAM's mask decoder: a few hundred token
//! rows through 256-wide weights, ~30 a batch of prompts) those launches are the time.
//!
//! Which linears take it (`VISWORD_CUDA_GEMM_FUSED` at start-up, or `set_fused_gemm`):
//! `small` (the default) up to `SMALL_MACS` multiply-adds, where cuBLAS's larger tiles and
//! pipelines cannot pay for the two extra passes; `all` every bf16 linear it fits (to time it
//! against cuBLAS at every shape); `off` none.

use std::sync::atomic::Ordering;

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::{act_code, kernels, launch, CudaBackend};
use crate::backend::Activation;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Most multiply-adds (M·N·K) of a linear that takes the fused kernel in the `small` mode: the
/// mask decoder's token MLP (448 × 256 → 2048, 235 M) takes it; CLIP-L's smallest projection
/// (577 × 1024 → 1024, 605 M) and a 7B prefill's stay on cuBLAS.
pub(super) const SMALL_MACS: usize = 1 << 28;
/// The kernel's tile (GB_M × GB_N in kernels/gemm.cu).
const TILE: usize = 64;

/// Which bf16 linears run as one fused launch (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedGemm {
    Off,
    Small,
    All,
}

impl FusedGemm {
    /// `VISWORD_CUDA_GEMM_FUSED`: `0`/`off`, `all`, otherwise `small`.
    pub(super) fn from_env() -> FusedGemm {
        match std::env::var("VISWORD_CUDA_GEMM_FUSED").as_deref().map(str::trim) {
            Ok("0" | "off") => FusedGemm::Off,
            Ok("all") => FusedGemm::All,
            _ => FusedGemm::Small,
        }
    }

    pub(super) fn code(self) -> u8 {
        self as u8
    }

    pub(super) fn from_code(c: u8) -> FusedGemm {
        match c {
            0 => FusedGemm::Off,
            2 => FusedGemm::All,
            _ => FusedGemm::Small,
        }
    }
}

impl CudaBackend {
    /// Which bf16 linears (M > 4) run as one fused launch.
    pub fn fused_gemm(&self) -> FusedGemm {
        FusedGemm::from_code(self.core.fused_gemm.load(Ordering::Relaxed))
    }

    pub fn set_fused_gemm(&self, mode: FusedGemm) {
        self.core.fused_gemm.store(mode.code(), Ordering::Relaxed)
    }

    /// Whether `m` rows of x through `w` take the fused kernel: a bf16 weight [N, K] with
    /// K a multiple of 8, in the bf16 GEMM mode, sizes within the kernel's grid and 32-bit
    /// indices, and the mode's size bound.
    pub(super) fn fused_fits(&self, m: usize, w: &Tensor) -> bool {
        if w.dtype() != DType::BF16 || w.dims() != 2 || !self.bf16_gemm() {
            return false;
        }
        let (n, k) = (w.dim(0), w.dim(1));
        let sizes = m > 0 && n > 0 && k > 0 && k.is_multiple_of(8) && m <= i32::MAX as usize && k <= i32::MAX as usize && n <= 65_535 * TILE;
        sizes
            && match self.fused_gemm() {
                FusedGemm::Off => false,
                FusedGemm::Small => m.saturating_mul(n).saturating_mul(k) <= SMALL_MACS,
                FusedGemm::All => true,
            }
    }

    /// y [m, n] = act(x · wᵀ + bias) + residual in one launch (x: `m` rows of f32 at `xp`; a
    /// residual of y's shape, or of whole rows of n repeated over y's rows). Ok(false) when
    /// `fused_fits` declines or the pointers are not 16-byte aligned: nothing was queued and
    /// the caller takes another path.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_linear(&self, op: &'static str, xp: u64, w: &Tensor, y: &CudaSlice<f32>, m: usize, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<bool> {
        if !self.fused_fits(m, w) {
            return Ok(false);
        }
        let (n, k) = (w.dim(0), w.dim(1));
        let (wp, _) = self.any_float(w, op)?;
        if !xp.is_multiple_of(16) || !wp.is_multiple_of(16) {
            return Ok(false);
        }
        let (bp, bdt) = self.any_float_or_null(bias, op)?;
        let (rp, rows) = match residual {
            Some(r) if r.numel() > 0 && r.numel().is_multiple_of(n) && m.is_multiple_of(r.numel() / n) => (self.f32_ptr(r, op)?, r.numel() / n),
            Some(r) => return Err(Error::shape(op, format!("residual of {} elements for an output of {m} rows of {n}", r.numel()))),
            None => (0u64, m),
        };
        let i32_of = |v: usize| i32::try_from(v).map_err(|_| Error::shape(op, format!("{v} exceeds the fused GEMM's 32-bit sizes")));
        let (m32, n32, k32, r32, a) = (i32_of(m)?, i32_of(n)?, i32_of(k)?, i32_of(rows)?, act_code(act));
        let grid_x = u32::try_from(m.div_ceil(TILE)).map_err(|_| Error::shape(op, format!("{m} rows exceed the grid")))?;
        let cfg = LaunchConfig { grid_dim: (grid_x, n.div_ceil(TILE) as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let yp = self.ptr(y);
        launch!(self, op, self.function(&kernels::GEMM, "gemm_bf16_f32")?, cfg, xp, wp, yp, m32, n32, k32, bp, bdt, a, rp, r32)?;
        Ok(true)
    }
}
