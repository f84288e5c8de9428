//! From mask logits to candidate masks (docs/svp.md §2.2–2.3): per (prompt, level), the counts
//! over the view cells that the filters need, and for the masks that pass, the binary mask as a
//! bitset over its box rows.
//!
//! Only the view cells are ever read: they form a rectangle of the crop (`ViewRect`), and every
//! cell index below is relative to it. The scan itself is `Backend::mask_stats`, run where the
//! logits are (on a GPU, the 3072 planes of the default 32×32 grid stay there and only their
//! counts and bits, ≤ 8 KB a plane, come back); this module turns its rows into candidates.

use rayon::prelude::*;

use super::config::SuperpixelConfig;
use crate::backend::MASK_STATS_HEADER;
use super::frame::Frame;

/// SAM's multimask output: sub-part, part, whole object.
pub const LEVELS: usize = 3;

/// The view cells of the crop as an index rectangle, and the bitset row width over it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewRect {
    pub y0: usize,
    pub x0: usize,
    pub h: usize,
    pub w: usize,
    /// u64 words per bitset row.
    pub words: usize,
}

impl ViewRect {
    pub fn new(frame: &Frame) -> ViewRect {
        let [y0, x0, y1, x1] = frame.view_cells();
        let w = x1 - x0;
        ViewRect { y0, x0, h: y1 - y0, w, words: w.div_ceil(64) }
    }

    pub fn cells(&self) -> usize {
        self.h * self.w
    }

    /// `[y0, x0, h, w]`, the rectangle argument of `Backend::mask_stats`.
    pub fn rect(&self) -> [usize; 4] {
        [self.y0, self.x0, self.h, self.w]
    }

    /// u32 words per row of a `mask_stats` bitmap.
    fn words32(&self) -> usize {
        self.w.div_ceil(32)
    }
}

/// A set of view cells, row-major bits (`words` per row).
#[derive(Clone, Debug)]
pub struct CellSet {
    words: usize,
    bits: Vec<u64>,
}

impl CellSet {
    pub fn new(view: &ViewRect) -> CellSet {
        CellSet { words: view.words, bits: vec![0; view.h * view.words] }
    }

    fn row(&self, y: usize) -> &[u64] {
        &self.bits[y * self.words..(y + 1) * self.words]
    }
}

/// A mask that passed the filters.
#[derive(Clone, Debug)]
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
    /// Bits of rows `bbox[1]..=bbox[3]`, `words` per row over the full view width.
    bits: Vec<u64>,
    words: usize,
}

impl Candidate {
    /// A candidate from explicit cells (view-rect coordinates); for tests of the later steps.
    pub fn from_cells(prompt: usize, level: usize, score: f32, view: &ViewRect, cells: &[(usize, usize)]) -> Option<Candidate> {
        let (&(fy, fx), rest) = cells.split_first()?;
        let mut bbox = [fx, fy, fx, fy];
        for &(y, x) in rest {
            bbox = [bbox[0].min(x), bbox[1].min(y), bbox[2].max(x), bbox[3].max(y)];
        }
        if bbox[2] >= view.w || bbox[3] >= view.h {
            return None;
        }
        let mut c = Candidate { prompt, level, score, area: 0, bbox, bits: vec![0; (bbox[3] - bbox[1] + 1) * view.words], words: view.words };
        for &(y, x) in cells {
            let word = &mut c.bits[(y - bbox[1]) * view.words + x / 64];
            if *word & (1 << (x % 64)) == 0 {
                *word |= 1 << (x % 64);
                c.area += 1;
            }
        }
        Some(c)
    }

    fn rows(&self) -> impl Iterator<Item = (usize, &[u64])> {
        self.bits.chunks(self.words).enumerate().map(move |(i, r)| (self.bbox[1] + i, r))
    }

    /// Number of this mask's cells that are in `set`.
    pub fn overlap(&self, set: &CellSet) -> u32 {
        self.rows().map(|(y, row)| row.iter().zip(set.row(y)).map(|(a, b)| (a & b).count_ones()).sum::<u32>()).sum()
    }

    /// Add this mask's cells to `set`.
    pub fn add_to(&self, set: &mut CellSet) {
        for (y, row) in self.rows() {
            for (dst, src) in set.bits[y * set.words..(y + 1) * set.words].iter_mut().zip(row) {
                *dst |= src;
            }
        }
    }

