//! Attention on wgpu: the wrappers of shaders/attention.wgsl's entry points (a flash-style
//! forward for query tiles, split along the keys too when the tiles are few, a split-sequence
//! decode, the combine pass both share, and a thread-per-query kernel for a handful of keys).
//!
//! Semantics are the CPU backend's (src/backend/cpu/attention.rs); the shape checks mirror its
//! checks and messages, plus the GPU kernels' own limit (head dim ≤ 128). The kernels read and
//! write every operand through (batch, head, row) strides, so `attention` (head-major
//! [B, H, N, D]) and `attention_tokens` (token-major [B, N, H·D], a batch of 1 shared through
//! batch stride 0) run the same kernels with no permutes or copies.

use super::{u32_of, Shader, WgpuBackend};
use crate::backend::{attention_shape, AttnBias, AttnParams, AttnShape, TokenAttnShape};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const ATTENTION: Shader = Shader { name: "attention", source: concat!(include_str!("../../../shaders/attention_q32.wgsl"), include_str!("../../../shaders/attention.wgsl")) };
/// The same module with the forward kernel's query tile at 8 (shaders/attention_q8.wgsl).
pub(super) const ATTENTION_Q8: Shader = Shader { name: "attention_q8", source: concat!(include_str!("../../../shaders/attention_q8.wgsl"), include_str!("../../../shaders/attention.wgsl")) };

/// Largest head dim the kernels hold in registers (8 vec4s per lane, 4 lanes per query).
const MAX_HEAD_DIM: usize = 128;
/// Queries per attention_fwd_f32 workgroup, and in the ATTENTION_Q8 module (for Nq up to it).
const FWD_QUERY_TILE: usize = 32;
const FWD_QUERY_TILE_SMALL: usize = 8;
/// Keys per attention_decode_f32 step (its workgroup size): chunks are multiples of it.
const DECODE_TILE: usize = 64;
/// Decode splits the sequence until about this many workgroups are in flight (several per
/// compute unit on a large GPU: each streams its keys with one thread per key), ...
const DECODE_TARGET_WORKGROUPS: usize = 1024;
/// ... in chunks of at least this many keys (one workgroup step). On an H200 a 7B step over
/// 616 cached keys took 13.9 ms against 7.5 ms over 43 keys with 256-key chunks (2 splits of
/// 32 heads: 64 workgroups for the whole GPU).
const DECODE_MIN_CHUNK: usize = DECODE_TILE;
/// The forward kernel splits the keys too while its query tiles number fewer than
/// FWD_TARGET_WORKGROUPS (SAM's token-to-image attention: 512 one-tile heads over 4096 keys), in
/// chunks of at least FWD_MIN_CHUNK keys, so each workgroup still runs 32+ key tiles between the
/// partial write and the combine pass.
const FWD_TARGET_WORKGROUPS: usize = 4096;
const FWD_MIN_CHUNK: usize = 256;
/// Keys per staged tile of the forward kernel (BK): chunks are multiples of it.
const FWD_KEY_TILE: usize = 8;
/// attention_fewkeys_f32's limits and queries per workgroup (FEW_KEYS, D ≤ 16, FEW_THREADS).
const FEW_MAX_KEYS: usize = 32;
const FEW_MAX_D: usize = 16;
const FEW_QUERIES: usize = 128;
/// Where the key-split parameters sit in the shader's params (see its header; `dispatch_split`).
const PARAM_N_SPLITS: usize = 10;
const PARAM_CHUNK: usize = 11;

/// Element strides (batch, head, row) of q, k, v and out; D is contiguous. The shader's params
/// [12..24).
#[derive(Clone, Copy, Debug)]
struct Strides {
    q: [usize; 3],
    k: [usize; 3],
    v: [usize; 3],
    out: [usize; 3],
}

impl Strides {
    /// Contiguous [B, H, Nq, D] q and out, [B, Hkv, Nk_all, D] k and v.
    fn head_major(s: &AttnShape) -> Strides {
        let (q, kv) = ([s.h * s.nq * s.d, s.nq * s.d, s.d], [s.hkv * s.nk_all * s.d, s.nk_all * s.d, s.d]);
        Strides { q, k: kv, v: kv, out: q }
    }

    /// Contiguous [B, Nq, H·D] q and out, [B, Nk_all, Hkv·D] k and v; a shared q or k/v (batch 1)
    /// gets batch stride 0.
    fn token_major(t: &TokenAttnShape) -> Strides {
        let s = &t.s;
        let q_b = if t.q_shared { 0 } else { s.nq * s.h * s.d };
        let kv_b = if t.kv_shared { 0 } else { s.nk_all * s.hkv * s.d };
        let kv = [kv_b, s.d, s.hkv * s.d];
        Strides { q: [q_b, s.d, s.h * s.d], k: kv, v: kv, out: [s.nq * s.h * s.d, s.d, s.h * s.d] }
    }
}

