//! conv2d (im2col + GEMM): shaders/conv.wgsl for the data movement, shaders/matmul.wgsl for the multiply-adds.

use super::elementwise::{f32_len, groups};
use super::matmul::{gemm, Gemm, Strides};
use super::{u32_of, Shader, WgpuBackend};
use crate::backend::Activation;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const CONV: Shader = Shader { name: "conv", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/conv.wgsl")) };

/// x [B, Cin, H, W], w [Cout, Cin, kh, kw] (f32 or f16), symmetric zero padding.
pub(super) fn conv2d(be: &WgpuBackend, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let (xs, ws) = (x.shape(), w.shape());
    if xs.len() != 4 || ws.len() != 4 || xs[1] != ws[1] || stride == 0 {
        return Err(Error::shape("conv2d", format!("x {xs:?} and weight {ws:?} (stride {stride})")));
    }
    let (b, cin, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (cout, kh, kw) = (ws[0], ws[2], ws[3]);
    if h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(Error::shape("conv2d", format!("kernel {kh}×{kw} larger than padded input {h}×{wd}")));
    }
    if let Some(bi) = bias {
        if bi.numel() != cout {
            return Err(Error::shape("conv2d", format!("bias has {} elements, expected {cout}", bi.numel())));
        }
    }
    f32_len("conv2d", x)?;
    let oh = (h + 2 * padding - kh) / stride + 1;
    let ow = (wd + 2 * padding - kw) / stride + 1;
    let (kk, np) = (cin * kh * kw, oh * ow);
    let out = be.alloc(vec![b, cout, oh, ow], DType::F32)?;
    let n = b * np * kk;
    if n == 0 || cout == 0 {
        return Ok(out);
    }
    // cols [B, np, kk]: one row of the unrolled receptive field per output pixel.
    let cols = be.alloc(vec![b, np, kk], DType::F32)?;
    let params = [u32_of("conv2d", n)?, kk as u32, np as u32, cin as u32, h as u32, wd as u32, kh as u32, kw as u32, ow as u32, u32_of("conv2d", stride)?, u32_of("conv2d", padding)?];
    be.dispatch(&CONV, "im2col", &[be.buffer(x, "conv2d")?, be.buffer(&cols, "conv2d")?], &params, groups(n))?;
    // out[b, co, p] = Σ_k cols[b, p, k] · w[co, k]: M = pixels, N = channels, stored transposed.
    let g = Gemm {
        m: np,
        n: cout,
        k: kk,
        batch: b,
        a: (&cols, Strides { batch: np * kk, row: kk, col: 1 }),
        b: (w, Strides { batch: 0, row: 1, col: kk }),
        c: (&out, Strides { batch: cout * np, row: 1, col: np }),
        bias,
        act: Activation::None,
        residual: None,
        residual_period: 0,
    };
    gemm(be, "conv2d", &g)?;
    Ok(out)
}
