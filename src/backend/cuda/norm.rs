//! LayerNorm, LayerNorm over channels (NCHW), RMSNorm (kernels/norm.cu). Weights and biases may
//! be f32, f16 or bf16 (widened inside the kernel).

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig};

use super::elementwise::row_threads;
use super::{grid_1d, grid_rows, kernels, launch, CudaBackend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Rows per block and the longest row of kernels/norm.cu's layer_norm_warp*_f32 (LN_WARP_ROWS,
/// 32 lanes × 8 float4s).
const LN_WARP_ROWS: usize = 8;
const LN_WARP_MAX_D: usize = 1024;

fn last_dim(op: &'static str, x: &Tensor, w: &Tensor) -> Result<usize> {
    let d = *x.shape().last().ok_or_else(|| Error::shape(op, "scalar input"))?;
    if w.numel() != d {
        return Err(Error::shape(op, format!("weight has {} elements, last dim is {d}", w.numel())));
    }
    u32::try_from(d).map_err(|_| Error::shape(op, format!("row length {d} exceeds u32")))?;
    Ok(d)
}

impl CudaBackend {
    pub fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        let out = self.layer_norm_into::<f32>(x, w, b, eps, "f32")?;
        Ok(self.wrap_f32(out, x.shape().to_vec()))
    }

    /// `layer_norm` written as bf16 into a new buffer (x [rows, d] f32 → [rows·d] bf16): the
    /// rounded operand of the bf16 tensor-core GEMM that follows it, in one launch.
    pub(crate) fn layer_norm_bf16(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<CudaSlice<half::bf16>> {
        self.layer_norm_into::<half::bf16>(x, w, b, eps, "bf16")
    }

    /// The LayerNorm of x into a new buffer of `T` by the kernels with `suffix` (f32, bf16).
    fn layer_norm_into<T: DeviceRepr>(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32, suffix: &str) -> Result<CudaSlice<T>> {
        const OP: &str = "layer_norm";
        let d = last_dim(OP, x, w)?;
        if b.numel() != d {
            return Err(Error::shape(OP, format!("bias has {} elements, last dim is {d}", b.numel())));
        }
        let xp = self.f32_ptr(x, OP)?;
        let ((wp, wdt), (bp, bdt)) = (self.any_float(w, OP)?, self.any_float(b, OP)?);
        let out = self.alloc::<T>(x.numel(), OP)?;
        let rows = x.numel().checked_div(d).unwrap_or(0);
        if rows > 0 {
            let (yp, r64, d32) = (self.ptr(&out), rows as u64, d as u32);
            if d.is_multiple_of(4) && d <= LN_WARP_MAX_D && rows.div_ceil(LN_WARP_ROWS) < i32::MAX as usize {
                // Short rows: one warp each, the row in registers (device buffers are 256-byte
                // aligned and rows whole float4s).
                let blocks = rows.div_ceil(LN_WARP_ROWS) as u32;
                let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32 * LN_WARP_ROWS as u32, 1, 1), shared_mem_bytes: 0 };
                // The fewest float4s per lane that hold a row: 1, 2, 4 or 8.
                let v = (d / 4).div_ceil(32).next_power_of_two();
                launch!(self, OP, self.function(&kernels::NORM, &format!("layer_norm_warp{v}_{suffix}"))?, cfg, xp, yp, r64, d32, wp, wdt, bp, bdt, eps)?;
            } else {
                let cfg = grid_rows(rows, row_threads(d), 0);
                launch!(self, OP, self.function(&kernels::NORM, &format!("layer_norm_{suffix}"))?, cfg, xp, yp, r64, d32, wp, wdt, bp, bdt, eps)?;
            }
        }
        Ok(out)
    }

    pub fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        let out = self.rms_norm_into::<f32>(x, w, eps, "rms_norm_f32")?;
        Ok(self.wrap_f32(out, x.shape().to_vec()))
    }

    /// `rms_norm` written as bf16 into a new buffer (x [rows, d] f32 → [rows·d] bf16): the
    /// rounded operand of the bf16 tensor-core GEMMs that follow it, in one launch.
    pub(crate) fn rms_norm_bf16(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<CudaSlice<half::bf16>> {
        self.rms_norm_into::<half::bf16>(x, w, eps, "rms_norm_bf16")
    }

    /// The RMSNorm of x into a new buffer of `T` by `kernel` (rms_norm_f32 or rms_norm_bf16).
    fn rms_norm_into<T: DeviceRepr>(&self, x: &Tensor, w: &Tensor, eps: f32, kernel: &str) -> Result<CudaSlice<T>> {
        const OP: &str = "rms_norm";
        let d = last_dim(OP, x, w)?;
        let xp = self.f32_ptr(x, OP)?;
        let (wp, wdt) = self.any_float(w, OP)?;
        let out = self.alloc::<T>(x.numel(), OP)?;
        let rows = x.numel().checked_div(d).unwrap_or(0);
        if rows > 0 {
            let (yp, r64, d32) = (self.ptr(&out), rows as u64, d as u32);
            let cfg = grid_rows(rows, row_threads(d), 0);
            launch!(self, OP, self.function(&kernels::NORM, kernel)?, cfg, xp, yp, r64, d32, wp, wdt, eps)?;
        }
        Ok(out)
    }

    pub fn layer_norm_channels(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "layer_norm_channels";
        let s = x.shape();
        if s.len() != 4 || w.numel() != s[1] || b.numel() != s[1] {
            return Err(Error::shape(OP, format!("x {:?}, weight {:?}, bias {:?}", s, w.shape(), b.shape())));
        }
        let (c, hw) = (s[1], s[2] * s[3]);
        let xp = self.f32_ptr(x, OP)?;
        let ((wp, wdt), (bp, bdt)) = (self.any_float(w, OP)?, self.any_float(b, OP)?);
        let out = self.alloc_f32(s)?;
        let pixels = s[0] * hw;
        if pixels > 0 && c > 0 {
            let c32 = u32::try_from(c).map_err(|_| Error::shape(OP, format!("{c} channels exceed u32")))?;
            let (yp, p64, hw64) = (self.ptr(&out), pixels as u64, hw as u64);
            launch!(self, OP, self.function(&kernels::NORM, "layer_norm_channels_f32")?, grid_1d(pixels), xp, yp, p64, c32, hw64, wp, wdt, bp, bdt, eps)?;
        }
        Ok(self.wrap_f32(out, s.to_vec()))
    }
}
