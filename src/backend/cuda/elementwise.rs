//! Pointwise ops and softmax (kernels/elementwise.cu), plus the shared GEMM epilogue and the
//! half → f32 weight conversion used by the GEMM paths.

use cudarc::driver::{CudaSlice, DeviceRepr};

use super::{act_code, grid_1d, grid_rows, kernels, launch, CudaBackend};
use crate::backend::{Activation, BinaryOp};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Kernel parameter of `binary_bcast_f32` (kernels/elementwise.cu `struct Broadcast`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Broadcast {
    ndim: u32,
    op: u32,
    shape: [u64; 8],
    sa: [u64; 8],
    sb: [u64; 8],
}
// SAFETY: plain-old-data with the same layout as the C struct.
unsafe impl DeviceRepr for Broadcast {}

fn op_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
    }
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// Strides of `s` aligned to the output shape, 0 on broadcast dims.
fn bstrides(s: &[usize], out: &[usize]) -> Vec<usize> {
    let n = out.len();
    let mut st = vec![0; n];
    let mut acc = 1;
    for i in (0..s.len()).rev() {
        let oi = i + n - s.len();
        st[oi] = if s[i] == 1 && out[oi] != 1 { 0 } else { acc };
        acc *= s[i];
    }
    st
}

/// Drop size-1 output dims and merge neighbours that are contiguous in the output and in both
/// operands, so any broadcast fits the kernel's 8 dims.
fn simplify(shape: &[usize], sa: &[usize], sb: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut s, mut a, mut b): (Vec<usize>, Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..shape.len() {
        if shape[i] == 1 {
            continue;
        }
        if let (Some(ls), Some(la), Some(lb)) = (s.last_mut(), a.last_mut(), b.last_mut()) {
            // Merge into the previous dim when stepping that dim equals stepping this one `shape[i]` times.
            if *la == sa[i] * shape[i] && *lb == sb[i] * shape[i] {
                *ls *= shape[i];
                *la = sa[i];
                *lb = sb[i];
                continue;
            }
        }
        s.push(shape[i]);
        a.push(sa[i]);
        b.push(sb[i]);
    }
    (s, a, b)
}

impl CudaBackend {
    /// Launch a 1-D unary kernel `name(x, y, n, extra...)`.
    fn unary(&self, op: &'static str, x: &Tensor, name: &str, act: Option<i32>, affine: Option<(f32, f32)>) -> Result<Tensor> {
        let xp = self.f32_ptr(x, op)?;
        let n = x.numel();
        let out = self.alloc_f32(x.shape())?;
        if n > 0 {
            let (yp, n64) = (self.ptr(&out), n as u64);
            let f = self.function(&kernels::ELEMENTWISE, name)?;
            match (act, affine) {
                (Some(act), _) => launch!(self, op, f, grid_1d(n), xp, yp, n64, act)?,
                (None, Some((s, t))) => launch!(self, op, f, grid_1d(n), xp, yp, n64, s, t)?,
                (None, None) => return Err(Error::shape(op, "internal: unary kernel without parameters")),
            }
        }
        Ok(self.wrap_f32(out, x.shape().to_vec()))
    }

    pub fn affine(&self, x: &Tensor, s: f32, t: f32) -> Result<Tensor> {
        self.unary("affine", x, "affine_f32", None, Some((s, t)))
    }

    pub fn activate(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.unary("activate", x, "act_f32", Some(act_code(act)), None)
    }

