//! Image preprocessing as transformers' `CLIPImageProcessor` and `BitImageProcessor` (DINOv2's)
//! do it: resize (shortest edge, or an exact size), center crop, rescale to [0, 1], normalise
//! per channel, giving `pixel_values` `[1, 3, H, W]` f32.
//!
//! Resizing reproduces the antialiased resampler that both transformers backends use on 8-bit
//! images (PIL's `Image.resize`, and torch's native uint8 `interpolate(antialias=True)` that the
//! default torchvision backend runs): separable passes, horizontal then vertical, with filter
//! support widened by the downscale factor, fixed-point weights and 8-bit rounding after each
//! pass. The two backends differ only in the fixed-point precision of the weights (PIL: 22 bits;
//! torch: as many bits as keep the largest weight in an i16) and in where a crop larger than the
//! image puts the zero padding; `Flavor` picks which one to match. On the test photo both match
//! their backend bit for bit (tests/model_clip.rs), and the two backends differ from each other
//! by at most one 8-bit level in a few pixels.

use std::borrow::Cow;
use std::path::Path;

use image::RgbImage;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::models::vit;
use crate::tensor::Tensor;

// transformers' OPENAI_CLIP_MEAN / _STD, digit for digit.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Resampling filter (PIL codes 2 and 3 in preprocessor_config.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Bilinear,
    Bicubic,
}

/// Which transformers image-processor backend to reproduce exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Flavor {
    /// The default backend of transformers 5 (`CLIPImageProcessor`, `BitImageProcessor`).
    #[default]
    Torchvision,
    /// The PIL backend (`CLIPImageProcessorPil`, ...).
    Pil,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeTo {
    /// Scale so the shorter side is this long; the longer side is truncated to an integer.
    ShortestEdge(usize),
    Exact { height: usize, width: usize },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    pub do_resize: bool,
    pub size: ResizeTo,
    pub resample: Resample,
    pub do_center_crop: bool,
    /// (height, width).
    pub crop_size: (usize, usize),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub flavor: Flavor,
}

impl ImageProcessor {
    /// CLIP's processor for a tower taking `image_size`² inputs (openai/clip-vit-*: resize the
    /// shortest edge to the input size, crop the center square).
    pub fn clip(image_size: usize) -> ImageProcessor {
        ImageProcessor {
            do_resize: true,
            size: ResizeTo::ShortestEdge(image_size),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (image_size, image_size),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            flavor: Flavor::Torchvision,
        }
    }

    /// DINOv2's published processor (facebook/dinov2-*): shortest edge 256, center crop 224,
    /// ImageNet statistics.
    pub fn dinov2() -> ImageProcessor {
        ImageProcessor {
            size: ResizeTo::ShortestEdge(256),
            crop_size: (224, 224),
            image_mean: IMAGENET_MEAN,
            image_std: IMAGENET_STD,
            ..ImageProcessor::clip(224)
        }
    }

    /// The processor for a model directory: `preprocessor_config.json` when present (fields it
    /// omits take the model's defaults), otherwise the defaults for the config's model type.
    pub fn for_model_dir(dir: &Path) -> Result<ImageProcessor> {
        let (path, json) = vit::read_config(dir)?;
        let base = match vit::model_type(&json) {
            Some("dinov2") => ImageProcessor::dinov2(),
            _ => ImageProcessor::clip(crate::models::clip::ClipVisionConfig::from_model_config(&path, &json)?.image_size),
        };
        let pp = dir.join("preprocessor_config.json");
        if pp.exists() {
            ImageProcessor::from_file(&pp, &base)
        } else {
            Ok(base)
        }
    }

