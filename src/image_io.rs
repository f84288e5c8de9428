//! Image decoding with a pixel limit checked against the header before any pixel is decoded
//! (a PNG header may claim 100000×100000).

use std::path::Path;

use image::{ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Default limit: 64 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Decode an image file as 8-bit RGB, refusing images over `max_pixels`.
pub fn load_rgb(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let err = |msg: String| Error::Image { path: path.to_path_buf(), msg };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() == 0 {
        return Err(err("the file is empty".into()));
    }
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(err("not a PNG or JPEG image".into()));
    }
    let (w, h) = reader.into_dimensions().map_err(|e| err(format!("unreadable image header: {e}")))?;
    if w == 0 || h == 0 {
        return Err(err(format!("image is {w}×{h}")));
    }
    if (w as u64) * (h as u64) > max_pixels {
        return Err(err(format!("image is {w}×{h} = {} pixels, over the limit of {max_pixels}", w as u64 * h as u64)));
    }
    let mut reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| err(format!("corrupt image: {e}")))?;
    Ok(img.to_rgb8())
}