    pub fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if gate.shape() != up.shape() {
            return Err(Error::shape("silu_mul", format!("gate {:?} vs up {:?}", gate.shape(), up.shape())));
        }
        let (gp, up_) = (self.f32_ptr(gate, "silu_mul")?, self.f32_ptr(up, "silu_mul")?);
        let n = gate.numel();
        let out = self.alloc_f32(gate.shape())?;
        if n > 0 {
            let (yp, n64) = (self.ptr(&out), n as u64);
            launch!(self, "silu_mul", self.function(&kernels::ELEMENTWISE, "silu_mul_f32")?, grid_1d(n), gp, up_, yp, n64)?;
        }
        Ok(self.wrap_f32(out, gate.shape().to_vec()))
    }

    pub fn binary(&self, a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let (ap, bp) = (self.f32_ptr(a, "binary")?, self.f32_ptr(b, "binary")?);
        let code = op_code(op);
        if a.shape() == b.shape() {
            let n = a.numel();
            let out = self.alloc_f32(a.shape())?;
            if n > 0 {
                let (yp, n64) = (self.ptr(&out), n as u64);
                launch!(self, "binary", self.function(&kernels::ELEMENTWISE, "binary_f32")?, grid_1d(n), ap, bp, yp, n64, code)?;
            }
            return Ok(self.wrap_f32(out, a.shape().to_vec()));
        }
        let shape = broadcast_shape(a.shape(), b.shape())
            .ok_or_else(|| Error::shape("binary", format!("cannot broadcast {:?} with {:?}", a.shape(), b.shape())))?;
        let n: usize = shape.iter().product();
        let out = self.alloc_f32(&shape)?;
        if n > 0 {
            let (s, sa, sb) = simplify(&shape, &bstrides(a.shape(), &shape), &bstrides(b.shape(), &shape));
            if s.len() > 8 {
                return Err(Error::shape("binary", format!("broadcasting {:?} with {:?} needs more than 8 dims", a.shape(), b.shape())));
            }
            let mut p = Broadcast { ndim: s.len() as u32, op: code as u32, shape: [1; 8], sa: [0; 8], sb: [0; 8] };
            for i in 0..s.len() {
                p.shape[i] = s[i] as u64;
                p.sa[i] = sa[i] as u64;
                p.sb[i] = sb[i] as u64;
            }
            let (yp, n64) = (self.ptr(&out), n as u64);
            launch!(self, "binary", self.function(&kernels::ELEMENTWISE, "binary_bcast_f32")?, grid_1d(n), ap, bp, yp, n64, p)?;
        }
        Ok(self.wrap_f32(out, shape))
    }

    pub fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        let d = *x.shape().last().ok_or_else(|| Error::shape("softmax", "scalar input"))?;
        let xp = self.f32_ptr(x, "softmax")?;
        let out = self.alloc_f32(x.shape())?;
        let rows = x.numel().checked_div(d).unwrap_or(0);
        if rows > 0 {
            let d32 = u32::try_from(d).map_err(|_| Error::shape("softmax", format!("row length {d} exceeds u32")))?;
            let (yp, r64) = (self.ptr(&out), rows as u64);
            let cfg = grid_rows(rows, row_threads(d), 0);
            launch!(self, "softmax", self.function(&kernels::ELEMENTWISE, "softmax_f32")?, cfg, xp, yp, r64, d32)?;
        }
        Ok(self.wrap_f32(out, x.shape().to_vec()))
    }

    /// In place on the first `total` elements of `y` [total / n, n]: y = act(y + bias) + residual
    /// (skipped when all are absent). The residual is y's size, or a whole number of rows that
    /// repeat (`linear`'s shared residual).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn epilogue(&self, op: &'static str, y: &CudaSlice<f32>, total: usize, n: usize, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<()> {
        if bias.is_none() && act == Activation::None && residual.is_none() {
            return Ok(());
        }
        if total == 0 {
            return Ok(());
        }
        let (bp, bdt) = self.any_float_or_null(bias, op)?;
        let (rp, res_n) = match residual {
            Some(r) if r.numel() > 0 && r.numel().is_multiple_of(n) && total.is_multiple_of(r.numel()) => (self.f32_ptr(r, op)?, r.numel()),
            Some(r) => return Err(Error::shape(op, format!("residual of {} elements for an output of {total} in rows of {n}", r.numel()))),
            None => (0u64, total),
        };
        if n.is_multiple_of(4) && total.is_multiple_of(n) && total / 4 < 1 << 31 {
            // Whole float4s per row (device buffers are 256-byte aligned); below 2^31 so the kernel's
            // 32-bit grid-stride index cannot wrap.
            let (yp, t4, n4, a, r4) = (self.ptr(y), (total / 4) as u32, (n / 4) as u32, act_code(act), (res_n / 4) as u32);
            return launch!(self, op, self.function(&kernels::ELEMENTWISE, "epilogue_f32x4")?, grid_1d(total / 4), yp, t4, n4, bp, bdt, a, rp, r4);
        }
        let (yp, t64, n32, a, r64) = (self.ptr(y), total as u64, n as u32, act_code(act), res_n as u64);
        launch!(self, op, self.function(&kernels::ELEMENTWISE, "epilogue_f32")?, grid_1d(total), yp, t64, n32, bp, bdt, a, rp, r64)
    }

    /// bf16(act(y + bias)) into a new bf16 buffer (y [total / n, n] f32; no residual): the
    /// operand of the bf16 GEMM after it, in one pass.
    pub(crate) fn epilogue_bf16(&self, op: &'static str, y: &CudaSlice<f32>, total: usize, n: usize, bias: Option<&Tensor>, act: Activation) -> Result<CudaSlice<half::bf16>> {
        let out = self.alloc::<half::bf16>(total, op)?;
        if total == 0 {
            return Ok(out);
        }
        let (bp, bdt) = self.any_float_or_null(bias, op)?;
        let (yp, op_, a) = (self.ptr(y), self.ptr(&out), act_code(act));
        if n.is_multiple_of(4) && total.is_multiple_of(n) && total / 4 < 1 << 31 {
            let (t4, n4) = ((total / 4) as u32, (n / 4) as u32);
            launch!(self, op, self.function(&kernels::ELEMENTWISE, "epilogue_bf16x4")?, grid_1d(total / 4), yp, op_, t4, n4, bp, bdt, a)?;
        } else {
            let (t64, n32) = (total as u64, n as u32);
            launch!(self, op, self.function(&kernels::ELEMENTWISE, "epilogue_bf16")?, grid_1d(total), yp, op_, t64, n32, bp, bdt, a)?;
        }
        Ok(out)
    }

    /// y [outer, c, hw] += bias[c] over the first `total` elements.
    pub(crate) fn bias_channels(&self, op: &'static str, y: &CudaSlice<f32>, total: usize, c: usize, hw: usize, bias: &Tensor) -> Result<()> {
        if total == 0 {
            return Ok(());
        }
        let (bp, bdt) = self.any_float(bias, op)?;
        let (yp, t64, c32, hw64) = (self.ptr(y), total as u64, c as u32, hw as u64);
        launch!(self, op, self.function(&kernels::ELEMENTWISE, "bias_channels_f32")?, grid_1d(total), yp, t64, c32, hw64, bp, bdt)
    }

    /// A float weight as an f32 device buffer: `None` when it already is f32 (use it in place),
    /// else a converted copy.
    pub(crate) fn widen(&self, op: &'static str, w: &Tensor) -> Result<Option<CudaSlice<f32>>> {
        let (wp, dt) = self.any_float(w, op)?;
        if dt == 0 {
            return Ok(None);
        }
        let n = w.numel();
        let out = self.alloc::<f32>(n, op)?;
        if n > 0 {
            let (yp, n64) = (self.ptr(&out), n as u64);
            launch!(self, op, self.function(&kernels::ELEMENTWISE, "to_f32")?, grid_1d(n), wp, dt, yp, n64)?;
        }
        Ok(Some(out))
    }
}

