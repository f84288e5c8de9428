//! From accepted masks to a non-overlapping region map over the view (docs/svp.md §2.6–2.9):
//! paint coarse to fine, give uncovered cells "rest" regions, then merge small regions into
//! their neighbours until the count and size bounds hold.
//!
//! A region map is `i32` per view cell (row-major over the view rectangle), −1 for no region;
//! region numbers are masks in acceptance order, then rest regions.

use std::collections::{BTreeMap, BTreeSet};

use super::masks::{Candidate, ViewRect};
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// Paint the accepted masks (`accepted`: candidate indices in acceptance order) coarse to fine;
/// later paint wins. Region a is accepted mask a. The painting runs in `Backend::mask_paint`
/// on `be`, which holds `stats` (the rows the candidates' planes index).
pub fn paint(be: &Backend, stats: &Tensor, cands: &[Candidate], accepted: &[usize], view: &ViewRect) -> Result<Vec<i32>> {
    let mut order: Vec<usize> = (0..accepted.len()).collect();
    // Level descending, area descending, acceptance index descending.
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&cands[accepted[a]], &cands[accepted[b]]);
        cb.level.cmp(&ca.level).then(cb.area.cmp(&ca.area)).then(b.cmp(&a))
    });
    if order.is_empty() {
        return Ok(vec![-1; view.cells()]);
    }
    let masks: Vec<(usize, i32)> = order.iter().map(|&a| (cands[accepted[a]].plane, a as i32)).collect();
    be.mask_paint(stats, view.h, view.w, &masks)
}

