//! From SAM's low-resolution mask logits to a mask at the original image's size, as
//! transformers' `SamImageProcessor.post_process_masks`: bilinear upsampling (align_corners
//! False) to the padded input square, crop of the padding, bilinear resize to the original size,
//! threshold. This runs once per output mask on the host; it is output conversion, not model
//! math, and matches torch's CPU kernel operation for operation.

use std::path::Path;

use crate::error::{Error, Result};
use crate::weights::write_atomic;

/// Per output index: (first source index, second source index, weight of the first, of the second).
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    // torch: scale = in / out in the tensor's precision; src = scale·(dst + 0.5) − 0.5, clamped at 0.
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Bilinear resize (align_corners = False, no antialiasing) of `n` planes `h×w` to `oh×ow`.
pub fn resize_bilinear(src: &[f32], n: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let ys = linear_taps(h, oh);
    let xs = linear_taps(w, ow);
    let mut out = vec![0f32; n * oh * ow];
    for p in 0..n {
        let plane = &src[p * h * w..(p + 1) * h * w];
        let dst = &mut out[p * oh * ow..(p + 1) * oh * ow];
        for (oy, &(y0, y1, wy0, wy1)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, wx0, wx1)) in xs.iter().enumerate() {
                dst[oy * ow + ox] = wy0 * (wx0 * plane[y0 * w + x0] + wx1 * plane[y0 * w + x1])
                    + wy1 * (wx0 * plane[y1 * w + x0] + wx1 * plane[y1 * w + x1]);
            }
        }
    }
    out
}

/// Upsample `n` low-res mask planes (`lh×lw`) to the `input_size` square, crop to the resized
/// image (`resized` = (h, w)), and resize to `original` (h, w). Returns logits `[n, oh, ow]`.
pub fn upscale_masks(
    low_res: &[f32],
    n: usize,
    low_res_size: (usize, usize),
    input_size: usize,
    resized: (usize, usize),
    original: (usize, usize),
) -> Result<Vec<f32>> {
    let (lh, lw) = low_res_size;
    if low_res.len() != n * lh * lw || lh == 0 || lw == 0 {
        return Err(Error::shape("upscale_masks", format!("{} values for {n} masks of {lh}×{lw}", low_res.len())));
    }
    if resized.0 == 0 || resized.1 == 0 || resized.0 > input_size || resized.1 > input_size {
        return Err(Error::shape("upscale_masks", format!("resized size {resized:?} does not fit the {input_size} input")));
    }
    if original.0 == 0 || original.1 == 0 {
        return Err(Error::shape("upscale_masks", format!("original size {original:?} is empty")));
    }
    let full = resize_bilinear(low_res, n, lh, lw, input_size, input_size);
    let (rh, rw) = resized;
    let mut cropped = Vec::with_capacity(n * rh * rw);
    for p in 0..n {
        for y in 0..rh {
            let row = (p * input_size + y) * input_size;
            cropped.extend_from_slice(&full[row..row + rw]);
        }
    }
    Ok(resize_bilinear(&cropped, n, rh, rw, original.0, original.1))
}

/// Binary mask (logit > threshold) as 0/255 bytes.
pub fn binarize(logits: &[f32], threshold: f32) -> Vec<u8> {
    logits.iter().map(|&v| if v > threshold { 255 } else { 0 }).collect()
}

/// Write an 8-bit grayscale PNG atomically.
pub fn write_mask_png(path: &Path, mask: &[u8], height: usize, width: usize) -> Result<()> {
    if mask.len() != height * width {
        return Err(Error::Output { path: path.into(), msg: format!("mask has {} pixels, expected {width}×{height}", mask.len()) });
    }
    let (w, h) = (
        u32::try_from(width).map_err(|_| Error::Output { path: path.into(), msg: "mask too wide".into() })?,
        u32::try_from(height).map_err(|_| Error::Output { path: path.into(), msg: "mask too tall".into() })?,
    );
    write_atomic(path, |f| {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(f)
            .write_image(mask, w, h, image::ExtendedColorType::L8)
            .map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize() {
        let src: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        assert_eq!(resize_bilinear(&src, 1, 3, 4, 3, 4), src);
    }

    #[test]
    fn upsample_by_two_matches_torch() {
        // torch.nn.functional.interpolate([[0, 1], [2, 3]], (4, 4), mode="bilinear")
        let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 1, 2, 2, 4, 4);
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }
}
