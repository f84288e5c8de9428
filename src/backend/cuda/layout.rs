//! Data movement (kernels/layout.cu): embedding gather, permute, narrow, concat, pad2d and
//! KV-cache writes.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DeviceRepr};

use super::{grid_1d, kernels, launch, CudaBackend, CudaData};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Kernel parameter of `permute_f32` (kernels/layout.cu `struct Permute`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Permute {
    ndim: u32,
    pad: u32,
    shape: [u64; 8],
    src_stride: [u64; 8],
}
// SAFETY: plain-old-data with the same layout as the C struct.
unsafe impl DeviceRepr for Permute {}

fn strides(s: &[usize]) -> Vec<usize> {
    let mut st = vec![1; s.len()];
    for i in (0..s.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * s[i + 1];
    }
    st
}

impl CudaBackend {
    /// dst[r·dst_pitch + dst_off + j] = src[r·src_pitch + src_off + j] for n elements in rows of `chunk`.
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(&self, op: &'static str, src: u64, dst: u64, n: usize, chunk: usize, src_pitch: usize, src_off: usize, dst_pitch: usize, dst_off: usize) -> Result<()> {
        if n == 0 || chunk == 0 {
            return Ok(());
        }
        // Whole float4s on both sides (every size a multiple of 4, both bases 16-byte aligned):
        // 16-byte loads and stores, and a quarter of the index arithmetic.
        let vec4 = [chunk, src_pitch, src_off, dst_pitch, dst_off].iter().all(|v| v % 4 == 0) && src.is_multiple_of(16) && dst.is_multiple_of(16);
        let (w, name) = if vec4 { (4, "copy_rows_f32x4") } else { (1, "copy_rows_f32") };
        let (n64, c64, sp, so, dp, dof) = ((n / w) as u64, (chunk / w) as u64, (src_pitch / w) as u64, (src_off / w) as u64, (dst_pitch / w) as u64, (dst_off / w) as u64);
        launch!(self, op, self.function(&kernels::LAYOUT, name)?, grid_1d(n / w), src, dst, n64, c64, sp, so, dp, dof)
    }

    pub fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        const OP: &str = "embedding";
        if table.dims() != 2 {
            return Err(Error::shape(OP, format!("table must be [V, D], got {:?}", table.shape())));
        }
        let (v, d) = (table.dim(0), table.dim(1));
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(Error::arg("token id", format!("{bad} is outside the vocabulary of {v}")));
        }
        let (tp, dt) = self.any_float(table, OP)?;
        let n = ids.len() * d;
        let out = self.alloc_f32(&[ids.len(), d])?;
        if n > 0 {
            // A decode step being recorded reads its token id on the device (graph.rs).
            let step = self.step_args().filter(|_| ids.len() == 1);
            let idb = if step.is_none() { Some(self.htod(ids, OP)?) } else { None };
            let ip = step.unwrap_or_else(|| idb.as_ref().map_or(0, |b| self.ptr(b)));
            let (yp, n64, d64) = (self.ptr(&out), n as u64, d as u64);
            launch!(self, OP, self.function(&kernels::LAYOUT, "embedding")?, grid_1d(n), tp, dt, ip, yp, n64, d64)?;
            // The ids buffer is freed on the stream after the gather (stream-ordered free).
            drop(idb);
        }
        Ok(self.wrap_f32(out, vec![ids.len(), d]))
    }

    pub fn permute(&self, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
        const OP: &str = "permute";
        let s = x.shape();
        let mut seen = vec![false; s.len()];
        if dims.len() != s.len() || dims.iter().any(|&d| d >= s.len() || std::mem::replace(&mut seen[d], true)) {
            return Err(Error::shape(OP, format!("{dims:?} is not a permutation of {} dims", s.len())));
        }
        let xp = self.f32_ptr(x, OP)?;
        let out_shape: Vec<usize> = dims.iter().map(|&d| s[d]).collect();
        let in_st = strides(s);
        let n = x.numel();
        let out = self.alloc_f32(&out_shape)?;
        if n > 0 {
            // Drop size-1 dims and merge runs that stay contiguous in the source, so up to 8
            // effective dims remain (and the common cases get cheaper index math).
            let (mut shp, mut st): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
            for (&d, &len) in dims.iter().zip(&out_shape) {
                if len == 1 {
                    continue;
                }
                let stride = in_st[d];
                if let (Some(ls), Some(lst)) = (shp.last_mut(), st.last_mut()) {
                    if *lst == stride * len {
                        *ls *= len;
                        *lst = stride;
                        continue;
                    }
                }
                shp.push(len);
                st.push(stride);
            }
            if shp.is_empty() {
                // Every dim has size 1: one element, copied as a run of one.
                shp.push(1);
                st.push(1);
            }
            if shp.len() > 8 {
                return Err(Error::shape(OP, format!("{dims:?} of {s:?} needs more than 8 dims after merging")));
            }
            let yp = self.ptr(&out);
            // Whole float4s: the innermost merged run is contiguous with a length that is a
            // multiple of 4, every other stride is too, and both bases are 16-byte aligned.
            let last = shp.len() - 1;
            let vec4 = st[last] == 1 && shp[last] % 4 == 0 && st[..last].iter().all(|s| s % 4 == 0) && xp.is_multiple_of(16) && yp.is_multiple_of(16);
            let w = if vec4 { 4 } else { 1 };
            let mut p = Permute { ndim: shp.len() as u32, pad: 0, shape: [1; 8], src_stride: [0; 8] };
            for i in 0..shp.len() {
                p.shape[i] = shp[i] as u64;
                p.src_stride[i] = if i == last && vec4 { 1 } else { (st[i] / w) as u64 };
            }
            p.shape[last] /= w as u64;
            let (name, n64) = if vec4 { ("permute_f32x4", (n / 4) as u64) } else { ("permute_f32", n as u64) };
            launch!(self, OP, self.function(&kernels::LAYOUT, name)?, grid_1d(n / w), xp, yp, n64, p)?;
        }
        Ok(self.wrap_f32(out, out_shape))
    }

    pub fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        const OP: &str = "narrow";
        let s = x.shape();
        if dim >= s.len() || start + len > s[dim] {
            return Err(Error::shape(OP, format!("{start}..{} of dim {dim} in {s:?}", start + len)));
        }
        let xp = self.word_ptr(x, OP)?;
        let outer: usize = s[..dim].iter().product();
        let inner: usize = s[dim + 1..].iter().product();
        let mut shape = s.to_vec();
        shape[dim] = len;
        let (out, yp) = self.alloc_words(x, shape, OP)?;
        let chunk = len * inner;
        self.copy_rows(OP, xp, yp, outer * chunk, chunk, s[dim] * inner, start * inner, chunk, 0)?;
        Ok(out)
    }

    pub fn concat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        const OP: &str = "concat";
        let first = xs.first().ok_or_else(|| Error::shape(OP, "no tensors"))?;
        let s0 = first.shape();
        if dim >= s0.len() {
            return Err(Error::shape(OP, format!("dim {dim} of {s0:?}")));
        }
        for t in xs {
            let s = t.shape();
            if s.len() != s0.len() || s.iter().zip(s0).enumerate().any(|(i, (a, b))| i != dim && a != b) {
                return Err(Error::shape(OP, format!("{s:?} does not match {s0:?} outside dim {dim}")));
            }
            if t.dtype() != first.dtype() {
                return Err(Error::shape(OP, format!("{} {s:?} does not match the first tensor's {}", t.dtype(), first.dtype())));
            }
        }
        let ptrs: Vec<u64> = xs.iter().map(|t| self.word_ptr(t, OP)).collect::<Result<_>>()?;
        let outer: usize = s0[..dim].iter().product();
        let inner: usize = s0[dim + 1..].iter().product();
        let total: usize = xs.iter().map(|t| t.dim(dim)).sum();
        let mut shape = s0.to_vec();
        shape[dim] = total;
        let (out, yp) = self.alloc_words(first, shape, OP)?;
        if outer == 1 && xs.len() > 1 && ptrs.iter().all(|&p| p == ptrs[0]) && xs.iter().all(|t| t.shape() == s0) {
            // One tensor repeated (the same prompt tokens for every prompt): one launch reading
            // it with pitch 0.
            let chunk = s0[dim] * inner;
            return self.copy_rows(OP, ptrs[0], yp, xs.len() * chunk, chunk, 0, 0, chunk, 0).map(|_| out);
        }
        let mut off = 0;
        for (t, &p) in xs.iter().zip(&ptrs) {
            let chunk = t.dim(dim) * inner;
            self.copy_rows(OP, p, yp, outer * chunk, chunk, chunk, 0, total * inner, off * inner)?;
            off += t.dim(dim);
        }
        Ok(out)
    }

    pub fn pad2d(&self, x: &Tensor, top: usize, bottom: usize, left: usize, right: usize) -> Result<Tensor> {
        const OP: &str = "pad2d";
        let s = x.shape();
        if s.len() < 2 {
            return Err(Error::shape(OP, format!("need at least 2 dims, got {s:?}")));
        }
        let xp = self.f32_ptr(x, OP)?;
        let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
        let (oh, ow) = (h + top + bottom, w + left + right);
        let mut shape = s.to_vec();
        let nd = shape.len();
        shape[nd - 2] = oh;
        shape[nd - 1] = ow;
        let n: usize = shape.iter().product();
        let out = self.alloc_f32(&shape)?;
        if n > 0 {
            let (yp, n64, h64, w64, t64, l64, oh64, ow64) = (self.ptr(&out), n as u64, h as u64, w as u64, top as u64, left as u64, oh as u64, ow as u64);
            launch!(self, OP, self.function(&kernels::LAYOUT, "pad2d_f32")?, grid_1d(n), xp, yp, n64, h64, w64, t64, l64, oh64, ow64)?;
        }
        Ok(self.wrap_f32(out, shape))
    }

    /// `Backend::window_partition` in one pass (kernels/layout.cu `windows_*`; grid side g and
    /// channels d checked by the caller).
    pub(crate) fn window_partition(&self, x: &Tensor, w: usize, g: usize, d: usize) -> Result<Tensor> {
        let n = g.div_ceil(w);
        self.windows(x, vec![n * n, w * w, d], g, w, true)
    }

    /// `Backend::window_unpartition` in one pass (sizes checked by the caller).
    pub(crate) fn window_unpartition(&self, x: &Tensor, w: usize, g: usize, d: usize) -> Result<Tensor> {
        self.windows(x, vec![g, g, d], g, w, false)
    }

    /// Launch `windows_f32[x4]` writing a new tensor of `shape` (the last dim D).
    fn windows(&self, x: &Tensor, shape: Vec<usize>, g: usize, w: usize, to_windows: bool) -> Result<Tensor> {
        const OP: &str = "window_partition";
        let xp = self.f32_ptr(x, OP)?;
        let d = shape[2];
        let total: usize = shape.iter().product();
        let out = self.alloc_f32(&shape)?;
        if total > 0 {
            let u32_of = |v: usize| u32::try_from(v).map_err(|_| Error::shape(OP, format!("{v} exceeds u32")));
            let (g32, w32, nw32, dir) = (u32_of(g)?, u32_of(w)?, u32_of(g.div_ceil(w))?, to_windows as i32);
            u32_of(w * w)?; // the kernel's rows per window
            let yp = self.ptr(&out);
            if d.is_multiple_of(4) {
                let (n64, d4) = ((total / 4) as u64, u32_of(d / 4)?);
                launch!(self, OP, self.function(&kernels::LAYOUT, "windows_f32x4")?, grid_1d(total / 4), xp, yp, n64, d4, g32, w32, nw32, dir)?;
            } else {
                let (n64, d32) = (total as u64, u32_of(d)?);
                launch!(self, OP, self.function(&kernels::LAYOUT, "windows_f32")?, grid_1d(total), xp, yp, n64, d32, g32, w32, nw32, dir)?;
            }
        }
        Ok(self.wrap_f32(out, shape))
    }

    /// Write `new` [B, H, n, D] into `cache` [B, H, max, D] at `pos..pos+n`. In place when this
    /// tensor is the only owner of the cache buffer; a cache shared with other tensors is copied
    /// first, so they keep their values (the CPU backend's copy-on-write).
    pub fn write_kv(&self, cache: &mut Tensor, new: &Tensor, pos: usize) -> Result<()> {
        const OP: &str = "write_kv";
        let (cs, ns) = (cache.shape().to_vec(), new.shape());
        if cs.len() != 4 || ns.len() != 4 || cs[0] != ns[0] || cs[1] != ns[1] || cs[3] != ns[3] || pos + ns[2] > cs[2] {
            return Err(Error::shape(OP, format!("cache {cs:?}, new {ns:?} at position {pos}")));
        }
        let np = self.f32_ptr(new, OP)?;
        let (max, n, d) = (cs[2], ns[2], cs[3]);
        self.with_unique_f32(cache, OP, |cp| self.copy_rows(OP, np, cp, cs[0] * cs[1] * n * d, n * d, n * d, 0, max * d, pos * d))
    }

    /// Run `f` on the device pointer of f32 tensor `t` to write it in place. Storage shared with
    /// other tensors is copied first (they keep the old values), so `t` alone sees the writes.
    pub(crate) fn with_unique_f32(&self, t: &mut Tensor, op: &'static str, f: impl FnOnce(u64) -> Result<()>) -> Result<()> {
        self.f32_slice(t, op)?;
        self.with_unique(t, op, f)
    }

    /// `with_unique_f32` for an f32 or bf16 tensor (a KV cache of either dtype).
    pub(crate) fn with_unique(&self, t: &mut Tensor, op: &'static str, f: impl FnOnce(u64) -> Result<()>) -> Result<()> {
        let (shape, dtype) = (t.shape().to_vec(), t.dtype());
        if !matches!(self.data(t, op)?, CudaData::F32(_) | CudaData::BF16(_)) {
            return Err(Error::shape(op, format!("expected an f32 or bf16 tensor, got {dtype} {shape:?}")));
        }
        // Take the storage out so the Arc count says whether anyone else holds it.
        let old = std::mem::replace(t, Tensor::from_storage(Storage::Cpu(Arc::new(crate::tensor::CpuData::F32(Vec::new()))), DType::F32, vec![0]));
        let Storage::Cuda(mut arc) = old.storage().clone() else {
            *t = old;
            return Err(Error::shape(op, "tensor is not on the CUDA device"));
        };
        drop(old);
        if Arc::get_mut(&mut arc).is_none() {
            // A recorded decode step must write the cache it was given: a copy made during the
            // capture would be the graph's own memory.
            let copy = match &*arc {
                _ if self.step_args().is_some() => Err(Error::shape(op, "a KV cache shared with another tensor cannot be written by a recorded decode step")),
                CudaData::F32(s) => self.dtod_copy(s, op).map(CudaData::F32),
                CudaData::BF16(s) => self.dtod_copy(s, op).map(CudaData::BF16),
                _ => Err(Error::shape(op, "expected an f32 or bf16 tensor")),
            };
            match copy {
                Ok(c) => arc = Arc::new(c),
                Err(e) => {
                    *t = Tensor::from_storage(Storage::Cuda(arc), dtype, shape);
                    return Err(e);
                }
            }
        }
        let result = match &*arc {
            CudaData::F32(s) => f(self.ptr(s)),
            CudaData::BF16(s) => f(self.ptr(s)),
            _ => Err(Error::shape(op, "expected an f32 or bf16 tensor")),
        };
        *t = Tensor::from_storage(Storage::Cuda(arc), dtype, shape);
        result
    }

    pub(super) fn dtod_copy<T: DeviceRepr>(&self, s: &CudaSlice<T>, op: &'static str) -> Result<CudaSlice<T>> {
        self.stream().clone_dtod(s).map_err(super::dev_err(op))
    }
}
