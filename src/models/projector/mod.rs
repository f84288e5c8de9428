//! Vision-to-LLM projectors, one file each behind one interface, chosen at run time
//! (`--projector mlp|pool2|pool3|svp`). Every one ends in LLaVA-1.5's MLP (`model.mm_projector`);
//! they differ in which tokens reach it. The definitions are in docs/svp.md §3.
//!
//! ```text
//! mlp     patch features [P, C] ─────────────────────────────────────── MLP ─ [P, d]
//! pool{k} patch features [P, C] ─ k×k adaptive average pooling ──────── MLP ─ [(G/k)², d]
//! svp     patch features [P, C] + superpixels (coverage A [S, P], geometry [S, 7])
//!                               ─ scatter-mean + SSPE ─ SSA ─────────── MLP ─ [S, d]
//! ```

pub mod mlp;
pub mod pool;
pub mod svp;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::superpixels::Superpixels;
use crate::tensor::Tensor;
use crate::weights::VarView;

pub use mlp::MlpProjector;
pub use svp::{SvpConfig, SvpProjector};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectorKind {
    /// Every patch token through the MLP.
    Mlp,
    /// k×k average pooling of the patch grid, then the MLP.
    Pool(usize),
    /// Superpixel visual words (docs/svp.md).
    Svp,
}

impl ProjectorKind {
    /// The projectors every benchmark compares, the baseline first.
    pub const ALL: [ProjectorKind; 4] = [ProjectorKind::Mlp, ProjectorKind::Pool(2), ProjectorKind::Pool(3), ProjectorKind::Svp];

    pub fn name(self) -> String {
        match self {
            ProjectorKind::Mlp => "mlp".into(),
            ProjectorKind::Pool(k) => format!("pool{k}"),
            ProjectorKind::Svp => "svp".into(),
        }
    }

    /// `mlp`, `svp` or `pool{k}` (k ≥ 1).
    pub fn parse(name: &str) -> Result<ProjectorKind> {
        let bad = || Error::arg("--projector", format!("unknown projector `{name}`; expected mlp, svp or pool{{k}} (pool2, pool3)"));
        match name {
            "mlp" => Ok(ProjectorKind::Mlp),
            "svp" => Ok(ProjectorKind::Svp),
            _ => match name.strip_prefix("pool").map(str::parse::<usize>) {
                Some(Ok(k)) if k >= 1 => Ok(ProjectorKind::Pool(k)),
                _ => Err(bad()),
            },
        }
    }

    /// Visual tokens for a `grid × grid` patch grid; None for `svp` (it depends on the image).
    pub fn fixed_visual_tokens(self, grid: usize) -> Option<usize> {
        match self {
            ProjectorKind::Mlp => Some(grid * grid),
            ProjectorKind::Pool(k) => Some(pool::pooled_side(grid, k).pow(2)),
            ProjectorKind::Svp => None,
        }
    }
}

/// Shapes a projector is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjectorDims {
    /// Vision feature width C.
    pub vision_width: usize,
    /// LLM hidden size d.
    pub llm_width: usize,
    /// Side G of the square patch grid (P = G²).
    pub grid: usize,
}

/// One projector with its weights.
pub struct Projector {
    pub kind: ProjectorKind,
    pub dims: ProjectorDims,
    mlp: MlpProjector,
    /// `[(G/k)², G²]` averaging matrix of `pool{k}`.
    pool: Option<Tensor>,
    svp: Option<SvpProjector>,
}

impl Projector {
    /// `vv` scoped at the checkpoint's `model` (so `mm_projector.*` and `svp.*` are below it).
    pub fn load(be: &Backend, vv: &VarView, kind: ProjectorKind, dims: ProjectorDims, svp: &SvpConfig) -> Result<Projector> {
        let mlp = MlpProjector::load(&vv.pp("mm_projector"), dims.vision_width, dims.llm_width)?;
        let (pool, svp) = match kind {
            ProjectorKind::Mlp => (None, None),
            ProjectorKind::Pool(k) => (Some(be.upload(&pool::averaging_matrix(dims.grid, k)?)?), None),
            ProjectorKind::Svp => (None, Some(SvpProjector::load(be, &vv.pp("svp"), dims, svp)?)),
        };
        Ok(Projector { kind, dims, mlp, pool, svp })
    }

    /// Patch features `[P, C]` (grid order) → visual tokens `[S, d]`. `svp` needs the image's
    /// superpixels (built on the same G×G grid); the others ignore them.
    pub fn forward(&self, be: &Backend, feats: &Tensor, superpixels: Option<&Superpixels>) -> Result<Tensor> {
        let p = self.dims.grid * self.dims.grid;
        if feats.dims() != 2 || feats.dim(0) != p || feats.dim(1) != self.dims.vision_width {
            return Err(Error::arg(
                "patch features",
                format!("shape {:?}, expected [{p}, {}] for the {} projector", feats.shape(), self.dims.vision_width, self.kind.name()),
            ));
        }
        match (&self.pool, &self.svp) {
            (Some(m), _) => self.mlp.forward(be, &be.matmul(m, feats, false)?),
            (None, Some(svp)) => {
                let sp = superpixels.ok_or_else(|| Error::arg("--projector", "svp needs the image's superpixels"))?;
                let pooled = svp.forward(be, feats, sp)?;
                self.mlp.forward(be, &pooled)
            }
            (None, None) => self.mlp.forward(be, feats),
        }
    }
}
