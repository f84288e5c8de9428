//! kernels/norm.cu's RMSNorm against the CPU backend: `rms_norm_f32`, and `rms_norm_bf16` (the
//! bf16 operand of the prefill GEMMs), which must be exactly `rms_norm_f32`'s values rounded to
//! bf16 (nearest even).

use visword::{Backend, Tensor};

use crate::common::{assert_close, Rng};
use crate::emu::{self, grid_rows, tol};

const THREADS: u32 = 128;

type Norm<T> = unsafe extern "C" fn(*const f32, *mut T, u64, u32, *const f32, i32, f32);

#[test]
fn rms_norm_f32_and_bf16_match_the_cpu() {
    let Some(emu) = emu::kernels("norm") else { return };
    let mut r = Rng::new(0x0A75_0001);
    let eps = 1e-5;
    // Rows shorter and longer than the block, one element, Llama-7B's width.
    for (rows, d) in [(5usize, 100usize), (3, 300), (1, 1), (6, 4096)] {
        let (x, w) = (r.tensor(&[rows, d]), r.tensor(&[d]));
        let (xv, wv) = (x.to_f32_vec().unwrap(), w.to_f32_vec().unwrap());
        let want = Backend::cpu().rms_norm(&x, &w, eps).unwrap().to_f32_vec().unwrap();
        let mut y = vec![f32::NAN; rows * d];
        let mut yb = vec![0xFFFFu16; rows * d];
        let (yp, ybp) = (y.as_mut_ptr() as usize, yb.as_mut_ptr() as usize);
        // SAFETY: the kernels' parameter lists (f32 weight: dtype code 0).
        let f: Norm<f32> = unsafe { emu.kernel("rms_norm_f32") };
        let fb: Norm<u16> = unsafe { emu.kernel("rms_norm_bf16") };
        emu.launch(grid_rows(rows), (THREADS, 1, 1), || unsafe { f(xv.as_ptr(), yp as *mut f32, rows as u64, d as u32, wv.as_ptr(), 0, eps) });
        emu.launch(grid_rows(rows), (THREADS, 1, 1), || unsafe { fb(xv.as_ptr(), ybp as *mut u16, rows as u64, d as u32, wv.as_ptr(), 0, eps) });
        assert_close(&format!("rms_norm_f32 {rows}×{d}"), &y, &want, tol(d));
        let rounded = Tensor::from_f32(y.clone(), vec![rows * d]).unwrap().to_dtype(visword::DType::BF16).unwrap().to_dtype(visword::DType::F32).unwrap().to_f32_vec().unwrap();
        let got: Vec<f32> = yb.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect();
        let first = got.iter().zip(&rounded).position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(first.is_none(), "rms_norm_bf16 {rows}×{d}: element {first:?} is not rms_norm_f32's value rounded to bf16");
    }
}

type LayerNorm<T> = unsafe extern "C" fn(*const f32, *mut T, u64, u32, *const f32, i32, *const f32, i32, f32);

/// `layer_norm` and its warp-per-row builds against the CPU, and their bf16 twins (the operand
/// of `layer_norm_mlp`'s first GEMM), which must be exactly the f32 results rounded to bf16.
#[test]
fn layer_norm_f32_and_bf16_match_the_cpu() {
    let Some(emu) = emu::kernels("norm") else { return };
    let mut r = Rng::new(0x0A75_0002);
    let eps = 1e-5;
    // (rows, d, kernel suffix before _f32 / _bf16, threads per block, rows per block)
    for (rows, d, kernel, threads, per_block) in [(5usize, 100usize, "layer_norm", 128u32, 1usize), (3, 1030, "layer_norm", 128, 1), (11, 64, "layer_norm_warp1", 256, 8), (9, 256, "layer_norm_warp2", 256, 8), (4, 1024, "layer_norm_warp8", 256, 8)] {
        let (x, w, b) = (r.tensor(&[rows, d]), r.tensor(&[d]), r.tensor(&[d]));
        let (xv, wv, bv) = (x.to_f32_vec().unwrap(), w.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        let want = Backend::cpu().layer_norm(&x, &w, &b, eps).unwrap().to_f32_vec().unwrap();
        let mut y = vec![f32::NAN; rows * d];
        let mut yb = vec![0xFFFFu16; rows * d];
        let (yp, ybp) = (y.as_mut_ptr() as usize, yb.as_mut_ptr() as usize);
        // SAFETY: the kernels' parameter lists (f32 weight and bias: dtype code 0; the warp
        // builds take float4 / bf16x4 rows, the same bytes).
        let f: LayerNorm<f32> = unsafe { emu.kernel(&format!("{kernel}_f32")) };
        let fb: LayerNorm<u16> = unsafe { emu.kernel(&format!("{kernel}_bf16")) };
        let grid = if per_block == 1 { grid_rows(rows) } else { (rows.div_ceil(per_block) as u32, 1, 1) };
        emu.launch(grid, (threads, 1, 1), || unsafe { f(xv.as_ptr(), yp as *mut f32, rows as u64, d as u32, wv.as_ptr(), 0, bv.as_ptr(), 0, eps) });
        emu.launch(grid, (threads, 1, 1), || unsafe { fb(xv.as_ptr(), ybp as *mut u16, rows as u64, d as u32, wv.as_ptr(), 0, bv.as_ptr(), 0, eps) });
        assert_close(&format!("{kernel}_f32 {rows}×{d}"), &y, &want, tol(d));
        let rounded = Tensor::from_f32(y.clone(), vec![rows * d]).unwrap().to_dtype(visword::DType::BF16).unwrap().to_f32_vec().unwrap();
        let got: Vec<f32> = yb.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect();
        let first = got.iter().zip(&rounded).position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(first.is_none(), "{kernel}_bf16 {rows}×{d}: element {first:?} is not the f32 kernel's value rounded to bf16");
    }
}
