//! From mask logits to candidate masks (docs/svp.md §2.2–2.3): per (prompt, level), the counts
//! and box over the view cells that the filters need, and for the masks that pass, a candidate
//! that names the row holding its bitmap.
//!
//! Only the view cells are ever read: they form a rectangle of the crop (`ViewRect`), and every
//! cell index below is relative to it. The scan itself is `Backend::mask_stats`, run where the
//! logits are; its rows (counts, box, bitmap) stay there, and only their 8-int headers come to
//! the host for the filters. NMS, level selection and painting then run on the bitmaps where
//! they are (`Backend::mask_select`, `Backend::mask_paint`).

use super::config::SuperpixelConfig;
use crate::backend::{MaskCandidate, MASK_STATS_HEADER};
use super::frame::Frame;

/// SAM's multimask output: sub-part, part, whole object.
pub const LEVELS: usize = 3;

/// The view cells of the crop as an index rectangle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewRect {
    pub y0: usize,
    pub x0: usize,
    pub h: usize,
    pub w: usize,
}

impl ViewRect {
    pub fn new(frame: &Frame) -> ViewRect {
        let [y0, x0, y1, x1] = frame.view_cells();
        ViewRect { y0, x0, h: y1 - y0, w: x1 - x0 }
    }

    pub fn cells(&self) -> usize {
        self.h * self.w
    }

    /// `[y0, x0, h, w]`, the rectangle argument of `Backend::mask_stats`.
    pub fn rect(&self) -> [usize; 4] {
        [self.y0, self.x0, self.h, self.w]
    }
}

/// A mask that passed the filters. Its bitmap stays in the `mask_stats` rows where the logits
/// were reduced (on a GPU, on the device), at row `plane`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Prompt index k (row-major over the point grid).
    pub prompt: usize,
    /// Level m: 0 sub-part, 1 part, 2 whole object.
    pub level: usize,
    /// Predicted IoU plus the level bonus (f32).
    pub score: f32,
    /// Number of view cells with logit > 0.
    pub area: u32,
    /// Inclusive box `[x0, y0, x1, y1]` in view-rect cells.
    pub bbox: [usize; 4],
    /// Its row in the image's `mask_stats` rows (all batches, in prompt order).
    pub plane: usize,
}

impl Candidate {
    /// The candidate as `Backend::mask_select` takes it.
    pub fn mask(&self) -> MaskCandidate {
        MaskCandidate { plane: self.plane, whole: self.level == 2, area: self.area, bbox: self.bbox }
    }
}

/// How many masks the filters saw and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FilterCounts {
    pub masks: usize,
    pub kept: usize,
}

/// The filters of §2.3 with the thresholds of one config, on one frame.
pub struct MaskFilter {
    view: ViewRect,
    px_per_cell: f32,
    pred_iou_thresh: f32,
    whole_level_bonus: f32,
    stability_thresh: f32,
    stability_offset: f32,
    min_area: f32,
}

impl MaskFilter {
    pub fn new(frame: &Frame, cfg: &SuperpixelConfig) -> MaskFilter {
        MaskFilter {
            view: ViewRect::new(frame),
            px_per_cell: frame.px_per_cell(),
            pred_iou_thresh: cfg.pred_iou_thresh,
            whole_level_bonus: cfg.whole_level_bonus,
            stability_thresh: cfg.stability_thresh,
            stability_offset: cfg.stability_offset,
            min_area: cfg.min_area,
        }
    }

    pub fn view(&self) -> &ViewRect {
        &self.view
    }

    /// The offset argument of `Backend::mask_stats` (stability counts logit > ±offset).
    pub fn stability_offset(&self) -> f32 {
        self.stability_offset
    }