/// One past the last element that `strides` reach over (batch, head, row) `extents` of D
/// contiguous values each (0 when any extent is 0).
fn reach(strides: [usize; 3], extents: [usize; 3], d: usize) -> Option<usize> {
    if extents.contains(&0) || d == 0 {
        return Some(0);
    }
    let mut last = d - 1;
    for (st, n) in strides.into_iter().zip(extents) {
        last = last.checked_add(st.checked_mul(n - 1)?)?;
    }
    last.checked_add(1)
}

/// The strides as kernel parameters, after checking that every index they reach lies inside
/// its tensor (so, since every tensor's element count fits u32, fits u32 itself).
fn stride_params(q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor, s: &AttnShape, st: &Strides) -> Result<Vec<u32>> {
    let (qe, kve) = ([s.b, s.h, s.nq], [s.b, s.hkv, s.nk_all]);
    let mut words = Vec::with_capacity(12);
    for (t, strides, extents, what) in [(q, st.q, qe, "q"), (k, st.k, kve, "k"), (v, st.v, kve, "v"), (out, st.out, qe, "out")] {
        match reach(strides, extents, s.d) {
            Some(n) if n <= t.numel() => {}
            _ => return Err(Error::shape("attention", format!("{what} {:?}: strides {strides:?} over {extents:?} rows of {} reach past its end", t.shape(), s.d))),
        }
        for x in strides {
            words.push(u32_of("attention", x)?);
        }
    }
    Ok(words)
}

fn f32_input(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::shape("attention", format!("{what} must be f32, got {} {:?}", t.dtype(), t.shape())));
    }
    u32_of("attention", t.numel()).map(|_| ())
}

/// The kernels' own checks on a call whose shapes were checked (`attention_shape` or
/// `attention_tokens_shape`): head dim, dtypes, sizes; returns the bias as (rel_h, rel_w, k_h, k_w).
fn check<'a>(q: &Tensor, k: &Tensor, v: &Tensor, s: &AttnShape, p: &AttnParams<'a>) -> Result<Option<(&'a Tensor, &'a Tensor, usize, usize)>> {
    if s.d > MAX_HEAD_DIM {
        return Err(Error::shape("attention", format!("head dim {}: the wgpu kernels support at most {MAX_HEAD_DIM}", s.d)));
    }
    for (t, what) in [(q, "q"), (k, "k"), (v, "v")] {
        f32_input(t, what)?;
    }
    Ok(match p.bias {
        AttnBias::None => None,
        AttnBias::DecomposedRelPos { rel_h, rel_w, k_h, k_w } => {
            f32_input(rel_h, "rel_h")?;
            f32_input(rel_w, "rel_w")?;
            Some((rel_h, rel_w, k_h, k_w))
        }
    })
}

/// How decode cuts the kv_len keys: (n_splits, chunk), chunk a multiple of DECODE_TILE, no split
/// empty. Depends on the shapes only, so a given call always combines in the same order.
fn decode_splits(heads: usize, kv_len: usize) -> (usize, usize) {
    let want = DECODE_TARGET_WORKGROUPS.div_ceil(heads.max(1));
    let chunk = kv_len.div_ceil(want).next_multiple_of(DECODE_TILE).max(DECODE_MIN_CHUNK);
    (kv_len.div_ceil(chunk).max(1), chunk)
}

/// How the forward kernel cuts the keys of `tiles` query tiles: (n_splits, chunk), as
/// `decode_splits` (shapes only, no split empty), one split while the tiles fill the GPU.
fn fwd_splits(tiles: usize, kv_len: usize) -> (usize, usize) {
    let want = FWD_TARGET_WORKGROUPS.div_ceil(tiles.max(1));
    let n = want.clamp(1, (kv_len / FWD_MIN_CHUNK).max(1));
    if n == 1 {
        return (1, kv_len);
    }
    let chunk = kv_len.div_ceil(n).next_multiple_of(FWD_KEY_TILE);
    (kv_len.div_ceil(chunk), chunk)
}

/// q [B, H, Nq, D], k = v [B, Hkv, Nk, D] → [B, H, Nq, D].
pub(super) fn attention(be: &WgpuBackend, q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams) -> Result<Tensor> {
    let s = attention_shape(q, k, v, p)?;
    run(be, q, k, v, vec![s.b, s.h, s.nq, s.d], &s, &Strides::head_major(&s), p)
}

