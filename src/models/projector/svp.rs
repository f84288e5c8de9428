//! The semantic visual projector (docs/svp.md §3): coverage-weighted scatter-mean pooling of the
//! patch features per superpixel, SSPE, SSA; `Projector` applies the MLP after it.
//!
//! ```text
//! F [P, C] ─ + E (sin-cos table) ─ F+E ─┬─ mean over A's rows ─ z+e [S, C] ─ + geo_mlp(g) ─ x
//!                                       └─ LN_kv ─ K, V [P, C]                               │
//! x ─ LN_q ─ Q ─ softmax(Q·Kᵀ/√(C/H) + γ_h·A) · V ─ o_proj ─ + x ─ LN_m ─ fc1 ─ GELU ─ fc2 ─ + ─ [S, C]
//! ```
//!
//! Everything after the per-image inputs (A, its row-normalised copy, g) are uploaded runs as
//! backend ops. The pooling is one matmul: z_s + e_s = Σ_p Â[s,p]·(F_p + E_p) with Â the
//! row-normalised coverage, and F + E is the key/value input anyway. The attention is written as
//! matmul + softmax because the coverage bias is an arbitrary [H, S, P] additive term, which the
//! fused `attention` op does not take; at S ≲ 64, P = 576 the score matrix is ≤ 8·64·576 floats.
//!
//! Napkin math at the LISA-7B shapes (S = 40, P = 576, C = 1024, H = 8): K/V projections
//! 2·576·1024² ≈ 1.2 G multiply-adds dominate; Q/O and the MLP on 40 rows ≈ 0.4 G; pooling and
//! scores ≈ 0.07 G. The LLaVA MLP it saves on 536 rows is 536·(1024·4096 + 4096²) ≈ 11 G.

use serde::Deserialize;

use crate::backend::{Activation, Backend};
use crate::error::{Error, Result};
use crate::models::vit::{LayerNorm, Linear};
use crate::superpixels::Superpixels;
use crate::tensor::Tensor;
use crate::weights::VarView;

use super::ProjectorDims;

/// Per-superpixel geometry features (docs/svp.md §2.10): centroid, box, area fraction.
pub const GEOMETRY_FEATURES: usize = 7;

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

impl SvpConfig {
    /// Check the config against the vision width C; errors name the offending field.
    pub fn validate(&self, vision_width: usize) -> Result<()> {
        let c = vision_width;
        if c == 0 || !c.is_multiple_of(4) {
            return Err(Error::arg("svp vision width", format!("C = {c} must be a positive multiple of 4 (the sin-cos table has four C/4 blocks)")));
        }
        if self.ssa_heads == 0 || !c.is_multiple_of(self.ssa_heads) {
            return Err(Error::arg("svp.ssa_heads", format!("{} heads do not divide the vision width C = {c}", self.ssa_heads)));
        }
        if self.mlp_ratio == 0 {
            return Err(Error::arg("svp.mlp_ratio", "must be at least 1"));
        }
        if !(self.pos_temperature.is_finite() && self.pos_temperature > 0.0) {
            return Err(Error::arg("svp.pos_temperature", format!("{} is not a positive number", self.pos_temperature)));
        }
        if !(self.ln_eps.is_finite() && self.ln_eps >= 0.0) {
            return Err(Error::arg("svp.ln_eps", format!("{} is not a non-negative number", self.ln_eps)));
        }
        Ok(())
    }
}

/// The fixed 2-D sin-cos table E `[grid², dim]` (docs/svp.md §3.1), row-major: row p = r·grid + c
/// is `[sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)]`, ω_i = temperature^(−i/q), q = dim/4. Computed
/// in f64 and rounded once, as the reference does. `dim` must be a multiple of 4.
pub fn sincos_table(grid: usize, dim: usize, temperature: f64) -> Vec<f32> {
    let q = dim / 4;
    let omega: Vec<f64> = (0..q).map(|i| temperature.powf(-(i as f64) / q as f64)).collect();
    let mut table = Vec::with_capacity(grid * grid * dim);
    for r in 0..grid {
        for c in 0..grid {
            for pos in [c, r] {
                let angles = omega.iter().map(|w| pos as f64 * w);
                table.extend(angles.clone().map(|a| a.sin() as f32));
                table.extend(angles.map(|a| a.cos() as f32));
            }
        }
    }
    table
}

