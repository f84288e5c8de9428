//! kernels/gemm.cu (`gemm_bf16_f32`: one-launch linear on bf16 weights, x rounded to bf16 as
//! it is staged, the epilogue fused) against the CPU backend's `linear` on the bf16-rounded x:
//! partial tiles in m and n, a k that ends inside a 32-wide k-step, one row, bias in f32 and
//! bf16, every epilogue form (activation, a residual of the output's shape, one shared by the
//! batch entries), and the mask decoder's token-side MLP shape.

use visword::{Activation, Backend, DType, Tensor};

use crate::common::{assert_close, Rng};
use crate::emu::{self, tol, Dev};

type Gemm = unsafe extern "C" fn(*const f32, *const u16, *mut f32, i32, i32, i32, *const u8, i32, i32, *const f32, i32);

#[test]
fn gemm_bf16_matches_the_cpu_on_rounded_operands() {
    let Some(emu) = emu::kernels("gemm") else { return };
    // SAFETY: gemm_bf16_f32's parameter list.
    let f: Gemm = unsafe { emu.kernel("gemm_bf16_f32") };
    let mut r = Rng::new(0x6E_0001);
    let cpu = Backend::cpu();
    // (m, n, k, activation, bias dtype, residual rows: 0 none, m full, else shared)
    let cases: [(usize, usize, usize, Activation, Option<DType>, usize); 7] = [
        (70, 72, 40, Activation::None, None, 0),
        (130, 100, 96, Activation::Gelu, Some(DType::F32), 130),
        (1, 9, 8, Activation::QuickGelu, Some(DType::BF16), 1),
        (96, 24, 64, Activation::Relu, Some(DType::F32), 32),
        (65, 65, 264, Activation::Silu, None, 65),
        (5, 130, 16, Activation::None, Some(DType::BF16), 5),
        (448, 256, 256, Activation::Relu, Some(DType::F32), 0),
    ];
    for (m, n, k, act, bias_dt, res_rows) in cases {
        let x = r.tensor(&[m, k]);
        let s = 1.0 / (k as f32).sqrt();
        let w = Tensor::from_f32(r.vec(n * k).iter().map(|v| v * s).collect(), vec![n, k]).unwrap().to_dtype(DType::BF16).unwrap();
        let bias = bias_dt.map(|dt| r.tensor(&[n]).to_dtype(dt).unwrap());
        let residual = (res_rows > 0).then(|| r.tensor(&[res_rows, n]));
        let x_ref = x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let bias_ref = bias.as_ref().map(|b| b.to_dtype(DType::F32).unwrap());
        // A shared residual is the batch form [1, rows, n] of an output [m / rows, rows, n].
        let (x_shaped, res_shaped) = match &residual {
            Some(rt) if res_rows < m => (x_ref.reshape(&[m / res_rows, res_rows, k]).unwrap(), Some(rt.reshape(&[1, res_rows, n]).unwrap())),
            _ => (x_ref.clone(), residual.clone()),
        };
        let want = cpu.linear(&x_shaped, &w.to_dtype(DType::F32).unwrap(), bias_ref.as_ref(), act, res_shaped.as_ref()).unwrap().to_f32_vec().unwrap();

        let (xd, wd) = (Dev::new(&x), Dev::new(&w));
        let bd = bias.as_ref().map(Dev::new);
        let bdt = match bias_dt {
            Some(DType::BF16) => 2,
            _ => 0,
        };
        let rv = residual.as_ref().map(|t| t.to_f32_vec().unwrap());
        let mut y = vec![f32::NAN; m * n];
        let yp = y.as_mut_ptr() as usize;
        let (xp, wp) = (xd.ptr() as usize, wd.ptr() as usize);
        let bp = bd.as_ref().map_or(0, |b| b.ptr() as usize);
        let rp = rv.as_ref().map_or(0, |v| v.as_ptr() as usize);
        let grid = (m.div_ceil(64) as u32, n.div_ceil(64) as u32, 1);
        let rows = res_rows.max(1) as i32;
        // SAFETY: buffers of the sizes the kernel reads and writes, alive for the launch.
        emu.launch(grid, (128, 1, 1), || unsafe {
            f(xp as *const f32, wp as *const u16, yp as *mut f32, m as i32, n as i32, k as i32, bp as *const u8, bdt, act.kernel_code() as i32, rp as *const f32, rows)
        });
        assert_close(&format!("gemm_bf16_f32 {m}×{k}·{n} {act:?} bias {bias_dt:?} residual rows {res_rows}"), &y, &want, tol(k));
    }
}
