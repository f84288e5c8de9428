//! The superpixel selection steps where the mask bitmaps are (docs/svp.md §2.4–2.6): box NMS
//! and level selection (`Backend::mask_select`) and painting (`Backend::mask_paint`) over the
//! rows of `Backend::mask_stats`, so on a GPU the bitmaps of every prompt's masks (8 KB a mask
//! at 256² cells) never cross to the host: only the candidates go over, and their verdicts and
//! the region map come back.
//!
//! Overlap thresholds are per mille and compared exactly in integers (1000 · intersection >
//! nms · union), so every backend makes the same decisions, ties included.

use super::{cpu, profile, Backend, MASK_STATS_HEADER};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A candidate mask for `mask_select`: its row of the `mask_stats` output, whether it is a
/// whole-object mask (level selection always takes those), its cell count and its inclusive box
/// `[x0, y0, x1, y1]` (both from that row's header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskCandidate {
    pub plane: usize,
    pub whole: bool,
    pub area: u32,
    pub bbox: [usize; 4],
}

/// The candidates as the GPU kernels read them: 7 i32 each, `[plane, whole, area, x0, y0, x1,
/// y1]` (the caller checked that every value fits).
pub(crate) fn pack_candidates(cands: &[MaskCandidate]) -> Vec<i32> {
    cands
        .iter()
        .flat_map(|c| {
            let [x0, y0, x1, y1] = c.bbox.map(|v| v as i32);
            [c.plane as i32, c.whole as i32, c.area as i32, x0, y0, x1, y1]
        })
        .collect()
}

/// What `mask_select` decided for one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Its box clashes with an earlier surviving candidate's.
    Suppressed,
    /// Survived NMS, but level selection found it mostly covered already.
    Rejected,
    Accepted,
}

/// The layout of `mask_stats` rows over an `h`-row rectangle: `planes` rows of `row_len` i32,
/// `words` u32 bitmap words per rectangle row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskRows {
    pub planes: usize,
    pub row_len: usize,
    pub h: usize,
    pub words: usize,
}

/// The most rectangle cells the selection takes: its per-mille products stay within u32.
pub const MAX_SELECT_CELLS: usize = 4_000_000;

/// Bitmap words of the rectangle the GPU kernels keep in workgroup memory (a 256 × 256 view).
pub(crate) const GPU_COVERED_WORDS: usize = 2048;

impl MaskRows {
    /// Check `stats` (I32 [planes, MASK_STATS_HEADER + h·words]) against an `h`-row rectangle.
    pub fn of(op: &'static str, stats: &Tensor, h: usize) -> Result<MaskRows> {
        let s = stats.shape();
        let shaped = s.len() == 2 && stats.dtype() == DType::I32 && h > 0 && s[1] > MASK_STATS_HEADER && (s[1] - MASK_STATS_HEADER).is_multiple_of(h);
        if !shaped {
            return Err(Error::shape(op, format!("stats {s:?} {}: expected the i32 mask_stats rows of a {h}-row rectangle", stats.dtype())));
        }
        if i32::try_from(s[0]).is_err() {
            return Err(Error::shape(op, format!("{} stats rows exceed i32 plane indices", s[0])));
        }
        let words = (s[1] - MASK_STATS_HEADER) / h;
        if h * words * 32 > MAX_SELECT_CELLS {
            return Err(Error::shape(op, format!("a {h}-row rectangle of {} columns exceeds {MAX_SELECT_CELLS} cells", 32 * words)));
        }
        Ok(MaskRows { planes: s[0], row_len: s[1], h, words })
    }

    fn check_plane(&self, op: &'static str, plane: usize) -> Result<()> {
        if plane >= self.planes {
            return Err(Error::arg(op, format!("mask plane {plane} of {} stats rows", self.planes)));
        }
        Ok(())
    }
}

fn check_permille(op: &'static str, name: &str, v: u32) -> Result<()> {
    if v > 1000 {
        return Err(Error::arg(op, format!("{name} is {v}‰, expected 0..=1000")));
    }
    Ok(())
}

