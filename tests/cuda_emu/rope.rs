//! kernels/rope.cu against the CPU backend's `rope`: `rope_f32` on [B, H, N, D] at a position
//! offset, and `rope_qk_write_kv_f32` (q roped; k roped and v copied into the caches at rows
//! pos + t; the rest of the caches untouched), and `rope_qk_write_kv_bf16kv` (the same into
//! bf16 caches: exactly the f32 kernel's values rounded to nearest even, with the position
//! read from a recorded step's buffer too).

use std::ffi::c_void;

use half::bf16;
use visword::{Backend, Tensor};

use crate::common::{assert_close, Rng, Tol};
use crate::emu::{self, grid_rows};

type Rope = unsafe extern "C" fn(*const f32, *mut f32, *const f32, *const f32, u64, u32, u32, u64);
type RopeQkv = unsafe extern "C" fn(*const f32, *mut f32, *const f32, *const f32, *mut f32, *mut f32, *const f32, *const f32, u64, u64, u32, u32, u64, u64, *const i32);
/// The caches as f32 or bf16 bits (`_bf16kv`).
type RopeQkvAny = unsafe extern "C" fn(*const f32, *mut f32, *const f32, *const f32, *mut c_void, *mut c_void, *const f32, *const f32, u64, u64, u32, u32, u64, u64, *const i32);

/// Two products and a difference per output: within a rounding of the CPU's.
const TOL: Tol = Tol { atol: 1e-6, rtol: 1e-6 };

#[test]
fn rope_matches_the_cpu() {
    let Some(emu) = emu::kernels("rope") else { return };
    let cpu = Backend::cpu();
    let mut r = Rng::new(0x2075_0001);
    // (B, H, N, D, max_pos, offset): one token, odd head counts, the table's last rows.
    for (b, h, n, d, max_pos, offset) in [(1usize, 3usize, 5usize, 8usize, 12usize, 2usize), (2, 1, 1, 4, 3, 2), (1, 2, 7, 16, 7, 0)] {
        let x = r.tensor(&[b, h, n, d]);
        let (cos, sin) = (r.tensor(&[max_pos, d / 2]), r.tensor(&[max_pos, d / 2]));
        let want = cpu.rope(&x, &cos, &sin, offset).unwrap().to_f32_vec().unwrap();
        let v = |t: &Tensor| t.to_f32_vec().unwrap();
        let (xv, cv, sv) = (v(&x), v(&cos), v(&sin));
        let mut out = vec![f32::NAN; xv.len()];
        let o = out.as_mut_ptr() as usize;
        let pairs = (b * h * n * d / 2) as u64;
        // SAFETY: rope_f32's parameter list. Two blocks of 32: the grid-stride loop covers the rest.
        let f: Rope = unsafe { emu.kernel("rope_f32") };
        emu.launch(grid_rows(2), (32, 1, 1), || unsafe { f(xv.as_ptr(), o as *mut f32, cv.as_ptr(), sv.as_ptr(), pairs, n as u32, (d / 2) as u32, offset as u64) });
        assert_close(&format!("rope_f32 B{b} H{h} N{n} D{d} offset {offset}"), &out, &want, TOL);
    }
}

#[test]
fn rope_qk_write_kv_matches_the_cpu_and_fills_only_its_rows() {
    let Some(emu) = emu::kernels("rope") else { return };
    let cpu = Backend::cpu();
    let mut r = Rng::new(0x2075_0002);
    // (B, H, Hkv, n new tokens, D, cache rows, pos): a decode step, a prefill chunk after a
    // past, grouped KV heads.
    for (b, h, hkv, n, d, max, pos) in [(1usize, 4usize, 2usize, 1usize, 8usize, 6usize, 3usize), (2, 2, 2, 4, 4, 9, 5), (1, 3, 1, 3, 16, 3, 0)] {
        let q = r.tensor(&[b, h, n, d]);
        let (k, v) = (r.tensor(&[b, hkv, n, d]), r.tensor(&[b, hkv, n, d]));
        let (cos, sin) = (r.tensor(&[max, d / 2]), r.tensor(&[max, d / 2]));
        let q_want = cpu.rope(&q, &cos, &sin, pos).unwrap().to_f32_vec().unwrap();
        let k_roped = cpu.rope(&k, &cos, &sin, pos).unwrap().to_f32_vec().unwrap();
        let vv = |t: &Tensor| t.to_f32_vec().unwrap();
        let (qv, kv, v_in, cv, sv) = (vv(&q), vv(&k), vv(&v), vv(&cos), vv(&sin));
        // The caches hold earlier values (−7) that the step must leave alone outside its rows.
        let (mut k_want, mut v_want) = (vec![-7.0f32; b * hkv * max * d], vec![-7.0f32; b * hkv * max * d]);
        for head in 0..b * hkv {
            for t in 0..n {
                let (src, dst) = ((head * n + t) * d, (head * max + pos + t) * d);
                k_want[dst..dst + d].copy_from_slice(&k_roped[src..src + d]);
                v_want[dst..dst + d].copy_from_slice(&v_in[src..src + d]);
            }
        }
        let (mut q_out, mut k_cache, mut v_cache) = (vec![f32::NAN; qv.len()], vec![-7.0f32; k_want.len()], vec![-7.0f32; v_want.len()]);
        let (qo, kc, vc) = (q_out.as_mut_ptr() as usize, k_cache.as_mut_ptr() as usize, v_cache.as_mut_ptr() as usize);
        let (q_pairs, kv_pairs) = ((b * h * n * d / 2) as u64, (b * hkv * n * d / 2) as u64);
        // SAFETY: rope_qk_write_kv_f32's parameter list; no step buffer (pos from the argument).
        let f: RopeQkv = unsafe { emu.kernel("rope_qk_write_kv_f32") };
        emu.launch(grid_rows(2), (32, 1, 1), || unsafe {
            f(qv.as_ptr(), qo as *mut f32, kv.as_ptr(), v_in.as_ptr(), kc as *mut f32, vc as *mut f32, cv.as_ptr(), sv.as_ptr(), q_pairs, kv_pairs, n as u32, (d / 2) as u32, pos as u64, max as u64, std::ptr::null())
        });
        let what = format!("rope_qk_write_kv_f32 B{b} H{h} Hkv{hkv} n{n} D{d} max {max} pos {pos}");
        assert_close(&format!("{what}: q"), &q_out, &q_want, TOL);
        assert_close(&format!("{what}: k cache"), &k_cache, &k_want, TOL);
        assert_eq!(v_cache, v_want, "{what}: v cache");
    }
}

