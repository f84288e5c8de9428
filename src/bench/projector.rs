//! Vision-to-LLM projectors compared by the benchmark.
//!
//! All of them end in LLaVA-1.5's MLP, `Linear(C, d) → GELU → Linear(d, d)` (checkpoint names
//! `model.mm_projector.{0,2}`). `mlp` feeds it all 576 patch tokens; `pool2` / `pool3` first
//! average k×k cells of the 24×24 grid (144 / 64 tokens). The pooling runs on the backend as one
//! matmul with a constant `[S, N]` averaging matrix: the same shape of op as a superpixel
//! scatter-mean (S regions of N tokens), so the comparison carries over to it.
//!
//! Napkin math for the pooling matmul at C = 1024: S·N·C = 144·576·1024 ≈ 85 MFLOP (x2 for
//! multiply-add): noise next to the MLP it saves (576 → 144 rows of a 1024×4096 + 4096×4096 MLP).

use crate::backend::{Activation, Backend};
use crate::error::{Error, Result};
use crate::models::vit::Linear;
use crate::tensor::Tensor;
use crate::weights::VarView;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectorKind {
    /// Every patch token through the MLP.
    Mlp,
    /// k×k average pooling of the patch grid, then the MLP.
    Pool(usize),
}

impl ProjectorKind {
    /// The projectors every benchmark compares, the baseline first.
    pub const ALL: [ProjectorKind; 3] = [ProjectorKind::Mlp, ProjectorKind::Pool(2), ProjectorKind::Pool(3)];

    pub fn name(self) -> String {
        match self {
            ProjectorKind::Mlp => "mlp".into(),
            ProjectorKind::Pool(k) => format!("pool{k}"),
        }
    }

    /// Visual tokens handed to the LLM for a `grid × grid` patch grid.
    pub fn visual_tokens(self, grid: usize) -> usize {
        match self {
            ProjectorKind::Mlp => grid * grid,
            ProjectorKind::Pool(k) => (grid / k) * (grid / k),
        }
    }
}

/// `[(g/k)², g²]` row-stochastic matrix: row r averages the k×k block of cells r covers
/// (row-major over both grids).
pub fn averaging_matrix(grid: usize, k: usize) -> Result<Tensor> {
    if k == 0 || grid == 0 || !grid.is_multiple_of(k) {
        return Err(Error::arg("pooling", format!("a {k}×{k} window does not tile the {grid}×{grid} patch grid")));
    }
    let g = grid / k;
    let n = grid * grid;
    let mut m = vec![0f32; g * g * n];
    let w = 1.0 / (k * k) as f32;
    for (r, row) in m.chunks_exact_mut(n).enumerate() {
        let (by, bx) = (r / g, r % g);
        for y in by * k..(by + 1) * k {
            for x in bx * k..(bx + 1) * k {
                row[y * grid + x] = w;
            }
        }
    }
    Tensor::from_f32(m, vec![g * g, n])
}

/// One projector: optional pooling matrix plus the shared MLP weights.
pub struct Projector {
    pub kind: ProjectorKind,
    pool: Option<Tensor>,
}

/// LLaVA-1.5's `mm_projector`.
pub struct MlpProjector {
    fc1: Linear,
    fc2: Linear,
}

impl MlpProjector {
    /// `vv` scoped at `mm_projector`; `c` vision width, `d` LLM hidden size.
    pub fn load(vv: &VarView, c: usize, d: usize) -> Result<MlpProjector> {
        Ok(MlpProjector { fc1: Linear::load(vv, "0", d, c, true)?, fc2: Linear::load(vv, "2", d, d, true)? })
    }

    pub fn forward(&self, be: &Backend, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(be, x, Activation::Gelu, None)?;
        self.fc2.forward(be, &h, Activation::None, None)
    }
}

impl Projector {
    /// Uploads the averaging matrix once (it is a constant of the geometry, not per-image work).
    pub fn new(be: &Backend, kind: ProjectorKind, grid: usize) -> Result<Projector> {
        let pool = match kind {
            ProjectorKind::Mlp => None,
            ProjectorKind::Pool(k) => Some(be.upload(&averaging_matrix(grid, k)?)?),
        };
        Ok(Projector { kind, pool })
    }

    /// Patch features `[N, C]` → visual tokens `[S, d]`.
    pub fn forward(&self, be: &Backend, mlp: &MlpProjector, feats: &Tensor) -> Result<Tensor> {
        match &self.pool {
            None => mlp.forward(be, feats),
            Some(p) => mlp.forward(be, &be.matmul(p, feats, false)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averaging_matrix_averages_blocks() {
        let m = averaging_matrix(4, 2).unwrap();
        assert_eq!(m.shape(), &[4, 16]);
        let v = m.as_f32().unwrap();
        // Row 1 is the top-right 2×2 block: cells (0,2), (0,3), (1,2), (1,3).
        let row: Vec<usize> = (0..16).filter(|&i| v[16 + i] != 0.0).collect();
        assert_eq!(row, vec![2, 3, 6, 7]);
        for r in v.chunks(16) {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!(averaging_matrix(24, 5).is_err());
    }

    #[test]
    fn pooling_on_the_backend_is_the_block_mean() {
        let be = Backend::cpu();
        let feats: Vec<f32> = (0..16 * 3).map(|i| (i as f32 * 0.7).sin()).collect();
        let x = Tensor::from_f32(feats.clone(), vec![16, 3]).unwrap();
        let p = averaging_matrix(4, 2).unwrap();
        let y = be.matmul(&p, &x, false).unwrap();
        assert_eq!(y.shape(), &[4, 3]);
        let y = y.as_f32().unwrap();
        // Output row 3 is the bottom-right block: cells 10, 11, 14, 15.
        for c in 0..3 {
            let mean = [10, 11, 14, 15].iter().map(|&r| feats[r * 3 + c]).sum::<f32>() / 4.0;
            assert!((y[3 * 3 + c] - mean).abs() < 1e-6);
        }
    }

    #[test]
    fn token_counts_at_the_real_grid() {
        let counts: Vec<usize> = ProjectorKind::ALL.iter().map(|p| p.visual_tokens(24)).collect();
        assert_eq!(counts, vec![576, 144, 64]);
    }
}
