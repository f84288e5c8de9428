//! `Backend::layer_norm_mlp` on bf16 weights: the LayerNorm writes the first GEMM's bf16
//! operand (kernels/norm.cu `layer_norm*_bf16`), the bias and activation after it write the
//! second's (kernels/elementwise.cu `epilogue_bf16*`), and cuBLASLt adds fc2's bias and the
//! residual as it writes y (matmul.rs `bf16_gemm_epilogue`). Against the composed ops: the norm
//! and the hidden layer are written once, as bf16, instead of in f32 and again rounded; four
//! launches where there were seven. Same values: the composed bf16 path rounds the same f32
//! results to bf16 before the same GEMMs.

use super::matmul::GEMV_MAX_M;
use super::CudaBackend;
use crate::backend::mlp::Mlp;
use crate::backend::Activation;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

impl CudaBackend {
    /// Whether this path takes the call (shapes checked by `mlp_shape`): bf16 weights in the
    /// bf16 GEMM mode, f32 x, more rows than the GEMVs take, and an fc1 too large for the
    /// one-launch kernel (which the composed ops then use).
    pub(crate) fn layer_norm_mlp_fits(&self, x: &Tensor, m: &Mlp, rows: usize) -> bool {
        self.bf16_gemm() && x.dtype() == DType::F32 && m.fc1.dtype() == DType::BF16 && m.fc2.dtype() == DType::BF16 && rows > GEMV_MAX_M && !self.fused_fits(rows, m.fc1)
    }

    /// x + fc2(act(fc1(LN(x)) + b1)) + b2 (`rows` × D in, hidden width `h`).
    pub(crate) fn layer_norm_mlp(&self, x: &Tensor, ln: (&Tensor, &Tensor, f32), m: &Mlp, rows: usize, h: usize) -> Result<Tensor> {
        const OP: &str = "layer_norm_mlp";
        let xb = self.layer_norm_bf16(x, ln.0, ln.1, ln.2)?;
        let hidden = self.alloc::<f32>(rows * h, OP)?;
        let xbp = self.ptr(&xb);
        // bf16 weights in the bf16 mode (layer_norm_mlp_fits): gemm_nt multiplies xb alone.
        self.gemm_nt(OP, xbp, Some(xbp), m.fc1, &hidden, rows)?;
        drop(xb);
        let hb = self.epilogue_bf16(OP, &hidden, rows * h, h, m.b1, m.act)?;
        drop(hidden);
        let y = self.alloc_f32(x.shape())?;
        self.bf16_gemm_epilogue(OP, self.ptr(&hb), m.fc2, &y, rows, m.b2, Activation::None, Some(x))?;
        Ok(self.wrap_f32(y, x.shape().to_vec()))
    }
}
