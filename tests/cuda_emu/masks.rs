//! kernels/masks.cu against the CPU backend: `mask_stats_f32` (counts, box and bits of each
//! mask plane over a rectangle; integers, so exactly), and the upscaler tail fused with the
//! hypernetwork product, `upscale_masks_f32` (f32 on the CUDA cores) and
//! `upscale_masks_mma_f32` (the transposed conv on the tensor cores, against the CPU with the
//! same operands rounded to f16).

use visword::{Backend, Tensor, MASK_STATS_HEADER};

use crate::common::{assert_close, upscale_masks_f16_operands, Rng, Tol};
use crate::emu::{self, grid_rows, tol};

/// Threads per block: mask_stats_f32 256, the upscale kernels 128; rows of the 2E grid per
/// upscale_masks_f32 block (UPS_ROWS), rows of y per upscale_masks_mma_f32 block (UPT_ROWS).
const STATS_THREADS: u32 = 256;
const UPS_THREADS: u32 = 128;
const UPS_ROWS: usize = 8;
const UPT_ROWS: usize = 256;

type Stats = unsafe extern "C" fn(*const f32, *mut i32, u64, u32, u32, u32, u32, u32, u32, f32);
type Upscale = unsafe extern "C" fn(*const f32, *const f32, *const f32, f32, *const f32, *const f32, *const f32, *mut f32, u32, u32, u32, u32, u32);
type UpscaleMma = unsafe extern "C" fn(*const f32, *const f32, *const f32, f32, *const f32, *const f32, *const f32, *mut f32, u32, u32, u32);

#[test]
fn mask_stats_match_the_cpu_exactly() {
    let Some(emu) = emu::kernels("masks") else { return };
    let mut r = Rng::new(0x3A5C_0001);
    let cpu = Backend::cpu();
    // (planes, H, W, rect [y0, x0, h, w]): widths around the 32-bit words, a crop, one cell.
    for (planes, ph, pw, rect) in [(3usize, 40usize, 70usize, [3usize, 5usize, 30usize, 65usize]), (2, 9, 33, [8, 32, 1, 1]), (4, 17, 64, [0, 0, 17, 64])] {
        // A coarse lattice in [−3, 3] (many values exactly on 0 and ±1, the thresholds), NaN and
        // ±∞, and every third plane all negative (an empty mask).
        let mut v: Vec<f32> = (0..planes * ph * pw).map(|_| (r.uniform() * 6.0).round() / 2.0 - 1.5).collect();
        for plane in v.chunks_mut(ph * pw).step_by(3) {
            plane.iter_mut().for_each(|x| *x = -x.abs() - 0.5);
        }
        v[1] = f32::NAN;
        v[2] = f32::INFINITY;
        v[4] = f32::NEG_INFINITY;
        let t = Tensor::from_f32(v.clone(), vec![planes, ph, pw]).unwrap();
        let words = rect[3].div_ceil(32);
        for offset in [1.0f32, 0.0] {
            let want = cpu.mask_stats(&t, rect, offset).unwrap();
            let mut out = vec![i32::MIN; planes * (MASK_STATS_HEADER + rect[2] * words)];
            // SAFETY: mask_stats_f32's parameter list.
            let f: Stats = unsafe { emu.kernel("mask_stats_f32") };
            let o = out.as_mut_ptr() as usize;
            let [y0, x0, h, w] = rect.map(|v| v as u32);
            emu.launch(grid_rows(planes), (STATS_THREADS, 1, 1), || unsafe { f(v.as_ptr(), o as *mut i32, planes as u64, ph as u32, pw as u32, y0, x0, h, w, offset) });
            assert!(out == want.as_i32().unwrap(), "mask_stats_f32 {planes}×{ph}×{pw} rect {rect:?} offset {offset}: differs from the CPU");
        }
    }
}

