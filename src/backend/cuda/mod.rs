//! The CUDA backend (skeleton: every op reports that it is not implemented yet).

use crate::backend::{Activation, AttnParams, BinaryOp};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The device buffer behind one tensor.
#[derive(Debug)]
pub struct CudaData {}

#[derive(Debug)]
pub struct CudaBackend {}

fn missing<T>(op: &str) -> Result<T> {
    Err(Error::BackendUnavailable { backend: "cuda".into(), reason: format!("op {op} is not implemented yet") })
}

impl CudaBackend {
    /// Open the first device, or say why there is none.
    pub fn new() -> Result<CudaBackend> {
        missing("new")
    }
    pub fn device_name(&self) -> String {
        "cuda".into()
    }
    pub fn upload(&self, _t: &Tensor) -> Result<Tensor> {
        missing("upload")
    }
    pub fn upload_weight(&self, _t: &Tensor) -> Result<Tensor> {
        missing("upload_weight")
    }
    pub fn to_host(&self, _t: &Tensor) -> Result<Tensor> {
        missing("to_host")
    }
    pub fn synchronize(&self) -> Result<()> {
        missing("synchronize")
    }
    pub fn linear(&self, _x: &Tensor, _w: &Tensor, _bias: Option<&Tensor>, _act: Activation, _residual: Option<&Tensor>) -> Result<Tensor> {
        missing("linear")
    }
    pub fn linear_many(&self, _x: &Tensor, _ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        missing("linear_many")
    }
    pub fn matmul(&self, _a: &Tensor, _b: &Tensor, _trans_b: bool) -> Result<Tensor> {
        missing("matmul")
    }
    pub fn layer_norm(&self, _x: &Tensor, _w: &Tensor, _b: &Tensor, _eps: f32) -> Result<Tensor> {
        missing("layer_norm")
    }
    pub fn layer_norm_channels(&self, _x: &Tensor, _w: &Tensor, _b: &Tensor, _eps: f32) -> Result<Tensor> {
        missing("layer_norm_channels")
    }
    pub fn rms_norm(&self, _x: &Tensor, _w: &Tensor, _eps: f32) -> Result<Tensor> {
        missing("rms_norm")
    }
    pub fn softmax(&self, _x: &Tensor) -> Result<Tensor> {
        missing("softmax")
    }
    pub fn activate(&self, _x: &Tensor, _act: Activation) -> Result<Tensor> {
        missing("activate")
    }
    pub fn silu_mul(&self, _gate: &Tensor, _up: &Tensor) -> Result<Tensor> {
        missing("silu_mul")
    }
    pub fn binary(&self, _a: &Tensor, _b: &Tensor, _op: BinaryOp) -> Result<Tensor> {
        missing("binary")
    }
    pub fn affine(&self, _x: &Tensor, _s: f32, _t: f32) -> Result<Tensor> {
        missing("affine")
    }
    pub fn attention(&self, _q: &Tensor, _k: &Tensor, _v: &Tensor, _p: &AttnParams) -> Result<Tensor> {
        missing("attention")
    }
    pub fn rope(&self, _x: &Tensor, _cos: &Tensor, _sin: &Tensor, _pos_offset: usize) -> Result<Tensor> {
        missing("rope")
    }
    pub fn embedding(&self, _table: &Tensor, _ids: &[u32]) -> Result<Tensor> {
        missing("embedding")
    }
    pub fn permute(&self, _x: &Tensor, _dims: &[usize]) -> Result<Tensor> {
        missing("permute")
    }
    pub fn narrow(&self, _x: &Tensor, _dim: usize, _start: usize, _len: usize) -> Result<Tensor> {
        missing("narrow")
    }
    pub fn concat(&self, _xs: &[&Tensor], _dim: usize) -> Result<Tensor> {
        missing("concat")
    }
    pub fn pad2d(&self, _x: &Tensor, _top: usize, _bottom: usize, _left: usize, _right: usize) -> Result<Tensor> {
        missing("pad2d")
    }
    pub fn conv2d(&self, _x: &Tensor, _w: &Tensor, _bias: Option<&Tensor>, _stride: usize, _padding: usize) -> Result<Tensor> {
        missing("conv2d")
    }
    pub fn conv_transpose2d(&self, _x: &Tensor, _w: &Tensor, _bias: Option<&Tensor>, _stride: usize) -> Result<Tensor> {
        missing("conv_transpose2d")
    }
    pub fn write_kv(&self, _cache: &mut Tensor, _new: &Tensor, _pos: usize) -> Result<()> {
        missing("write_kv")
    }
    pub fn scatter_mean_pool(&self, _weights: &Tensor, _feats: &Tensor, _pos: &Tensor) -> Result<Tensor> {
        missing("scatter_mean_pool")
    }
}
