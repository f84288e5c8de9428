//! Which candidate masks become superpixels (docs/svp.md §2.4–2.5): box NMS in which whole
//! objects win, then level selection, which keeps every whole-object mask and adds a part or
//! sub-part only where it mostly covers new ground. The visiting order is decided here; both
//! steps run in `Backend::mask_select`, on the bitmaps where `mask_stats` left them.

use std::cmp::Ordering;

use super::masks::{Candidate, ViewRect};
use crate::backend::{Backend, MaskCandidate, Selection};
use crate::error::Result;
use crate::tensor::Tensor;

/// The visiting order of both steps: level descending, score descending, prompt, level.
fn visit_order(cands: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&cands[a], &cands[b]);
        // Scores that passed `score ≥ threshold` are not NaN; partial_cmp keeps −0 == +0.
        b.level
            .cmp(&a.level)
            .then(b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal))
            .then(a.prompt.cmp(&b.prompt))
            .then(a.level.cmp(&b.level))
    });
    order
}

/// A threshold in [0, 1] as the per-mille integer `mask_select` compares with.
pub fn permille(t: f32) -> u32 {
    (t * 1000.0).round().clamp(0.0, 1000.0) as u32
}

/// What NMS and level selection kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// Candidates that survived NMS.
    pub after_nms: usize,
    /// Indices of the accepted candidates, in acceptance order.
    pub accepted: Vec<usize>,
}

/// Box NMS at IoU `nms_thresh`, then level selection at `overlap_thresh` (both applied per
/// mille), on `be`, which holds `stats`: the `mask_stats` rows the candidates' planes index.
pub fn select(be: &Backend, stats: &Tensor, view: &ViewRect, cands: &[Candidate], nms_thresh: f32, overlap_thresh: f32) -> Result<Selected> {
    let order = visit_order(cands);
    let masks: Vec<MaskCandidate> = order.iter().map(|&i| cands[i].mask()).collect();
    let verdicts = be.mask_select(stats, view.h, &masks, permille(nms_thresh), permille(overlap_thresh))?;
    let after_nms = verdicts.iter().filter(|&&v| v != Selection::Suppressed).count();
    let accepted = order.iter().zip(&verdicts).filter(|(_, &v)| v == Selection::Accepted).map(|(&i, _)| i).collect();
    Ok(Selected { after_nms, accepted })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superpixels::masks::testing::{candidates, rect};

    fn run(masks: &[(usize, usize, f32, [usize; 4])], nms: f32, overlap: f32) -> Selected {
        let masks: Vec<_> = masks.iter().map(|&(p, l, s, r)| (p, l, s, rect(r))).collect();
        let (view, stats, cands) = candidates(40, 100, &masks);
        select(&Backend::cpu(), &stats, &view, &cands, nms, overlap).unwrap()
    }

    #[test]
    fn nms_prefers_whole_objects_then_score_then_prompt() {
        let cands = [
            (0, 0, 0.99, [0, 0, 9, 9]),   // a sub-part with the best score
            (1, 2, 0.80, [0, 0, 9, 10]),  // whole object, same place: wins
            (2, 2, 0.80, [60, 0, 69, 9]), // whole object, elsewhere: tie on score, later prompt
            (1, 2, 0.80, [60, 0, 69, 9]), // identical box, earlier prompt: wins the tie
            (3, 1, 0.90, [30, 0, 39, 9]), // a part alone: kept
        ];
        // No survivor overlaps another's mask, so level selection accepts them all.
        assert_eq!(run(&cands, 0.7, 1.0), Selected { after_nms: 3, accepted: vec![1, 3, 4] });
        // Nothing clashes above an IoU of 1. The sub-part is then fully covered: rejected even
        // at 1.0 (100% is not below 100%), and at 0 only whole objects get in.
        assert_eq!(run(&cands, 1.0, 1.0), Selected { after_nms: 5, accepted: vec![1, 3, 2, 4] });
        assert_eq!(run(&cands, 1.0, 0.0), Selected { after_nms: 5, accepted: vec![1, 3, 2] });
    }

    #[test]
    fn nms_compares_iou_exactly() {
        // 1 shared cell of 2 + 1 − 1 = 2: IoU exactly 0.5, which does not exceed 0.5.
        let pair = [(0, 2, 0.9, [5, 5, 6, 5]), (1, 2, 0.8, [5, 5, 5, 5])];
        assert_eq!(run(&pair, 0.5, 0.3).after_nms, 2);
        assert_eq!(run(&pair, 0.499, 0.3).after_nms, 1);
        // Identical one-cell boxes clash at any threshold below 1, disjoint ones never.
        assert_eq!(run(&[(0, 2, 0.9, [5, 5, 5, 5]), (1, 2, 0.8, [5, 5, 5, 5])], 0.99, 0.3).after_nms, 1);
        assert_eq!(run(&[(0, 2, 0.9, [5, 5, 5, 5]), (1, 2, 0.8, [6, 5, 6, 5])], 0.0, 0.3).after_nms, 2);
    }

    #[test]
    fn level_selection_adds_parts_that_cover_new_ground() {
        let cands = [
            (0, 2, 0.9, [0, 0, 9, 9]),   // whole: always accepted
            (1, 2, 0.8, [5, 0, 14, 9]),  // whole, half covered: still accepted
            (2, 1, 0.9, [10, 0, 19, 9]), // part: 50 of 100 cells covered → rejected at 0.3
            (3, 1, 0.8, [17, 0, 26, 9]), // part: 0 covered → accepted
            (4, 0, 0.9, [24, 0, 33, 9]), // sub-part: 30 of 100 covered by the part → not < 0.3
            (5, 0, 0.8, [25, 0, 34, 9]), // 20 of 100 → accepted
        ];
        assert_eq!(run(&cands, 1.0, 0.3), Selected { after_nms: 6, accepted: vec![0, 1, 3, 5] });
        // At 0.301 the sub-part with exactly 30% covered gets in, and then the next one is 90%
        // covered.
        assert_eq!(run(&cands, 1.0, 0.301), Selected { after_nms: 6, accepted: vec![0, 1, 3, 4] });
    }

    #[test]
    fn thresholds_round_to_per_mille() {
        assert_eq!((permille(0.7), permille(0.3), permille(0.0), permille(1.0)), (700, 300, 0, 1000));
        assert_eq!((permille(0.3004), permille(0.3006), permille(-1.0), permille(2.0)), (300, 301, 0, 1000));
    }
}
