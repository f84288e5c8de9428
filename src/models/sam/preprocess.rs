//! SAM's input pipeline, as transformers' `SamImageProcessor` (torchvision backend) runs it:
//! resize so the longest side is the model's input size, with antialiased bilinear resampling on
//! the 8-bit image; rescale by 1/255; normalise with the ImageNet mean/std; zero-pad bottom and
//! right to a square. Point and box prompts given in the original image's pixels are scaled into
//! the resized frame the same way the processor does.
//!
//! The resize reproduces torch's uint8 antialiased path (the one torchvision takes for a uint8
//! tensor): per-axis triangle-filter weights computed in f64 and normalised as Pillow does, then
//! rounded to int16 fixed point at the highest precision that fits; the horizontal pass runs
//! first and rounds to 8 bits, then the vertical pass. Computing in f32 instead would differ
//! by one level on some pixels.

use image::RgbImage;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// ImageNet mean and std (`IMAGENET_DEFAULT_MEAN` / `_STD`).
pub const IMAGE_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGE_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A preprocessed image and the sizes postprocessing needs.
#[derive(Clone, Debug)]
pub struct Preprocessed {
    /// `[1, 3, S, S]` f32, S = the model's input size.
    pub pixel_values: Tensor,
    /// (height, width) of the original image.
    pub original_size: (usize, usize),
    /// (height, width) of the resized image inside the padded square.
    pub resized_size: (usize, usize),
}

/// Size after resizing so the longest side is `longest` (transformers' `_get_preprocess_shape`:
/// scale in f64, round half up).
pub fn preprocess_shape(height: usize, width: usize, longest: usize) -> (usize, usize) {
    let scale = longest as f64 / height.max(width) as f64;
    let h = (height as f64 * scale + 0.5) as usize;
    let w = (width as f64 * scale + 0.5) as usize;
    (h.max(1), w.max(1))
}

/// Map a point from the original image's pixels into the resized frame (x scales by the width
/// ratio, y by the height ratio), as `SamProcessor._normalize_coordinates`.
pub fn transform_point(x: f32, y: f32, original: (usize, usize), resized: (usize, usize)) -> (f32, f32) {
    let sx = resized.1 as f64 / original.1 as f64;
    let sy = resized.0 as f64 / original.0 as f64;
    ((x as f64 * sx) as f32, (y as f64 * sy) as f32)
}

/// One axis of the resize: for each output index, the first input index and its int16 taps,
/// with the fixed-point precision shared by the axis.
struct AxisTaps {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
    precision: u32,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn axis_taps(input: usize, output: usize) -> AxisTaps {
    let scale = input as f64 / output as f64;
    // Downscaling widens the filter by the scale (the antialiasing); upscaling keeps support 1.
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let max_taps = support.ceil() as usize * 2 + 1;
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut start = Vec::with_capacity(output);
    let mut float_weights = Vec::with_capacity(output);
    let mut wt_max = 0.0f64;
    for i in 0..output {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(input as i64);
        let xsize = (xmax - xmin).clamp(0, max_taps as i64) as usize;
        let mut w: Vec<f64> = (0..xsize).map(|j| triangle((j as f64 + xmin as f64 - center + 0.5) * invscale)).collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            for v in w.iter_mut() {
                *v /= total;
                wt_max = wt_max.max(*v);
            }
        }
        start.push(xmin as usize);
        float_weights.push(w);
    }
    // The highest precision at which the largest weight still fits in an int16.
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + wt_max * (1u64 << (precision + 1)) as f64) as i64;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let unit = (1u64 << precision) as f64;
    let weights = float_weights
        .iter()
        .map(|w| {
            w.iter()
                .map(|&v| {
                    let v = v * unit;
                    if v < 0.0 {
                        (-0.5 + v) as i32
                    } else {
                        (0.5 + v) as i32
                    }
                })
                .collect()
        })
        .collect();
    AxisTaps { start, weights, precision }
}

/// Fixed-point dot product of the taps with `n` samples `stride` apart, rounded and clamped.
fn convolve(taps: &[i32], precision: u32, src: &[u8], first: usize, stride: usize) -> u8 {
    let mut acc: i32 = if precision > 0 { 1 << (precision - 1) } else { 0 };
    for (k, &w) in taps.iter().enumerate() {
        acc += w * src[first + k * stride] as i32;
    }
    (acc >> precision).clamp(0, 255) as u8
}

/// Antialiased bilinear resize of interleaved RGB8 `src` (h×w) to (oh×ow), as torch's uint8 path.
pub fn resize_rgb8(src: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    // Horizontal pass (skipped when the width does not change, as torch does).
    let horiz: Vec<u8> = if ow != w {
        let t = axis_taps(w, ow);
        let mut out = vec![0u8; h * ow * 3];
        for y in 0..h {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for x in 0..ow {
                for c in 0..3 {
                    out[(y * ow + x) * 3 + c] = convolve(&t.weights[x], t.precision, row, t.start[x] * 3 + c, 3);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    if oh == h {
        return horiz;
    }
    let t = axis_taps(h, oh);
    let mut out = vec![0u8; oh * ow * 3];
    let stride = ow * 3;
    for y in 0..oh {
        for i in 0..stride {
            out[y * stride + i] = convolve(&t.weights[y], t.precision, &horiz, t.start[y] * stride + i, stride);
        }
    }
    out
}

/// Resize, rescale, normalise and pad an RGB image into a `[1, 3, size, size]` model input.
pub fn preprocess(img: &RgbImage, size: usize) -> Result<Preprocessed> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::arg("image", format!("image is {w}×{h}")));
    }
    let (rh, rw) = preprocess_shape(h, w, size);
    if rh > size || rw > size {
        return Err(Error::arg("image", format!("resized image {rw}×{rh} does not fit the {size}×{size} input")));
    }
    let resized = resize_rgb8(img.as_raw(), h, w, rh, rw);
    let mut data = vec![0f32; 3 * size * size];
    for c in 0..3 {
        // transformers fuses rescale and normalise: (x − 255·mean) / (255·std).
        let mean = IMAGE_MEAN[c] * 255.0;
        let std = IMAGE_STD[c] * 255.0;
        let plane = &mut data[c * size * size..(c + 1) * size * size];
        for y in 0..rh {
            for x in 0..rw {
                plane[y * size + x] = (resized[(y * rw + x) * 3 + c] as f32 - mean) / std;
            }
        }
    }
    Ok(Preprocessed {
        pixel_values: Tensor::from_f32(data, vec![1, 3, size, size])?,
        original_size: (h, w),
        resized_size: (rh, rw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_rounds_half_up() {
        assert_eq!(preprocess_shape(120, 160, 128), (96, 128));
        assert_eq!(preprocess_shape(480, 640, 1024), (768, 1024));
        assert_eq!(preprocess_shape(1, 3, 1024), (341, 1024));
    }

    #[test]
    fn identity_resize_is_exact() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_rgb8(&src, 4, 5, 4, 5), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 9 * 13 * 3];
        assert!(resize_rgb8(&src, 9, 13, 5, 7).iter().all(|&v| v == 77));
        assert!(resize_rgb8(&src, 9, 13, 20, 31).iter().all(|&v| v == 77));
    }
}
