//! The semantic visual projector (docs/svp.md §3): coverage-weighted scatter-mean pooling of the
//! patch features per superpixel, SSPE, SSA; `Projector` applies the MLP after it.

use serde::Deserialize;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::superpixels::Superpixels;
use crate::tensor::Tensor;
use crate::weights::VarView;

use super::ProjectorDims;

/// `svp` block of the segmenter's config.json (docs/svp.md §3).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SvpConfig {
    pub ssa_heads: usize,
    pub mlp_ratio: usize,
    pub pos_temperature: f64,
    pub ln_eps: f64,
}

impl Default for SvpConfig {
    fn default() -> Self {
        SvpConfig { ssa_heads: 8, mlp_ratio: 4, pos_temperature: 10000.0, ln_eps: 1e-5 }
    }
}

pub struct SvpProjector {}

impl SvpProjector {
    /// `vv` scoped at `svp`.
    pub fn load(_be: &Backend, _vv: &VarView, _dims: ProjectorDims, _cfg: &SvpConfig) -> Result<SvpProjector> {
        Err(Error::arg("--projector", "svp is not available in this build yet"))
    }

    /// Patch features `[P, C]` → pooled, position-embedded, aggregated tokens `[S, C]`.
    pub fn forward(&self, _be: &Backend, _feats: &Tensor, _sp: &Superpixels) -> Result<Tensor> {
        Err(Error::arg("--projector", "svp is not available in this build yet"))
    }
}
