//! Pictures of superpixels for people: the label map in palette colours, and the superpixel
//! boundaries drawn on the original photo.

use std::path::Path;

use image::RgbImage;

use super::frame::Frame;
use super::Superpixels;
use crate::error::{Error, Result};
use crate::weights::write_atomic;

/// A colour per label, well apart for neighbouring labels: hues stepped by the golden ratio.
/// −1 (no superpixel) is black.
pub fn palette(label: i32) -> [u8; 3] {
    if label < 0 {
        return [0, 0, 0];
    }
    let h = (label as f64 * 0.618_033_988_749_895).fract() * 6.0;
    let (s, v) = (0.65, 0.95);
    let f = h.fract();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match h as u32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [(r * 255.0).round() as u8, (g * 255.0).round() as u8, (b * 255.0).round() as u8]
}

/// Boundary colour on the overlay.
const EDGE: [u8; 3] = [255, 230, 0];

impl Superpixels {
    /// The label map as RGB `[height, width, 3]`, one palette colour per label.
    pub fn label_rgb(&self) -> Vec<u8> {
        self.label_map.iter().flat_map(|&l| palette(l)).collect()
    }

    /// `photo` (the original image of `frame`) with each superpixel's boundary drawn in yellow
    /// and the cells outside any superpixel darkened. Every pixel takes the label of the
    /// low-res cell it falls in; a pixel is on a boundary when its right or bottom neighbour
    /// has another label.
    pub fn overlay_rgb(&self, frame: &Frame, photo: &RgbImage) -> Result<Vec<u8>> {
        let (h, w) = (photo.height() as usize, photo.width() as usize);
        if (h, w) != frame.original || (self.height, self.width) != frame.crop {
            return Err(Error::arg(
                "overlay",
                format!("a {w}×{h} photo with a {}×{} label map does not match the frame {:?}", self.width, self.height, frame),
            ));
        }
        let rows: Vec<usize> = (0..h).map(|y| frame.cell_of_pixel(y, 0).0).collect();
        let cols: Vec<usize> = (0..w).map(|x| frame.cell_of_pixel(0, x).1).collect();
        let label = |y: usize, x: usize| self.label_map[rows[y] * self.width + cols[x]];
        let mut out = photo.as_raw().clone();
        for y in 0..h {
            for x in 0..w {
                let l = label(y, x);
                let px = &mut out[(y * w + x) * 3..(y * w + x) * 3 + 3];
                let edge = (x + 1 < w && label(y, x + 1) != l) || (y + 1 < h && label(y + 1, x) != l);
                if edge {
                    px.copy_from_slice(&EDGE);
                } else if l < 0 {
                    px.iter_mut().for_each(|c| *c /= 3);
                }
            }
        }
        Ok(out)
    }
}

/// Write an RGB8 image (`[height, width, 3]`) as PNG, atomically.
pub fn write_rgb_png(path: &Path, rgb: &[u8], height: usize, width: usize) -> Result<()> {
    let bad = |msg: &str| Error::Output { path: path.into(), msg: msg.into() };
    if rgb.len() != height * width * 3 || height == 0 || width == 0 {
        return Err(bad(&format!("image has {} bytes, expected {width}×{height}×3", rgb.len())));
    }
    let w = u32::try_from(width).map_err(|_| bad("image too wide"))?;
    let h = u32::try_from(height).map_err(|_| bad("image too tall"))?;
    write_atomic(path, |f| {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(f).write_image(rgb, w, h, image::ExtendedColorType::Rgb8).map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_is_distinct_for_neighbouring_labels() {
        assert_eq!(palette(-1), [0, 0, 0]);
        for l in 0..64 {
            assert_ne!(palette(l), palette(l + 1));
            assert_ne!(palette(l), [0, 0, 0]);
        }
    }

    /// A 8×4 photo (SAM input 16, 4² masks → 2×4 cells of 2×2 px), labels [[0, 0, 1, 1],
    /// [-1, -1, 1, 1]]: the boundary runs between columns 3 and 4 and above the dark cells.
    #[test]
    fn overlay_marks_boundaries_and_darkens_unlabelled_cells() {
        let frame = Frame::new((4, 8), 16, 4, [0.0, 0.0, 8.0, 4.0]).unwrap();
        assert_eq!(frame.crop, (2, 4));
        let sp = Superpixels {
            label_map: vec![0, 0, 1, 1, -1, -1, 1, 1],
            height: 2,
            width: 4,
            count: 2,
            grid: 1,
            coverage: vec![0.5, 0.5],
            geometry: vec![[0.0; 7]; 2],
        };
        let photo = RgbImage::from_pixel(8, 4, image::Rgb([90, 90, 90]));
        let out = sp.overlay_rgb(&frame, &photo).unwrap();
        let at = |y: usize, x: usize| [out[(y * 8 + x) * 3], out[(y * 8 + x) * 3 + 1], out[(y * 8 + x) * 3 + 2]];
        assert_eq!(at(0, 0), [90, 90, 90]);
        assert_eq!(at(0, 3), EDGE); // right neighbour is label 1
        assert_eq!(at(1, 0), EDGE); // bottom neighbour is −1
        assert_eq!(at(3, 0), [30, 30, 30]);
        assert_eq!(at(3, 7), [90, 90, 90]);
        assert!(sp.overlay_rgb(&frame, &RgbImage::new(7, 4)).is_err());
        assert_eq!(sp.label_rgb().len(), 8 * 3);
    }
}