/// `Backend::attention_tokens`: q [Bq, Nq, H·D], k = v [Bk, Nk, Hkv·D] (Bq, Bk ∈ {1, B}, checked
/// by `attention_tokens_shape`) → [B, Nq, H·D], the same kernels through token-major strides.
pub(super) fn attention_tokens(be: &WgpuBackend, q: &Tensor, k: &Tensor, v: &Tensor, t: &TokenAttnShape, p: &AttnParams) -> Result<Tensor> {
    let shape = vec![t.s.b, t.s.nq, t.s.h * t.s.d];
    let mut t = *t;
    // Queries over one shared set of keys are independent rows, and B unshared entries of Nq
    // token-major rows are B·Nq rows of one entry: one problem with B·Nq queries reads each
    // head's keys once per tile of 32 queries instead of once per entry (SAM's 7 prompt tokens
    // against one image would otherwise fill 7 of a tile's 32 rows). Causal positions and the
    // bias's rows depend on Nq, so those keep their batch.
    if t.kv_shared && !t.q_shared && !p.causal && matches!(p.bias, AttnBias::None) && t.s.b > 1 {
        t.s.nq *= t.s.b;
        t.s.b = 1;
    }
    run(be, q, k, v, shape, &t.s, &Strides::token_major(&t), p)
}

/// Attention over q, k, v into a new tensor of `out_shape` (B·H·Nq·D elements), every operand
/// placed by `st`.
#[allow(clippy::too_many_arguments)]
fn run(be: &WgpuBackend, q: &Tensor, k: &Tensor, v: &Tensor, out_shape: Vec<usize>, s: &AttnShape, st: &Strides, p: &AttnParams) -> Result<Tensor> {
    let bias = check(q, k, v, s, p)?;
    let u = |n: usize| u32_of("attention", n);
    u(out_shape.iter().product())?;
    let out = be.alloc(out_shape, DType::F32)?;
    let bh = s.b * s.h;
    if out.numel() == 0 {
        return Ok(out);
    }
    let (k_h, k_w) = bias.map_or((0, 0), |(_, _, kh, kw)| (kh, kw));
    // Shared by the entry points (see the shader's header); [10], [11] are set by `dispatch_split`.
    let mut params = vec![u(s.nq)?, u(s.nk)?, u(s.d)?, u(s.h)?, u(s.h / s.hkv)?, p.causal as u32, p.scale.to_bits(), u(k_h)?, u(k_w)?, u(bh)?, 1, 0];
    params.extend(stride_params(q, k, v, &out, s, st)?);
    let (qb, kb, vb, ob) = (be.buffer(q, "attention")?, be.buffer(k, "attention")?, be.buffer(v, "attention")?, be.buffer(&out, "attention")?);

    if s.nq == 1 && bias.is_none() {
        // Decode. Causal changes nothing here: the one query sits at the last valid position.
        // SAFETY of the indexing: the strides reach only inside q, k, v and out (checked above,
        // every size fits u32), and the kernel bounds every key index by kv_len ≤ nk_all.
        dispatch_split(be, &ATTENTION, "attention_decode_f32", &[qb, kb, vb, ob], &mut params, decode_splits(bh, s.nk), bh, s)?;
        return Ok(out);
    }

    // A handful of keys (SAM's image-to-token attention): one thread per query row.
    if bias.is_none() && s.nk <= FEW_MAX_KEYS && s.d <= FEW_MAX_D {
        let groups = [u(s.nq.div_ceil(FEW_QUERIES) * bh)?, 1, 1];
        be.dispatch(&ATTENTION, "attention_fewkeys_f32", &[qb, kb, vb, ob], &params, groups)?;
        return Ok(out);
    }

    // Without a bias the kernel never reads bindings 5 and 6 past a branch, but they are
    // statically used: q stands in (read-only, so aliasing is allowed).
    let (rh, rw) = match bias {
        Some((rel_h, rel_w, _, _)) => (be.buffer(rel_h, "attention")?, be.buffer(rel_w, "attention")?),
        None => (qb, qb),
    };
    let (shader, tile) = if s.nq <= FWD_QUERY_TILE_SMALL { (&ATTENTION_Q8, FWD_QUERY_TILE_SMALL) } else { (&ATTENTION, FWD_QUERY_TILE) };
    let tiles = s.nq.div_ceil(tile) * bh;
    dispatch_split(be, shader, "attention_fwd_f32", &[qb, kb, vb, ob, rh, rw], &mut params, fwd_splits(tiles, s.nk), tiles, s)?;
    Ok(out)
}

