//! The superpixel generator's thresholds (docs/svp.md §2), the `superpixels` block of a
//! segmenter's config.json and the `--points-per-side`… flags.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuperpixelConfig {
    /// n: an n×n point grid over the encoder's view (n² prompts).
    pub points_per_side: usize,
    /// Prompts per prompt-encoder + mask-decoder batch (speed and memory only).
    pub points_per_batch: usize,
    /// Keep a mask if its predicted IoU (+ the level bonus) is at least this.
    pub pred_iou_thresh: f32,
    /// Added to the predicted IoU of level-2 (whole-object) masks.
    pub whole_level_bonus: f32,
    /// Keep a mask if its stability score is at least this.
    pub stability_thresh: f32,
    /// Logit offset of the stability score.
    pub stability_offset: f32,
    /// Box IoU above which a later mask is suppressed (0..=1, applied per mille and exactly).
    pub box_nms_thresh: f32,
    /// Masks under this many pixels (at SAM's input scale) are dropped.
    pub min_area: f32,
    /// A part / sub-part mask is added only if less than this fraction of it is already covered
    /// (0..=1, applied per mille and exactly).
    pub level_overlap_thresh: f32,
    /// Regions under this many pixels (at SAM's input scale) are merged into a neighbour.
    pub min_region_area: f32,
    /// Regions are merged until at most this many remain (0: no cap).
    pub max_superpixels: usize,
    /// Uncovered cells form "rest" superpixels; false: they get label −1.
    pub rest_regions: bool,
}

impl Default for SuperpixelConfig {
    fn default() -> Self {
        SuperpixelConfig {
            points_per_side: 32,
            points_per_batch: 64,
            pred_iou_thresh: 0.86,
            whole_level_bonus: 0.1,
            stability_thresh: 0.92,
            stability_offset: 1.0,
            box_nms_thresh: 0.7,
            min_area: 100.0,
            level_overlap_thresh: 0.3,
            min_region_area: 256.0,
            max_superpixels: 64,
            rest_regions: true,
        }
    }
}

impl SuperpixelConfig {
    /// Reject values no run could use; `what` names the source (a file or "flags").
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::arg(field.replace('_', "-"), format!("{msg} (in {what})")));
        if self.points_per_side == 0 || self.points_per_side > 256 {
            return bad("points_per_side", format!("is {}, expected 1..=256", self.points_per_side));
        }
        if self.points_per_batch == 0 {
            return bad("points_per_batch", "must be at least 1".into());
        }
        let finite = [
            ("pred_iou_thresh", self.pred_iou_thresh),
            ("whole_level_bonus", self.whole_level_bonus),
            ("stability_thresh", self.stability_thresh),
            ("stability_offset", self.stability_offset),
            ("box_nms_thresh", self.box_nms_thresh),
            ("min_area", self.min_area),
            ("level_overlap_thresh", self.level_overlap_thresh),
            ("min_region_area", self.min_region_area),
        ];
        for (name, v) in finite {
            if !v.is_finite() {
                return bad(name, format!("is {v}, expected a finite number"));
            }
        }
        for (name, v) in [("box_nms_thresh", self.box_nms_thresh), ("level_overlap_thresh", self.level_overlap_thresh)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(name, format!("is {v}, expected a fraction in 0..=1"));
            }
        }
        if self.stability_offset < 0.0 {
            return bad("stability_offset", format!("is {}, expected ≥ 0", self.stability_offset));
        }
        if self.min_area < 0.0 || self.min_region_area < 0.0 {
            return bad("min_area", "areas must be ≥ 0".into());
        }
        Ok(())
    }
}
