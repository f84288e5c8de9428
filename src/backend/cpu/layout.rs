//! Data movement: embedding gather, permute, narrow, concat, pad, convolutions (im2col + GEMM),
//! KV-cache writes.

use rayon::prelude::*;

use super::check_f32;
use super::matmul::sgemm;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    if table.dims() != 2 {
        return Err(Error::shape("embedding", format!("table must be [V, D], got {:?}", table.shape())));
    }
    let (v, d) = (table.dim(0), table.dim(1));
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
        return Err(Error::arg("token id", format!("{bad} is outside the vocabulary of {v}")));
    }
    let mut out = vec![0f32; ids.len() * d];
    for (o, &id) in out.chunks_mut(d).zip(ids) {
        let r = id as usize * d..(id as usize + 1) * d;
        match table.dtype() {
            DType::F32 => o.copy_from_slice(&table.as_f32()?[r]),
            DType::F16 => o.iter_mut().zip(&table.as_f16()?[r]).for_each(|(o, x)| *o = x.to_f32()),
            DType::BF16 => o.iter_mut().zip(&table.as_bf16()?[r]).for_each(|(o, x)| *o = x.to_f32()),
            dt => return Err(Error::shape("embedding", format!("table dtype {dt} is not a float type"))),
        }
    }
    Tensor::from_f32(out, vec![ids.len(), d])
}

fn strides(s: &[usize]) -> Vec<usize> {
    let mut st = vec![1; s.len()];
    for i in (0..s.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * s[i + 1];
    }
    st
}

pub fn permute(x: &Tensor, dims: &[usize]) -> Result<Tensor> {
    let s = x.shape();
    let mut seen = vec![false; s.len()];
    if dims.len() != s.len() || dims.iter().any(|&d| d >= s.len() || std::mem::replace(&mut seen[d], true)) {
        return Err(Error::shape("permute", format!("{dims:?} is not a permutation of {} dims", s.len())));
    }
    let xs = check_f32("permute", x)?;
    let out_shape: Vec<usize> = dims.iter().map(|&d| s[d]).collect();
    let in_st = strides(s);
    let src_st: Vec<usize> = dims.iter().map(|&d| in_st[d]).collect();
    let last = *out_shape.last().unwrap_or(&1);
    let mut out = vec![0f32; xs.len()];
    if out.is_empty() {
        return Tensor::from_f32(out, out_shape);
    }
    let nd = out_shape.len();
    super::for_chunks(&mut out, last, |row, o| {
        let (mut off, mut r) = (0usize, row);
        for d in (0..nd - 1).rev() {
            off += (r % out_shape[d]) * src_st[d];
            r /= out_shape[d];
        }
        let ls = src_st[nd - 1];
        if ls == 1 {
            o.copy_from_slice(&xs[off..off + o.len()]);
        } else {
            for (j, o) in o.iter_mut().enumerate() {
                *o = xs[off + j * ls];
            }
        }
    });
    Tensor::from_f32(out, out_shape)
}

pub fn narrow(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let s = x.shape();
    if dim >= s.len() || start + len > s[dim] {
        return Err(Error::shape("narrow", format!("{start}..{} of dim {dim} in {s:?}", start + len)));
    }
    let outer: usize = s[..dim].iter().product();
    let inner: usize = s[dim + 1..].iter().product();
    let mut shape = s.to_vec();
    shape[dim] = len;
    fn rows<T: Copy>(xs: &[T], outer: usize, pitch: usize, start: usize, chunk: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * chunk);
        for o in 0..outer {
            out.extend_from_slice(&xs[o * pitch + start..][..chunk]);
        }
        out
    }
    if x.dtype() == DType::I32 {
        return Tensor::from_i32(rows(x.as_i32()?, outer, s[dim] * inner, start * inner, len * inner), shape);
    }
    let xs = check_f32("narrow", x)?;
    Tensor::from_f32(rows(xs, outer, s[dim] * inner, start * inner, len * inner), shape)
}

pub fn concat(xs: &[&Tensor], dim: usize) -> Result<Tensor> {
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
    }
    let outer: usize = s0[..dim].iter().product();
    let total: usize = xs.iter().map(|t| t.dim(dim)).sum();
    let mut shape = s0.to_vec();
    shape[dim] = total;
    fn join<T: Copy>(datas: &[&[T]], outer: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(datas.iter().map(|d| d.len()).sum());
        for o in 0..outer {
            for d in datas {
                let n = d.len() / outer;
                out.extend_from_slice(&d[o * n..(o + 1) * n]);
            }
        }
        out
    }
    if first.dtype() == DType::I32 {
        let datas: Vec<&[i32]> = xs.iter().map(|t| t.as_i32().map_err(|_| Error::shape("concat", format!("expected i32 tensors like the first, got {} {:?}", t.dtype(), t.shape())))).collect::<Result<_>>()?;
        return Tensor::from_i32(join(&datas, outer), shape);
    }
    let datas: Vec<&[f32]> = xs.iter().map(|t| check_f32("concat", t)).collect::<Result<_>>()?;
    Tensor::from_f32(join(&datas, outer), shape)
}

