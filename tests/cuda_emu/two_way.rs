//! kernels/two_way.cu (SAM's two-way attention on factored weights, f32 on the CUDA cores) and
//! kernels/two_way_mma.cu (the same on TF32 tensor cores) against the CPU backend's
//! `two_way_update` / `two_way_pool`: SAM's sizes with shared image tokens, and ragged ones off
//! every block size (N past one 32-row tile and one 256-token pool chunk, C below a 32-channel
//! chunk and off the 8-channel mma tiles, one group, R at the 64-row limit and off a k step).
//! The TF32 kernels are checked against the CPU on operands rounded as the tensor cores take
//! them (x, ax, u), at the low-precision tolerance (their p or weights are rounded too).

use visword::{Backend, Tensor, TwoWayParams};

use crate::common::{assert_close, tf32_round, Rng, TwoWayInputs, LOW_PRECISION_TOL};
use crate::emu::{self, grid_rows, tol};

/// Threads per block, image tokens per update block and per pool chunk (TW_THREADS, TW_ROWS,
/// TWP_CHUNK).
const THREADS: u32 = 256;
const ROWS: usize = 32;
const CHUNK: usize = 256;

type Update = unsafe extern "C" fn(*const f32, u64, *const f32, *const f32, *const f32, *const f32, *const f32, *const f32, *const f32, f32, *mut f32, u32, u32, u32, u32, u32, u32);
type PoolPart = unsafe extern "C" fn(*const f32, u64, *const f32, *const f32, *const f32, *mut f32, u32, u32, u32, u32, u32, u32);
type PoolCombine = unsafe extern "C" fn(*const f32, *mut f32, u32, u32, u32, u32);

/// (B, Bx, N, C, groups, T, Dy): Bx = 1 shares the image tokens across the B prompts.
type Shape = (usize, usize, usize, usize, usize, usize, usize);

/// Which build: the f32 kernels of two_way.cu, or the TF32 ones of two_way_mma.cu.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    F32,
    Tf32,
}

