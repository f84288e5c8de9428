//! The photographs the benchmark runs on, embedded in the binary so `visword bench` needs no
//! files: superpixel counts (and so svp's token counts) come from real images, not random labels.
//! A landscape, a square and a portrait photo, so the encoders' views differ too. Sources and
//! licences: assets/photos/LICENSE.md.

use image::RgbImage;

use crate::error::{Error, Result};

/// (name, encoded bytes).
const PHOTOS: &[(&str, &[u8])] = &[
    ("chelsea", include_bytes!("../../assets/photos/chelsea.jpg")),
    ("astronaut", include_bytes!("../../assets/photos/astronaut.jpg")),
    ("rocket", include_bytes!("../../assets/photos/rocket.jpg")),
];

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