#[test]
fn rope_qk_write_kv_into_bf16_caches_rounds_the_f32_kernels_values() {
    let Some(emu) = emu::kernels("rope") else { return };
    let mut r = Rng::new(0x2075_0003);
    // (B, H, Hkv, n, D, cache rows, pos, position from a step buffer).
    for (b, h, hkv, n, d, max, pos, stepped) in [(1usize, 4usize, 2usize, 1usize, 8usize, 6usize, 3usize, true), (2, 2, 2, 4, 16, 9, 5, false), (1, 3, 1, 3, 128, 3, 0, false)] {
        let vv = |t: &Tensor| t.to_f32_vec().unwrap();
        let (qv, kv, v_in) = (vv(&r.tensor(&[b, h, n, d])), vv(&r.tensor(&[b, hkv, n, d])), vv(&r.tensor(&[b, hkv, n, d])));
        let (cv, sv) = (vv(&r.tensor(&[max, d / 2])), vv(&r.tensor(&[max, d / 2])));
        let (q_pairs, kv_pairs) = ((b * h * n * d / 2) as u64, (b * hkv * n * d / 2) as u64);
        let cells = b * hkv * max * d;
        // The step buffer's slots: token id, position, key count (kernels/common.cuh STEP_*).
        let step = [0i32, pos as i32, (pos + n) as i32];
        let run = |name: &str, q_out: &mut [f32], kc: *mut c_void, vc: *mut c_void| {
            let (qo, kc, vc) = (q_out.as_mut_ptr() as usize, kc as usize, vc as usize);
            // With a step buffer the kernel must take the position from it, not the argument.
            let (pos_arg, stepp) = if stepped { (u64::MAX / 4, step.as_ptr() as usize) } else { (pos as u64, 0) };
            // SAFETY: the parameter list of rope_qk_write_kv_{f32,bf16kv}; the caches hold
            // b·hkv·max·d elements of the entry point's type.
            let f: RopeQkvAny = unsafe { emu.kernel(name) };
            emu.launch(grid_rows(2), (32, 1, 1), || unsafe {
                f(qv.as_ptr(), qo as *mut f32, kv.as_ptr(), v_in.as_ptr(), kc as *mut c_void, vc as *mut c_void, cv.as_ptr(), sv.as_ptr(), q_pairs, kv_pairs, n as u32, (d / 2) as u32, pos_arg, max as u64, stepp as *const i32)
            });
        };
        let (mut q32, mut k32, mut v32) = (vec![f32::NAN; qv.len()], vec![-7.0f32; cells], vec![-7.0f32; cells]);
        run("rope_qk_write_kv_f32", &mut q32, k32.as_mut_ptr() as *mut c_void, v32.as_mut_ptr() as *mut c_void);
        let old = bf16::from_f32(-7.0).to_bits();
        let (mut q16, mut k16, mut v16) = (vec![f32::NAN; qv.len()], vec![old; cells], vec![old; cells]);
        run("rope_qk_write_kv_bf16kv", &mut q16, k16.as_mut_ptr() as *mut c_void, v16.as_mut_ptr() as *mut c_void);
        let what = format!("rope_qk_write_kv_bf16kv B{b} H{h} Hkv{hkv} n{n} D{d} max {max} pos {pos} stepped {stepped}");
        let bits = |x: &[f32]| x.iter().map(|&f| bf16::from_f32(f).to_bits()).collect::<Vec<u16>>();
        assert_eq!(q16.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), q32.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{what}: q");
        assert_eq!(k16, bits(&k32), "{what}: k cache");
        assert_eq!(v16, bits(&v32), "{what}: v cache");
        // And the f32 kernel wrote the step's rows (so the comparison covers them).
        let written = k32.iter().filter(|&&x| x != -7.0).count();
        assert_eq!(written, b * hkv * n * d, "{what}: rows written");
    }
}