    /// Read a `preprocessor_config.json`; absent fields keep `base`'s values.
    pub fn from_file(path: &Path, base: &ImageProcessor) -> Result<ImageProcessor> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        ImageProcessor::from_json(path, &json, base)
    }

    pub fn from_json(path: &Path, json: &serde_json::Value, base: &ImageProcessor) -> Result<ImageProcessor> {
        if !json.is_object() {
            return Err(Error::config(path, "not a JSON object"));
        }
        let err = |msg: String| Error::config(path, msg);
        let size = match json.get("size") {
            None | Some(serde_json::Value::Null) => base.size,
            Some(v) => parse_size(v).map_err(|m| err(format!("field `size`: {m}")))?,
        };
        let crop_size = match json.get("crop_size") {
            None | Some(serde_json::Value::Null) => base.crop_size,
            Some(v) => match parse_size(v).map_err(|m| err(format!("field `crop_size`: {m}")))? {
                ResizeTo::ShortestEdge(n) => (n, n),
                ResizeTo::Exact { height, width } => (height, width),
            },
        };
        let resample = match vit::field::<Option<u32>>(path, json, "resample", None)? {
            None => base.resample,
            Some(2) => Resample::Bilinear,
            Some(3) => Resample::Bicubic,
            Some(n) => return Err(err(format!("field `resample`: PIL filter {n} is not supported (2 = bilinear, 3 = bicubic)"))),
        };
        let rescale_factor: f64 = vit::field(path, json, "rescale_factor", base.rescale_factor)?;
        if !(rescale_factor.is_finite() && rescale_factor > 0.0) {
            return Err(err(format!("field `rescale_factor` must be positive, got {rescale_factor}")));
        }
        let image_mean = channel_stats(path, json, "image_mean", base.image_mean)?;
        let image_std = channel_stats(path, json, "image_std", base.image_std)?;
        if image_std.iter().any(|s| !(s.is_finite() && *s != 0.0)) {
            return Err(err(format!("field `image_std` must be finite and non-zero, got {image_std:?}")));
        }
        Ok(ImageProcessor {
            do_resize: vit::field(path, json, "do_resize", base.do_resize)?,
            size,
            resample,
            do_center_crop: vit::field(path, json, "do_center_crop", base.do_center_crop)?,
            crop_size,
            do_rescale: vit::field(path, json, "do_rescale", base.do_rescale)?,
            rescale_factor,
            do_normalize: vit::field(path, json, "do_normalize", base.do_normalize)?,
            image_mean,
            image_std,
            flavor: base.flavor,
        })
    }

    /// Size of the resized image (before cropping) for a `height × width` input.
    pub fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        if !self.do_resize {
            return (height, width);
        }
        match self.size {
            ResizeTo::Exact { height, width } => (height, width),
            ResizeTo::ShortestEdge(s) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                // int(size * long / short), in double precision as Python computes it.
                let new_long = ((s as f64 * long as f64) / short as f64) as usize;
                if width <= height { (new_long, s) } else { (s, new_long) }
            }
        }
    }

    /// The rectangle of a `height × width` image the processed pixels show, in original pixels:
    /// `[x0, y0, x1, y1)` (f64). Resizing scales, the centre crop cuts (or pads, then the
    /// rectangle reaches past the image); superpixels are built over this view (docs/svp.md §1).
    pub fn view_rect(&self, height: usize, width: usize) -> [f64; 4] {
        let (rh, rw) = self.resized_size(height, width);
        let (ch, cw) = if self.do_center_crop { self.crop_size } else { (rh, rw) };
        let (sy, dy, _) = crop_axis(rh, ch, self.flavor);
        let (sx, dx, _) = crop_axis(rw, cw, self.flavor);
        let (y0, x0) = (sy as f64 - dy as f64, sx as f64 - dx as f64);
        let (fy, fx) = (height as f64 / rh as f64, width as f64 / rw as f64);
        [x0 * fx, y0 * fy, (x0 + cw as f64) * fx, (y0 + ch as f64) * fy]
    }

    /// Decode `path` (refusing images over `max_pixels`) and preprocess it.
    pub fn preprocess_file(&self, path: &Path, max_pixels: u64) -> Result<Tensor> {
        let img = crate::image_io::load_rgb(path, max_pixels)?;
        self.preprocess(&img)
    }

    /// `pixel_values` `[1, 3, H, W]` f32 for an RGB image.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        let (h, w) = (img.height() as usize, img.width() as usize);
        if h == 0 || w == 0 {
            return Err(Error::arg("image", format!("image is {w}×{h}")));
        }
        let (rh, rw) = self.resized_size(h, w);
        if rh == 0 || rw == 0 {
            return Err(Error::arg("image", format!("a {w}×{h} image resizes to {rw}×{rh}: too thin to preprocess")));
        }
        // Borrow the decoded image; each step below makes its own (smaller) buffer.
        let mut pixels = Pixels { h, w, data: Cow::Borrowed(img.as_raw().as_slice()) };
        if (rh, rw) != (h, w) {
            pixels = resize(&pixels, rh, rw, self.resample, self.flavor);
        }
        if self.do_center_crop {
            pixels = center_crop(&pixels, self.crop_size.0, self.crop_size.1, self.flavor);
        }
        let (oh, ow) = (pixels.h, pixels.w);
        let plane = oh * ow;
        let mut out = vec![0f32; 3 * plane];
        let norm = Normalizer::new(self);
        for c in 0..3 {
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = norm.apply(pixels.data[i * 3 + c], c);
            }
        }
        Tensor::from_f32(out, vec![1, 3, oh, ow])
    }
}

