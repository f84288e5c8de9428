//! Which candidate masks become superpixels (docs/svp.md §2.4–2.5): box NMS in which whole
//! objects win, then level selection, which keeps every whole-object mask and adds a part or
//! sub-part only where it mostly covers new ground.

use std::cmp::Ordering;

use super::masks::{Candidate, CellSet, ViewRect};

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

fn box_area(b: &[usize; 4]) -> usize {
    (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
}

/// Whether inclusive boxes `a` and `b` overlap by more than `thresh` (IoU as f32 / f32).
fn boxes_clash(a: &[usize; 4], b: &[usize; 4], thresh: f32) -> bool {
    let iw = (a[2].min(b[2]) + 1).saturating_sub(a[0].max(b[0]));
    let ih = (a[3].min(b[3]) + 1).saturating_sub(a[1].max(b[1]));
    let inter = iw * ih;
    let union = box_area(a) + box_area(b) - inter;
    inter as f32 / union as f32 > thresh
}

/// Box NMS: indices of the surviving candidates, in visiting order.
pub fn box_nms(cands: &[Candidate], thresh: f32) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    for i in visit_order(cands) {
        if !kept.iter().any(|&j| boxes_clash(&cands[i].bbox, &cands[j].bbox, thresh)) {
            kept.push(i);
        }
    }
    kept
}

/// Level selection over NMS survivors (`kept`, in visiting order): indices of the accepted
/// masks in acceptance order.
pub fn select_levels(cands: &[Candidate], kept: &[usize], view: &ViewRect, overlap_thresh: f32) -> Vec<usize> {
    let mut covered = CellSet::new(view);
    let mut accepted = Vec::new();
    for &i in kept {
        let c = &cands[i];
        if c.level == 2 || (c.overlap(&covered) as f32 / c.area as f32) < overlap_thresh {
            c.add_to(&mut covered);
            accepted.push(i);
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ViewRect {
        ViewRect { y0: 0, x0: 0, h: 40, w: 100, words: 2 }
    }

    /// A filled rectangle [x0, x1] × [y0, y1] (inclusive) as a candidate.
    fn rect(prompt: usize, level: usize, score: f32, r: [usize; 4]) -> Candidate {
        let cells: Vec<_> = (r[1]..=r[3]).flat_map(|y| (r[0]..=r[2]).map(move |x| (y, x))).collect();
        Candidate::from_cells(prompt, level, score, &view(), &cells).unwrap()
    }

    #[test]
    fn nms_prefers_whole_objects_then_score_then_prompt() {
        let cands = vec![
            rect(0, 0, 0.99, [0, 0, 9, 9]),   // a sub-part with the best score
            rect(1, 2, 0.80, [0, 0, 9, 10]),  // whole object, same place: wins
            rect(2, 2, 0.80, [60, 0, 69, 9]), // whole object, elsewhere: tie on score, later prompt
            rect(1, 2, 0.80, [60, 0, 69, 9]), // identical box, earlier prompt: wins the tie
            rect(3, 1, 0.90, [30, 0, 39, 9]), // a part alone: kept
        ];
        assert_eq!(box_nms(&cands, 0.7), vec![1, 3, 4]);
        // Nothing clashes above an IoU of 1.
        assert_eq!(box_nms(&cands, 1.0), vec![1, 3, 2, 4, 0]);
    }

    #[test]
    fn one_cell_boxes_have_area_one() {
        let a = [5, 5, 5, 5];
        assert!(boxes_clash(&a, &a, 0.99));
        assert!(!boxes_clash(&a, &[6, 5, 6, 5], 0.0));
        // 1 shared cell of 2 + 1 − 1 = 2: IoU 0.5, not above 0.5.
        assert!(!boxes_clash(&a, &[5, 5, 6, 5], 0.5));
        assert!(boxes_clash(&a, &[5, 5, 6, 5], 0.49));
    }

    #[test]
    fn level_selection_adds_parts_that_cover_new_ground() {
        let cands = vec![
            rect(0, 2, 0.9, [0, 0, 9, 9]),   // whole: always accepted
            rect(1, 2, 0.8, [5, 0, 14, 9]),  // whole, half covered: still accepted
            rect(2, 1, 0.9, [10, 0, 19, 9]), // part: 50 of 100 cells covered → rejected at 0.3
            rect(3, 1, 0.8, [17, 0, 26, 9]), // part: 0 covered → accepted
            rect(4, 0, 0.9, [24, 0, 33, 9]), // sub-part: 30 of 100 covered by the part → not < 0.3
            rect(5, 0, 0.8, [25, 0, 34, 9]), // 20 of 100 → accepted
        ];
        let kept = box_nms(&cands, 1.0);
        assert_eq!(kept, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(select_levels(&cands, &kept, &view(), 0.3), vec![0, 1, 3, 5]);
    }
}
