//! The final superpixels (docs/svp.md §2.10–2.11): per-region geometry normalised to the view,
//! token order by centroid raster order over the patch rows, and the coverage matrix of the
//! regions over the encoder's patch grid by exact rectangle overlap.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::frame::Frame;
use super::masks::ViewRect;

/// Regions renumbered 0..count in token order.
pub struct Ordered {
    /// Label per crop cell `[lh, lw]`, −1 where no region is.
    pub label_map: Vec<i32>,
    pub geometry: Vec<[f32; 7]>,
    pub count: usize,
}

#[derive(Clone, Copy)]
struct Extent {
    cells: u64,
    sum_x: u64,
    sum_y: u64,
    box_: [usize; 4],
}

/// Measure the regions of `labels` (a region map over `view`, −1 for none), order them and
/// write the crop's label map.
pub fn order_regions(labels: &[i32], view: &ViewRect, frame: &Frame, grid: usize) -> Ordered {
    let mut extents: BTreeMap<i32, Extent> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate().filter(|(_, &l)| l >= 0) {
        let (y, x) = (view.y0 + i / view.w, view.x0 + i % view.w);
        let e = extents.entry(l).or_insert(Extent { cells: 0, sum_x: 0, sum_y: 0, box_: [x, y, x, y] });
        e.cells += 1;
        e.sum_x += x as u64;
        e.sum_y += y as u64;
        e.box_ = [e.box_[0].min(x), e.box_[1].min(y), e.box_[2].max(x), e.box_[3].max(y)];
    }
    let [vx0, vy0, vx1, vy1] = frame.view;
    let (vw, vh) = (vx1 - vx0, vy1 - vy0);
    let view_cells = view.cells() as f64;
    let mut regions: Vec<(i64, [f64; 7], i32)> = extents
        .iter()
        .map(|(&number, e)| {
            let n = e.cells as f64;
            // The numerator is exact (sums of half-integers), so this is the correctly rounded mean.
            let cx = (e.sum_x as f64 + 0.5 * n) / n;
            let cy = (e.sum_y as f64 + 0.5 * n) / n;
            let [x0, y0, x1, y1] = e.box_;
            let g = [
                (cx - vx0) / vw,
                (cy - vy0) / vh,
                ((x0 as f64 - vx0) / vw).clamp(0.0, 1.0),
                ((y0 as f64 - vy0) / vh).clamp(0.0, 1.0),
                ((x1 as f64 + 1.0 - vx0) / vw).clamp(0.0, 1.0),
                ((y1 as f64 + 1.0 - vy0) / vh).clamp(0.0, 1.0),
                n / view_cells,
            ];
            let row = ((g[1] * grid as f64).floor() as i64).min(grid as i64 - 1);
            (row, g, number)
        })
        .collect();
    regions.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1[0].partial_cmp(&b.1[0]).unwrap_or(Ordering::Equal))
            .then(a.1[1].partial_cmp(&b.1[1]).unwrap_or(Ordering::Equal))
            .then(a.2.cmp(&b.2))
    });
    let new_label: BTreeMap<i32, i32> = regions.iter().enumerate().map(|(i, r)| (r.2, i as i32)).collect();
    let (lh, lw) = frame.crop;
    let mut label_map = vec![-1i32; lh * lw];
    for (i, &l) in labels.iter().enumerate().filter(|(_, &l)| l >= 0) {
        let (y, x) = (view.y0 + i / view.w, view.x0 + i % view.w);
        label_map[y * lw + x] = new_label[&l];
    }
    let geometry = regions.iter().map(|r| r.1.map(|v| v as f32)).collect();
    Ordered { label_map, geometry, count: regions.len() }
}

/// Per cell index along one axis of `n` cells: the (patch index, overlap length) pairs of the
/// cell `[i, i + 1)` with the `grid` patches `[start + c·size, start + (c + 1)·size)`.
fn axis_overlaps(n: usize, start: f64, size: f64, grid: usize) -> Vec<Vec<(usize, f64)>> {
    (0..n)
        .map(|i| {
            let (lo, hi) = (i as f64, i as f64 + 1.0);
            (0..grid)
                .filter_map(|c| {
                    let len = hi.min(start + (c as f64 + 1.0) * size) - lo.max(start + c as f64 * size);
                    (len > 0.0).then_some((c, len))
                })
                .collect()
        })
        .collect()
}

