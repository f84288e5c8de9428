//! `Backend::attention_packed`: self-attention straight from a packed q|k|v projection, with
//! SAM's decomposed relative-position bias. SAM's image encoder projects every token once through
//! `qkv` ([B, N, 3·H·D], read as [B, N, 3, H, D]); composed of the generic ops that takes a
//! permute of all three, three copies, two permutes of q and two of its bias products, and a
//! permute of the output, each a pass over the layer's activations. CUDA reads q, k and v in
//! place through strides and computes the bias in one kernel (kernels/rel_pos.cu); the other
//! backends run `composed`, the reference those passes define.

use super::{AttnBias, AttnParams, Backend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const OP: &str = "attention_packed";

/// The sizes of one `attention_packed` call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PackedShape {
    pub b: usize,
    /// Tokens (queries and keys).
    pub n: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// The token grid's side when a relative-position bias is given (n = side²).
    pub side: Option<usize>,
}

/// Check qkv [B, N, 3·H·D] and the bias tables rh, rw [S, S, D] with S² = N.
pub(crate) fn packed_shape(qkv: &Tensor, heads: usize, rel: Option<(&Tensor, &Tensor)>) -> Result<PackedShape> {
    let s = qkv.shape();
    if s.len() != 3 || heads == 0 || s[2] == 0 || !s[2].is_multiple_of(3 * heads) {
        return Err(Error::shape(OP, format!("qkv {s:?} with {heads} heads: need [B, N, 3·H·D], D ≥ 1")));
    }
    let (b, n, head_dim) = (s[0], s[1], s[2] / (3 * heads));
    if n == 0 {
        return Err(Error::shape(OP, "no tokens"));
    }
    let side = match rel {
        None => None,
        Some((rh, rw)) => {
            let side = n.isqrt();
            let want = [side, side, head_dim];
            if side * side != n || rh.shape() != want || rw.shape() != want {
                return Err(Error::shape(OP, format!("rel tables {:?} / {:?} for {n} tokens of head dim {head_dim}: need [S, S, D] with S² = N", rh.shape(), rw.shape())));
            }
            Some(side)
        }
    };
    Ok(PackedShape { b, n, heads, head_dim, side })
}

/// The op from the generic ones: split the heads of q, k and v, the bias as batched matmuls
/// over the grid's rows and columns, `attention`, heads merged.
pub(crate) fn composed(be: &Backend, qkv: &Tensor, rel: Option<(&Tensor, &Tensor)>, low_precision: bool, s: &PackedShape) -> Result<Tensor> {
    let PackedShape { b, n, heads, head_dim: hd, .. } = *s;
    let qkv = be.permute(&qkv.reshape(&[b, n, 3, heads, hd])?, &[2, 0, 3, 1, 4])?;
    let q = be.narrow(&qkv, 0, 0, 1)?.reshape(&[b, heads, n, hd])?;
    let k = be.narrow(&qkv, 0, 1, 1)?.reshape(&[b, heads, n, hd])?;
    let v = be.narrow(&qkv, 0, 2, 1)?.reshape(&[b, heads, n, hd])?;
    let mut params = AttnParams { low_precision, ..AttnParams::new(hd) };
    let bias;
    if let (Some((rh, rw)), Some(side)) = (rel, s.side) {
        bias = decomposed_rel_pos(be, &q, rh, rw, side)?;
        params.bias = AttnBias::DecomposedRelPos { rel_h: &bias.0, rel_w: &bias.1, k_h: side, k_w: side };
    }
    let o = be.attention(&q, &k, &v, &params)?;
    be.permute(&o, &[0, 2, 1, 3])?.reshape(&[b, n, heads * hd])
}

/// The two factors of the decomposed relative position bias for queries `q` [B, H, S², hd]:
/// rel_h[b, h, (y, x), ky] = q[b, h, (y, x)] · Rh[y, ky] and rel_w likewise with Rw[x, kx],
/// computed as batched matmuls over the query row (resp. column).
fn decomposed_rel_pos(be: &Backend, q: &Tensor, rh: &Tensor, rw: &Tensor, side: usize) -> Result<(Tensor, Tensor)> {
    let (b, nh, t, hd) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let bh = b * nh;
    let q4 = q.reshape(&[bh, side, side, hd])?;
    // Height: group queries by their row y → [S, BH·S, hd] · Rh[y]ᵀ → [S, BH·S, S].
    let qy = be.permute(&q4, &[1, 0, 2, 3])?.reshape(&[side, bh * side, hd])?;
    let rel_h = be.matmul(&qy, rh, true)?.reshape(&[side, bh, side, side])?;
    let rel_h = be.permute(&rel_h, &[1, 0, 2, 3])?.reshape(&[b, nh, t, side])?;
    // Width: group by column x → [S, BH·S, hd] · Rw[x]ᵀ.
    let qx = be.permute(&q4, &[2, 0, 1, 3])?.reshape(&[side, bh * side, hd])?;
    let rel_w = be.matmul(&qx, rw, true)?.reshape(&[side, bh, side, side])?;
    let rel_w = be.permute(&rel_w, &[1, 2, 0, 3])?.reshape(&[b, nh, t, side])?;
    Ok((rel_h, rel_w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        let t = |s: &[usize]| Tensor::from_f32(vec![0.0; s.iter().product()], s.to_vec()).unwrap();
        let ok = packed_shape(&t(&[2, 16, 24]), 2, Some((&t(&[4, 4, 4]), &t(&[4, 4, 4])))).unwrap();
        assert_eq!((ok.b, ok.n, ok.heads, ok.head_dim, ok.side), (2, 16, 2, 4, Some(4)));
        assert!(packed_shape(&t(&[2, 16, 24]), 5, None).is_err(), "3·H·D must divide the channels");
        assert!(packed_shape(&t(&[2, 15, 24]), 2, Some((&t(&[4, 4, 4]), &t(&[4, 4, 4])))).is_err(), "N must be S²");
        assert!(packed_shape(&t(&[2, 16, 24]), 2, Some((&t(&[4, 4, 4]), &t(&[4, 3, 4])))).is_err(), "tables must be [S, S, D]");
        assert!(packed_shape(&t(&[16, 24]), 2, None).is_err(), "qkv must be [B, N, C]");
    }
}
