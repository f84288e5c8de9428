//! conv2d (kernels/conv.cu around a cuBLAS GEMM): per image, im2col into cols [cin·kh·kw, oh·ow] (skipped for 1×1, stride 1, no
//! padding, where x itself is that matrix), then y [cout, oh·ow] = w [cout, cin·kh·kw] · cols,
//! then the per-channel bias.
//!
//! Weights may be f32, f16 or bf16 (widened once per call to f32 for the f32 GEMM).

use super::matmul::Gemm;
use super::{grid_1d, kernels, launch, CudaBackend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl CudaBackend {
    pub fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
        const OP: &str = "conv2d";
        let (xs_, ws_) = (x.shape(), w.shape());
        if xs_.len() != 4 || ws_.len() != 4 || xs_[1] != ws_[1] || stride == 0 {
            return Err(Error::shape(OP, format!("x {xs_:?} and weight {ws_:?} (stride {stride})")));
        }
        let (b, cin, h, wd) = (xs_[0], xs_[1], xs_[2], xs_[3]);
        let (cout, kh, kw) = (ws_[0], ws_[2], ws_[3]);
        if h + 2 * padding < kh || wd + 2 * padding < kw {
            return Err(Error::shape(OP, format!("kernel {kh}×{kw} larger than padded input {h}×{wd}")));
        }
        if let Some(bi) = bias {
            if bi.numel() != cout {
                return Err(Error::shape(OP, format!("bias has {} elements, expected {cout}", bi.numel())));
            }
        }
        let oh = (h + 2 * padding - kh) / stride + 1;
        let ow = (wd + 2 * padding - kw) / stride + 1;
        let xp = self.f32_ptr(x, OP)?;
        let widened = self.widen(OP, w)?;
        let wp = match &widened {
            Some(s) => self.ptr(s),
            None => self.f32_ptr(w, OP)?,
        };
        let (kk, np) = (cin * kh * kw, oh * ow);
        let out = self.alloc_f32(&[b, cout, oh, ow])?;
        let yp = self.ptr(&out);
        let direct = kh == 1 && kw == 1 && stride == 1 && padding == 0;
        let cols = if direct || b * kk * np == 0 { None } else { Some(self.alloc::<f32>(kk * np, OP)?) };
        for bi in 0..b {
            let xb = xp + (bi * cin * h * wd * 4) as u64;
            let src = match &cols {
                Some(c) => {
                    let cp = self.ptr(c);
                    let n = kk * np;
                    let (n64, h32, w32, kh32, kw32, s32, p32, oh32, ow32) =
                        (n as u64, h as u32, wd as u32, kh as u32, kw as u32, stride as u32, padding as u32, oh as u32, ow as u32);
                    launch!(self, OP, self.function(&kernels::CONV, "im2col_f32")?, grid_1d(n), xb, cp, n64, h32, w32, kh32, kw32, s32, p32, oh32, ow32)?;
                    cp
                }
                None => xb,
            };
            // Row-major y [cout, np] = w [cout, kk] · cols [kk, np]; column-major: y [np, cout]
            // = cols [np, kk] (ld np) · w [kk, cout] (ld kk).
            let g = Gemm::single(false, false, np, cout, kk, src, np, wp, kk, yp + (bi * cout * np * 4) as u64, np);
            self.sgemm(OP, &g)?;
        }
        if let Some(bv) = bias {
            self.bias_channels(OP, &out, b * cout * np, cout, np, bv)?;
        }
        drop(cols);
        drop(widened);
        Ok(self.wrap_f32(out, vec![b, cout, oh, ow]))
    }
}
