//! kernels/elementwise.cu's GEMM epilogues: `epilogue_f32` against the CPU's bias + activation,
//! and `epilogue_bf16` / `epilogue_bf16x4` (the hidden layer of `layer_norm_mlp`, written as
//! the next GEMM's bf16 operand), which must be exactly `epilogue_f32`'s values rounded to bf16:
//! each column's bias, the four lanes of a float4 in order, the lower column in the lower half.

use visword::{Activation, Backend, DType, Tensor};

use crate::common::{assert_close, Rng};
use crate::emu::{self, tol};

type EpF32 = unsafe extern "C" fn(*mut f32, u64, u32, *const f32, i32, i32, *const f32, u64);
type EpBf16 = unsafe extern "C" fn(*const f32, *mut u16, u64, u32, *const f32, i32, i32);
type EpBf16x4 = unsafe extern "C" fn(*const f32, *mut u16, u32, u32, *const f32, i32, i32);

#[test]
fn epilogue_bf16_is_the_f32_epilogue_rounded() {
    let Some(emu) = emu::kernels("elementwise") else { return };
    let mut r = Rng::new(0xE1E_0001);
    // (rows, n, activation): n = 36 takes the float4 build, 37 the scalar one.
    for (rows, n, act) in [(7usize, 36usize, Activation::Gelu), (5, 37, Activation::QuickGelu), (3, 40, Activation::None)] {
        let code = act.kernel_code() as i32;
        let (y, bias) = (r.tensor(&[rows, n]), r.tensor(&[n]));
        let (yv, bv) = (y.to_f32_vec().unwrap(), bias.to_f32_vec().unwrap());
        let total = rows * n;
        // The CPU: act(y + bias) as a linear through an identity weight.
        let eye = Tensor::from_f32((0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect(), vec![n, n]).unwrap();
        let want = Backend::cpu().linear(&y, &eye, Some(&bias), act, None).unwrap().to_f32_vec().unwrap();
        // SAFETY: the kernels' parameter lists (f32 bias: dtype code 0).
        let (f, fb, f4): (EpF32, EpBf16, EpBf16x4) = unsafe { (emu.kernel("epilogue_f32"), emu.kernel("epilogue_bf16"), emu.kernel("epilogue_bf16x4")) };
        let mut inplace = yv.clone();
        let ip = inplace.as_mut_ptr() as usize;
        emu.launch((2, 1, 1), (64, 1, 1), || unsafe { f(ip as *mut f32, total as u64, n as u32, bv.as_ptr(), 0, code, std::ptr::null(), total as u64) });
        assert_close(&format!("epilogue_f32 {rows}×{n}"), &inplace, &want, tol(1));
        let rounded = Tensor::from_f32(inplace.clone(), vec![total]).unwrap().to_dtype(DType::BF16).unwrap().to_f32_vec().unwrap();
        let mut out = vec![0xFFFFu16; total];
        let op = out.as_mut_ptr() as usize;
        if n % 4 == 0 {
            emu.launch((2, 1, 1), (64, 1, 1), || unsafe { f4(yv.as_ptr(), op as *mut u16, (total / 4) as u32, (n / 4) as u32, bv.as_ptr(), 0, code) });
        } else {
            emu.launch((2, 1, 1), (64, 1, 1), || unsafe { fb(yv.as_ptr(), op as *mut u16, total as u64, n as u32, bv.as_ptr(), 0, code) });
        }
        let got: Vec<f32> = out.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect();
        let first = got.iter().zip(&rounded).position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(first.is_none(), "epilogue_bf16 {rows}×{n}: element {first:?} is not epilogue_f32's value rounded to bf16");
    }
}
