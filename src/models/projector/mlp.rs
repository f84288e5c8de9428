//! LLaVA-1.5's `mm_projector`: `Linear(C, d) → GELU → Linear(d, d)`, checkpoint names
//! `mm_projector.0` and `mm_projector.2`. The last step of every projector.

use crate::backend::{Activation, Backend};
use crate::error::Result;
use crate::models::vit::Linear;
use crate::tensor::Tensor;
use crate::weights::VarView;

pub struct MlpProjector {
    fc1: Linear,
    fc2: Linear,
}

impl MlpProjector {
    /// `vv` scoped at `mm_projector`; `c` vision width, `d` LLM hidden size.
    pub fn load(vv: &VarView, c: usize, d: usize) -> Result<MlpProjector> {
        Ok(MlpProjector { fc1: Linear::load(vv, "0", d, c, true)?, fc2: Linear::load(vv, "2", d, d, true)? })
    }

    /// `[n, C]` → `[n, d]` (n may be 0).
    pub fn forward(&self, be: &Backend, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(be, x, Activation::Gelu, None)?;
        self.fc2.forward(be, &h, Activation::None, None)
    }
}
