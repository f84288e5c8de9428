//! SAM's two-way attention on factored weights (`Backend::two_way_update` / `two_way_pool`,
//! shaders/two_way.wgsl): scores, softmax and the weighted sums of a tile of image tokens in one
//! workgroup, so no [B, N, R] or [B, N, C] intermediate reaches memory.

use super::{u32_of, Shader, WgpuBackend};
use crate::backend::TwoWayShape;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

const TWO_WAY: Shader = Shader {
    name: "two_way",
    source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/two_way.wgsl")),
};

/// Image tokens per tile (two_way.wgsl's TJ).
const TILE: usize = 32;
/// Most query rows and channels the shaders hold (two_way.wgsl's RMAX and CMAX).
const MAX_ROWS: usize = 64;
const MAX_CHANNELS: usize = 256;
/// The pool splits each prompt's tiles into ranges until about this many workgroups run.
const POOL_WORKGROUPS: usize = 1024;

impl WgpuBackend {
    /// Whether the fused shaders take these sizes (R ≤ 64 rows and C ≤ 256 channels: the tile's
    /// scores and an invocation's accumulators are fixed arrays); the composed path runs
    /// otherwise.
    pub(crate) fn two_way_fits(s: &TwoWayShape) -> bool {
        s.r <= MAX_ROWS && s.c <= MAX_CHANNELS
    }

    /// Params shared by both entry points: [B, Bx, N, C, R, G, Dy, T].
    fn two_way_params(op: &'static str, s: &TwoWayShape) -> Result<[u32; 8]> {
        Ok([u32_of(op, s.b)?, u32_of(op, s.bx)?, u32_of(op, s.n)?, u32_of(op, s.c)?, u32_of(op, s.r)?, u32_of(op, s.groups)?, u32_of(op, s.dy)?, u32_of(op, s.t())?])
    }

    /// Every operand's element count fits the shaders' u32 indices.
    fn two_way_sizes(op: &'static str, s: &TwoWayShape) -> Result<()> {
        for n in [s.b * s.n * s.c, s.bx * s.n * s.c, s.n * s.groups * s.dy, s.b * s.r * s.c, s.b * s.r * s.dy] {
            u32_of(op, n)?;
        }
        Ok(())
    }

    /// `Backend::two_way_update` in one dispatch: a workgroup per (prompt, tile of 32 image
    /// tokens). The shapes are checked by the caller; bias and LayerNorm go in as one [3, C]
    /// operand so the entry point binds at most 8 storage buffers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn two_way_update(&self, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, u: &Tensor, bias: &Tensor, ln: (&Tensor, &Tensor, f32), s: TwoWayShape) -> Result<Tensor> {
        const OP: &str = "two_way_update";
        Self::two_way_sizes(OP, &s)?;
        let out = self.alloc(vec![s.b, s.n, s.c], DType::F32)?;
        let vecs = self.concat(&[bias, ln.0, ln.1], 0)?;
        let mut params = Self::two_way_params(OP, &s)?.to_vec();
        params.push(ln.2.to_bits());
        let workgroups = u32_of(OP, s.b * s.n.div_ceil(TILE))?;
        let bufs = [x, y, ax, ay, u, &vecs, &out].map(|t| self.buffer(t, OP));
        let bufs = bufs.into_iter().collect::<Result<Vec<_>>>()?;
        self.dispatch(&TWO_WAY, "two_way_update", &bufs, &params, [workgroups, 1, 1])?;
        Ok(out)
    }

    /// `Backend::two_way_pool` in two dispatches: each prompt's tiles split into ranges (enough
    /// workgroups to fill a large GPU), each range's running max, sum and unnormalised weighted
    /// sum written to a partials buffer [B, NS, R·C + 2R], then merged in range order.
    pub(crate) fn two_way_pool(&self, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, s: TwoWayShape) -> Result<Tensor> {
        const OP: &str = "two_way_pool";
        Self::two_way_sizes(OP, &s)?;
        let tiles = s.n.div_ceil(TILE);
        let per_split = tiles.div_ceil(POOL_WORKGROUPS.div_ceil(s.b).clamp(1, tiles));
        let splits = tiles.div_ceil(per_split);
        let stride = s.r * s.c + 2 * s.r;
        let part = self.alloc(vec![s.b, splits, stride], DType::F32)?;
        let out = self.alloc(vec![s.b, s.r, s.c], DType::F32)?;
        u32_of(OP, part.numel())?;
        let mut params = Self::two_way_params(OP, &s)?.to_vec();
        params.extend([u32_of(OP, splits)?, u32_of(OP, per_split)?]);
        let bufs = [x, y, ax, ay, x, x, &out, &part].map(|t| self.buffer(t, OP));
        let bufs = bufs.into_iter().collect::<Result<Vec<_>>>()?;
        self.dispatch(&TWO_WAY, "two_way_pool", &bufs, &params, [u32_of(OP, s.b * splits)?, 1, 1])?;
        let outputs = u32_of(OP, s.b * s.r * s.c)?;
        self.dispatch(&TWO_WAY, "two_way_pool_combine", &bufs, &params, [outputs.div_ceil(256), 1, 1])?;
        Ok(out)
    }
}
