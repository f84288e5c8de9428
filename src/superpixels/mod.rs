//! SAM superpixels as visual words (docs/svp.md §1–2): SAM's automatic mask generation on the
//! shared image embedding, turned into a non-overlapping label map over what the vision encoder
//! sees, and the coverage matrix of those regions over the encoder's patch grid.
//!
//! ```text
//! image embedding ─ point grid ─ prompt encoder + mask decoder (3 levels) ─ low-res logits
//!   ─ filters ─ box NMS ─ level selection ─ paint ─ rest regions ─ merge ─ order
//!   ─ label map [lh, lw], geometry [S, 7], coverage A [S, G²]
//! ```
//!
//! After the mask decoder, `Backend::mask_stats` reduces each logit plane, where it lives, to the
//! counts, box and bitmap of its view cells. The filters run on the host from the counts and
//! boxes (`masks`); NMS and level selection (`selection`, `Backend::mask_select`) and painting
//! (`regions::paint`, `Backend::mask_paint`) run on the bitmaps where they are, so on a GPU only
//! the candidates, their verdicts and the region map cross to the host. The rest is host code
//! on the region map: `regions` (rest, merge), `coverage` (geometry, order, coverage), `render`
//! (PNGs for the CLI).

pub mod config;
pub mod coverage;
pub mod frame;
pub mod masks;
pub mod points;
pub mod regions;
pub mod render;
pub mod selection;

use std::time::Instant;

use crate::backend::{Backend, MASK_STATS_HEADER};
use crate::error::{Error, Result};
use crate::models::sam::{PointPrompt, Prompts, Sam};
use crate::tensor::Tensor;

pub use config::SuperpixelConfig;
pub use frame::Frame;
pub use points::point_grid;

use masks::{Candidate, MaskFilter, LEVELS};
use regions::MergeRule;

/// The largest patch grid side accepted (the coverage matrix is S × G²).
pub const MAX_GRID: usize = 256;

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

/// What each step kept, and where the time went (for reports and `--json`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Masks predicted (3 per prompt).
    pub masks: usize,
    /// Masks that passed the score, stability and area filters.
    pub filtered: usize,
    pub after_nms: usize,
    /// Masks accepted by level selection.
    pub accepted: usize,
    /// Accepted masks left with no cell after painting (dropped).
    pub painted_over: usize,
    pub rest_regions: usize,
    pub merges: usize,
    /// Prompt encoder + mask decoder, until its IoU scores are on the host (generate only).
    pub decoder_ms: f64,
    /// Everything after the decoder: `mask_stats` where the logits are and reading its
    /// headers back, NMS, level selection and painting where the rows are, then the host steps.
    pub postprocess_ms: f64,
}

/// Builds superpixels from mask logits that arrive in batches of prompts: each batch is reduced
/// by `Backend::mask_stats` where it lives, so the full `[N, 3, L, L]` logits never have to
/// exist; the rows stay there too, and only their headers come to the host for the filters.
pub struct Builder<'a> {
    be: &'a Backend,
    frame: &'a Frame,
    cfg: &'a SuperpixelConfig,
    filter: MaskFilter,
    candidates: Vec<Candidate>,
    /// The `mask_stats` rows of each batch, on `be`.
    stats: Vec<Tensor>,
    planes: usize,
    prompts: usize,
    busy_ms: f64,
}

