//! `pool{k}`: average pooling of the G×G patch grid to g×g cells (g = ceil(G/k)) before the MLP.
//! Cells follow torch's `adaptive_avg_pool2d` (cell i spans `floor(i·G/g) .. ceil((i+1)·G/g)`),
//! which is plain k×k pooling when k divides G: 144 tokens at G = 24, k = 2; 64 at k = 3.
//!
//! The pooling runs on the backend as one matmul with a constant `[g², G²]` averaging matrix:
//! the same shape of op as the superpixel scatter-mean (S regions of P tokens). Napkin math at
//! C = 1024: g²·G²·C = 144·576·1024 ≈ 85 M multiply-adds, noise next to the MLP rows it saves.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Side of the pooled grid.
pub fn pooled_side(grid: usize, k: usize) -> usize {
    if k == 0 {
        0
    } else {
        grid.div_ceil(k)
    }
}

/// Rows (or columns) of the source grid that pooled cell `i` of `g` averages.
fn cell_span(i: usize, grid: usize, g: usize) -> std::ops::Range<usize> {
    (i * grid / g)..((i + 1) * grid).div_ceil(g)
}

/// `[g², G²]` row-stochastic matrix: row r averages the cells pooled cell r covers (row-major
/// over both grids).
pub fn averaging_matrix(grid: usize, k: usize) -> Result<Tensor> {
    if k == 0 || grid == 0 || k > grid {
        return Err(Error::arg("pooling", format!("a {k}×{k} window does not fit the {grid}×{grid} patch grid")));
    }
    let g = pooled_side(grid, k);
    let n = grid * grid;
    let mut m = vec![0f32; g * g * n];
    for (r, row) in m.chunks_exact_mut(n).enumerate() {
        let (ys, xs) = (cell_span(r / g, grid, g), cell_span(r % g, grid, g));
        let w = 1.0 / (ys.len() * xs.len()) as f32;
        for y in ys {
            for x in xs.clone() {
                row[y * grid + x] = w;
            }
        }
    }
    Tensor::from_f32(m, vec![g * g, n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

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
        assert!(averaging_matrix(24, 0).is_err());
        assert!(averaging_matrix(2, 3).is_err());
    }

    /// A grid k does not divide pools with overlapping cells, as adaptive_avg_pool2d: 16 → 6
    /// cells at k = 3, cell 1 spanning rows 2..6.
    #[test]
    fn uneven_grid_pools_like_adaptive_avg_pool() {
        assert_eq!(pooled_side(16, 3), 6);
        assert_eq!(cell_span(1, 16, 6), 2..6);
        assert_eq!(cell_span(5, 16, 6), 13..16);
        let m = averaging_matrix(16, 3).unwrap();
        assert_eq!(m.shape(), &[36, 256]);
        for r in m.as_f32().unwrap().chunks(256) {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
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
        let counts: Vec<usize> = [1, 2, 3].iter().map(|&k| pooled_side(24, k).pow(2)).collect();
        assert_eq!(counts, vec![576, 144, 64]);
    }
}
