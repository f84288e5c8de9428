//! Data movement: embedding gather, permute, narrow, concat, pad2d, KV-cache writes
//! (shaders/layout.wgsl).

use super::elementwise::{f32_len, groups};
use super::{u32_of, Shader, WgpuBackend};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const LAYOUT: Shader = Shader { name: "layout", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/layout.wgsl")) };

/// Most dims `permute` takes.
const MAX_DIMS: usize = 8;

pub(super) fn embedding(be: &WgpuBackend, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    if table.dims() != 2 {
        return Err(Error::shape("embedding", format!("table must be [V, D], got {:?}", table.shape())));
    }
    let (v, d) = (table.dim(0), table.dim(1));
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
        return Err(Error::arg("token id", format!("{bad} is outside the vocabulary of {v}")));
    }
    let is_f16 = match table.dtype() {
        DType::F32 => false,
        DType::F16 => true,
        dt => return Err(Error::shape("embedding", format!("table dtype {dt}: the wgpu backend reads f32 or f16 (bf16 is converted at upload)"))),
    };
    u32_of("embedding", table.numel())?;
    let out = be.alloc(vec![ids.len(), d], DType::F32)?;
    let n = u32_of("embedding", ids.len() * d)?;
    if n == 0 {
        return Ok(out);
    }
    let ids_buf = be.upload_u32(ids)?;
    let bufs = [be.buffer(table, "embedding")?, &ids_buf, be.buffer(&out, "embedding")?];
    be.dispatch(&LAYOUT, "embedding", &bufs, &[n, d as u32, is_f16 as u32], groups(n as usize))?;
    Ok(out)
}

fn strides(s: &[usize]) -> Vec<usize> {
    let mut st = vec![1; s.len()];
    for i in (0..s.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * s[i + 1];
    }
    st
}

pub(super) fn permute(be: &WgpuBackend, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
    let s = x.shape();
    let mut seen = vec![false; s.len()];
    if dims.len() != s.len() || dims.iter().any(|&d| d >= s.len() || std::mem::replace(&mut seen[d], true)) {
        return Err(Error::shape("permute", format!("{dims:?} is not a permutation of {} dims", s.len())));
    }
    if s.len() > MAX_DIMS {
        return Err(Error::shape("permute", format!("{} dims: at most {MAX_DIMS}", s.len())));
    }
    let n = f32_len("permute", x)?;
    let out_shape: Vec<usize> = dims.iter().map(|&d| s[d]).collect();
    let in_st = strides(s);
    let out = be.alloc(out_shape.clone(), DType::F32)?;
    if n == 0 {
        return Ok(out);
    }
    let mut params = vec![n, s.len() as u32];
    let mut shape_p: Vec<u32> = out_shape.iter().map(|&v| v as u32).collect();
    let mut stride_p: Vec<u32> = dims.iter().map(|&d| in_st[d] as u32).collect();
    shape_p.resize(MAX_DIMS, 1);
    stride_p.resize(MAX_DIMS, 0);
    params.extend(shape_p);
    params.extend(stride_p);
    be.dispatch(&LAYOUT, "permute", &[be.buffer(x, "permute")?, be.buffer(&out, "permute")?], &params, groups(n as usize))?;
    Ok(out)
}

/// `outer` blocks of `chunk` elements: dst[o·dst_stride + dst_off + j] = src[o·src_stride + src_off + j].
#[allow(clippy::too_many_arguments)]
fn copy_block(be: &WgpuBackend, op: &'static str, src: &Tensor, dst: &Tensor, outer: usize, chunk: usize, src_stride: usize, src_off: usize, dst_stride: usize, dst_off: usize) -> Result<()> {
    let n = outer * chunk;
    if n == 0 {
        return Ok(());
    }
    let params = [u32_of(op, n)?, u32_of(op, chunk)?, u32_of(op, src_stride)?, u32_of(op, src_off)?, u32_of(op, dst_stride)?, u32_of(op, dst_off)?];
    be.dispatch(&LAYOUT, "copy_block", &[be.buffer(src, op)?, be.buffer(dst, op)?], &params, groups(n))
}

