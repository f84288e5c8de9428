//! Where superpixels live (docs/svp.md §1): SAM's low-res mask grid over the unpadded resized
//! image, and the rectangle of it the vision encoder sees (the view), in low-res cell units.

use crate::error::{Error, Result};
use crate::models::sam::preprocess::preprocess_shape;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    /// (height, width) of the original image.
    pub original: (usize, usize),
    /// (h', w'): the image resized so its longest side is `input_size`.
    pub resized: (usize, usize),
    /// SAM's square input side S_in (1024).
    pub input_size: usize,
    /// Side L of SAM's low-res masks (4·E = 256).
    pub mask_size: usize,
    /// Unpadded low-res crop: `lh = ceil(h'·L/S_in)` rows, `lw` columns.
    pub crop: (usize, usize),
    /// The encoder's view `[X0, Y0, X1, Y1)` in low-res cell units.
    pub view: [f64; 4],
}

impl Frame {
    /// `view_px` is the encoder's view in original pixels (`ImageProcessor::view_rect`).
    pub fn new(original: (usize, usize), input_size: usize, mask_size: usize, view_px: [f64; 4]) -> Result<Frame> {
        let (h, w) = original;
        if h == 0 || w == 0 || input_size == 0 || mask_size == 0 {
            return Err(Error::arg("image", format!("cannot place a {w}×{h} image in a {input_size} px SAM input with {mask_size}² masks")));
        }
        if view_px.iter().any(|v| !v.is_finite()) || view_px[2] <= view_px[0] || view_px[3] <= view_px[1] {
            return Err(Error::arg("view", format!("{view_px:?} is not a rectangle")));
        }
        let resized = preprocess_shape(h, w, input_size);
        let cells = |px: usize| (px * mask_size).div_ceil(input_size);
        let crop = (cells(resized.0), cells(resized.1));
        let sx = (resized.1 as f64 / w as f64) * (mask_size as f64 / input_size as f64);
        let sy = (resized.0 as f64 / h as f64) * (mask_size as f64 / input_size as f64);
        let view = [view_px[0] * sx, view_px[1] * sy, view_px[2] * sx, view_px[3] * sy];
        Ok(Frame { original, resized, input_size, mask_size, crop, view })
    }

    /// Whether low-res cell (y, x) of the crop is in the view (its centre is inside).
    pub fn in_view(&self, y: usize, x: usize) -> bool {
        let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
        y < self.crop.0 && x < self.crop.1 && cx >= self.view[0] && cx < self.view[2] && cy >= self.view[1] && cy < self.view[3]
    }

    /// The view cells as an index rectangle of the crop, `[y0, x0, y1, x1)`: a cell is in the
    /// view iff its centre is, and that test is an interval on each axis. Empty (y0 = y1 or
    /// x0 = x1) when the view misses the crop.
    pub fn view_cells(&self) -> [usize; 4] {
        let axis = |lo: f64, hi: f64, n: usize| {
            let inside = |i: usize| (i as f64 + 0.5) >= lo && (i as f64 + 0.5) < hi;
            let start = (0..n).find(|&i| inside(i)).unwrap_or(n);
            let end = (start..n).find(|&i| !inside(i)).unwrap_or(n);
            (start, end)
        };
        let (y0, y1) = axis(self.view[1], self.view[3], self.crop.0);
        let (x0, x1) = axis(self.view[0], self.view[2], self.crop.1);
        [y0, x0, y1, x1]
    }

    /// Pixels at SAM's input scale per low-res cell, `(S_in/L)²` (f64, then f32: the factor the
    /// area thresholds compare with).
    pub fn px_per_cell(&self) -> f32 {
        (self.input_size as f64 / self.mask_size as f64).powi(2) as f32
    }

    /// The low-res cell that original pixel (py, px) falls in: its centre, scaled into the
    /// resized image and then into cells, clamped to the crop.
    pub fn cell_of_pixel(&self, py: usize, px: usize) -> (usize, usize) {
        let (h, w) = self.original;
        let scale = self.mask_size as f64 / self.input_size as f64;
        let cy = ((py as f64 + 0.5) * (self.resized.0 as f64 / h as f64) * scale) as usize;
        let cx = ((px as f64 + 0.5) * (self.resized.1 as f64 / w as f64) * scale) as usize;
        (cy.min(self.crop.0.saturating_sub(1)), cx.min(self.crop.1.saturating_sub(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::ImageProcessor;

    /// A 451×300 landscape photo: SAM resizes it to 1024×681, its low-res crop is 256×171
    /// cells; CLIP-336 sees the central 300×300 square, i.e. cells 75.6..245.9 across.
    #[test]
    fn landscape_photo_through_clip() {
        let view = ImageProcessor::clip(336).view_rect(300, 451);
        let f = Frame::new((300, 451), 1024, 256, view).unwrap();
        assert_eq!(f.resized, (681, 1024));
        assert_eq!(f.crop, (171, 256));
        assert!(view[1] == 0.0 && (view[3] - 300.0).abs() < 1e-9, "{view:?}");
        assert!((view[2] - view[0] - 300.0).abs() < 1.5, "{view:?}");
        assert!(f.in_view(0, 128) && !f.in_view(0, 10) && !f.in_view(171, 128));
        let [y0, x0, y1, x1] = f.view_cells();
        // The last, partial row (h' = 681 px = 170.25 cells) has its centre below the view.
        assert_eq!((y0, y1), (0, 170));
        for x in 0..256 {
            assert_eq!(f.in_view(5, x), (x0..x1).contains(&x), "x = {x}");
        }
        assert_eq!(f.px_per_cell(), 16.0);
        assert_eq!(f.cell_of_pixel(299, 450), (169, 255));
        assert_eq!(f.cell_of_pixel(0, 0), (0, 0));
    }

    /// A view that misses the crop has no cells.
    #[test]
    fn view_outside_the_crop_is_empty() {
        let f = Frame::new((100, 100), 1024, 256, [200.0, 0.0, 300.0, 100.0]).unwrap();
        let [_, x0, _, x1] = f.view_cells();
        assert_eq!(x0, x1);
    }
}
