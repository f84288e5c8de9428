//! LayerNorm, LayerNorm over channels (NCHW), RMSNorm: shaders/norm.wgsl (a subgroup per row
//! with shaders/norm_subgroup.wgsl where the adapter has subgroups, 32 threads per row without;
//! a workgroup per row for rows wider than 2048).

use super::elementwise::{f32_len, groups};
use super::{u32_of, Shader, WgpuBackend};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const NORM: Shader = Shader { name: "norm", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/norm.wgsl")) };
const NORM_SUBGROUP: Shader = Shader {
    name: "norm_subgroup",
    source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/norm.wgsl"), include_str!("../../../shaders/norm_subgroup.wgsl")),
};

/// Rows wider than this take a workgroup each; narrower ones share workgroups (a subgroup, or
/// 32 threads, per row).
const WIDE_ROW: usize = 2048;
/// Threads per norm workgroup.
const THREADS: u32 = 256;
/// Rows per workgroup of the plain grouped kernels (norm.wgsl's GROUP_ROWS).
const GROUP_ROWS: u32 = 8;

fn last_dim(op: &'static str, x: &Tensor, w: &Tensor) -> Result<usize> {
    let d = *x.shape().last().ok_or_else(|| Error::shape(op, "scalar input"))?;
    if w.numel() != d {
        return Err(Error::shape(op, format!("weight has {} elements, last dim is {d}", w.numel())));
    }
    f32_len(op, x)?;
    f32_len(op, w)?;
    Ok(d)
}

fn rows_kernel(be: &WgpuBackend, op: &'static str, x: &Tensor, w: &Tensor, b: &Tensor, d: usize, eps: f32) -> Result<Tensor> {
    let out = be.alloc(x.shape().to_vec(), DType::F32)?;
    if d == 0 {
        return Ok(out);
    }
    let rows = u32_of(op, x.numel() / d)?;
    let bufs = [be.buffer(x, op)?, be.buffer(w, op)?, be.buffer(b, op)?, be.buffer(&out, op)?];
    let (shader, entry, per) = if d > WIDE_ROW {
        (&NORM, op, 1)
    } else if let Some(min) = be.rt.subgroup_min_size() {
        (&NORM_SUBGROUP, "norm_sg", (THREADS / min).max(1))
    } else {
        (&NORM, "norm_rows", GROUP_ROWS)
    };
    let rms = (op == "rms_norm") as u32;
    be.dispatch(shader, entry, &bufs, &[rows, d as u32, eps.to_bits(), per, rms], [rows.div_ceil(per), 1, 1])?;
    Ok(out)
}

pub(super) fn layer_norm(be: &WgpuBackend, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let d = last_dim("layer_norm", x, w)?;
    if b.numel() != d {
        return Err(Error::shape("layer_norm", format!("bias has {} elements, last dim is {d}", b.numel())));
    }
    f32_len("layer_norm", b)?;
    rows_kernel(be, "layer_norm", x, w, b, d, eps)
}

pub(super) fn rms_norm(be: &WgpuBackend, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let d = last_dim("rms_norm", x, w)?;
    // rms_norm never reads the bias binding: the weight stands in.
    rows_kernel(be, "rms_norm", x, w, w, d, eps)
}

/// x [B, C, H, W]: normalise each (b, h, w) over C.
pub(super) fn layer_norm_channels(be: &WgpuBackend, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 || w.numel() != s[1] || b.numel() != s[1] {
        return Err(Error::shape("layer_norm_channels", format!("x {:?}, weight {:?}, bias {:?}", s, w.shape(), b.shape())));
    }
    for t in [x, w, b] {
        f32_len("layer_norm_channels", t)?;
    }
    let (c, hw) = (s[1], s[2] * s[3]);
    let out = be.alloc(s.to_vec(), DType::F32)?;
    let pixels = s[0] * hw;
    if c == 0 || pixels == 0 {
        return Ok(out);
    }
    let bufs = [be.buffer(x, "layer_norm_channels")?, be.buffer(w, "layer_norm_channels")?, be.buffer(b, "layer_norm_channels")?, be.buffer(&out, "layer_norm_channels")?];
    let params = [u32_of("layer_norm_channels", pixels)?, c as u32, hw as u32, eps.to_bits()];
    be.dispatch(&NORM, "layer_norm_channels", &bufs, &params, groups(pixels))?;
    Ok(out)
}
