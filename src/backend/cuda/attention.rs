//! Attention on CUDA (placeholder: reports that it is not implemented yet).

use super::CudaBackend;
use crate::backend::AttnParams;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl CudaBackend {
    pub fn attention(&self, _q: &Tensor, _k: &Tensor, _v: &Tensor, _p: &AttnParams) -> Result<Tensor> {
        Err(Error::BackendUnavailable { backend: "cuda".into(), reason: "op attention is not implemented yet".into() })
    }
}
