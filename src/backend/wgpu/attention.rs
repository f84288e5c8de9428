//! Attention on wgpu: the wrappers of shaders/attention.wgsl's entry points (a flash-style
//! forward for query tiles, and a split-sequence decode with its combine pass).
//!
//! Semantics are the CPU backend's (src/backend/cpu/attention.rs); the shape checks mirror its
//! checks and messages, plus the GPU kernels' own limit (head dim ≤ 128).

use super::{u32_of, Shader, WgpuBackend};
use crate::backend::{attention_shape, AttnBias, AttnParams, AttnShape};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const ATTENTION: Shader = Shader { name: "attention", source: include_str!("../../../shaders/attention.wgsl") };

/// Largest head dim the kernels hold in registers (8 vec4s per lane, 4 lanes per query).
const MAX_HEAD_DIM: usize = 128;
/// Queries per attention_fwd_f32 workgroup.
const FWD_QUERY_TILE: usize = 32;
/// Keys per attention_decode_f32 step (its workgroup size): chunks are multiples of it.
const DECODE_TILE: usize = 64;
/// Decode splits the sequence until about this many workgroups are in flight (a few per
/// compute unit on a large GPU), ...
const DECODE_TARGET_WORKGROUPS: usize = 256;
/// ... but never into chunks shorter than this, where the combine pass would cost more than the
/// parallelism gains.
const DECODE_MIN_CHUNK: usize = 256;

/// The checked geometry of one call.
struct Geometry<'a> {
    b: usize,
    h: usize,
    hkv: usize,
    nq: usize,
    nk_all: usize,
    kv_len: usize,
    d: usize,
    /// (rel_h, rel_w, k_h, k_w)
    bias: Option<(&'a Tensor, &'a Tensor, usize, usize)>,
}

fn f32_input(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::shape("attention", format!("{what} must be f32, got {} {:?}", t.dtype(), t.shape())));
    }
    u32_of("attention", t.numel()).map(|_| ())
}

fn geometry<'a>(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams<'a>) -> Result<Geometry<'a>> {
    let AttnShape { b, h, hkv, nq, nk_all, nk: kv_len, d } = attention_shape(q, k, v, p)?;
    if d > MAX_HEAD_DIM {
        return Err(Error::shape("attention", format!("head dim {d}: the wgpu kernels support at most {MAX_HEAD_DIM}")));
    }
    for (t, what) in [(q, "q"), (k, "k"), (v, "v")] {
        f32_input(t, what)?;
    }
    let bias = match p.bias {
        AttnBias::None => None,
        AttnBias::DecomposedRelPos { rel_h, rel_w, k_h, k_w } => {
            f32_input(rel_h, "rel_h")?;
            f32_input(rel_w, "rel_w")?;
            Some((rel_h, rel_w, k_h, k_w))
        }
    };
    Ok(Geometry { b, h, hkv, nq, nk_all, kv_len, d, bias })
}

/// How decode cuts the kv_len keys: (n_splits, chunk), chunk a multiple of DECODE_TILE, no split
/// empty. Depends on the shapes only, so a given call always combines in the same order.
fn decode_splits(heads: usize, kv_len: usize) -> (usize, usize) {
    let want = DECODE_TARGET_WORKGROUPS.div_ceil(heads.max(1));
    let most = (kv_len / DECODE_MIN_CHUNK).max(1);
    let n = want.clamp(1, most);
    let chunk = kv_len.div_ceil(n).next_multiple_of(DECODE_TILE).max(DECODE_TILE);
    (kv_len.div_ceil(chunk).max(1), chunk)
}

pub(super) fn attention(be: &WgpuBackend, q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams) -> Result<Tensor> {
    let g = geometry(q, k, v, p)?;
    let out = be.alloc(vec![g.b, g.h, g.nq, g.d], DType::F32)?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let bh = g.b * g.h;
    let u = |n: usize| u32_of("attention", n);
    let (k_h, k_w) = g.bias.map_or((0, 0), |(_, _, kh, kw)| (kh, kw));
    // Shared by the three entry points (see the shader's header); [11], [12] are decode's.
    let mut params = vec![
        u(g.nq)?,
        u(g.nk_all)?,
        u(g.kv_len)?,
        u(g.d)?,
        u(g.h)?,
        u(g.h / g.hkv)?,
        p.causal as u32,
        p.scale.to_bits(),
        u(k_h)?,
        u(k_w)?,
        u(bh)?,
        1,
        0,
    ];
    let (qb, kb, vb, ob) = (be.buffer(q, "attention")?, be.buffer(k, "attention")?, be.buffer(v, "attention")?, be.buffer(&out, "attention")?);

    if g.nq == 1 && g.bias.is_none() {
        // Decode. Causal changes nothing here: the one query sits at the last valid position.
        let (n_splits, chunk) = decode_splits(bh, g.kv_len);
        params[11] = u(n_splits)?;
        params[12] = u(chunk)?;
        let groups = [u(bh * n_splits)?, 1, 1];
        if n_splits == 1 {
            // SAFETY of the indexing: q/out hold bh·d values, k/v bh/G·nk_all·d, every size was
            // checked to fit u32, and the kernel bounds every key index by kv_len ≤ nk_all.
            be.dispatch(&ATTENTION, "attention_decode_f32", &[qb, kb, vb, ob], &params, groups)?;
        } else {
            // Per split: d unnormalised outputs, then its running max and sum.
            let partials = be.alloc(vec![bh, n_splits, g.d + 2], DType::F32)?;
            u(partials.numel())?;
            let pb = be.buffer(&partials, "attention")?;
            be.dispatch(&ATTENTION, "attention_decode_f32", &[qb, kb, vb, pb], &params, groups)?;
            // The combine pass reads the partials through binding 1 (q's slot in the others).
            be.dispatch(&ATTENTION, "attention_combine_f32", &[pb, kb, vb, ob], &params, [u(bh)?, 1, 1])?;
        }
        return Ok(out);
    }

    // Without a bias the kernel never reads bindings 5 and 6 past a branch, but they are
    // statically used: q stands in (read-only, so aliasing is allowed).
    let (rh, rw) = match g.bias {
        Some((rel_h, rel_w, _, _)) => (be.buffer(rel_h, "attention")?, be.buffer(rel_w, "attention")?),
        None => (qb, qb),
    };
    let groups = [u(g.nq.div_ceil(FWD_QUERY_TILE) * bh)?, 1, 1];
    be.dispatch(&ATTENTION, "attention_fwd_f32", &[qb, kb, vb, ob, rh, rw], &params, groups)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_splits_cover_the_keys_without_empty_chunks() {
        for heads in [1, 2, 7, 32, 256, 1000] {
            for kv_len in [0, 1, 63, 64, 65, 255, 256, 257, 1000, 4096, 4097, 100_000] {
                let (n, chunk) = decode_splits(heads, kv_len);
                assert!(n >= 1 && chunk % DECODE_TILE == 0, "{heads} heads, {kv_len} keys: {n} × {chunk}");
                assert!(n * chunk >= kv_len, "{heads} heads, {kv_len} keys: {n} × {chunk} misses keys");
                assert!(kv_len == 0 || (n - 1) * chunk < kv_len, "{heads} heads, {kv_len} keys: an empty split");
                assert!(n == 1 || chunk >= DECODE_MIN_CHUNK, "{heads} heads, {kv_len} keys: chunk {chunk} too short");
            }
        }
        // A long context over few heads is split; many heads already fill the GPU.
        assert_eq!(decode_splits(4, 4096), (16, 256));
        assert_eq!(decode_splits(256, 4096).0, 1);
    }
}