/// Coverage A `[count, grid²]`: the overlap area of each region's cells with each patch, over
/// the total overlap of all labelled cells with that patch (0 where a patch overlaps none).
pub fn coverage(label_map: &[i32], count: usize, frame: &Frame, grid: usize) -> Vec<f32> {
    let p = grid * grid;
    let (lh, lw) = frame.crop;
    let [vx0, vy0, vx1, vy1] = frame.view;
    let xs = axis_overlaps(lw, vx0, (vx1 - vx0) / grid as f64, grid);
    let ys = axis_overlaps(lh, vy0, (vy1 - vy0) / grid as f64, grid);
    let mut overlap = vec![0f64; count * p];
    for (i, &l) in label_map.iter().enumerate().filter(|(_, &l)| l >= 0) {
        let row = &mut overlap[l as usize * p..(l as usize + 1) * p];
        for &(r, wy) in &ys[i / lw] {
            for &(c, wx) in &xs[i % lw] {
                row[r * grid + c] += wy * wx;
            }
        }
    }
    let mut total = vec![0f64; p];
    for row in overlap.chunks(p) {
        for (t, v) in total.iter_mut().zip(row) {
            *t += v;
        }
    }
    overlap
        .chunks(p)
        .flat_map(|row| row.iter().zip(&total).map(|(&o, &t)| if t > 0.0 { (o / t) as f32 } else { 0.0 }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16×16 crop seen whole (SAM input 64, masks 16), with a 2×2 patch grid of 8×8 cells.
    fn frame(view_px: [f64; 4]) -> Frame {
        Frame::new((16, 16), 64, 16, view_px).unwrap()
    }

    fn full_view(frame: &Frame) -> ViewRect {
        ViewRect::new(frame)
    }

    /// Left half region 7, right half region 3 (numbers are arbitrary before ordering), one
    /// cell of region 9 at the top right: order by patch row of the centroid, then x.
    #[test]
    fn geometry_and_order() {
        let f = frame([0.0, 0.0, 16.0, 16.0]);
        let v = full_view(&f);
        let mut labels = vec![0i32; 256];
        for (i, l) in labels.iter_mut().enumerate() {
            *l = if i % 16 < 8 { 7 } else { 3 };
        }
        labels[15] = 9;
        let o = order_regions(&labels, &v, &f, 2);
        assert_eq!(o.count, 3);
        // Region 9 (centroid row 0) comes first; then 7 (x 4) before 3 (x 12), both in row 1
        // (centroid y = 8 and 8.03 over 16 → floor(2·0.5) = 1).
        assert_eq!(o.label_map[15], 0);
        assert_eq!(o.label_map[0], 1);
        assert_eq!(o.label_map[8], 2);
        assert_eq!(o.geometry[0], [15.5 / 16.0, 0.5 / 16.0, 15.0 / 16.0, 0.0, 1.0, 1.0 / 16.0, 1.0 / 256.0]);
        assert_eq!(o.geometry[1], [0.25, 0.5, 0.0, 0.0, 0.5, 1.0, 0.5]);
        let g = o.geometry[2];
        assert_eq!(&g[2..6], &[0.5, 0.0, 1.0, 1.0]);
        assert!((g[1] as f64 - (8.0 * 128.0 - 0.5) / 127.0 / 16.0).abs() < 1e-6, "{g:?}");
    }

    /// Patches that straddle cells split their area by the exact overlap.
    #[test]
    fn coverage_is_exact_overlap() {
        // View x ∈ [0, 15) cells, y ∈ [0, 16): patch columns [0, 7.5) and [7.5, 15).
        let f = frame([0.0, 0.0, 15.0, 16.0]);
        let mut labels = vec![-1i32; 256];
        for (i, l) in labels.iter_mut().enumerate() {
            let x = i % 16;
            if x < 15 {
                *l = if x < 7 { 0 } else { 1 };
            }
        }
        let a = coverage(&labels, 2, &f, 2);
        // Patch (0, 0): region 0 covers 7 of 7.5 columns, region 1 the half column 7.
        assert!((a[0] - 7.0 / 7.5).abs() < 1e-6 && (a[4] - 0.5 / 7.5).abs() < 1e-6, "{a:?}");
        // Patch (0, 1) is region 1's only.
        assert_eq!((a[1], a[5]), (0.0, 1.0));
        for p in 0..4 {
            assert!((a[p] + a[4 + p] - 1.0).abs() < 1e-6);
        }
    }

    /// A patch over unlabelled cells only has a zero column.
    #[test]
    fn coverage_of_an_unlabelled_patch_is_zero() {
        let f = frame([0.0, 0.0, 16.0, 16.0]);
        let mut labels = vec![-1i32; 256];
        labels[0] = 0;
        let a = coverage(&labels, 1, &f, 2);
        assert_eq!(a, vec![1.0, 0.0, 0.0, 0.0]);
    }
}
