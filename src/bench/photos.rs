//! The photographs the benchmark runs on, embedded in the binary so `visword bench` needs no
//! files: superpixel counts (and so svp's token counts) come from real images, not random labels.
//! Sources and licences: assets/photos/LICENSE.md.

use image::RgbImage;

use crate::error::{Error, Result};

/// (name, encoded bytes).
const PHOTOS: &[(&str, &[u8])] = &[("chelsea", include_bytes!("../../tests/fixtures/images/chelsea_120x80.png"))];

/// Decode every embedded photo.
pub fn photos() -> Result<Vec<(&'static str, RgbImage)>> {
    PHOTOS
        .iter()
        .map(|&(name, bytes)| {
            let img = image::load_from_memory(bytes).map_err(|e| Error::arg("bench photo", format!("{name}: {e}")))?;
            Ok((name, img.to_rgb8()))
        })
        .collect()
}
