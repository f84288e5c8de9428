//! `mask_stats`: counts, box and bits of each mask plane over a cell rectangle, and
//! `upscale_masks`: SAM's upscaler tail fused with the hypernetwork product (the specs for
//! kernels/masks.cu and shaders/masks.wgsl).

use rayon::prelude::*;

use super::check_f32;
use super::matmul::{sgemm_serial, SendPtr};
use crate::backend::{mask_stats_shape, upscale_masks_shape, Activation, MASK_STATS_HEADER};
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

/// `Backend::upscale_masks`, one prompt at a time so the [4E², 4·C2] features of only one
/// prompt exist at once: LayerNorm + GELU over the C1 channels of each 2E-grid pixel, the
/// second transposed conv as one GEMM with a bias + GELU epilogue, then each mask's dot
/// product with the hypernetwork output, written in output-pixel order.
pub fn upscale_masks(y: &Tensor, ln: (&Tensor, &Tensor, f32), w2: &Tensor, b2: &Tensor, hyper: &Tensor) -> Result<Tensor> {
    let s = upscale_masks_shape(y, ln.0, ln.1, w2, b2, hyper)?;
    let (e, c1, c2, m) = (s.e, s.c1, s.c2, s.m);
    let (yv, hv) = (check_f32("upscale_masks", y)?, check_f32("upscale_masks", hyper)?);
    let bias4 = Tensor::from_f32(check_f32("upscale_masks", b2)?.repeat(4), vec![4 * c2])?;
    let side = 4 * e;
    let rows = e * e * 4;
    let mut out = vec![0f32; s.p * m * side * side];
    for (p, o) in out.chunks_mut((m * side * side).max(1)).enumerate().take(s.p) {
        let yp = Tensor::from_f32(yv[p * rows * c1..][..rows * c1].to_vec(), vec![rows, c1])?;
        let g = super::elementwise::activate(&super::norm::layer_norm(&yp, ln.0, ln.1, ln.2)?, Activation::Gelu)?;
        // z[(i·E + j)·4 + a·2 + b, (c·2 + d)·C2 + o]
        let z = super::matmul::linear(&g, w2, Some(&bias4), Activation::Gelu, None)?;
        let zv = z.as_f32()?;
        let h = &hv[p * m * c2..][..m * c2];
        // Sub-position (c, d) of every 2E-grid pixel: its C2 features are columns
        // (c·2 + d)·C2.. of z, and their products with the M hypernetwork rows are one
        // [4E², C2] · [C2, M] GEMM; its rows then land at output pixel (4i + 2a + c, 4j + 2b + d).
        let ptr = SendPtr(o.as_mut_ptr());
        (0..4).into_par_iter().for_each(|cd| {
            let (c, d) = (cd / 2, cd % 2);
            let mut dots = vec![0f32; rows * m];
            sgemm_serial(rows, m, c2, &zv[cd * c2..], 4 * c2, 1, h, 1, c2, &mut dots, false);
            let ptr = &ptr;
            for (r, v) in dots.chunks(m).enumerate() {
                let (i, j, a, b) = (r / (4 * e), (r / 4) % e, (r / 2) % 2, r % 2);
                let (py, px) = (4 * i + 2 * a + c, 4 * j + 2 * b + d);
                for (mi, &x) in v.iter().enumerate() {
                    // SAFETY: (mi, py, px) < (M, 4E, 4E) is written by this (c, d) task alone.
                    unsafe { *ptr.0.add((mi * side + py) * side + px) = x };
                }
            }
        });
    }
    Tensor::from_f32(out, vec![s.p, m, side, side])
}