/// Map from an 8-bit value to the normalised f32, in the arithmetic order of the chosen backend
/// (so the results agree to the last bit, not just to rounding).
struct Normalizer {
    mode: NormMode,
    rescale: f64,
    mean: [f32; 3],
    std: [f32; 3],
}

#[derive(Clone, Copy)]
enum NormMode {
    /// torchvision folds the rescale into the statistics: (x − mean/r) / (std/r), all f32.
    FusedF32,
    /// PIL backend: x·r in double stored as f32, then (v − mean) / std in f32.
    RescaleThenNormalize,
    RescaleOnly,
    NormalizeOnly,
    Identity,
}

impl Normalizer {
    fn new(p: &ImageProcessor) -> Normalizer {
        let (mut mean, mut std) = (p.image_mean, p.image_std);
        let mode = match (p.do_rescale, p.do_normalize, p.flavor) {
            (true, true, Flavor::Torchvision) => {
                let k = (1.0 / p.rescale_factor) as f32;
                mean.iter_mut().for_each(|m| *m *= k);
                std.iter_mut().for_each(|s| *s *= k);
                NormMode::FusedF32
            }
            (true, true, Flavor::Pil) => NormMode::RescaleThenNormalize,
            (true, false, _) => NormMode::RescaleOnly,
            (false, true, _) => NormMode::NormalizeOnly,
            (false, false, _) => NormMode::Identity,
        };
        Normalizer { mode, rescale: p.rescale_factor, mean, std }
    }

    #[inline]
    fn apply(&self, x: u8, c: usize) -> f32 {
        match self.mode {
            NormMode::FusedF32 | NormMode::NormalizeOnly => (x as f32 - self.mean[c]) / self.std[c],
            NormMode::RescaleThenNormalize => ((x as f64 * self.rescale) as f32 - self.mean[c]) / self.std[c],
            NormMode::RescaleOnly => (x as f64 * self.rescale) as f32,
            NormMode::Identity => x as f32,
        }
    }
}

/// `size` / `crop_size` of a preprocessor config: an int (shortest edge, or a square crop),
/// `{"shortest_edge": n}` or `{"height": h, "width": w}`.
fn parse_size(v: &serde_json::Value) -> std::result::Result<ResizeTo, String> {
    let positive = |x: Option<&serde_json::Value>| x.and_then(|x| x.as_u64()).filter(|&x| x > 0).map(|x| x as usize);
    if let Some(n) = v.as_u64() {
        return positive(Some(v)).map(ResizeTo::ShortestEdge).ok_or_else(|| format!("must be positive, got {n}"));
    }
    let obj = v.as_object().ok_or_else(|| format!("expected an integer or an object, got {v}"))?;
    if obj.contains_key("longest_edge") || obj.contains_key("max_height") {
        return Err(format!("{v}: only `shortest_edge` or `height`/`width` sizes are supported"));
    }
    if let Some(s) = obj.get("shortest_edge") {
        return positive(Some(s)).map(ResizeTo::ShortestEdge).ok_or_else(|| format!("`shortest_edge` must be a positive integer, got {s}"));
    }
    match (positive(obj.get("height")), positive(obj.get("width"))) {
        (Some(height), Some(width)) => Ok(ResizeTo::Exact { height, width }),
        _ => Err(format!("{v}: expected `shortest_edge` or positive `height` and `width`")),
    }
}

