//! Pointwise ops, broadcasting binary ops, softmax (shaders/elementwise.wgsl) and RoPE
//! (shaders/rope.wgsl).

use super::{u32_of, Shader, WgpuBackend};
use crate::backend::{Activation, BinaryOp, RopeKvShape};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const ELEMENTWISE: Shader = Shader {
    name: "elementwise",
    source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/elementwise.wgsl")),
};
const ROPE: Shader = Shader { name: "rope", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/rope.wgsl")) };

/// Threads per workgroup of the one-thread-per-element kernels.
pub(super) const WG: usize = 256;
/// Most dims `binary_bcast` takes.
const MAX_DIMS: usize = 8;

pub(super) fn groups(n: usize) -> [u32; 3] {
    [n.div_ceil(WG) as u32, 1, 1]
}

/// An f32 tensor's element count, checked to fit the kernels' u32 indices.
pub(super) fn f32_len(op: &'static str, t: &Tensor) -> Result<u32> {
    if t.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("expected an f32 tensor, got {} {:?}", t.dtype(), t.shape())));
    }
    u32_of(op, t.numel())
}

pub(super) fn activate(be: &WgpuBackend, x: &Tensor, act: Activation) -> Result<Tensor> {
    let n = f32_len("activate", x)?;
    let out = be.alloc(x.shape().to_vec(), DType::F32)?;
    be.dispatch(&ELEMENTWISE, "activate", &[be.buffer(x, "activate")?, be.buffer(&out, "activate")?], &[n, act.kernel_code()], groups(n as usize))?;
    Ok(out)
}

/// erf of every element (the shaders' own erf, which WGSL lacks; for its accuracy test).
pub(super) fn erf(be: &WgpuBackend, x: &Tensor) -> Result<Tensor> {
    let n = f32_len("erf", x)?;
    let out = be.alloc(x.shape().to_vec(), DType::F32)?;
    be.dispatch(&ELEMENTWISE, "erf", &[be.buffer(x, "erf")?, be.buffer(&out, "erf")?], &[n], groups(n as usize))?;
    Ok(out)
}

pub(super) fn silu_mul(be: &WgpuBackend, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(Error::shape("silu_mul", format!("gate {:?} vs up {:?}", gate.shape(), up.shape())));
    }
    let n = f32_len("silu_mul", gate)?;
    f32_len("silu_mul", up)?;
    let out = be.alloc(gate.shape().to_vec(), DType::F32)?;
    let bufs = [be.buffer(gate, "silu_mul")?, be.buffer(up, "silu_mul")?, be.buffer(&out, "silu_mul")?];
    be.dispatch(&ELEMENTWISE, "silu_mul", &bufs, &[n], groups(n as usize))?;
    Ok(out)
}

pub(super) fn affine(be: &WgpuBackend, x: &Tensor, s: f32, t: f32) -> Result<Tensor> {
    let n = f32_len("affine", x)?;
    let out = be.alloc(x.shape().to_vec(), DType::F32)?;
    be.dispatch(&ELEMENTWISE, "affine", &[be.buffer(x, "affine")?, be.buffer(&out, "affine")?], &[n, s.to_bits(), t.to_bits()], groups(n as usize))?;
    Ok(out)
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { 1 };
    (0..n)
        .map(|i| {
            let (da, db) = (dim(a, i), dim(b, i));
            if da == db || db == 1 { Some(da) } else if da == 1 { Some(db) } else { None }
        })
        .collect()
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

pub(super) fn binary(be: &WgpuBackend, a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    f32_len("binary", a)?;
    f32_len("binary", b)?;
    let code = match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
    };
    let shape = broadcast_shape(a.shape(), b.shape())
        .ok_or_else(|| Error::shape("binary", format!("cannot broadcast {:?} with {:?}", a.shape(), b.shape())))?;
    let n = u32_of("binary", shape.iter().product())?;
    let out = be.alloc(shape.clone(), DType::F32)?;
    let bufs = [be.buffer(a, "binary")?, be.buffer(b, "binary")?, be.buffer(&out, "binary")?];
    if a.shape() == b.shape() {
        return be.dispatch(&ELEMENTWISE, "binary_same", &bufs, &[n, code], groups(n as usize)).map(|_| out);
    }
    // Merge nothing, just cap the rank: real models broadcast at most 4-D.
    if shape.len() > MAX_DIMS {
        return Err(Error::shape("binary", format!("broadcasting {:?} with {:?}: at most {MAX_DIMS} dims", a.shape(), b.shape())));
    }
    let (sa, sb) = (bstrides(a.shape(), &shape), bstrides(b.shape(), &shape));
    let mut params = vec![n, code, shape.len() as u32];
    for v in [&shape, &sa, &sb] {
        let mut padded = v.iter().map(|&x| u32_of("binary", x)).collect::<Result<Vec<u32>>>()?;
        padded.resize(MAX_DIMS, 0);
        params.extend(padded);
    }
    be.dispatch(&ELEMENTWISE, "binary_bcast", &bufs, &params, groups(n as usize))?;
    Ok(out)
}