/// Number every 4-connected component of unlabelled cells, from `first` on, in the order of
/// each component's first cell in row-major order. Returns how many there were.
pub fn label_rest(labels: &mut [i32], w: usize, first: i32) -> usize {
    let h = labels.len().checked_div(w).unwrap_or(0);
    let mut next = first;
    let mut stack = Vec::new();
    for start in 0..labels.len() {
        if labels[start] >= 0 {
            continue;
        }
        labels[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (y, x) = (i / w, i % w);
            let mut visit = |j: usize| {
                if labels[j] < 0 {
                    labels[j] = next;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        next += 1;
    }
    (next - first) as usize
}

/// When to merge: regions beyond `max_regions` (0: no cap), or smaller than `min_cells_area`
/// pixels where a cell is `px_per_cell` pixels.
#[derive(Clone, Copy, Debug)]
pub struct MergeRule {
    pub max_regions: usize,
    pub min_area: f32,
    pub px_per_cell: f32,
}

struct Region {
    cells: u64,
    /// Neighbour region → number of shared cell edges.
    shared: BTreeMap<i32, u64>,
}

/// Merge regions in place (§2.9): while too many remain or the smallest is too small, the
/// smallest (fewest cells, then lowest number) joins the neighbour it shares most edges with
/// (then lowest number), which keeps its number. Stops when the region to merge has no
/// neighbour. Returns the number of merges.
///
/// Regions and their shared edges are counted once (cells in an array indexed by region, the
/// edges between two regions as sorted pairs), and the merged map is relabelled through an
/// array; a merge only touches the merged region's neighbour lists, so the cost does not grow
/// with the map for every merge (a 256² map of ~7000 rest specks merges in ~4 ms).
pub fn merge(labels: &mut [i32], w: usize, rule: MergeRule) -> usize {
    // Region numbers are small and dense (masks, then rest regions): count cells in an array.
    let n = labels.iter().copied().max().map_or(0, |m| (m + 1).max(0) as usize);
    let mut cells = vec![0u64; n];
    for &l in labels.iter().filter(|&&l| l >= 0) {
        cells[l as usize] += 1;
    }
    // Regions by number (None: absent or merged away).
    let mut regions: Vec<Option<Region>> = cells.iter().map(|&c| (c > 0).then(|| Region { cells: c, shared: BTreeMap::new() })).collect();
    // Each edge between two regions once, as (lower, higher), counted after a sort.
    let mut edges: Vec<(i32, i32)> = Vec::new();
    let mut edge = |a: i32, b: i32| {
        if a >= 0 && b >= 0 && a != b {
            edges.push((a.min(b), a.max(b)));
        }
    };
    for (i, &l) in labels.iter().enumerate() {
        if w > 0 && i % w + 1 < w {
            edge(l, labels[i + 1]);
        }
        if i + w < labels.len() {
            edge(l, labels[i + w]);
        }
    }
    edges.sort_unstable();
    for run in edges.chunk_by(|x, y| x == y) {
        let (a, b) = run[0];
        for (p, q) in [(a, b), (b, a)] {
            if let Some(r) = &mut regions[p as usize] {
                r.shared.insert(q, run.len() as u64);
            }
        }
    }
    let mut by_size: BTreeSet<(u64, i32)> = regions.iter().enumerate().filter_map(|(l, r)| Some((r.as_ref()?.cells, l as i32))).collect();
    // The region each merged one joined (−1: not merged).
    let mut target_of = vec![-1i32; n];
    let mut merges = 0;
    while let Some(&(cells, small)) = by_size.first() {
        let over = rule.max_regions > 0 && by_size.len() > rule.max_regions;
        let too_small = (cells as f32) * rule.px_per_cell < rule.min_area;
        if !over && !too_small {
            break;
        }
        let Some(region) = regions[small as usize].take() else { break };
        // Most shared edges, then the lowest number (BTreeMap iterates in ascending order).
        let Some((&into, _)) = region.shared.iter().fold(None, |best: Option<(&i32, &u64)>, (n, e)| match best {
            Some((_, be)) if be >= e => best,
            _ => Some((n, e)),
        }) else {
            regions[small as usize] = Some(region);
            break;
        };
        by_size.remove(&(cells, small));
        for (&other, &edges) in &region.shared {
            if let Some(r) = &mut regions[other as usize] {
                r.shared.remove(&small);
                if other != into {
                    *r.shared.entry(into).or_insert(0) += edges;
                }
            }
            if other != into {
                if let Some(t) = &mut regions[into as usize] {
                    *t.shared.entry(other).or_insert(0) += edges;
                }
            }
        }
        if let Some(t) = &mut regions[into as usize] {
            by_size.remove(&(t.cells, into));
            t.cells += region.cells;
            by_size.insert((t.cells, into));
        }
        target_of[small as usize] = into;
        merges += 1;
    }
    if merges > 0 {
        // Follow each merged region to the one that finally holds it.
        let finals: Vec<i32> = (0..n)
            .map(|l| {
                let mut t = l as i32;
                while target_of[t as usize] >= 0 {
                    t = target_of[t as usize];
                }
                t
            })
            .collect();
        for l in labels.iter_mut().filter(|l| **l >= 0) {
            *l = finals[*l as usize];
        }
    }
    merges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superpixels::masks::testing::candidates;

    fn map(rows: &[&str]) -> (Vec<i32>, usize) {
        let w = rows[0].len();
        let labels = rows.iter().flat_map(|r| r.chars().map(|c| if c == '.' { -1 } else { c.to_digit(36).unwrap() as i32 })).collect();
        (labels, w)
    }

    fn show(labels: &[i32], w: usize) -> Vec<String> {
        labels.chunks(w).map(|r| r.iter().map(|&l| if l < 0 { '.' } else { char::from_digit(l as u32, 36).unwrap() }).collect()).collect()
    }

    #[test]
    fn painting_puts_finer_and_smaller_masks_on_top() {
        let row = |a: usize, b: usize| (a..b).map(|x| (0, x)).collect::<Vec<_>>();
        let (view, stats, cands) = candidates(
            1,
            8,
            &[
                (0, 2, 1.0, row(0, 8)), // whole
                (1, 0, 1.0, row(1, 4)), // sub-part, 3 cells
                (2, 0, 1.0, row(3, 6)), // sub-part, 3 cells, later
                (3, 0, 1.0, row(5, 7)), // sub-part, 2 cells
                (4, 1, 1.0, row(0, 2)), // part
            ],
        );
        // Accepted in the order 0, 1, 2, 3, 4 → regions 0..4. Ties by area go to the earlier mask.
        let labels = paint(&Backend::cpu(), &stats, &cands, &[0, 1, 2, 3, 4], &view).unwrap();
        assert_eq!(labels, vec![4, 1, 1, 1, 2, 3, 3, 0]);
        // Regions follow the acceptance order, not the candidates'.
        let labels = paint(&Backend::cpu(), &stats, &cands, &[4, 0], &view).unwrap();
        assert_eq!(labels, vec![0, 0, 1, 1, 1, 1, 1, 1]);
        assert_eq!(paint(&Backend::cpu(), &stats, &cands, &[], &view).unwrap(), vec![-1; 8]);
    }

    #[test]
    fn rest_components_are_numbered_in_raster_order() {
        let (mut labels, w) = map(&["0..0.", "00.00", "...0."]);
        assert_eq!(label_rest(&mut labels, w, 5), 3);
        assert_eq!(show(&labels, w), vec!["05506", "00500", "55507"]);
    }

    fn rule(max_regions: usize, min_area: f32) -> MergeRule {
        MergeRule { max_regions, min_area, px_per_cell: 1.0 }
    }

    #[test]
    fn merging_takes_the_longest_border_and_breaks_ties_by_number() {
        // Region 3 (2 cells) borders 1 and 2 on two edges each and 0 on one: the tie goes to 1.
        let (mut labels, w) = map(&["11322", "11322", "00000"]);
        assert_eq!(merge(&mut labels, w, rule(0, 3.0)), 1);
        assert_eq!(show(&labels, w), vec!["11122", "11122", "00000"]);
        // Region 1 (1 cell) borders 0 on two edges and 2 on one: it joins 0, and 2's border
        // with it becomes a border with 0, which 2 (1 cell) then joins.
        let (mut labels, w) = map(&["000", "012"]);
        assert_eq!(merge(&mut labels, w, rule(0, 2.0)), 2);
        assert_eq!(show(&labels, w), vec!["000", "000"]);
    }

    #[test]
    fn merging_picks_the_smallest_then_the_lowest_number() {
        // Regions 4 and 5 have one cell each: 4 goes first, into 0 (its only neighbour).
        let (mut labels, w) = map(&["04", "05", "00"]);
        assert_eq!(merge(&mut labels, w, rule(2, 0.0)), 1);
        assert_eq!(show(&labels, w), vec!["00", "05", "00"]);
    }

    #[test]
    fn merging_stops_at_a_region_without_neighbours() {
        let (mut labels, w) = map(&["0.1", "0.1"]);
        assert_eq!(merge(&mut labels, w, rule(1, 0.0)), 0);
        assert_eq!(show(&labels, w), vec!["0.1", "0.1"]);
        let (mut one, w) = map(&["00"]);
        assert_eq!(merge(&mut one, w, rule(0, 100.0)), 0);
    }

    #[test]
    fn merged_regions_follow_chains() {
        // 2 joins 1 (a tie with 5, lower number), then 1 (now 3 cells) joins 5: 2's cells end in 5.
        let (mut labels, w) = map(&["5555", "5555", "5112"]);
        assert_eq!(merge(&mut labels, w, rule(1, 0.0)), 2);
        assert_eq!(show(&labels, w), vec!["5555", "5555", "5555"]);
    }
}