/// Element count of a tensor of 4-byte elements (f32 or i32): narrow and concat move bits.
fn words_len(op: &'static str, t: &Tensor) -> Result<u32> {
    if !matches!(t.dtype(), DType::F32 | DType::I32) {
        return Err(Error::shape(op, format!("expected an f32 or i32 tensor, got {} {:?}", t.dtype(), t.shape())));
    }
    u32_of(op, t.numel())
}

pub(super) fn narrow(be: &WgpuBackend, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let s = x.shape();
    if dim >= s.len() || start + len > s[dim] {
        return Err(Error::shape("narrow", format!("{start}..{} of dim {dim} in {s:?}", start + len)));
    }
    words_len("narrow", x)?;
    let outer: usize = s[..dim].iter().product();
    let inner: usize = s[dim + 1..].iter().product();
    let mut shape = s.to_vec();
    shape[dim] = len;
    let out = be.alloc(shape, x.dtype())?;
    copy_block(be, "narrow", x, &out, outer, len * inner, s[dim] * inner, start * inner, len * inner, 0)?;
    Ok(out)
}

pub(super) fn concat(be: &WgpuBackend, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = xs.first().ok_or_else(|| Error::shape("concat", "no tensors"))?;
    let s0 = first.shape();
    if dim >= s0.len() {
        return Err(Error::shape("concat", format!("dim {dim} of {s0:?}")));
    }
    for t in xs {
        let s = t.shape();
        if s.len() != s0.len() || s.iter().zip(s0).enumerate().any(|(i, (a, b))| i != dim && a != b) {
            return Err(Error::shape("concat", format!("{s:?} does not match {s0:?} outside dim {dim}")));
        }
        if t.dtype() != first.dtype() {
            return Err(Error::shape("concat", format!("{} {s:?} does not match the first tensor's {}", t.dtype(), first.dtype())));
        }
        words_len("concat", t)?;
    }
    let outer: usize = s0[..dim].iter().product();
    let inner: usize = s0[dim + 1..].iter().product();
    let total: usize = xs.iter().map(|t| t.dim(dim)).sum();
    let mut shape = s0.to_vec();
    shape[dim] = total;
    let out = be.alloc(shape, first.dtype())?;
    let mut off = 0;
    for t in xs {
        let len = t.dim(dim);
        copy_block(be, "concat", t, &out, outer, len * inner, len * inner, 0, total * inner, off * inner)?;
        off += len;
    }
    Ok(out)
}

pub(super) fn pad2d(be: &WgpuBackend, x: &Tensor, top: usize, bottom: usize, left: usize, right: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() < 2 {
        return Err(Error::shape("pad2d", format!("need at least 2 dims, got {s:?}")));
    }
    f32_len("pad2d", x)?;
    let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
    let (oh, ow) = (h + top + bottom, w + left + right);
    let mut shape = s.to_vec();
    let nd = shape.len();
    shape[nd - 2] = oh;
    shape[nd - 1] = ow;
    let n = shape.iter().product::<usize>();
    let out = be.alloc(shape, DType::F32)?;
    if n == 0 {
        return Ok(out);
    }
    let params = [u32_of("pad2d", n)?, h as u32, w as u32, oh as u32, ow as u32, u32_of("pad2d", top)?, u32_of("pad2d", left)?];
    be.dispatch(&LAYOUT, "pad2d", &[be.buffer(x, "pad2d")?, be.buffer(&out, "pad2d")?], &params, groups(n))?;
    Ok(out)
}

/// Writes in place: every clone of `cache` sees the new rows (the CPU backend copies a shared
/// cache first; models hold one handle per cache, so the two agree).
pub(super) fn write_kv(be: &WgpuBackend, cache: &mut Tensor, new: &Tensor, pos: usize) -> Result<()> {
    let (cs, ns) = (cache.shape().to_vec(), new.shape());
    if cs.len() != 4 || ns.len() != 4 || cs[0] != ns[0] || cs[1] != ns[1] || cs[3] != ns[3] || pos + ns[2] > cs[2] {
        return Err(Error::shape("write_kv", format!("cache {cs:?}, new {ns:?} at position {pos}")));
    }
    f32_len("write_kv", cache)?;
    f32_len("write_kv", new)?;
    let (max, n, d) = (cs[2], ns[2], cs[3]);
    copy_block(be, "write_kv", new, cache, cs[0] * cs[1], n * d, n * d, 0, max * d, pos * d)
}