/// (P, E, C1, C2, M): y [P, E, E, 4·C1], w2 [4·C2, C1], hyper [P, M, C2].
fn upscale(mma: bool, (p, e, c1, c2, m): (usize, usize, usize, usize, usize)) {
    let Some(emu) = emu::kernels("masks") else { return };
    let seed = 0x0B5C_0000 ^ (p * 1009 + e * 31 + c1 * 7 + c2 * 3 + m) as u64;
    let mut r = Rng::new(seed);
    let cpu = Backend::cpu();
    let y = r.tensor(&[p, e, e, 4 * c1]);
    let (lw, lb) = (r.tensor(&[c1]), r.tensor(&[c1]));
    let (w2, b2, hyper) = (r.tensor(&[4 * c2, c1]), r.tensor(&[c2]), r.tensor(&[p, m, c2]));
    let v = |t: &Tensor| t.to_f32_vec().unwrap();
    let (yv, lwv, lbv, wv, bv, hv) = (v(&y), v(&lw), v(&lb), v(&w2), v(&b2), v(&hyper));
    let mut out = vec![f32::NAN; p * m * 16 * e * e];
    let o = out.as_mut_ptr() as usize;
    let eps = 1e-6;
    let what = format!("P{p} E{e} C1 {c1} C2 {c2} M{m} seed {seed:#x}");
    if mma {
        let want = upscale_masks_f16_operands(&y, &lw, &lb, &w2, &b2, &hyper);
        // SAFETY: upscale_masks_mma_f32's parameter list.
        let f: UpscaleMma = unsafe { emu.kernel("upscale_masks_mma_f32") };
        emu.launch(grid_rows(p * (4 * e * e).div_ceil(UPT_ROWS)), (UPS_THREADS, 1, 1), || unsafe {
            f(yv.as_ptr(), lwv.as_ptr(), lbv.as_ptr(), eps, wv.as_ptr(), bv.as_ptr(), hv.as_ptr(), o as *mut f32, p as u32, e as u32, m as u32)
        });
        assert_close(&format!("upscale_masks_mma_f32 {what}"), &out, &v(&want), Tol { atol: 2e-3, rtol: 2e-3 });
    } else {
        let want = cpu.upscale_masks(&y, (&lw, &lb, eps), &w2, &b2, &hyper).unwrap();
        // SAFETY: upscale_masks_f32's parameter list.
        let f: Upscale = unsafe { emu.kernel("upscale_masks_f32") };
        emu.launch(grid_rows(p * (2 * e).div_ceil(UPS_ROWS)), (UPS_THREADS, 1, 1), || unsafe {
            f(yv.as_ptr(), lwv.as_ptr(), lbv.as_ptr(), eps, wv.as_ptr(), bv.as_ptr(), hv.as_ptr(), o as *mut f32, p as u32, e as u32, c1 as u32, c2 as u32, m as u32)
        });
        assert_close(&format!("upscale_masks_f32 {what}"), &out, &v(&want), tol(c1 * c2));
    }
}

#[test]
fn upscale_masks_mma_sam_sizes() {
    // SAM's channels (C1 64, C2 32): 4E² rows 100 (a partial 64-row tile), 324 (a second,
    // partial 256-row block) and 4; M 3, 8 (the limit) and 1.
    upscale(true, (2, 5, 64, 32, 3));
    upscale(true, (2, 9, 64, 32, 8));
    upscale(true, (1, 1, 64, 32, 1));
}

#[test]
fn upscale_masks_f32_small_and_ragged() {
    // The CUDA-core kernel: small channels, 8 masks (the limit), rows of 2E = 140 pixels (past
    // one block's 128 threads; 140 grid rows, a partial last block of 8), and SAM's channels.
    upscale(false, (2, 4, 8, 4, 3));
    upscale(false, (1, 3, 4, 3, 8));
    upscale(false, (1, 70, 8, 4, 1));
    upscale(false, (2, 5, 64, 32, 3));
}
