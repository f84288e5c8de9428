//! kernels/scatter_pool.cu (`scatter_mean_pool_f32`) against the CPU backend, and bit for bit
//! against its documented order: slice j = p mod 8 sums the nonzero-weight patches in p order
//! with fused multiply-adds, then the 8 slices are added in order.

use visword::{Backend, Tensor};

use crate::common::{assert_close, Rng};
use crate::emu::{self, tol};

const THREADS: u32 = 256;
const COLS: usize = 32;
const SLICES: usize = 8;

type Pool = unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, u32, u32, u32);

/// The kernel's summation order on the host.
fn in_kernel_order(w: &[f32], f: &[f32], pos: &[f32], (s, p, c): (usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0f32; s * c];
    for si in 0..s {
        for ci in 0..c {
            let mut total = 0f32;
            for j in 0..SLICES {
                let mut acc = 0f32;
                for q in (j..p).step_by(SLICES) {
                    let wv = w[si * p + q];
                    if wv != 0.0 {
                        acc = wv.mul_add(f[q * c + ci] + pos[q * c + ci], acc);
                    }
                }
                total += acc;
            }
            out[si * c + ci] = total;
        }
    }
    out
}

/// (S, P, C, covered): each superpixel's weight row has `covered` nonzero patches at random
/// places (all of them when covered ≥ P), normalised to sum to 1.
fn pool(r: &mut Rng, (s, p, c, covered): (usize, usize, usize, usize)) {
    let Some(emu) = emu::kernels("scatter_pool") else { return };
    let mut w = vec![0f32; s * p];
    for row in w.chunks_mut(p.max(1)).take(s) {
        if covered >= p {
            row.iter_mut().for_each(|x| *x = 0.5 + r.uniform());
        } else {
            for _ in 0..covered {
                row[(r.next_u64() % p as u64) as usize] += 0.5 + r.uniform();
            }
        }
        let sum: f32 = row.iter().sum();
        if sum > 0.0 {
            row.iter_mut().for_each(|x| *x /= sum);
        }
    }
    let (ft, pt) = (r.tensor(&[p, c]), r.tensor(&[p, c]));
    let (f, pos) = (ft.to_f32_vec().unwrap(), pt.to_f32_vec().unwrap());
    let wt = Tensor::from_f32(w.clone(), vec![s, p]).unwrap();
    let mut out = vec![f32::NAN; s * c];
    let o = out.as_mut_ptr() as usize;
    // SAFETY: scatter_mean_pool_f32's parameter list.
    let k: Pool = unsafe { emu.kernel("scatter_mean_pool_f32") };
    emu.launch((c.div_ceil(COLS) as u32, s as u32, 1), (THREADS, 1, 1), || unsafe { k(w.as_ptr(), f.as_ptr(), pos.as_ptr(), o as *mut f32, s as u32, p as u32, c as u32) });
    let what = format!("scatter_mean_pool_f32 S{s} P{p} C{c} covering {covered}");
    let want = Backend::cpu().scatter_mean_pool(&wt, &ft, &pt).unwrap();
    assert_close(&what, &out, &want.to_f32_vec().unwrap(), tol(p));
    let exact = in_kernel_order(&w, &f, &pos, (s, p, c));
    let first = out.iter().zip(&exact).position(|(a, b)| a.to_bits() != b.to_bits());
    assert!(first.is_none(), "{what}: element {first:?} differs from the documented order ({} vs {})", out[first.unwrap_or(0)], exact[first.unwrap_or(0)]);
}

#[test]
fn scatter_mean_pool_matches_the_cpu_and_its_order() {
    let mut r = Rng::new(0x5CA7_7E12);
    // SVP's shape scaled down in C: 40 superpixels of ~14 patches over 576 (72 candidates per
    // slice, more than one ballot of 32); every patch covered (more than eight marked per ballot,
    // several gathers, two scan rounds at P = 1100); ragged P and C; one patch, one column.
    for shape in [(40, 576, 70, 14), (3, 300, 33, 300), (2, 1100, 5, 1100), (5, 37, 40, 3), (1, 1, 1, 1), (4, 9, 32, 0)] {
        pool(&mut r, shape);
    }
}
