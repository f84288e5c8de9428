//! `mask_stats`: counts, box and bits of each mask plane over a cell rectangle (the spec for
//! kernels/masks.cu and shaders/masks.wgsl).

use rayon::prelude::*;

use super::check_f32;
use crate::backend::{mask_stats_shape, MASK_STATS_HEADER};
use crate::error::Result;
use crate::tensor::Tensor;

pub fn mask_stats(logits: &Tensor, rect: [usize; 4], offset: f32) -> Result<Tensor> {
    let (planes, ph, pw, words) = mask_stats_shape(logits, rect)?;
    let x = check_f32("mask_stats", logits)?;
    let [y0, x0, h, w] = rect;
    let (hi, lo) = (offset, -offset);
    let row_len = MASK_STATS_HEADER + h * words;
    let mut out = vec![0i32; planes * row_len];
    out.par_chunks_mut(row_len).enumerate().for_each(|(i, o)| {
        let plane = &x[i * ph * pw..][..ph * pw];
        let (head, bits) = o.split_at_mut(MASK_STATS_HEADER);
        let (mut area, mut stable, mut loose) = (0u32, 0u32, 0u32);
        let mut bbox = [i32::MAX, i32::MAX, -1, -1];
        for r in 0..h {
            let row = &plane[(y0 + r) * pw + x0..][..w];
            for (j, chunk) in row.chunks(32).enumerate() {
                let mut word = 0u32;
                for (b, &v) in chunk.iter().enumerate() {
                    word |= ((v > 0.0) as u32) << b;
                    stable += (v > hi) as u32;
                    loose += (v > lo) as u32;
                }
                bits[r * words + j] = word as i32;
                if word != 0 {
                    area += word.count_ones();
                    let (first, last) = (32 * j + word.trailing_zeros() as usize, 32 * j + 31 - word.leading_zeros() as usize);
                    bbox = [bbox[0].min(first as i32), bbox[1].min(r as i32), bbox[2].max(last as i32), r as i32];
                }
            }
        }
        if area == 0 {
            bbox = [-1; 4];
        }
        head.copy_from_slice(&[area as i32, stable as i32, loose as i32, bbox[0], bbox[1], bbox[2], bbox[3], 0]);
    });
    Tensor::from_i32(out, vec![planes, row_len])
}
