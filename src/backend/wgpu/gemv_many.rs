//! One input row through up to three weights, two per dispatch (shaders/gemv_many.wgsl): a
//! decode layer's Q/K/V with the RMSNorm in front (`rms_norm_linear_many`, two dispatches where
//! the norm and three GEMVs were four), its gate/up with the norm and the SwiGLU product
//! (`rms_norm_swiglu`, one where there were four), and plain `linear_many`.

use super::matmul::{need_f32, weight_is_f16};
use super::{u32_of, Shader, WgpuBackend};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const GEMV_MANY: Shader = Shader { name: "gemv_many", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/gemv_batch1.wgsl"), include_str!("../../../shaders/gemv_many.wgsl")) };
const GEMV_MANY_SUBGROUP: Shader = Shader { name: "gemv_many_subgroup", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/gemv_batch1.wgsl"), include_str!("../../../shaders/gemv_many.wgsl"), include_str!("../../../shaders/gemv_many_subgroup.wgsl")) };
/// The batched builds (VISWORD_WGPU_GEMV=batched): eight weight loads in flight per lane.
pub(super) const GEMV_MANY_BATCHED: Shader = Shader { name: "gemv_many_batched", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/gemv_batch8.wgsl"), include_str!("../../../shaders/gemv_many.wgsl")) };
pub(super) const GEMV_MANY_SUBGROUP_BATCHED: Shader = Shader { name: "gemv_many_subgroup_batched", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/gemv_batch8.wgsl"), include_str!("../../../shaders/gemv_many.wgsl"), include_str!("../../../shaders/gemv_many_subgroup.wgsl")) };

/// Weights one dispatch takes: params, x, the norm weight, two weights and two outputs are
/// seven storage bindings, within WebGPU's default limit of eight (a third weight and output
/// would need nine).
const PER_DISPATCH: usize = 2;
/// Output rows per plain workgroup (256 threads, 32 per row).
const PLAIN_ROWS: usize = 8;
const THREADS: u32 = 256;

/// What a dispatch computes (params[4] of the shader).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Many = 0,
    NormMany = 1,
    NormSwiglu = 2,
}

impl WgpuBackend {
    /// Whether the fused dispatches take this call: x holds one row of K f32 values and there
    /// are 1..=3 weights [N, K] of one dtype. Anything else goes through the separate ops.
    pub(crate) fn gemv_many_fits(&self, x: &Tensor, ws: &[&Tensor]) -> bool {
        let Some(&k) = x.shape().last() else { return false };
        k > 0
            && x.numel() == k
            && x.dtype() == DType::F32
            && (1..=3).contains(&ws.len())
            && ws.iter().all(|w| w.dims() == 2 && w.dim(1) == k && w.dtype() == ws[0].dtype())
    }

    /// The fused GEMVs for `mode` (the caller checked `gemv_many_fits`; the norm weight `g` and
    /// eps are given for the norm modes): one output per weight, or the one SwiGLU product.
    /// Weights go two per dispatch.
    pub(super) fn gemv_many(&self, op: &'static str, mode: Mode, x: &Tensor, g: Option<(&Tensor, f32)>, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        let k = x.numel();
        need_f32(op, "input", x)?;
        let Some(first) = ws.first() else { return Err(Error::shape(op, "no weights")) };
        let w_f16 = weight_is_f16(op, first)?;
        if let Some((g, _)) = g {
            need_f32(op, "norm weight", g)?;
            if g.numel() != k {
                return Err(Error::shape(op, format!("norm weight has {} elements, x has {k}", g.numel())));
            }
        }
        if mode == Mode::NormSwiglu && (ws.len() != 2 || ws[0].shape() != ws[1].shape()) {
            return Err(Error::shape(op, format!("gate {:?} and up {:?} must have one shape", first.shape(), ws.get(1).map(|w| w.shape()))));
        }
        for w in ws {
            u32_of(op, w.numel())?;
        }
        let mut lead = x.shape().to_vec();
        lead.pop();
        let outs: Vec<Tensor> = if mode == Mode::NormSwiglu { &ws[..1] } else { ws }
            .iter()
            .map(|w| self.alloc([lead.as_slice(), &[w.dim(0)]].concat(), DType::F32))
            .collect::<Result<_>>()?;
        let xb = self.buffer(x, op)?;
        let gb = match g {
            Some((g, _)) => self.buffer(g, op)?,
            None => xb,
        };
        let batched = self.rt.gemv_batched();
        let (shader, entry, rows) = match self.rt.subgroup_min_size() {
            Some(min) => (if batched { &GEMV_MANY_SUBGROUP_BATCHED } else { &GEMV_MANY_SUBGROUP }, "gemv_many_subgroup", (THREADS / min).max(1) as usize),
            None => (if batched { &GEMV_MANY_BATCHED } else { &GEMV_MANY }, "gemv_many", PLAIN_ROWS),
        };
        let eps = g.map_or(0.0, |(_, e)| e);
        let pairs: Vec<(&[&Tensor], &[Tensor])> = if mode == Mode::NormSwiglu { vec![(ws, &outs[..])] } else { ws.chunks(PER_DISPATCH).zip(outs.chunks(PER_DISPATCH)).collect() };
        for (w, y) in pairs {
            let n0 = w[0].dim(0);
            let n1 = if mode == Mode::NormSwiglu { 0 } else { w.get(1).map_or(0, |w| w.dim(0)) };
            let total = if mode == Mode::NormSwiglu { n0 } else { n0 + n1 };
            if total == 0 {
                continue;
            }
            let (w0, y0) = (self.buffer(w[0], op)?, self.buffer(&y[0], op)?);
            let w1 = w.get(1).map(|w| self.buffer(w, op)).transpose()?.unwrap_or(w0);
            let y1 = y.get(1).map(|y| self.buffer(y, op)).transpose()?.unwrap_or(y0);
            let params = [u32_of(op, n0)?, u32_of(op, n1)?, u32_of(op, k)?, w_f16 as u32, mode as u32, eps.to_bits(), rows as u32];
            self.dispatch(shader, entry, &[xb, gb, w0, w1, y0, y1], &params, [total.div_ceil(rows) as u32, 1, 1])?;
        }
        Ok(outs)
    }

    /// `Backend::rms_norm_linear_many` in one dispatch per two weights (the caller checked
    /// `gemv_many_fits`).
    pub(crate) fn rms_norm_linear_many(&self, x: &Tensor, norm_w: &Tensor, eps: f32, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        self.gemv_many("rms_norm_linear_many", Mode::NormMany, x, Some((norm_w, eps)), ws)
    }

    /// `Backend::rms_norm_swiglu` in one dispatch (the caller checked `gemv_many_fits`).
    pub(crate) fn rms_norm_swiglu(&self, x: &Tensor, norm_w: &Tensor, eps: f32, w_gate: &Tensor, w_up: &Tensor) -> Result<Tensor> {
        let mut out = self.gemv_many("rms_norm_swiglu", Mode::NormSwiglu, x, Some((norm_w, eps)), &[w_gate, w_up])?;
        out.pop().ok_or_else(|| Error::shape("rms_norm_swiglu", "no output"))
    }
}
