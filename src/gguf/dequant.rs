//! ggml tensor types: their block geometry (for validating a file's byte ranges) and
//! dequantization to f32 of the types visword imports.
//!
//! Block layouts (little-endian, as ggml defines them; 32 weights per block):
//! * Q8_0 (34 bytes): f16 scale `d`, then 32 × i8 `q`;                 x = d·q
//! * Q4_0 (18 bytes): f16 `d`, then 16 bytes of nibbles;                x = d·(nibble − 8)
//! * Q4_1 (20 bytes): f16 `d`, f16 min `m`, then 16 bytes of nibbles;   x = d·nibble + m
//!
//! In the 4-bit types byte `j` holds weight `j` in its low nibble and weight `j + 16` in its high
//! nibble. The arithmetic is done in f32 in the same order as ggml's reference and gguf-py's
//! numpy code, so results are bit-identical to theirs.

use half::{bf16, f16};
use rayon::prelude::*;

/// A ggml tensor type id with its block size (weights per block) and bytes per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    pub block: u64,
    pub block_bytes: u64,
}

pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q8_0: u32 = 8;
pub const BF16: u32 = 30;

/// Every type id the GGUF spec has assigned (ids 4 and 5 were retired), so files holding types
/// visword cannot dequantize still parse and have their byte ranges checked.
const TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES
            .iter()
            .find(|t| t.0 == id)
            .map(|&(id, name, block, block_bytes)| GgmlType { id, name, block, block_bytes })
    }

    /// Whether `dequantize` handles this type.
    pub fn is_supported(self) -> bool {
        matches!(self.id, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1)
    }

    /// Bytes taken by `numel` weights (`numel` must be a whole number of blocks), or None on
    /// overflow.
    pub fn bytes_for(self, numel: u64) -> Option<u64> {
        (numel / self.block).checked_mul(self.block_bytes)
    }
}

pub const SUPPORTED_NAMES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

/// Dequantize `numel` weights stored as `ty` in `bytes`. The caller has checked that `bytes` is
/// exactly `ty.bytes_for(numel)` long; a mismatch is reported, never read past.
pub fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    if !ty.is_supported() {
        return Err(format!("ggml type {} is not supported for import (supported: {SUPPORTED_NAMES})", ty.name));
    }
    let want = ty.bytes_for(numel as u64);
    if !(numel as u64).is_multiple_of(ty.block) || want != Some(bytes.len() as u64) {
        return Err(format!("{numel} {} weights do not fill the {} bytes given", ty.name, bytes.len()));
    }
    let mut out = vec![0f32; numel];
    let block = ty.block as usize;
    let block_bytes = ty.block_bytes as usize;
    // Work in chunks of whole blocks so large tensors use every core; each chunk is independent.
    const BLOCKS_PER_TASK: usize = 4096;
    out.par_chunks_mut(block * BLOCKS_PER_TASK)
        .zip(bytes.par_chunks(block_bytes * BLOCKS_PER_TASK))
        .for_each(|(o, b)| match ty.id {
            F32 => o.iter_mut().zip(b.chunks_exact(4)).for_each(|(o, c)| *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            F16 => o.iter_mut().zip(b.chunks_exact(2)).for_each(|(o, c)| *o = f16::from_le_bytes([c[0], c[1]]).to_f32()),
            BF16 => o.iter_mut().zip(b.chunks_exact(2)).for_each(|(o, c)| *o = bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            Q8_0 => o.chunks_exact_mut(32).zip(b.chunks_exact(34)).for_each(|(o, c)| q8_0_block(c, o)),
            Q4_0 => o.chunks_exact_mut(32).zip(b.chunks_exact(18)).for_each(|(o, c)| q4_0_block(c, o)),
            Q4_1 => o.chunks_exact_mut(32).zip(b.chunks_exact(20)).for_each(|(o, c)| q4_1_block(c, o)),
            _ => unreachable!("checked by is_supported"),
        });
    Ok(out)
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn q8_0_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

fn q4_0_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let (lo, hi) = out.split_at_mut(16);
    for (j, &q) in b[2..18].iter().enumerate() {
        lo[j] = d * ((q & 0x0f) as i32 - 8) as f32;
        hi[j] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let (lo, hi) = out.split_at_mut(16);
    for (j, &q) in b[4..20].iter().enumerate() {
        lo[j] = d * (q & 0x0f) as f32 + m;
        hi[j] = d * (q >> 4) as f32 + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_nibble_order_and_min() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b[4] = 0x3a; // weight 0 = 0xa, weight 16 = 0x3
        let v = dequantize(GgmlType::from_id(Q4_1).unwrap(), &b, 32).unwrap();
        assert_eq!(v[0], 0.5 * 10.0 - 1.0);
        assert_eq!(v[16], 0.5 * 3.0 - 1.0);
        assert_eq!(v[1], -1.0);
    }

    #[test]
    fn wrong_length_and_unsupported_are_errors() {
        let q8 = GgmlType::from_id(Q8_0).unwrap();
        assert!(dequantize(q8, &[0u8; 33], 32).is_err());
        assert!(dequantize(q8, &[0u8; 34], 31).is_err());
        let q6k = GgmlType::from_id(14).unwrap();
        assert!(dequantize(q6k, &[0u8; 210], 256).unwrap_err().contains("Q6_K"));
        assert!(GgmlType::from_id(4).is_none());
    }
}