/// Dispatch `entry` over `units` workgroups per key split, `splits` = (n_splits, chunk) going
/// into params [10] and [11]. One split writes out (binding 4) directly; more write per query
/// row and split d unnormalised outputs, then their running max and sum, into partials
/// [B·H·Nq, n_splits, D + 2] in out's binding slot, and attention_combine_f32 (reading them
/// through binding 1, q's slot in the others; one workgroup per query row) merges them into out.
#[allow(clippy::too_many_arguments)]
fn dispatch_split(be: &WgpuBackend, shader: &Shader, entry: &str, bindings: &[&::wgpu::Buffer], params: &mut [u32], splits: (usize, usize), units: usize, s: &AttnShape) -> Result<()> {
    let u = |n: usize| u32_of("attention", n);
    let (n_splits, chunk) = splits;
    params[PARAM_N_SPLITS] = u(n_splits)?;
    params[PARAM_CHUNK] = u(chunk)?;
    let groups = [u(units * n_splits)?, 1, 1];
    if n_splits == 1 {
        return be.dispatch(shader, entry, bindings, params, groups);
    }
    let rows = s.b * s.h * s.nq;
    let partials = be.alloc(vec![rows, n_splits, s.d + 2], DType::F32)?;
    u(partials.numel())?;
    let pb = be.buffer(&partials, "attention")?;
    let mut split_bindings = bindings.to_vec();
    let ob = std::mem::replace(&mut split_bindings[3], pb);
    be.dispatch(shader, entry, &split_bindings, params, groups)?;
    be.dispatch(&ATTENTION, "attention_combine_f32", &[pb, bindings[1], bindings[2], ob], params, [u(rows)?, 1, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_reach_exactly_the_operands() {
        // B 3, H 4, Hkv 2, Nq 5, Nk_all 7, D 6: each layout's strides reach the last element of
        // its operand and nothing past it; a shared operand is one batch entry.
        let s = AttnShape { b: 3, h: 4, hkv: 2, nq: 5, nk_all: 7, nk: 7, d: 6 };
        let (qe, kve, q_len, kv_len) = ([3, 4, 5], [3, 2, 7], 3 * 4 * 5 * 6, 3 * 2 * 7 * 6);
        let hm = Strides::head_major(&s);
        for (st, e, n) in [(hm.q, qe, q_len), (hm.k, kve, kv_len), (hm.v, kve, kv_len), (hm.out, qe, q_len)] {
            assert_eq!(reach(st, e, 6), Some(n), "head-major {st:?}");
        }
        for (q_shared, kv_shared) in [(false, false), (true, false), (false, true)] {
            let st = Strides::token_major(&TokenAttnShape { s, q_shared, kv_shared });
            let (q_n, kv_n) = (if q_shared { q_len / 3 } else { q_len }, if kv_shared { kv_len / 3 } else { kv_len });
            for (st, e, n) in [(st.q, qe, q_n), (st.k, kve, kv_n), (st.v, kve, kv_n), (st.out, qe, q_len)] {
                assert_eq!(reach(st, e, 6), Some(n), "token-major {st:?}, q shared {q_shared}, k/v shared {kv_shared}");
            }
            // Token-major rows interleave the heads: head stride D, row stride H·D (Hkv·D).
            assert_eq!((st.q[1], st.q[2], st.k[2]), (6, 24, 12));
        }
        assert_eq!(reach([1, 1, 1], [0, 4, 5], 6), Some(0));
        assert_eq!(reach([usize::MAX, 0, 0], [3, 1, 1], 1), None);
    }

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
        // A 7B step (32 heads) over 616 keys: 10 splits of 64 keys, 320 workgroups; a long
        // context over few heads is split finely; many heads need fewer splits.
        assert_eq!(decode_splits(32, 616), (10, 64));
        assert_eq!(decode_splits(4, 4096), (64, 64));
        assert_eq!(decode_splits(1024, 4096), (1, 4096));
        assert_eq!(decode_splits(32, 4096), (32, 128));
    }

    #[test]
    fn fwd_splits_cover_the_keys_without_empty_chunks() {
        for tiles in [1usize, 7, 112, 512, 4096, 100_000] {
            for kv_len in [1usize, 255, 256, 577, 616, 4096, 4097] {
                let (n, chunk) = fwd_splits(tiles, kv_len);
                assert!(n >= 1 && n * chunk >= kv_len, "{tiles} tiles, {kv_len} keys: keys left over");
                assert!((n - 1) * chunk < kv_len, "{tiles} tiles, {kv_len} keys: an empty split");
                assert!(n == 1 || (chunk >= FWD_MIN_CHUNK.min(kv_len) && chunk % FWD_KEY_TILE == 0), "{tiles} tiles, {kv_len} keys: chunk {chunk}");
            }
        }
        // SAM's token-to-image attention: block 1 (7 tokens × 64 prompts merged over shared
        // keys: 14 tiles × 8 heads) and the later ones (512 one-tile heads), 4096 keys.
        assert_eq!(fwd_splits(112, 4096), (16, 256));
        assert_eq!(fwd_splits(512, 4096), (8, 512));
        // SAM's encoder layers fill the GPU already: no split.
        assert_eq!(fwd_splits(2048 * 2, 4096), (1, 4096));
    }
}
