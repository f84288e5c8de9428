//! kernels/conv.cu's `im2col_f32`: the columns it lays out, multiplied by the weight on the host,
//! give the CPU backend's conv2d (strides, padding, kernels wider than tall, one output cell).

use visword::Backend;

use crate::common::{assert_close, Rng, Tol};
use crate::emu::{self, grid_rows};

type Im2col = unsafe extern "C" fn(*const f32, *mut f32, u64, u32, u32, u32, u32, u32, u32, u32, u32);

#[test]
fn im2col_columns_times_the_weight_give_the_cpu_conv() {
    let Some(emu) = emu::kernels("conv") else { return };
    let cpu = Backend::cpu();
    let mut r = Rng::new(0xC0_1C01);
    // (cin, h, w, cout, kh, kw, stride, pad)
    for (cin, h, w, cout, kh, kw, stride, pad) in [(3usize, 9usize, 11usize, 4usize, 3usize, 3usize, 1usize, 1usize), (2, 8, 8, 3, 4, 4, 4, 0), (1, 5, 7, 2, 2, 3, 2, 2), (4, 3, 3, 1, 3, 3, 1, 0)] {
        let x = r.tensor(&[1, cin, h, w]);
        let wt = r.tensor(&[cout, cin, kh, kw]);
        let want = cpu.conv2d(&x, &wt, None, stride, pad).unwrap();
        let (oh, ow) = ((h + 2 * pad - kh) / stride + 1, (w + 2 * pad - kw) / stride + 1);
        assert_eq!(want.shape(), [1, cout, oh, ow]);
        let (kk, np) = (cin * kh * kw, oh * ow);
        let xv = x.to_f32_vec().unwrap();
        let mut cols = vec![f32::NAN; kk * np];
        let c = cols.as_mut_ptr() as usize;
        // SAFETY: im2col_f32's parameter list. Two blocks of 32: the grid-stride loop covers the rest.
        let f: Im2col = unsafe { emu.kernel("im2col_f32") };
        emu.launch(grid_rows(2), (32, 1, 1), || unsafe {
            f(xv.as_ptr(), c as *mut f32, (kk * np) as u64, h as u32, w as u32, kh as u32, kw as u32, stride as u32, pad as u32, oh as u32, ow as u32)
        });
        let wv = wt.to_f32_vec().unwrap();
        let y: Vec<f32> = (0..cout).flat_map(|o| (0..np).map(move |p| (o, p))).map(|(o, p)| (0..kk).map(|k| wv[o * kk + k] * cols[k * np + p]).sum()).collect();
        assert_close(&format!("im2col_f32 cin {cin} {h}×{w} k {kh}×{kw} stride {stride} pad {pad}"), &y, &want.to_f32_vec().unwrap(), Tol { atol: 1e-5, rtol: 1e-5 });
    }
}