pub fn pad2d(x: &Tensor, top: usize, bottom: usize, left: usize, right: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() < 2 {
        return Err(Error::shape("pad2d", format!("need at least 2 dims, got {s:?}")));
    }
    let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
    let (oh, ow) = (h + top + bottom, w + left + right);
    let outer: usize = s[..s.len() - 2].iter().product();
    let xs = check_f32("pad2d", x)?;
    let mut out = vec![0f32; outer * oh * ow];
    for o in 0..outer {
        for r in 0..h {
            let dst = o * oh * ow + (r + top) * ow + left;
            out[dst..dst + w].copy_from_slice(&xs[o * h * w + r * w..][..w]);
        }
    }
    let mut shape = s.to_vec();
    let n = shape.len();
    shape[n - 2] = oh;
    shape[n - 1] = ow;
    Tensor::from_f32(out, shape)
}

/// im2col + GEMM. x [B, Cin, H, W], w [Cout, Cin, kh, kw].
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let (xs_, ws_) = (x.shape(), w.shape());
    if xs_.len() != 4 || ws_.len() != 4 || xs_[1] != ws_[1] || stride == 0 {
        return Err(Error::shape("conv2d", format!("x {xs_:?} and weight {ws_:?} (stride {stride})")));
    }
    let (b, cin, h, wd) = (xs_[0], xs_[1], xs_[2], xs_[3]);
    let (cout, kh, kw) = (ws_[0], ws_[2], ws_[3]);
    if h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(Error::shape("conv2d", format!("kernel {kh}×{kw} larger than padded input {h}×{wd}")));
    }
    let oh = (h + 2 * padding - kh) / stride + 1;
    let ow = (wd + 2 * padding - kw) / stride + 1;
    let wf = w.to_f32()?;
    let wv = wf.as_f32()?;
    if let Some(bi) = bias {
        if bi.numel() != cout {
            return Err(Error::shape("conv2d", format!("bias has {} elements, expected {cout}", bi.numel())));
        }
    }
    let bv = bias.map(|b| b.to_f32_vec()).transpose()?;
    let xv = check_f32("conv2d", x)?;
    let kk = cin * kh * kw;
    let np = oh * ow;
    let mut out = vec![0f32; b * cout * np];
    for bi in 0..b {
        // cols [kk, np]
        let mut cols = vec![0f32; kk * np];
        let xb = &xv[bi * cin * h * wd..][..cin * h * wd];
        cols.par_chunks_mut(np).enumerate().for_each(|(row, c)| {
            let ci = row / (kh * kw);
            let ky = (row / kw) % kh;
            let kx = row % kw;
            for oy in 0..oh {
                let iy = (oy * stride + ky) as isize - padding as isize;
                for ox in 0..ow {
                    let ix = (ox * stride + kx) as isize - padding as isize;
                    c[oy * ow + ox] = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                        xb[ci * h * wd + iy as usize * wd + ix as usize]
                    } else {
                        0.0
                    };
                }
            }
        });
        let ob = &mut out[bi * cout * np..][..cout * np];
        // [cout, kk] · [kk, np]
        sgemm(cout, np, kk, wv, kk, 1, &cols, np, 1, ob, false);
        if let Some(bv) = &bv {
            for (co, r) in ob.chunks_mut(np).enumerate() {
                r.iter_mut().for_each(|v| *v += bv[co]);
            }
        }
    }
    Tensor::from_f32(out, vec![b, cout, oh, ow])
}

pub fn write_kv(cache: &mut Tensor, new: &Tensor, pos: usize) -> Result<()> {
    let (cs, ns) = (cache.shape().to_vec(), new.shape());
    if cs.len() != 4 || ns.len() != 4 || cs[0] != ns[0] || cs[1] != ns[1] || cs[3] != ns[3] || pos + ns[2] > cs[2] {
        return Err(Error::shape("write_kv", format!("cache {cs:?}, new {ns:?} at position {pos}")));
    }
    let nv = check_f32("write_kv", new)?.to_vec();
    let c = cache.f32_mut()?;
    let (max, n, d) = (cs[2], ns[2], cs[3]);
    for bh in 0..cs[0] * cs[1] {
        c[(bh * max + pos) * d..][..n * d].copy_from_slice(&nv[bh * n * d..][..n * d]);
    }
    Ok(())
}
