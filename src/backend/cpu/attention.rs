//! Attention, flash-style in the sense that matters on a CPU: queries are processed in blocks of
//! `BLOCK_Q`, so at most `BLOCK_Q × Nk` scores exist per task (a 4096-token SAM global layer
//! never materialises its 4096² score matrix). Each block is two small GEMMs (Q·Kᵀ, P·V) around a
//! row softmax, with the optional bias, causal mask and GQA head mapping applied in between; a
//! single query (decode) uses plain dot products instead of GEMM calls.

use rayon::prelude::*;

use super::check_f32;
use super::elementwise::softmax_row;
use super::matmul::{sgemm_serial, WeightElem};
use crate::backend::{attention_shape, AttnBias, AttnParams, AttnShape};
use crate::error::Result;
use crate::tensor::Tensor;

const BLOCK_Q: usize = 128;

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams) -> Result<Tensor> {
    let AttnShape { b, h, hkv, nq, nk_all, nk, d } = attention_shape(q, k, v, p)?;
    if b * h * nq * d == 0 {
        return Tensor::from_f32(Vec::new(), vec![b, h, nq, d]);
    }
    let bias = match p.bias {
        AttnBias::None => None,
        AttnBias::DecomposedRelPos { rel_h, rel_w, k_h, k_w } => Some((check_f32("attention", rel_h)?, check_f32("attention", rel_w)?, k_h, k_w)),
    };
    let (qv, kv, vv) = (check_f32("attention", q)?, check_f32("attention", k)?, check_f32("attention", v)?);
    let group = h / hkv;
    let mut out = vec![0f32; b * h * nq * d];
    // Small problems (decode: one query over a short cache) run on the calling thread: waking
    // the pool would cost more than the work.
    let parallel = b * h * nq * nk * d > 1 << 20;
    let head = |bh: usize, o_head: &mut [f32]| {
        let (bi, hi) = (bh / h, bh % h);
        let kvh = bi * hkv + hi / group;
        let kh = &kv[kvh * nk_all * d..][..nk * d];
        let vh = &vv[kvh * nk_all * d..][..nk * d];
        let qh = &qv[bh * nq * d..][..nq * d];
        let block = |blk: usize, o: &mut [f32]| {
            let q0 = blk * BLOCK_Q;
            let bq = (nq - q0).min(BLOCK_Q);
            // Keys visible to this block: causal blocks stop at the last query's position.
            let visible = if p.causal { nk - nq + q0 + bq } else { nk };
            let mut s = vec![0f32; bq * visible];
            if bq == 1 {
                // Decode: one query; plain dot products beat a GEMM call's setup.
                let qr = &qh[q0 * d..][..d];
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj = <f32 as WeightElem>::dot(&kh[j * d..][..d], qr);
                }
            } else {
                sgemm_serial(bq, visible, d, &qh[q0 * d..], d, 1, kh, 1, d, &mut s, false);
            }
            for (r, row) in s.chunks_mut(visible).enumerate() {
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
            if bq == 1 {
                let o = &mut o[..d];
                o.iter_mut().for_each(|v| *v = 0.0);
                for (j, &pj) in s.iter().enumerate() {
                    for (ov, vv) in o.iter_mut().zip(&vh[j * d..][..d]) {
                        *ov += pj * vv;
                    }
                }
            } else {
                sgemm_serial(bq, d, visible, &s, visible, 1, vh, d, 1, &mut o[..bq * d], false);
            }
        };
        if parallel {
            o_head.par_chunks_mut(BLOCK_Q * d).enumerate().for_each(|(blk, o)| block(blk, o));
        } else {
            o_head.chunks_mut(BLOCK_Q * d).enumerate().for_each(|(blk, o)| block(blk, o));
        }
    };
    if parallel {
        out.par_chunks_mut(nq * d).enumerate().for_each(|(bh, o)| head(bh, o));
    } else {
        out.chunks_mut(nq * d).enumerate().for_each(|(bh, o)| head(bh, o));
    }
    Tensor::from_f32(out, vec![b, h, nq, d])
}