pub(super) fn softmax(be: &WgpuBackend, x: &Tensor) -> Result<Tensor> {
    let d = *x.shape().last().ok_or_else(|| Error::shape("softmax", "scalar input"))?;
    let n = f32_len("softmax", x)?;
    let out = be.alloc(x.shape().to_vec(), DType::F32)?;
    if d == 0 || n == 0 {
        return Ok(out);
    }
    let rows = n as usize / d;
    be.dispatch(&ELEMENTWISE, "softmax", &[be.buffer(x, "softmax")?, be.buffer(&out, "softmax")?], &[rows as u32, d as u32], [rows as u32, 1, 1])?;
    Ok(out)
}

pub(super) fn rope(be: &WgpuBackend, x: &Tensor, cos: &Tensor, sin: &Tensor, pos_offset: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 || !s[3].is_multiple_of(2) {
        return Err(Error::shape("rope", format!("x must be [B, H, N, D] with even D, got {s:?}")));
    }
    let (n, d) = (s[2], s[3]);
    let h = d / 2;
    if cos.dims() != 2 || cos.dim(1) != h || cos.shape() != sin.shape() {
        return Err(Error::shape("rope", format!("cos/sin must be [max_pos, {h}], got {:?} / {:?}", cos.shape(), sin.shape())));
    }
    if pos_offset + n > cos.dim(0) {
        return Err(Error::shape("rope", format!("positions {}..{} exceed the table of {}", pos_offset, pos_offset + n, cos.dim(0))));
    }
    f32_len("rope", x)?;
    f32_len("rope", cos)?;
    f32_len("rope", sin)?;
    let pairs = u32_of("rope", x.numel() / 2)?;
    let out = be.alloc(s.to_vec(), DType::F32)?;
    let bufs = [be.buffer(x, "rope")?, be.buffer(cos, "rope")?, be.buffer(sin, "rope")?, be.buffer(&out, "rope")?];
    be.dispatch(&ROPE, "rope", &bufs, &[pairs, n as u32, h as u32, u32_of("rope", pos_offset)?], groups(pairs as usize))?;
    Ok(out)
}

/// `Backend::rope_qk_write_kv` (operands checked by `rope_kv_shape`): rope(q) in one dispatch,
/// and in a second rope(k) into k_cache and v into v_cache at rows pos..pos + n of caches
/// [B, Hkv, max, D] (all of it in one would take nine storage bindings).
#[allow(clippy::too_many_arguments)]
pub(super) fn rope_qk_write_kv(be: &WgpuBackend, q: &Tensor, k: &Tensor, v: &Tensor, k_cache: &mut Tensor, v_cache: &mut Tensor, cos: &Tensor, sin: &Tensor, pos: usize, s: RopeKvShape) -> Result<Tensor> {
    const OP: &str = "rope_qk_write_kv";
    let q = rope(be, q, cos, sin, pos)?;
    for t in [k, v, &*k_cache, &*v_cache] {
        f32_len(OP, t)?;
    }
    if s.kv_pairs > 0 {
        let pairs = u32_of(OP, s.kv_pairs)?;
        // Binding 4 (rope's output) is not used by rope_write_kv: k stands in.
        let bufs = [be.buffer(k, OP)?, be.buffer(cos, OP)?, be.buffer(sin, OP)?, be.buffer(k, OP)?, be.buffer(v, OP)?, be.buffer(k_cache, OP)?, be.buffer(v_cache, OP)?];
        be.dispatch(&ROPE, "rope_write_kv", &bufs, &[pairs, s.n as u32, s.h as u32, u32_of(OP, pos)?, u32_of(OP, s.max)?], groups(s.kv_pairs))?;
    }
    Ok(q)
}