fn check(build: Build, (b, bx, n, c, groups, t, dy): Shape) {
    let Some(base) = emu::kernels("two_way") else { return };
    let (emu, suffix) = match build {
        Build::F32 => (base, "f32"),
        Build::Tf32 => match emu::kernels("two_way_mma") {
            Some(e) => (e, "tf32"),
            None => return,
        },
    };
    let seed = 0x7A0_0000 ^ (b * 7919 + n * 31 + c * 7 + groups * t) as u64;
    let mut r = Rng::new(seed);
    let cpu = Backend::cpu();
    let rows = groups * t;
    let TwoWayInputs { x, y, ax, ay, u, bias, ln_w: lw, ln_b: lb } = TwoWayInputs::new(&mut r, (b, bx, n, c, groups, t, dy));
    let (x, ax, u) = if build == Build::Tf32 { (tf32_round(&x), tf32_round(&ax), tf32_round(&u)) } else { (x, ax, u) };
    let eps = 1e-6;
    let what = format!("B{b} Bx{bx} N{n} C{c} G{groups} T{t} Dy{dy} seed {seed:#x}");
    let v = |t: &Tensor| t.to_f32_vec().unwrap();
    let (xv, yv, axv, ayv, uv, bv, lwv, lbv) = (v(&x), v(&y), v(&ax), v(&ay), v(&u), v(&bias), v(&lw), v(&lb));
    let xstride = if bx == 1 { 0 } else { (n * c) as u64 };
    let s32 = |v: usize| v as u32;
    let tol = |k: usize| if build == Build::Tf32 { LOW_PRECISION_TOL } else { tol(k) };

    let want = cpu.two_way_update(&x, &y, &ax, &ay, &u, &bias, (&lw, &lb, eps), TwoWayParams::new(groups)).unwrap();
    let mut out = vec![f32::NAN; b * n * c];
    let name = format!("two_way_update_{suffix}");
    // SAFETY: two_way_update_{f32,tf32}'s parameter list.
    let f: Update = unsafe { emu.kernel(&name) };
    let o = out.as_mut_ptr() as usize;
    emu.launch(grid_rows(b * n.div_ceil(ROWS)), (THREADS, 1, 1), || unsafe {
        f(xv.as_ptr(), xstride, yv.as_ptr(), axv.as_ptr(), ayv.as_ptr(), uv.as_ptr(), bv.as_ptr(), lwv.as_ptr(), lbv.as_ptr(), eps, o as *mut f32, s32(b), s32(n), s32(c), s32(rows), s32(t), s32(dy))
    });
    assert_close(&format!("{name} {what}"), &out, &v(&want), tol(c.max(rows)));

    let want = cpu.two_way_pool(&x, &y, &ax, &ay, TwoWayParams::new(groups)).unwrap();
    let chunks = n.div_ceil(CHUNK);
    let mut part = vec![f32::NAN; b * chunks * rows * (c + 2)];
    let mut out = vec![f32::NAN; b * rows * c];
    let name = format!("two_way_pool_part_{suffix}");
    // SAFETY: the pool kernels' parameter lists (both part kernels take the same).
    let (fp, fc): (PoolPart, PoolCombine) = unsafe { (emu.kernel(&name), base.kernel("two_way_pool_combine_f32")) };
    let (pp, o) = (part.as_mut_ptr() as usize, out.as_mut_ptr() as usize);
    emu.launch(grid_rows(b * chunks), (THREADS, 1, 1), || unsafe {
        fp(xv.as_ptr(), xstride, yv.as_ptr(), axv.as_ptr(), ayv.as_ptr(), pp as *mut f32, s32(b), s32(n), s32(c), s32(rows), s32(t), s32(dy))
    });
    base.launch(grid_rows(b * rows), (THREADS, 1, 1), || unsafe { fc(pp as *const f32, o as *mut f32, s32(b), s32(n), s32(c), s32(rows)) });
    assert_close(&format!("{name} + combine {what}"), &out, &v(&want), tol(c.max(n)));
}

/// SAM's token-to-image layer: 4096 image tokens of 256 channels shared by 2 prompts, 8 heads ×
/// 7 tokens, Dy 16.
const SAM_SHARED: Shape = (2, 1, 4096, 256, 8, 7, 16);
/// Per-prompt image tokens, N = 300 (a partial 32-row tile and a second, partial pool chunk),
/// C = 40 (a partial 32-channel chunk).
const RAGGED: Shape = (2, 2, 300, 40, 2, 7, 8);
/// One group of 64 query rows (the kernels' limit), odd Dy, N below one tile.
const WIDEST_ROWS: Shape = (1, 1, 19, 24, 1, 64, 3);
const SIZE_ONE: Shape = (1, 1, 1, 1, 1, 1, 1);
/// Odd C (off every 8-channel mma tile) and R = 15 (off a k step of 8), per-prompt image tokens.
const ODD: Shape = (3, 3, 70, 37, 3, 5, 5);

#[test]
fn two_way_sam_sizes_shared_image_tokens() {
    check(Build::F32, SAM_SHARED);
}

#[test]
fn two_way_per_prompt_image_tokens_ragged() {
    check(Build::F32, RAGGED);
}

#[test]
fn two_way_one_group_widest_rows() {
    check(Build::F32, WIDEST_ROWS);
}

#[test]
fn two_way_size_one() {
    check(Build::F32, SIZE_ONE);
}

#[test]
fn two_way_tf32_sam_sizes_shared_image_tokens() {
    check(Build::Tf32, SAM_SHARED);
}

#[test]
fn two_way_tf32_ragged_and_odd() {
    check(Build::Tf32, RAGGED);
    check(Build::Tf32, ODD);
}

#[test]
fn two_way_tf32_widest_rows_and_size_one() {
    check(Build::Tf32, WIDEST_ROWS);
    check(Build::Tf32, SIZE_ONE);
}
