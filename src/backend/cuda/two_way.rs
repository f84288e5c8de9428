//! SAM's two-way attention on factored weights (`Backend::two_way_update` / `two_way_pool`).

use super::CudaBackend;
use crate::backend::TwoWayShape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl CudaBackend {
    /// Whether a fused kernel takes these sizes; the composed path runs otherwise.
    pub(crate) fn two_way_fits(_s: &TwoWayShape) -> bool {
        false
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn two_way_update(&self, _x: &Tensor, _y: &Tensor, _ax: &Tensor, _ay: &Tensor, _u: &Tensor, _bias: &Tensor, _ln: (&Tensor, &Tensor, f32), _s: TwoWayShape) -> Result<Tensor> {
        Err(Error::shape("two_way_update", "no fused CUDA kernel yet"))
    }

    pub(crate) fn two_way_pool(&self, _x: &Tensor, _y: &Tensor, _ax: &Tensor, _ay: &Tensor, _s: TwoWayShape) -> Result<Tensor> {
        Err(Error::shape("two_way_pool", "no fused CUDA kernel yet"))
    }
}