    /// The masks that pass the filters, in (prompt, level) order, from `headers` (the first
    /// `MASK_STATS_HEADER` entries of each `Backend::mask_stats` row of `[n, 3, L, L]` logits
    /// over `view().rect()`) and the IoU predictions `iou` ([n, 3]); prompt indices start at
    /// `first_prompt` and their rows at `first_plane`. The caller checks the lengths.
    pub fn candidates(&self, headers: &[i32], iou: &[f32], first_prompt: usize, first_plane: usize) -> Vec<Candidate> {
        (0..iou.len())
            .filter_map(|i| {
                let (k, m) = (i / LEVELS, i % LEVELS);
                let score = iou[i] + if m == 2 { self.whole_level_bonus } else { 0.0 };
                // Every test is written as "passes", so a NaN fails it.
                let confident = score >= self.pred_iou_thresh;
                let head = &headers[i * MASK_STATS_HEADER..(i + 1) * MASK_STATS_HEADER];
                let (area, stable, loose) = (head[0] as u32, head[1] as u32, head[2] as u32);
                if !confident || area == 0 {
                    return None;
                }
                let stability = if loose > 0 { stable as f32 / loose as f32 } else { 0.0 };
                let stable = stability >= self.stability_thresh;
                let large = area as f32 * self.px_per_cell >= self.min_area;
                if !stable || !large {
                    return None;
                }
                let bbox = [head[3] as usize, head[4] as usize, head[5] as usize, head[6] as usize];
                Some(Candidate { prompt: first_prompt + k, level: m, score, area, bbox, plane: first_plane + i })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        // 64×64 image seen whole: SAM input 256, 64² masks → the crop and the view are 64×64.
        Frame::new((64, 64), 256, 64, [0.0, 0.0, 64.0, 64.0]).unwrap()
    }

    /// A plane that is `value` inside the rectangle [x0, x1) × [y0, y1) and −5 elsewhere.
    fn plane(rect: [usize; 4], value: f32) -> Vec<f32> {
        let mut p = vec![-5.0; 64 * 64];
        for y in rect[1]..rect[3] {
            for x in rect[0]..rect[2] {
                p[y * 64 + x] = value;
            }
        }
        p
    }

    /// The filter's input for host logits: the headers of the CPU backend's `mask_stats` rows.
    fn candidates(f: &MaskFilter, logits: &[f32], iou: &[f32], first: usize) -> Vec<Candidate> {
        let t = crate::tensor::Tensor::from_f32(logits.to_vec(), vec![iou.len(), 64, 64]).unwrap();
        let be = crate::Backend::cpu();
        let stats = be.mask_stats(&t, f.view().rect(), f.stability_offset()).unwrap();
        let headers = be.narrow(&stats, 1, 0, MASK_STATS_HEADER).unwrap();
        f.candidates(headers.as_i32().unwrap(), iou, first, 100)
    }

    #[test]
    fn filters_area_and_box() {
        let cfg = SuperpixelConfig { pred_iou_thresh: 0.5, stability_thresh: 0.9, min_area: 16.0, ..Default::default() };
        let f = MaskFilter::new(&frame(), &cfg);
        // Prompt 0: a sharp 10×3 block (kept), an unstable one (logit 0.5: > 0 but not > 1),
        // a sharp one with a low score. Prompt 1: empty, a one-cell mask (area 16 px: kept),
        // and a low score saved by the whole-level bonus.
        let planes = [
            plane([70 - 64, 2, 16, 5], 3.0),
            plane([0, 0, 8, 8], 0.5),
            plane([0, 0, 8, 8], 3.0),
            plane([0, 0, 0, 0], 3.0),
            plane([63, 63, 64, 64], 3.0),
            plane([1, 1, 3, 3], 3.0),
        ];
        let logits: Vec<f32> = planes.concat();
        let iou = [0.9, 0.9, 0.3, 0.9, 0.9, 0.45];
        let c = candidates(&f, &logits, &iou, 10);
        let got: Vec<_> = c.iter().map(|c| (c.prompt, c.level, c.area, c.bbox, c.plane)).collect();
        assert_eq!(got, vec![(10, 0, 30, [6, 2, 15, 4], 100), (11, 1, 1, [63, 63, 63, 63], 104), (11, 2, 4, [1, 1, 2, 2], 105)]);
        assert!((c[2].score - 0.55).abs() < 1e-6);
        assert_eq!(c[2].mask(), MaskCandidate { plane: 105, whole: true, area: 4, bbox: [1, 1, 2, 2] });
        assert!(!c[0].mask().whole);
    }

    /// Stability is #(logit > offset) / #(logit > −offset), 0 when nothing exceeds −offset.
    #[test]
    fn stability_counts_cells_not_values() {
        let cfg = SuperpixelConfig { pred_iou_thresh: 0.0, stability_thresh: 0.5, min_area: 0.0, ..Default::default() };
        let f = MaskFilter::new(&frame(), &cfg);
        let mut p = plane([0, 0, 4, 4], 2.0); // 16 cells > 1
        p[10..26].fill(0.5); // 16 cells in (−1, 1]
        assert_eq!(candidates(&f, &p, &[1.0], 0).len(), 1);
        p[26] = 0.5; // 17 loose cells: 16 / 33 < 0.5
        assert_eq!(candidates(&f, &p, &[1.0], 0).len(), 0);
    }
}

/// Candidates over a small view from explicit cells, with the `mask_stats` rows that hold their
/// bitmaps (CPU), for the tests of the later steps.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Candidate, ViewRect};
    use crate::backend::Backend;
    use crate::tensor::Tensor;

    /// A test mask: prompt, level, score and its cells as (y, x).
    pub type Mask = (usize, usize, f32, Vec<(usize, usize)>);

    /// The candidates of `masks` over an `h × w` view (every mask needs a cell).
    pub fn candidates(h: usize, w: usize, masks: &[Mask]) -> (ViewRect, Tensor, Vec<Candidate>) {
        let view = ViewRect { y0: 0, x0: 0, h, w };
        let mut logits = vec![-1f32; masks.len() * h * w];
        for (i, (.., cells)) in masks.iter().enumerate() {
            for &(y, x) in cells {
                logits[(i * h + y) * w + x] = 1.0;
            }
        }
        let be = Backend::cpu();
        let stats = be.mask_stats(&Tensor::from_f32(logits, vec![masks.len(), h, w]).unwrap(), view.rect(), 0.5).unwrap();
        let rows = stats.as_i32().unwrap();
        let cands = masks
            .iter()
            .enumerate()
            .map(|(i, &(prompt, level, score, _))| {
                let head = &rows[i * stats.dim(1)..];
                let bbox = [head[3] as usize, head[4] as usize, head[5] as usize, head[6] as usize];
                Candidate { prompt, level, score, area: head[0] as u32, bbox, plane: i }
            })
            .collect();
        (view, stats, cands)
    }

    /// A filled rectangle [x0, x1] × [y0, y1] (inclusive) as cells.
    pub fn rect(r: [usize; 4]) -> Vec<(usize, usize)> {
        (r[1]..=r[3]).flat_map(|y| (r[0]..=r[2]).map(move |x| (y, x))).collect()
    }
}