/// Per-channel statistics: a list of three numbers or one number for all channels.
fn channel_stats(path: &Path, json: &serde_json::Value, name: &str, default: [f32; 3]) -> Result<[f32; 3]> {
    match json.get(name) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => {
            if let Some(x) = v.as_f64() {
                return Ok([x as f32; 3]);
            }
            let xs: Vec<f64> = serde_json::from_value(v.clone()).map_err(|e| Error::config(path, format!("field `{name}`: {e}")))?;
            match xs.as_slice() {
                [a, b, c] => Ok([*a as f32, *b as f32, *c as f32]),
                _ => Err(Error::config(path, format!("field `{name}` must have 3 values (RGB), got {}", xs.len()))),
            }
        }
    }
}

/// An 8-bit RGB image, interleaved row-major (`[h, w, 3]`).
struct Pixels<'a> {
    h: usize,
    w: usize,
    data: Cow<'a, [u8]>,
}

/// Fixed-point filter taps for one axis: output i reads `len[i]` inputs from `start[i]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `ksize` weights per output (row-major), scaled by 2^`precision`.
    weights: Vec<i32>,
    ksize: usize,
    precision: u32,
}

fn filter(resample: Resample, x: f64) -> f64 {
    let x = x.abs();
    match resample {
        Resample::Bilinear => (1.0 - x).max(0.0),
        // Keys cubic with a = −0.5 (PIL's choice, and torch's for antialiased bicubic).
        Resample::Bicubic => {
            const A: f64 = -0.5;
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
    }
}

/// Taps resampling `in_size` samples to `out_size`: the filter is stretched by the downscale
/// factor (antialiasing), weights are normalised to sum to 1, then quantised.
fn taps(in_size: usize, out_size: usize, resample: Resample, flavor: Flavor) -> Taps {
    let support0 = match resample {
        Resample::Bilinear => 1.0,
        Resample::Bicubic => 2.0,
    };
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support0 * filterscale;
    let inv = 1.0 / filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut wf = vec![0f64; out_size * ksize];
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // `as i64` truncates toward zero, as the C casts in both implementations do.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = hi.saturating_sub(lo).min(ksize);
        let w = &mut wf[i * ksize..i * ksize + n];
        let mut total = 0.0;
        for (j, w) in w.iter_mut().enumerate() {
            *w = filter(resample, (j as f64 + lo as f64 - center + 0.5) * inv);
            total += *w;
        }
        if total != 0.0 {
            w.iter_mut().for_each(|w| *w /= total);
        }
        start.push(lo);
        len.push(n);
    }
    let precision = match flavor {
        Flavor::Pil => 22,
        // torch: the most bits (≤ 22) that keep the largest weight inside an i16.
        Flavor::Torchvision => {
            let wmax = wf.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut p = 0u32;
            while p < 22 && ((0.5 + wmax * (1u64 << (p + 1)) as f64) as i64) < (1 << 15) {
                p += 1;
            }
            p
        }
    };
    let one = (1u64 << precision) as f64;
    let weights = wf.iter().map(|&w| if w < 0.0 { (w * one - 0.5) as i32 } else { (w * one + 0.5) as i32 }).collect();
    Taps { start, len, weights, ksize, precision }
}

/// Apply `t` along one axis of an interleaved image, with 8-bit rounding and clamping.
/// `horizontal`: rows stay, columns are resampled.
fn pass(src: &Pixels, t: &Taps, horizontal: bool) -> Pixels<'static> {
    let (oh, ow) = if horizontal { (src.h, t.start.len()) } else { (t.start.len(), src.w) };
    let mut data = vec![0u8; oh * ow * 3];
    let half = if t.precision > 0 { 1i64 << (t.precision - 1) } else { 0 };
    let clip = |acc: i64| (acc >> t.precision).clamp(0, 255) as u8;
    data.par_chunks_mut(ow * 3).enumerate().for_each(|(y, row)| {
        for x in 0..ow {
            let (i, o) = if horizontal { (x, y) } else { (y, x) };
            let w = &t.weights[i * t.ksize..][..t.len[i]];
            let mut acc = [half; 3];
            for (j, &wj) in w.iter().enumerate() {
                let s = t.start[i] + j;
                let p = if horizontal { (o * src.w + s) * 3 } else { (s * src.w + o) * 3 };
                for (a, &v) in acc.iter_mut().zip(&src.data[p..p + 3]) {
                    *a += v as i64 * wj as i64;
                }
            }
            for (o, &a) in row[x * 3..x * 3 + 3].iter_mut().zip(&acc) {
                *o = clip(a);
            }
        }
    });
    Pixels { h: oh, w: ow, data: Cow::Owned(data) }
}