/// Threads per block for a row kernel over rows of `d` elements: enough to cover short rows
/// in one pass, at most 1024 for long ones (always a multiple of 32).
pub(crate) fn row_threads(d: usize) -> u32 {
    match d {
        0..=32 => 32,
        33..=64 => 64,
        65..=128 => 128,
        129..=2048 => 256,
        2049..=8192 => 512,
        _ => 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simplify_merges_contiguous_dims() {
        // [2, 3, 4] + [4]: a contiguous (merges fully), b repeats along the first two dims.
        let shape = [2, 3, 4];
        let (s, a, b) = simplify(&shape, &bstrides(&[2, 3, 4], &shape), &bstrides(&[4], &shape));
        assert_eq!((s, a, b), (vec![6, 4], vec![4, 1], vec![0, 1]));
        // Size-1 dims vanish; a plain same-shape pair collapses to one dim.
        let shape = [1, 5, 1, 7];
        let (s, a, b) = simplify(&shape, &bstrides(&shape, &shape), &bstrides(&shape, &shape));
        assert_eq!((s, a, b), (vec![35], vec![1], vec![1]));
        // [2, 1, 3] * [1, 4, 1] → [2, 4, 3]
        let shape = [2, 4, 3];
        let (s, a, b) = simplify(&shape, &bstrides(&[2, 1, 3], &shape), &bstrides(&[1, 4, 1], &shape));
        assert_eq!((s, a, b), (vec![2, 4, 3], vec![3, 0, 1], vec![0, 1, 0]));
    }
}