impl<'a> Builder<'a> {
    pub fn new(be: &'a Backend, frame: &'a Frame, cfg: &'a SuperpixelConfig) -> Result<Builder<'a>> {
        cfg.validate("the superpixel config")?;
        if frame.mask_size == 0 || frame.crop.0 > frame.mask_size || frame.crop.1 > frame.mask_size {
            return Err(Error::arg("frame", format!("crop {:?} does not fit {}² masks", frame.crop, frame.mask_size)));
        }
        let filter = MaskFilter::new(frame, cfg);
        Ok(Builder { be, frame, cfg, filter, candidates: Vec::new(), stats: Vec::new(), planes: 0, prompts: 0, busy_ms: 0.0 })
    }

    /// Add the next prompts' logits `[.., n, 3, L, L]` where they live on the builder's
    /// backend, with their IoU predictions `[n, 3]` (host).
    pub fn add(&mut self, logits: &Tensor, iou: &[f32]) -> Result<()> {
        let start = Instant::now();
        let l = self.frame.mask_size;
        let s = logits.shape();
        let planes = iou.len();
        if !iou.len().is_multiple_of(LEVELS) || s.len() < 2 || s[s.len() - 2..] != [l, l] || logits.numel() != planes * l * l {
            return Err(Error::arg(
                "mask logits",
                format!("{s:?} logits and {} IoU predictions, expected [n, {LEVELS}, {l}, {l}] and [n, {LEVELS}]", iou.len()),
            ));
        }
        let stats = self.be.mask_stats(logits, self.filter.view().rect(), self.filter.stability_offset())?;
        let headers = self.be.to_host(&self.be.narrow(&stats, 1, 0, MASK_STATS_HEADER)?)?;
        self.candidates.extend(self.filter.candidates(headers.as_i32()?, iou, self.prompts, self.planes));
        self.stats.push(stats);
        self.planes += planes;
        self.prompts += planes / LEVELS;
        self.busy_ms += start.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    /// NMS, level selection and painting where the mask rows are, then rest regions, merging,
    /// order and coverage on a `grid × grid` patch grid on the host.
    pub fn finish(self, grid: usize) -> Result<(Superpixels, Stats)> {
        let start = Instant::now();
        if grid == 0 || grid > MAX_GRID {
            return Err(Error::arg("patch-grid", format!("is {grid}, expected 1..={MAX_GRID}")));
        }
        let (be, cfg, view) = (self.be, self.cfg, self.filter.view());
        let (selected, mut labels) = if self.candidates.is_empty() {
            (selection::Selected { after_nms: 0, accepted: Vec::new() }, vec![-1; view.cells()])
        } else {
            let stats = match self.stats.as_slice() {
                [one] => one.clone(),
                many => be.concat(&many.iter().collect::<Vec<_>>(), 0)?,
            };
            let selected = selection::select(be, &stats, view, &self.candidates, cfg.box_nms_thresh, cfg.level_overlap_thresh)?;
            let labels = regions::paint(be, &stats, &self.candidates, &selected.accepted, view)?;
            (selected, labels)
        };
        let accepted = selected.accepted.len();
        let mut present = vec![false; accepted];
        for &l in labels.iter().filter(|&&l| l >= 0) {
            present[l as usize] = true;
        }
        let painted_over = present.iter().filter(|&&p| !p).count();
        let rest = if cfg.rest_regions { regions::label_rest(&mut labels, view.w, accepted as i32) } else { 0 };
        let rule = MergeRule { max_regions: cfg.max_superpixels, min_area: cfg.min_region_area, px_per_cell: self.frame.px_per_cell() };
        let merges = regions::merge(&mut labels, view.w, rule);
        let ordered = coverage::order_regions(&labels, view, self.frame, grid);
        let coverage = coverage::coverage(&ordered.label_map, ordered.count, self.frame, grid);
        let stats = Stats {
            masks: self.prompts * LEVELS,
            filtered: self.candidates.len(),
            after_nms: selected.after_nms,
            accepted,
            painted_over,
            rest_regions: rest,
            merges,
            decoder_ms: 0.0,
            postprocess_ms: self.busy_ms + start.elapsed().as_secs_f64() * 1e3,
        };
        let (height, width) = self.frame.crop;
        let sp = Superpixels { label_map: ordered.label_map, height, width, count: ordered.count, grid, coverage, geometry: ordered.geometry };
        Ok((sp, stats))
    }
}

/// Superpixels from the mask decoder's multimask logits `[N, 3, L, L]` and IoU predictions
/// `[N, 3]` for the prompts of `point_grid(frame, n)`.
pub fn from_logits(logits: &[f32], iou: &[f32], frame: &Frame, grid: usize, cfg: &SuperpixelConfig) -> Result<Superpixels> {
    Ok(from_logits_with_stats(logits, iou, frame, grid, cfg)?.0)
}

pub fn from_logits_with_stats(logits: &[f32], iou: &[f32], frame: &Frame, grid: usize, cfg: &SuperpixelConfig) -> Result<(Superpixels, Stats)> {
    let be = Backend::cpu();
    let mut b = Builder::new(&be, frame, cfg)?;
    let l = frame.mask_size;
    if !logits.len().is_multiple_of(LEVELS * l * l) {
        return Err(Error::arg("mask logits", format!("{} logits are not [n, {LEVELS}, {l}, {l}]", logits.len())));
    }
    let logits = Tensor::from_f32(logits.to_vec(), vec![logits.len() / (LEVELS * l * l), LEVELS, l, l])?;
    b.add(&logits, iou)?;
    b.finish(grid)
}

/// SAM's automatic mask generation on `image_embeddings` ([1, C, E, E], from `sam`) and the
/// label map, geometry and coverage on a `grid × grid` patch grid over the frame's view.
pub fn generate(be: &Backend, sam: &Sam, image_embeddings: &Tensor, frame: &Frame, grid: usize, cfg: &SuperpixelConfig) -> Result<Superpixels> {
    Ok(generate_with_stats(be, sam, image_embeddings, frame, grid, cfg)?.0)
}

pub fn generate_with_stats(
    be: &Backend,
    sam: &Sam,
    image_embeddings: &Tensor,
    frame: &Frame,
    grid: usize,
    cfg: &SuperpixelConfig,
) -> Result<(Superpixels, Stats)> {
    if frame.input_size != sam.input_size() || frame.mask_size != sam.mask_size() {
        return Err(Error::arg(
            "frame",
            format!(
                "built for a {} px input with {}² masks, but the SAM model has {} px and {}²",
                frame.input_size,
                frame.mask_size,
                sam.input_size(),
                sam.mask_size()
            ),
        ));
    }
    if grid == 0 || grid > MAX_GRID {
        return Err(Error::arg("patch-grid", format!("is {grid}, expected 1..={MAX_GRID}")));
    }
    let mut builder = Builder::new(be, frame, cfg)?;
    let points = point_grid(frame, cfg.points_per_side);
    let start = Instant::now();
    // The decoder's image side, shared by every batch of point prompts.
    let image = sam.prepare(be, image_embeddings)?;
    let mut decoder_ms = start.elapsed().as_secs_f64() * 1e3;
    for batch in points.chunks(cfg.points_per_batch) {
        let start = Instant::now();
        let prompts = Prompts { points: batch.iter().map(|&(x, y)| vec![PointPrompt { x, y, label: 1 }]).collect(), ..Default::default() };
        let out = sam.predict_prepared(be, &image, &prompts, true)?;
        if out.iou_scores.shape() != [1, batch.len(), LEVELS] {
            return Err(Error::shape("superpixels", format!("mask decoder gave IoU scores {:?}, expected [1, {}, {LEVELS}]", out.iou_scores.shape(), batch.len())));
        }
        let iou = be.to_vec_f32(&out.iou_scores)?;
        decoder_ms += start.elapsed().as_secs_f64() * 1e3;
        builder.add(&out.pred_masks, &iou)?;
    }
    let (sp, mut stats) = builder.finish(grid)?;
    stats.decoder_ms = decoder_ms;
    Ok((sp, stats))
}
