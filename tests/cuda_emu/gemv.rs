//! kernels/gemv.cu (decode GEMVs: batched 16-byte weight loads, the m = 1 builds, the fused
//! RMSNorm and SwiGLU variants) against the CPU backend's `linear`, `rms_norm_linear_many` and
//! `rms_norm_swiglu`, for f32, f16 and bf16 weights. K = 2056 is one chunk of 8 past a full batch
//! of loads (2048 weights a warp for f16/bf16, 1024 for f32), K = 40 less than one batch, K = 37
//! the scalar path. Launches take fewer warps than rows, so warps also stride over rows.

use visword::{Activation, Backend, DType, Tensor};

use crate::common::{assert_close, Rng};
use crate::emu::{self, tol, Dev};

/// Two blocks of 8 warps: fewer warps than the tests' rows.
const GRID: (u32, u32, u32) = (2, 1, 1);
const BLOCK: (u32, u32, u32) = (256, 1, 1);
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const KS: [usize; 3] = [2056, 40, 37];

type Gemv = unsafe extern "C" fn(*const f32, *const u8, *mut f32, u32, u64, u32, *const u8, i32, i32, *const f32);
type GemvMany = unsafe extern "C" fn(*const f32, *const f32, f32, *const u8, *const u8, *const u8, *mut f32, *mut f32, *mut f32, u32, u64, u64, u64, u32);

fn suffix(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "f32",
        DType::F16 => "f16",
        _ => "bf16",
    }
}

fn dt_code(dt: DType) -> i32 {
    match dt {
        DType::F32 => 0,
        DType::F16 => 1,
        _ => 2,
    }
}

fn weight(r: &mut Rng, n: usize, k: usize, dt: DType) -> Tensor {
    let s = 1.0 / (k as f32).sqrt();
    Tensor::from_f32(r.vec(n * k).iter().map(|v| v * s).collect(), vec![n, k]).unwrap().to_dtype(dt).unwrap()
}

#[test]
fn gemv_bias_gelu_residual() {
    let Some(emu) = emu::kernels("gemv") else { return };
    let cpu = Backend::cpu();
    let mut r = Rng::new(0x6E_3000);
    let n = 19;
    for dt in DTYPES {
        for k in KS {
            // (m, kernel built for m = 1)
            for (m, m1) in [(1, true), (1, false), (3, false), (4, false)] {
                let x = r.tensor(&[m, k]);
                let w = weight(&mut r, n, k, dt);
                // A bias stored in the weight's dtype (the kernel widens it; the CPU takes f32).
                let bias = r.tensor(&[n]).to_dtype(dt).unwrap();
                let res = r.tensor(&[m, n]);
                let want = cpu.linear(&x, &w, Some(&bias.to_dtype(DType::F32).unwrap()), Activation::Gelu, Some(&res)).unwrap().to_f32_vec().unwrap();
                let name = format!("gemv_{}{}", if m1 { "m1_" } else { "" }, suffix(dt));
                // SAFETY: the GEMV macro's parameter list (weights and bias as raw bytes).
                let f: Gemv = unsafe { emu.kernel(&name) };
                let (xd, wd, bd, rd) = (Dev::new(&x), Dev::new(&w), Dev::new(&bias), Dev::new(&res));
                let mut y = vec![f32::NAN; m * n];
                let yp = y.as_mut_ptr() as usize;
                emu.launch(GRID, BLOCK, || unsafe { f(xd.f32(), wd.ptr(), yp as *mut f32, m as u32, n as u64, k as u32, bd.ptr(), dt_code(dt), 1, rd.f32()) });
                assert_close(&format!("{name} m {m} k {k}"), &y, &want, tol(k));
            }
        }
    }
}

#[test]
fn gemv_norm_many_three_weights() {
    let Some(emu) = emu::kernels("gemv") else { return };
    let cpu = Backend::cpu();
    let mut r = Rng::new(0x6E_3001);
    let ns = [9usize, 5, 7];
    let eps = 1e-5;
    for dt in DTYPES {
        for k in KS {
            for m in [1usize, 2] {
                let x = r.tensor(&[m, k]);
                let g = r.tensor(&[k]);
                let ws: Vec<Tensor> = ns.iter().map(|&n| weight(&mut r, n, k, dt)).collect();
                let want = cpu.rms_norm_linear_many(&x, &g, eps, &ws.iter().collect::<Vec<_>>()).unwrap();
                let name = format!("gemv_norm_many_{}{}", if m == 1 { "m1_" } else { "" }, suffix(dt));
                // SAFETY: the GEMV_MANY1 macro's parameter list.
                let f: GemvMany = unsafe { emu.kernel(&name) };
                let (xd, gd) = (Dev::new(&x), Dev::new(&g));
                let wd: Vec<Dev> = ws.iter().map(Dev::new).collect();
                let mut ys: Vec<Vec<f32>> = ns.iter().map(|&n| vec![f32::NAN; m * n]).collect();
                let yp: Vec<usize> = ys.iter_mut().map(|y| y.as_mut_ptr() as usize).collect();
                emu.launch(GRID, BLOCK, || unsafe {
                    f(xd.f32(), gd.f32(), eps, wd[0].ptr(), wd[1].ptr(), wd[2].ptr(), yp[0] as *mut f32, yp[1] as *mut f32, yp[2] as *mut f32, m as u32, ns[0] as u64, ns[1] as u64, ns[2] as u64, k as u32)
                });
                for (i, (y, w)) in ys.iter().zip(&want).enumerate() {
                    assert_close(&format!("{name} m {m} k {k} weight {i}"), y, &w.to_f32_vec().unwrap(), tol(k));
                }
            }
        }
    }
}

#[test]
fn gemv_norm_swiglu() {
    let Some(emu) = emu::kernels("gemv") else { return };
    let cpu = Backend::cpu();
    let mut r = Rng::new(0x6E_3002);
    let n = 21;
    let eps = 1e-5;
    for dt in DTYPES {
        for k in KS {
            for m in [1usize, 3] {
                let x = r.tensor(&[m, k]);
                let g = r.tensor(&[k]);
                let (wg, wu) = (weight(&mut r, n, k, dt), weight(&mut r, n, k, dt));
                let want = cpu.rms_norm_swiglu(&x, &g, eps, &wg, &wu).unwrap().to_f32_vec().unwrap();
                let name = format!("gemv_norm_swiglu_{}{}", if m == 1 { "m1_" } else { "" }, suffix(dt));
                // SAFETY: the GEMV_MANY1 macro's parameter list.
                let f: GemvMany = unsafe { emu.kernel(&name) };
                let (xd, gd, gw, uw) = (Dev::new(&x), Dev::new(&g), Dev::new(&wg), Dev::new(&wu));
                let mut y = vec![f32::NAN; m * n];
                let yp = y.as_mut_ptr() as usize;
                emu.launch(GRID, BLOCK, || unsafe {
                    f(xd.f32(), gd.f32(), eps, gw.ptr(), uw.ptr(), std::ptr::null(), yp as *mut f32, std::ptr::null_mut(), std::ptr::null_mut(), m as u32, n as u64, n as u64, 0, k as u32)
                });
                assert_close(&format!("{name} m {m} k {k}"), &y, &want, tol(k));
            }
        }
    }
}
