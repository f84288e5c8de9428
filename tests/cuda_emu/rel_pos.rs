//! kernels/rel_pos.cu (`rel_pos_f32`: SAM's decomposed relative-position bias from token-major
//! queries read in place from a packed q|k|v projection) against the definition, summed in f64:
//! rel_h[b, h, y·S + x, ky] = q[b, y·S + x, h]·rh[y, ky], rel_w[.., kx] = q[..]·rw[x, kx].
//! Sides below, at and across one 16-wide thread tile, the largest side (64), head dims that end
//! inside a 32-column stage and span several.

use crate::common::{assert_close, Rng};
use crate::emu::{self, tol};

type RelPos = unsafe extern "C" fn(*const f32, i64, *const f32, *const f32, *mut f32, *mut f32, i32, i32, i32);

#[test]
fn rel_pos_matches_its_definition_on_packed_queries() {
    let Some(emu) = emu::kernels("rel_pos") else { return };
    // SAFETY: rel_pos_f32's parameter list.
    let f: RelPos = unsafe { emu.kernel("rel_pos_f32") };
    let mut r = Rng::new(0x7E1_0001);
    // (B, H, S, hd)
    for (b, h, s, hd) in [(2usize, 3usize, 5usize, 40usize), (1, 2, 14, 80), (2, 1, 17, 16), (1, 1, 64, 8)] {
        let (t, row) = (s * s, 3 * h * hd);
        let qkv = r.vec(b * t * row);
        let (rh, rw) = (r.vec(s * s * hd), r.vec(s * s * hd));
        let mut want_h = vec![0f32; b * h * t * s];
        let mut want_w = vec![0f32; b * h * t * s];
        for bi in 0..b {
            for hi in 0..h {
                for y in 0..s {
                    for x in 0..s {
                        let tok = y * s + x;
                        let q = &qkv[(bi * t + tok) * row + hi * hd..][..hd];
                        for k in 0..s {
                            let dot = |tab: &[f32], g: usize| q.iter().zip(&tab[(g * s + k) * hd..][..hd]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
                            want_h[((bi * h + hi) * t + tok) * s + k] = dot(&rh, y);
                            want_w[((bi * h + hi) * t + tok) * s + k] = dot(&rw, x);
                        }
                    }
                }
            }
        }
        let mut got_h = vec![f32::NAN; want_h.len()];
        let mut got_w = vec![f32::NAN; want_w.len()];
        let (oh, ow) = (got_h.as_mut_ptr() as usize, got_w.as_mut_ptr() as usize);
        // SAFETY: buffers of the sizes the kernel reads and writes, alive for the launch.
        emu.launch(((b * h) as u32, s as u32, 2), (256, 1, 1), || unsafe {
            f(qkv.as_ptr(), row as i64, rh.as_ptr(), rw.as_ptr(), oh as *mut f32, ow as *mut f32, h as i32, s as i32, hd as i32)
        });
        assert_close(&format!("rel_pos_f32 rel_h B {b} H {h} S {s} hd {hd}"), &got_h, &want_h, tol(hd));
        assert_close(&format!("rel_pos_f32 rel_w B {b} H {h} S {s} hd {hd}"), &got_w, &want_w, tol(hd));
    }
}