impl Backend {
    /// Box NMS, then level selection, over candidate masks given in visiting order, on the
    /// bitmaps of `stats` (the `mask_stats` rows of an `h`-row rectangle).
    /// * NMS: a candidate is suppressed when its box has an IoU above `nms_permille` / 1000
    ///   with an earlier survivor's.
    /// * Level selection, over the survivors in the same order: a whole-object mask is
    ///   accepted; another when fewer than `overlap_permille` / 1000 of its cells lie in masks
    ///   accepted before it.
    ///
    /// Integer comparisons throughout: every backend gives the same verdicts.
    pub fn mask_select(&self, stats: &Tensor, h: usize, cands: &[MaskCandidate], nms_permille: u32, overlap_permille: u32) -> Result<Vec<Selection>> {
        const OP: &str = "mask_select";
        let rows = MaskRows::of(OP, stats, h)?;
        check_permille(OP, "the NMS threshold", nms_permille)?;
        check_permille(OP, "the overlap threshold", overlap_permille)?;
        for c in cands {
            rows.check_plane(OP, c.plane)?;
            let [x0, y0, x1, y1] = c.bbox;
            let cells = (x1.wrapping_sub(x0).wrapping_add(1)) as u64 * (y1.wrapping_sub(y0).wrapping_add(1)) as u64;
            if x0 > x1 || y0 > y1 || x1 >= 32 * rows.words || y1 >= h || c.area == 0 || c.area as u64 > cells {
                return Err(Error::arg(OP, format!("candidate on plane {} has box {:?} and area {}: expected a non-empty box inside {h}×{} cells holding the area", c.plane, c.bbox, c.area, 32 * rows.words)));
            }
        }
        let codes = {
            let _span = profile::Span::start(self, || OP.to_string());
            let gpu_fits = h * rows.words <= GPU_COVERED_WORDS && u32::try_from(cands.len()).is_ok();
            match self {
                Backend::Cuda(b) if gpu_fits => b.mask_select(stats, rows, cands, nms_permille, overlap_permille)?,
                Backend::Wgpu(b) if gpu_fits => b.mask_select(stats, rows, cands, nms_permille, overlap_permille)?,
                _ => {
                    let host = self.to_host(stats)?;
                    cpu::mask_select::mask_select(host.as_i32()?, rows, cands, nms_permille, overlap_permille)
                }
            }
        };
        codes
            .iter()
            .map(|&c| match c {
                0 => Ok(Selection::Suppressed),
                1 => Ok(Selection::Rejected),
                2 => Ok(Selection::Accepted),
                _ => Err(Error::shape(OP, format!("the {} kernel returned verdict {c}", self.name()))),
            })
            .collect()
    }

    /// The region map of the `h × w` rectangle of `stats` (`mask_stats` rows): cell (y, x)
    /// takes the region of the last `(plane, region)` entry of `masks` whose mask holds it, −1
    /// where none does. Row-major, h·w entries.
    pub fn mask_paint(&self, stats: &Tensor, h: usize, w: usize, masks: &[(usize, i32)]) -> Result<Vec<i32>> {
        const OP: &str = "mask_paint";
        let rows = MaskRows::of(OP, stats, h)?;
        if w == 0 || w > 32 * rows.words {
            return Err(Error::shape(OP, format!("width {w} does not fit the stats rows' {} columns", 32 * rows.words)));
        }
        for &(plane, _) in masks {
            rows.check_plane(OP, plane)?;
        }
        let _span = profile::Span::start(self, || OP.to_string());
        match self {
            Backend::Cuda(b) => b.mask_paint(stats, rows, w, masks),
            Backend::Wgpu(b) => b.mask_paint(stats, rows, w, masks),
            Backend::Cpu(_) => Ok(cpu::mask_select::mask_paint(stats.as_i32()?, rows, w, masks)),
        }
    }
}
