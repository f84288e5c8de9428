//! `mask_select` and `mask_paint` (the specs for kernels/mask_select.cu and
//! shaders/mask_select.wgsl): box NMS, level selection and painting over the bitmaps of
//! `mask_stats` rows. `Backend::mask_select` / `mask_paint` check every argument first.

use crate::backend::mask_select::{MaskCandidate, MaskRows};
use crate::backend::MASK_STATS_HEADER;

/// Whether inclusive boxes `a` and `b` ([x0, y0, x1, y1]) overlap by an IoU above
/// `nms / 1000`: 1000 · intersection > nms · union, exact in integers.
fn boxes_clash(a: &[usize; 4], b: &[usize; 4], nms: u32) -> bool {
    let area = |b: &[usize; 4]| ((b[2] - b[0] + 1) * (b[3] - b[1] + 1)) as u64;
    let iw = (a[2].min(b[2]) + 1).saturating_sub(a[0].max(b[0]));
    let ih = (a[3].min(b[3]) + 1).saturating_sub(a[1].max(b[1]));
    let inter = (iw * ih) as u64;
    1000 * inter > nms as u64 * (area(a) + area(b) - inter)
}

/// Codes per candidate: 0 suppressed by NMS, 1 kept by NMS and rejected by level selection,
/// 2 accepted (`Selection`).
pub fn mask_select(stats: &[i32], rows: MaskRows, cands: &[MaskCandidate], nms: u32, overlap: u32) -> Vec<i32> {
    let mut codes = vec![0i32; cands.len()];
    // NMS in visiting order: a candidate survives when no earlier survivor's box clashes.
    let mut kept: Vec<&[usize; 4]> = Vec::new();
    for (code, c) in codes.iter_mut().zip(cands) {
        if !kept.iter().any(|k| boxes_clash(&c.bbox, k, nms)) {
            kept.push(&c.bbox);
            *code = 1;
        }
    }
    // Level selection over the survivors, same order: whole objects always, other masks when
    // fewer than overlap/1000 of their cells are covered by the masks accepted so far.
    let words = rows.words;
    let mut covered = vec![0u32; rows.h * words];
    for (code, c) in codes.iter_mut().zip(cands).filter(|(code, _)| **code == 1) {
        let bits = &stats[c.plane * rows.row_len + MASK_STATS_HEADER..][..rows.h * words];
        let (w0, w1) = (c.bbox[0] / 32, c.bbox[2] / 32);
        let cells = (c.bbox[1]..=c.bbox[3]).flat_map(|y| (w0..=w1).map(move |j| y * words + j));
        let accept = c.whole || {
            let shared: u64 = cells.clone().map(|i| (bits[i] as u32 & covered[i]).count_ones() as u64).sum();
            1000 * shared < overlap as u64 * c.area as u64
        };
        if accept {
            for i in cells {
                covered[i] |= bits[i] as u32;
            }
            *code = 2;
        }
    }
    codes
}

/// The region map of an `h × w` rectangle: cell (y, x) takes the region of the last entry of
/// `masks` ((plane, region) pairs) whose mask holds it, −1 where none does.
pub fn mask_paint(stats: &[i32], rows: MaskRows, w: usize, masks: &[(usize, i32)]) -> Vec<i32> {
    let mut labels = vec![-1i32; rows.h * w];
    for &(plane, region) in masks {
        let bits = &stats[plane * rows.row_len + MASK_STATS_HEADER..][..rows.h * rows.words];
        for (row, labels) in bits.chunks(rows.words).zip(labels.chunks_mut(w)) {
            for (j, &word) in row.iter().enumerate() {
                let mut word = word as u32;
                while word != 0 {
                    if let Some(l) = labels.get_mut(32 * j + word.trailing_zeros() as usize) {
                        *l = region;
                    }
                    word &= word - 1;
                }
            }
        }
    }
    labels
}