    /// Call `f(y, x)` for every cell of the mask (view-rect coordinates), row-major.
    pub fn for_each_cell(&self, mut f: impl FnMut(usize, usize)) {
        for (y, row) in self.rows() {
            for (wi, &word) in row.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    f(y, wi * 64 + bits.trailing_zeros() as usize);
                    bits &= bits - 1;
                }
            }
        }
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

    /// Length of one `mask_stats` row over this filter's view.
    pub fn stats_row_len(&self) -> usize {
        MASK_STATS_HEADER + self.view.h * self.view.words32()
    }

    /// The masks that pass the filters, in (prompt, level) order, from `stats` (the
    /// `Backend::mask_stats` rows of `[n, 3, L, L]` logits over `view().rect()`) and the IoU
    /// predictions `iou` ([n, 3]); prompt indices start at `first_prompt`. The caller checks
    /// the lengths.
    pub fn candidates(&self, stats: &[i32], iou: &[f32], first_prompt: usize) -> Vec<Candidate> {
        let row_len = self.stats_row_len();
        (0..iou.len())
            .into_par_iter()
            .filter_map(|i| {
                let (k, m) = (i / LEVELS, i % LEVELS);
                let score = iou[i] + if m == 2 { self.whole_level_bonus } else { 0.0 };
                // Every test is written as "passes", so a NaN fails it.
                let confident = score >= self.pred_iou_thresh;
                let row = &stats[i * row_len..(i + 1) * row_len];
                let (area, stable, loose) = (row[0] as u32, row[1] as u32, row[2] as u32);
                if !confident || area == 0 {
                    return None;
                }
                let stability = if loose > 0 { stable as f32 / loose as f32 } else { 0.0 };
                let stable = stability >= self.stability_thresh;
                let large = area as f32 * self.px_per_cell >= self.min_area;
                if !stable || !large {
                    return None;
                }
                Some(self.candidate(row, first_prompt + k, m, score))
            })
            .collect()
    }

    /// A candidate from a non-empty mask's `mask_stats` row: its box rows' u32 words, paired
    /// into the u64 words of a `CellSet` row.
    fn candidate(&self, row: &[i32], prompt: usize, level: usize, score: f32) -> Candidate {
        let v = &self.view;
        let bbox = [row[3] as usize, row[4] as usize, row[5] as usize, row[6] as usize];
        let w32 = v.words32();
        let bits32 = &row[MASK_STATS_HEADER..];
        let mut bits = vec![0u64; (bbox[3] - bbox[1] + 1) * v.words];
        for (ry, dst) in (bbox[1]..=bbox[3]).zip(bits.chunks_mut(v.words)) {
            let src = &bits32[ry * w32..(ry + 1) * w32];
            for (j, word) in dst.iter_mut().enumerate() {
                let lo = src[2 * j] as u32 as u64;
                let hi = src.get(2 * j + 1).map_or(0, |&x| x as u32 as u64);
                *word = lo | hi << 32;
            }
        }
        Candidate { prompt, level, score, area: row[0] as u32, bbox, bits, words: v.words }
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

    /// The filter's input for host logits: the CPU backend's `mask_stats` rows.
    fn candidates(f: &MaskFilter, logits: &[f32], iou: &[f32], first: usize) -> Vec<Candidate> {
        let t = crate::tensor::Tensor::from_f32(logits.to_vec(), vec![iou.len(), 64, 64]).unwrap();
        let stats = crate::Backend::cpu().mask_stats(&t, f.view().rect(), f.stability_offset()).unwrap();
        f.candidates(stats.as_i32().unwrap(), iou, first)
    }

    #[test]
    fn filters_area_box_and_bits() {
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
        let got: Vec<_> = c.iter().map(|c| (c.prompt, c.level, c.area, c.bbox)).collect();
        assert_eq!(got, vec![(10, 0, 30, [6, 2, 15, 4]), (11, 1, 1, [63, 63, 63, 63]), (11, 2, 4, [1, 1, 2, 2])]);
        assert!((c[2].score - 0.55).abs() < 1e-6);
        let mut cells = Vec::new();
        c[0].for_each_cell(|y, x| cells.push((y, x)));
        assert_eq!(cells.len(), 30);
        assert_eq!((cells[0], cells[29]), ((2, 6), (4, 15)));
        let mut set = CellSet::new(f.view());
        c[2].add_to(&mut set);
        assert_eq!(c[2].overlap(&set), 4);
        assert_eq!(c[0].overlap(&set), 0);
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
