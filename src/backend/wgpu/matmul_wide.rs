//! Which plain GEMM kernel a `Gemm` runs on: the 64×64-tile kernel (shaders/matmul.wgsl, any
//! strides) or the 128×128 register-tiled one (shaders/matmul_wide.wgsl), which needs operands
//! read along k in aligned quads and pays off only on grids that fill a large GPU.
//! `VISWORD_WGPU_GEMM=wide|tile64` (read once when the backend opens) forces one of them where
//! it applies; the default picks by grid size.

use super::matmul::{Gemm, Strides};
use super::Shader;
use crate::error::{Error, Result};

pub(super) const MATMUL_WIDE: Shader = Shader {
    name: "matmul_wide",
    source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/matmul_store.wgsl"), include_str!("../../../shaders/matmul_wide.wgsl")),
};

/// Output tile of the wide kernel (rows and columns per workgroup).
pub(super) const WIDE_TILE: usize = 128;

/// Fewest 128×128 tiles (over the whole grid, batch included) for which the wide kernel is
/// chosen by default. Each of its workgroups does four times a 64×64 workgroup's work, so a
/// small grid leaves most of a large GPU idle (an H200 has 132 SMs, each running two of these
/// workgroups at a time): 577×1024 outputs are 40 wide tiles but 160 small ones, and stay on
/// the 64×64 kernel; 616×4096 (160 tiles) and larger go wide.
pub(super) const WIDE_MIN_TILES: usize = 128;

/// The plain GEMM kernel to use where the wide one applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// The wide kernel for grids of at least `WIDE_MIN_TILES` of its tiles, else the 64×64 one.
    Auto,
    /// The wide kernel whenever the operands qualify.
    Wide,
    /// Always the 64×64-tile kernel.
    Tile64,
}

impl GemmKernel {
    pub(super) fn code(self) -> u8 {
        match self {
            GemmKernel::Auto => 0,
            GemmKernel::Wide => 1,
            GemmKernel::Tile64 => 2,
        }
    }

    pub(super) fn from_code(c: u8) -> GemmKernel {
        match c {
            1 => GemmKernel::Wide,
            2 => GemmKernel::Tile64,
            _ => GemmKernel::Auto,
        }
    }

    /// The value of VISWORD_WGPU_GEMM (unset: `Auto`); an unknown value is an error.
    pub(super) fn from_env(v: Option<&str>) -> Result<GemmKernel> {
        match v.map(str::trim) {
            None | Some("") | Some("auto") => Ok(GemmKernel::Auto),
            Some("wide") => Ok(GemmKernel::Wide),
            Some("tile64") => Ok(GemmKernel::Tile64),
            Some(other) => Err(Error::arg("VISWORD_WGPU_GEMM", format!("`{other}`: expected auto, wide or tile64"))),
        }
    }
}

/// The operands allow the wide kernel's aligned quad loads: A and B both contiguous along k,
/// K and every other stride of A and B multiples of 4 (tensors start at their buffer's start,
/// so element index 4i is a whole vec4 of A, a whole vec2<u32> of f16 B, two of f32 B).
pub(super) fn qualifies(g: &Gemm) -> bool {
    let quad = |s: usize| s.is_multiple_of(4);
    let (a, b): (Strides, Strides) = (g.a.1, g.b.1);
    g.k > 0 && quad(g.k) && a.col == 1 && quad(a.row) && quad(a.batch) && b.row == 1 && quad(b.col) && quad(b.batch)
}

/// Whether `g` runs on the wide kernel under `choice`.
pub(super) fn use_wide(g: &Gemm, choice: GemmKernel) -> bool {
    if !qualifies(g) {
        return false;
    }
    match choice {
        GemmKernel::Wide => true,
        GemmKernel::Tile64 => false,
        GemmKernel::Auto => g.m.div_ceil(WIDE_TILE) * g.n.div_ceil(WIDE_TILE) * g.batch >= WIDE_MIN_TILES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        assert_eq!(GemmKernel::from_env(None).unwrap(), GemmKernel::Auto);
        assert_eq!(GemmKernel::from_env(Some("wide")).unwrap(), GemmKernel::Wide);
        assert_eq!(GemmKernel::from_env(Some(" tile64 ")).unwrap(), GemmKernel::Tile64);
        assert!(GemmKernel::from_env(Some("128")).is_err());
        for k in [GemmKernel::Auto, GemmKernel::Wide, GemmKernel::Tile64] {
            assert_eq!(GemmKernel::from_code(k.code()), k);
        }
    }

    /// A linear's GEMM (x [m, k] · w [n, k]ᵀ) with these strides for x and w.
    fn check(m: usize, n: usize, k: usize, batch: usize, a: Strides, b: Strides, choice: GemmKernel) -> bool {
        let t = crate::tensor::Tensor::zeros(vec![1]);
        let c = Strides { batch: m * n, row: n, col: 1 };
        let g = Gemm { m, n, k, batch, a: (&t, a), b: (&t, b), c: (&t, c), bias: None, act: crate::backend::Activation::None, residual: None, residual_period: 0 };
        use_wide(&g, choice)
    }

    #[test]
    fn selection() {
        let x = |k: usize| Strides { batch: 0, row: k, col: 1 };
        let w = |k: usize| Strides { batch: 0, row: 1, col: k };
        let auto = GemmKernel::Auto;
        // Grid size: 616×4096 is 5·32 = 160 tiles, 577×1024 only 5·8 = 40; a batch counts.
        assert!(check(616, 4096, 4096, 1, x(4096), w(4096), auto));
        assert!(!check(577, 1024, 1024, 1, x(1024), w(1024), auto));
        assert!(check(577, 1024, 1024, 4, Strides { batch: 577 * 1024, ..x(1024) }, w(1024), auto));
        assert!(check(577, 1024, 1024, 1, x(1024), w(1024), GemmKernel::Wide));
        assert!(!check(4096, 4096, 4096, 1, x(4096), w(4096), GemmKernel::Tile64));
        // Operands the quad loads cannot read: K or a stride not a multiple of 4, B along n.
        for (k, a, b) in [(4094, x(4094), w(4094)), (4096, x(4100 - 2), w(4096)), (4096, x(4096), Strides { batch: 0, row: 4096, col: 1 }), (4096, Strides { batch: 2, ..x(4096) }, w(4096)), (4096, x(4096), Strides { batch: 6, ..w(4096) }), (0, x(0), w(0))] {
            assert!(!check(4096, 4096, k, 1, a, b, GemmKernel::Wide), "K {k}, A {a:?}, B {b:?}");
        }
    }
}
