//! kernels/layout.cu's window partition and its inverse (`windows_f32`, `windows_f32x4`)
//! against the CPU backend's composition of pads, permutes and narrows: grids that need
//! padding and grids that do not, channel counts that take the float4 build and ones that do not,
//! SAM-H's 64-token grid in 14-token windows.

use visword::Backend;

use crate::common::Rng;
use crate::emu::{self, grid_rows};

type Windows<T> = unsafe extern "C" fn(*const T, *mut T, u64, u32, u32, u32, u32, i32);

#[test]
fn windows_match_the_composed_partition_both_ways() {
    let Some(emu) = emu::kernels("layout") else { return };
    let cpu = Backend::cpu();
    let mut r = Rng::new(0x1A70_0001);
    // (grid side G, window side w, channels D)
    for (g, w, d) in [(10usize, 4usize, 8usize), (7, 7, 3), (9, 4, 5), (64, 14, 4), (5, 8, 12)] {
        let x = r.tensor(&[g, g, d]);
        let want = cpu.window_partition(&x, w).unwrap();
        let n = g.div_ceil(w);
        assert_eq!(want.shape(), [n * n, w * w, d]);
        let (xv, wv) = (x.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
        let vec4 = d % 4 == 0;
        let name = if vec4 { "windows_f32x4" } else { "windows_f32" };
        // SAFETY: the kernels' parameter lists (float4 is four f32s in the host build).
        let f: Windows<f32> = unsafe { emu.kernel(name) };
        let run = |src: &[f32], len: usize, to_windows: bool| {
            let mut out = vec![f32::NAN; len];
            let op = out.as_mut_ptr() as usize;
            let (units, dd) = if vec4 { (len / 4, d / 4) } else { (len, d) };
            // Fewer threads than units: the grid-stride loop covers the rest.
            emu.launch(grid_rows(units.div_ceil(256).min(3)), (256, 1, 1), || unsafe {
                f(src.as_ptr(), op as *mut f32, units as u64, dd as u32, g as u32, w as u32, n as u32, to_windows as i32)
            });
            out
        };
        let got = run(&xv, wv.len(), true);
        assert_eq!(got, wv, "{name} partition G {g} w {w} D {d}");
        let back = run(&wv, g * g * d, false);
        let want_back = cpu.window_unpartition(&want, w, g).unwrap().to_f32_vec().unwrap();
        assert_eq!(back, want_back, "{name} unpartition G {g} w {w} D {d}");
        assert_eq!(back, xv, "G {g} w {w} D {d}: unpartition(partition(x)) is not x");
    }
    assert!(cpu.window_partition(&r.tensor(&[4, 5, 2]), 2).is_err(), "a grid that is not square");
    assert!(cpu.window_unpartition(&r.tensor(&[4, 9, 2]), 2, 4).is_err(), "windows of the wrong size");
}