/// Resize to `h × w`: horizontal pass, then vertical; an axis whose size doesn't change is not
/// touched (as in both reference implementations).
fn resize(src: &Pixels, h: usize, w: usize, resample: Resample, flavor: Flavor) -> Pixels<'static> {
    let mut cur = None;
    if w != src.w {
        cur = Some(pass(src, &taps(src.w, w, resample, flavor), true));
    }
    if h != src.h {
        let s = cur.as_ref().unwrap_or(src);
        cur = Some(pass(s, &taps(s.h, h, resample, flavor), false));
    }
    cur.unwrap_or_else(|| Pixels { h: src.h, w: src.w, data: Cow::Owned(src.data.to_vec()) })
}

/// Where a centered window of `out` cells takes its data along an axis of `in_` cells:
/// (source start, destination start, count). A window larger than the image gets zero padding
/// split as the backend splits it.
fn crop_axis(in_: usize, out: usize, flavor: Flavor) -> (usize, usize, usize) {
    if in_ >= out {
        return ((in_ - out) / 2, 0, out);
    }
    let pad = out - in_;
    let before = match flavor {
        Flavor::Torchvision => pad / 2,
        Flavor::Pil => pad.div_ceil(2),
    };
    (0, before, in_)
}

fn center_crop(src: &Pixels, h: usize, w: usize, flavor: Flavor) -> Pixels<'static> {
    let (sy, dy, ny) = crop_axis(src.h, h, flavor);
    let (sx, dx, nx) = crop_axis(src.w, w, flavor);
    let mut data = vec![0u8; h * w * 3];
    for y in 0..ny {
        let s = ((sy + y) * src.w + sx) * 3;
        let d = ((dy + y) * w + dx) * 3;
        data[d..d + nx * 3].copy_from_slice(&src.data[s..s + nx * 3]);
    }
    Pixels { h, w, data: Cow::Owned(data) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_sizes_truncate_like_python() {
        let p = ImageProcessor::clip(224);
        assert_eq!(p.resized_size(80, 120), (224, 336));
        assert_eq!(p.resized_size(120, 80), (336, 224));
        assert_eq!(p.resized_size(300, 451), (224, 336)); // 224·451/300 = 336.77
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (i, o) in [(120, 30), (80, 100), (7, 3), (3, 7)] {
            for r in [Resample::Bilinear, Resample::Bicubic] {
                let t = taps(i, o, r, Flavor::Pil);
                for k in 0..o {
                    let s: i64 = t.weights[k * t.ksize..][..t.len[k]].iter().map(|&w| w as i64).sum();
                    assert!((s - (1 << 22)).abs() <= t.len[k] as i64, "{i}->{o} {r:?} output {k}: {s}");
                }
            }
        }
    }

    #[test]
    fn crop_padding_splits_like_each_backend() {
        assert_eq!(crop_axis(20, 25, Flavor::Torchvision), (0, 2, 20));
        assert_eq!(crop_axis(20, 25, Flavor::Pil), (0, 3, 20));
        assert_eq!(crop_axis(30, 27, Flavor::Pil), (1, 0, 27));
    }

    #[test]
    fn size_fields_parse() {
        assert_eq!(parse_size(&serde_json::json!(224)), Ok(ResizeTo::ShortestEdge(224)));
        assert_eq!(parse_size(&serde_json::json!({"shortest_edge": 336})), Ok(ResizeTo::ShortestEdge(336)));
        assert_eq!(parse_size(&serde_json::json!({"height": 3, "width": 4})), Ok(ResizeTo::Exact { height: 3, width: 4 }));
        assert!(parse_size(&serde_json::json!({"shortest_edge": 0})).is_err());
        assert!(parse_size(&serde_json::json!({"longest_edge": 5, "shortest_edge": 3})).is_err());
        assert!(parse_size(&serde_json::json!("big")).is_err());
    }
}
