//! Attention, flash-style in the sense that matters on a CPU: queries are processed in blocks of
//! `BLOCK_Q`, so at most `BLOCK_Q × Nk` scores exist per task (a 4096-token SAM global layer
//! never materialises its 4096² score matrix). Each block is two small GEMMs (Q·Kᵀ, P·V) around a
//! row softmax, with the optional bias, causal mask and GQA head mapping applied in between; a
//! single query (decode) uses plain dot products instead of GEMM calls.
//!
//! Every operand is read through (batch, head, row) strides, so the head-major `[B, H, N, D]`
//! tensors of `attention` and the token-major `[B, N, H·D]` ones of `attention_tokens` (a batch
//! of 1 shared by all: batch stride 0) run the same code, with no head permutes.

use rayon::prelude::*;

use super::check_f32;
use super::elementwise::softmax_row;
use super::matmul::{sgemm_serial, SendPtr, WeightElem};
use crate::backend::{attention_shape, AttnBias, AttnParams, AttnShape, TokenAttnShape};
use crate::error::Result;
use crate::tensor::Tensor;

const BLOCK_Q: usize = 128;

/// Element offsets of an operand's (batch, head, row): `batch·b + head·h + row·r`.
#[derive(Clone, Copy)]
struct Strides {
    b: usize,
    h: usize,
    r: usize,
}

impl Strides {
    fn at(&self, batch: usize, head: usize, row: usize) -> usize {
        batch * self.b + head * self.h + row * self.r
    }
}

/// q [B, H, Nq, D], k = v [B, Hkv, Nk, D] → [B, H, Nq, D].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams) -> Result<Tensor> {
    let s = attention_shape(q, k, v, p)?;
    let (h, hkv, nq, nk_all, d) = (s.h, s.hkv, s.nq, s.nk_all, s.d);
    let qs = Strides { b: h * nq * d, h: nq * d, r: d };
    let ks = Strides { b: hkv * nk_all * d, h: nk_all * d, r: d };
    let out = run(q, qs, k, v, ks, qs, &s, p)?;
    Tensor::from_f32(out, vec![s.b, h, nq, d])
}

/// q [Bq, Nq, H·D], k = v [Bk, Nk, Hkv·D] (Bq, Bk ∈ {1, B}) → [B, Nq, H·D].
pub fn attention_tokens(q: &Tensor, k: &Tensor, v: &Tensor, t: &TokenAttnShape, p: &AttnParams) -> Result<Tensor> {
    let s = t.s;
    let (h, hkv, nq, nk_all, d) = (s.h, s.hkv, s.nq, s.nk_all, s.d);
    let qs = Strides { b: if t.q_shared { 0 } else { nq * h * d }, h: d, r: h * d };
    let ks = Strides { b: if t.kv_shared { 0 } else { nk_all * hkv * d }, h: d, r: hkv * d };
    let os = Strides { b: nq * h * d, h: d, r: h * d };
    let out = run(q, qs, k, v, ks, os, &s, p)?;
    Tensor::from_f32(out, vec![s.b, nq, h * d])
}

#[allow(clippy::too_many_arguments)]
fn run(q: &Tensor, qs: Strides, k: &Tensor, v: &Tensor, ks: Strides, os: Strides, s: &AttnShape, p: &AttnParams) -> Result<Vec<f32>> {
    let AttnShape { b, h, hkv, nq, nk, d, .. } = *s;
    let mut out = vec![0f32; b * h * nq * d];
    if out.is_empty() {
        return Ok(out);
    }
    let bias = match p.bias {
        AttnBias::None => None,
        AttnBias::DecomposedRelPos { rel_h, rel_w, k_h, k_w } => Some((check_f32("attention", rel_h)?, check_f32("attention", rel_w)?, k_h, k_w)),
    };
    let (qv, kv, vv) = (check_f32("attention", q)?, check_f32("attention", k)?, check_f32("attention", v)?);
    let group = h / hkv;
    let blocks = nq.div_ceil(BLOCK_Q);
    let ptr = SendPtr(out.as_mut_ptr());
    // One task per (batch, head, query block); each writes only its own output rows.
    let task = |t: usize| {
        let (bh, blk) = (t / blocks, t % blocks);
        let (bi, hi) = (bh / h, bh % h);
        let (k0, q0) = (ks.at(bi, hi / group, 0), blk * BLOCK_Q);
        let qbase = qs.at(bi, hi, q0);
        let bq = (nq - q0).min(BLOCK_Q);
        // Keys visible to this block: causal blocks stop at the last query's position.
        let visible = if p.causal { nk - nq + q0 + bq } else { nk };
        let mut sc = vec![0f32; bq * visible];
        if bq == 1 {
            // Decode: one query; plain dot products beat a GEMM call's setup.
            let qr = &qv[qbase..][..d];
            for (j, sj) in sc.iter_mut().enumerate() {
                *sj = <f32 as WeightElem>::dot(&kv[k0 + j * ks.r..][..d], qr);
            }
        } else {
            sgemm_serial(bq, visible, d, &qv[qbase..], qs.r, 1, &kv[k0..], 1, ks.r, &mut sc, false);
        }
        for (r, row) in sc.chunks_mut(visible).enumerate() {
            let qi = q0 + r;
            row.iter_mut().for_each(|x| *x *= p.scale);
            if let Some((rh, rw, kgh, kgw)) = bias {
                let rh = &rh[(bh * nq + qi) * kgh..][..kgh];
                let rw = &rw[(bh * nq + qi) * kgw..][..kgw];
                for (y, rhv) in rh.iter().enumerate() {
                    for (x, rwv) in rw.iter().enumerate() {
                        row[y * kgw + x] += rhv + rwv;
                    }
                }
            }
            if p.causal {
                let pos = nk - nq + qi;
                row[pos + 1..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            }
            softmax_row(row);
        }
        let mut o = vec![0f32; bq * d];
        if bq == 1 {
            for (j, &pj) in sc.iter().enumerate() {
                for (ov, vv) in o.iter_mut().zip(&vv[k0 + j * ks.r..][..d]) {
                    *ov += pj * vv;
                }
            }
        } else {
            sgemm_serial(bq, d, visible, &sc, visible, 1, &vv[k0..], ks.r, 1, &mut o, false);
        }
        let ptr = &ptr;
        for (r, row) in o.chunks(d).enumerate() {
            let at = os.at(bi, hi, q0 + r);
            // SAFETY: (batch, head, query row) belongs to this task alone, and its d elements
            // lie inside `out` (b·h·nq·d elements laid out by `os`).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), ptr.0.add(at), d) };
        }
    };
    // Small problems (decode: one query over a short cache) run on the calling thread: waking
    // the pool would cost more than the work. From ~2¹⁷ multiply-adds (SmolLM2 decode beyond
    // ~230 cached tokens) the heads split across the pool: at 600 tokens bf16 decode went from
    // 78–83 to 90–92 tokens/s on two cores.
    let tasks = b * h * blocks;
    if b * h * nq * nk * d > 1 << 17 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    Ok(out)
}