pub struct SvpProjector {
    dims: ProjectorDims,
    heads: usize,
    head_dim: usize,
    /// E `[P, C]`.
    table: Tensor,
    /// `sspe.geo_mlp.0` `[C, 7]`, `.2` `[C, C]`.
    geo_fc1: Linear,
    geo_fc2: Linear,
    norm_q: LayerNorm,
    norm_kv: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// γ as `[H, 1, 1]`, so `γ · A` broadcasts to the `[H, S, P]` score shape.
    coverage_bias: Tensor,
    norm_mlp: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl SvpProjector {
    /// `vv` scoped at `svp`.
    pub fn load(be: &Backend, vv: &VarView, dims: ProjectorDims, cfg: &SvpConfig) -> Result<SvpProjector> {
        cfg.validate(dims.vision_width)?;
        if dims.grid == 0 {
            return Err(Error::arg("svp patch grid", "the patch grid is empty"));
        }
        let c = dims.vision_width;
        let eps = cfg.ln_eps as f32;
        let table = Tensor::from_f32(sincos_table(dims.grid, c, cfg.pos_temperature), vec![dims.grid * dims.grid, c])?;
        let geo = vv.pp("sspe").pp("geo_mlp");
        let ssa = vv.pp("ssa");
        let mlp = ssa.pp("mlp");
        let hidden = c * cfg.mlp_ratio;
        Ok(SvpProjector {
            dims,
            heads: cfg.ssa_heads,
            head_dim: c / cfg.ssa_heads,
            table: be.upload(&table)?,
            geo_fc1: Linear::load(&geo, "0", c, GEOMETRY_FEATURES, true)?,
            geo_fc2: Linear::load(&geo, "2", c, c, true)?,
            norm_q: LayerNorm::load(&ssa, "norm_q", c, eps)?,
            norm_kv: LayerNorm::load(&ssa, "norm_kv", c, eps)?,
            q_proj: Linear::load(&ssa, "q_proj", c, c, true)?,
            k_proj: Linear::load(&ssa, "k_proj", c, c, true)?,
            v_proj: Linear::load(&ssa, "v_proj", c, c, true)?,
            o_proj: Linear::load(&ssa, "o_proj", c, c, true)?,
            coverage_bias: ssa.get_f32("coverage_bias", &[cfg.ssa_heads])?.reshape(&[cfg.ssa_heads, 1, 1])?,
            norm_mlp: LayerNorm::load(&ssa, "norm_mlp", c, eps)?,
            fc1: Linear::load(&mlp, "fc1", hidden, c, true)?,
            fc2: Linear::load(&mlp, "fc2", c, hidden, true)?,
        })
    }

    /// Patch features `[P, C]` → pooled, position-embedded, aggregated tokens `[S, C]` (S = 0
    /// gives `[0, C]`).
    pub fn forward(&self, be: &Backend, feats: &Tensor, sp: &Superpixels) -> Result<Tensor> {
        let (c, p) = (self.dims.vision_width, self.dims.grid * self.dims.grid);
        if feats.shape() != [p, c] {
            return Err(Error::arg("patch features", format!("shape {:?}, expected [{p}, {c}] for the svp projector", feats.shape())));
        }
        let s = sp.count;
        let (mean, cover, geo) = self.upload_inputs(be, sp)?;
        if s == 0 {
            return be.upload(&Tensor::zeros(vec![0, c]));
        }

        // Scatter-mean + SSPE: x = Â·(F + E) + geo_mlp(g).
        let pooled = be.scatter_mean_pool(&mean, feats, &self.table)?;
        let patches = be.add(feats, &self.table)?;
        let g = self.geo_fc1.forward(be, &geo, Activation::Gelu, None)?;
        let x = self.geo_fc2.forward(be, &g, Activation::None, Some(&pooled))?;

        // SSA: S queries over P patches, heads split as [H, n, C/H].
        let (h, dh) = (self.heads, self.head_dim);
        let split = |t: Tensor, n: usize| be.permute(&t.reshape(&[n, h, dh])?, &[1, 0, 2]);
        let q = split(self.q_proj.forward(be, &self.norm_q.forward(be, &x)?, Activation::None, None)?, s)?;
        let kv = self.norm_kv.forward(be, &patches)?;
        let k = split(self.k_proj.forward(be, &kv, Activation::None, None)?, p)?;
        let v = split(self.v_proj.forward(be, &kv, Activation::None, None)?, p)?;
        let scores = be.affine(&be.matmul(&q, &k, true)?, 1.0 / (dh as f32).sqrt(), 0.0)?;
        let scores = be.add(&scores, &be.mul(&self.coverage_bias, &cover)?)?;
        let attn = be.matmul(&be.softmax(&scores)?, &v, false)?;
        let attn = be.permute(&attn, &[1, 0, 2])?.reshape(&[s, c])?;
        let x = self.o_proj.forward(be, &attn, Activation::None, Some(&x))?;

        let m = self.fc1.forward(be, &self.norm_mlp.forward(be, &x)?, Activation::Gelu, None)?;
        self.fc2.forward(be, &m, Activation::None, Some(&x))
    }

    /// Checks the superpixels against the projector's grid and uploads, as `[S, P]`, `[S, P]` and
    /// `[S, 7]`: the coverage rows divided by their sums (the scatter-mean weights), the coverage
    /// itself (the attention bias) and the geometry. Per-image inputs, S·P floats: normalising
    /// them on the host is not activation math.
    fn upload_inputs(&self, be: &Backend, sp: &Superpixels) -> Result<(Tensor, Tensor, Tensor)> {
        let (g, p, s) = (self.dims.grid, self.dims.grid * self.dims.grid, sp.count);
        if sp.grid != g {
            return Err(Error::arg("superpixels", format!("coverage is on a {0}×{0} patch grid, the vision encoder's grid is {g}×{g}", sp.grid)));
        }
        if sp.coverage.len() != s * p {
            return Err(Error::arg("superpixels", format!("coverage has {} values, expected S·P = {s}·{p}", sp.coverage.len())));
        }
        if sp.geometry.len() != s {
            return Err(Error::arg("superpixels", format!("{} geometry rows for S = {s} superpixels", sp.geometry.len())));
        }
        let mut mean = sp.coverage.clone();
        for (i, row) in mean.chunks_exact_mut(p.max(1)).enumerate() {
            if row.iter().any(|a| !(a.is_finite() && *a >= 0.0)) {
                return Err(Error::arg("superpixels", format!("coverage row {i} has a negative or non-finite value")));
            }
            let sum: f32 = row.iter().sum();
            if sum <= 0.0 {
                return Err(Error::arg("superpixels", format!("superpixel {i} covers no patch (its coverage row is all zero)")));
            }
            row.iter_mut().for_each(|a| *a /= sum);
        }
        let geo: Vec<f32> = sp.geometry.iter().flatten().copied().collect();
        if geo.iter().any(|v| !v.is_finite()) {
            return Err(Error::arg("superpixels", "geometry has a non-finite value"));
        }
        Ok((
            be.upload(&Tensor::from_f32(mean, vec![s, p])?)?,
            be.upload(&Tensor::from_f32(sp.coverage.clone(), vec![s, p])?)?,
            be.upload(&Tensor::from_f32(geo, vec![s, GEOMETRY_FEATURES])?)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Patch (r, c) = (1, 2) at C = 8 (q = 2, ω = [1, 1/100] at temperature 10⁴).
    #[test]
    fn sincos_table_layout() {
        let t = sincos_table(3, 8, 10000.0);
        assert_eq!(t.len(), 9 * 8);
        let row = &t[5 * 8..6 * 8];
        let want = [2f64.sin(), 0.02f64.sin(), 2f64.cos(), 0.02f64.cos(), 1f64.sin(), 0.01f64.sin(), 1f64.cos(), 0.01f64.cos()];
        for (a, b) in row.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-7, "{row:?} vs {want:?}");
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let cfg = SvpConfig { ssa_heads: 5, ..SvpConfig::default() };
        assert!(cfg.validate(32).unwrap_err().to_string().contains("svp.ssa_heads"));
        assert!(SvpConfig::default().validate(30).unwrap_err().to_string().contains("multiple of 4"));
        let cfg = SvpConfig { pos_temperature: 0.0, ..SvpConfig::default() };
        assert!(cfg.validate(32).unwrap_err().to_string().contains("svp.pos_temperature"));
        let cfg = SvpConfig { mlp_ratio: 0, ..SvpConfig::default() };
        assert!(cfg.validate(32).unwrap_err().to_string().contains("svp.mlp_ratio"));
    }
}
