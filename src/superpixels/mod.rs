//! SAM superpixels as visual words (docs/svp.md §1–2): SAM's automatic mask generation on the
//! shared image embedding, turned into a non-overlapping label map over what the vision encoder
//! sees, and the coverage matrix of those regions over the encoder's patch grid.
//!
//! ```text
//! image embedding ─ point grid ─ prompt encoder + mask decoder (3 levels) ─ low-res logits
//!   ─ filters ─ box NMS ─ level selection ─ paint ─ rest regions ─ merge ─ order
//!   ─ label map [lh, lw], geometry [S, 7], coverage A [S, G²]
//! ```

pub mod config;
pub mod frame;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::sam::Sam;
use crate::tensor::Tensor;

pub use config::SuperpixelConfig;
pub use frame::Frame;

/// The superpixels of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Superpixels {
    /// Label per low-res cell of the unpadded crop, row-major `[height, width]`: 0..count in
    /// token order, −1 outside the encoder's view (or uncovered when rest regions are off).
    pub label_map: Vec<i32>,
    pub height: usize,
    pub width: usize,
    /// S, the number of superpixels (visual words); may be 0.
    pub count: usize,
    /// Side G of the patch grid the coverage is computed on.
    pub grid: usize,
    /// Coverage A `[S, G²]` row-major: fraction of patch p covered by superpixel s.
    pub coverage: Vec<f32>,
    /// Per superpixel: centroid (cx, cy), box (x0, y0, x1, y1) and area fraction, normalised to
    /// the view (docs/svp.md §2.10).
    pub geometry: Vec<[f32; 7]>,
}

/// SAM's automatic mask generation on `image_embeddings` ([1, C, E, E], from `sam`) and the
/// label map, geometry and coverage on a `grid × grid` patch grid over the frame's view.
pub fn generate(be: &Backend, sam: &Sam, image_embeddings: &Tensor, frame: &Frame, grid: usize, cfg: &SuperpixelConfig) -> Result<Superpixels> {
    let _ = (be, sam, image_embeddings, frame, grid, cfg);
    Err(Error::arg("superpixels", "superpixel generation is not available in this build yet"))
}
