//! kernels/mask_select.cu's `mask_select` (box NMS, then level selection on the masks' bitmaps,
//! in one block) against the CPU backend's: integer verdicts, so exactly.

use visword::backend::{MaskCandidate, Selection};
use visword::{Backend, Tensor, MASK_STATS_HEADER};

use crate::common::Rng;
use crate::emu;

/// Threads of the one block (SELECT_THREADS).
const SELECT_THREADS: u32 = 512;

type Select = unsafe extern "C" fn(*const i32, *const i32, *mut i32, *mut i32, u32, u64, u32, u32, u32, u32);

fn below(r: &mut Rng, n: usize) -> usize {
    (r.next_u64() % n as u64) as usize
}

/// `planes` masks on an h × (32·words) rectangle: each a filled box with some cells cleared,
/// the boxes crowded into a few spots so that NMS suppresses some and level selection finds
/// others covered. Returns the mask_stats-shaped rows (headers unused here) and one candidate
/// per non-empty mask, every fourth marked whole.
fn masks(r: &mut Rng, planes: usize, h: usize, words: usize) -> (Vec<i32>, Vec<MaskCandidate>) {
    let w = 32 * words;
    let row = MASK_STATS_HEADER + h * words;
    let mut stats = vec![0i32; planes * row];
    let mut cands = Vec::new();
    let spots: Vec<(usize, usize)> = (0..3).map(|_| (below(r, w), below(r, h))).collect();
    for p in 0..planes {
        let (sx, sy) = spots[below(r, spots.len())];
        let (x0, y0) = ((sx + below(r, 5)).min(w - 1), (sy + below(r, 5)).min(h - 1));
        let (x1, y1) = ((x0 + below(r, w / 2)).min(w - 1), (y0 + below(r, h / 2)).min(h - 1));
        let bits = &mut stats[p * row + MASK_STATS_HEADER..(p + 1) * row];
        let (mut area, mut bbox) = (0u32, [usize::MAX, usize::MAX, 0, 0]);
        for y in y0..=y1 {
            for x in x0..=x1 {
                if below(r, 10) < 8 {
                    bits[y * words + x / 32] |= 1 << (x % 32);
                    area += 1;
                    bbox = [bbox[0].min(x), bbox[1].min(y), bbox[2].max(x), bbox[3].max(y)];
                }
            }
        }
        if area > 0 {
            cands.push(MaskCandidate { plane: p, whole: p % 4 == 3, area, bbox });
        }
    }
    (stats, cands)
}

#[test]
fn mask_select_gives_the_cpu_verdicts() {
    let Some(emu) = emu::kernels("mask_select") else { return };
    let cpu = Backend::cpu();
    let mut r = Rng::new(0x5E1E_C701);
    // (planes, h, words, NMS ‰, overlap ‰): a partial last word, one word, the thresholds at
    // both ends (0: every overlap clashes / counts; 1000: none does).
    for (planes, h, words, nms, overlap) in [(60usize, 37usize, 3usize, 700u32, 800u32), (40, 16, 1, 0, 500), (50, 45, 2, 1000, 0), (80, 64, 2, 300, 1000)] {
        let (stats, cands) = masks(&mut r, planes, h, words);
        let row = MASK_STATS_HEADER + h * words;
        let t = Tensor::from_i32(stats.clone(), vec![planes, row]).unwrap();
        let want: Vec<i32> = cpu
            .mask_select(&t, h, &cands, nms, overlap)
            .unwrap()
            .into_iter()
            .map(|s| match s {
                Selection::Suppressed => 0,
                Selection::Rejected => 1,
                Selection::Accepted => 2,
            })
            .collect();
        let counts = (0..3).map(|v| want.iter().filter(|&&c| c == v).count()).collect::<Vec<_>>();
        let packed: Vec<i32> = cands.iter().flat_map(|c| [c.plane as i32, c.whole as i32, c.area as i32, c.bbox[0] as i32, c.bbox[1] as i32, c.bbox[2] as i32, c.bbox[3] as i32]).collect();
        let mut out = vec![-1i32; cands.len()];
        // One int4 per candidate, 16-byte aligned as the kernel's int4 loads require.
        let mut kept = vec![0u128; cands.len()];
        let (o, k) = (out.as_mut_ptr() as usize, kept.as_mut_ptr() as usize);
        // SAFETY: mask_select's parameter list; kept holds one int4 per candidate.
        let f: Select = unsafe { emu.kernel("mask_select") };
        emu.launch((1, 1, 1), (SELECT_THREADS, 1, 1), || unsafe {
            f(stats.as_ptr(), packed.as_ptr(), o as *mut i32, k as *mut i32, cands.len() as u32, row as u64, words as u32, h as u32, nms, overlap)
        });
        assert_eq!(out, want, "mask_select {planes} planes, {h}×{} cells, NMS {nms}‰, overlap {overlap}‰ (CPU verdicts suppressed/rejected/accepted: {counts:?})", 32 * words);
        eprintln!("mask_select {planes} planes, h {h}, words {words}, NMS {nms}‰, overlap {overlap}‰: {counts:?}");
    }
}
