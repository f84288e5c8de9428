//! `out = x · wᵀ` for activations x [m×k] and weights w [n×k], both k-contiguous, without
//! packing either operand (AVX-512).
//!
//! A packed GEMM vectorises along m or n, so it must first transpose the k-contiguous weight rows
//! into panels; for the prefill shapes (m ≈ 128) that gather costs as much as the multiply
//! (measured: 26% of a SmolLM2 prefill in the gemm crate's scalar packing loop, against 42% in
//! its microkernel). Here the dot products run along k instead: a 4 × TILE_N (6) tile of outputs
//! keeps 24 accumulators, and each 16-wide step of k loads 4 rows of x and 6 rows of w for 24
//! FMAs, so the loop is bound by the FMA ports, not by loads. The accumulators are reduced in
//! groups of 16 with a shuffle tree (45 instructions per group).
//!
//! Blocking: each thread owns a contiguous range of weight rows (which may span several weight
//! matrices, for fused Q/K/V or gate/up); a tile of 6 weight rows (≤ 36 KB at k = 1536) stays in
//! L1 while the x rows of an m-block (≤ 768 KB) stream from L2, and the next tile is prefetched
//! into L2. Half-precision or misaligned weight rows are widened once per tile into an aligned
//! L1 buffer.

use half::{bf16, f16};
use rayon::prelude::*;

use super::matmul::{SendPtr, WeightElem};

/// Whether this CPU runs the kernel (AVX-512F); otherwise callers use the packed GEMM.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight element type whose rows can be widened to f32.
pub trait NtWeight: Copy + Send + Sync + 'static {
    /// f32 weights are read in place; halves are widened into a buffer first.
    const IN_PLACE: bool;
    fn widen_row(src: &[Self], dst: &mut [f32]);
}

impl NtWeight for f32 {
    const IN_PLACE: bool = true;
    fn widen_row(src: &[f32], dst: &mut [f32]) {
        dst[..src.len()].copy_from_slice(src);
    }
}

impl NtWeight for bf16 {
    const IN_PLACE: bool = false;
    fn widen_row(src: &[bf16], dst: &mut [f32]) {
        // bf16 → f32 is a 16-bit shift; this loop vectorises.
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = f32::from_bits((s.to_bits() as u32) << 16));
    }
}

impl NtWeight for f16 {
    const IN_PLACE: bool = false;
    fn widen_row(src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F checked; dst holds at least src.len() floats.
            unsafe { x86::widen_f16(src, dst) };
            return;
        }
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
    }
}

/// Weight rows per register tile (with 4 rows of x: 4·TILE_N accumulators).
const TILE_N: usize = 6;

/// Rows of x per m-block: the block (rows × k × 4 bytes) stays within ~768 KB of L2.
fn m_block(k: usize) -> usize {
    ((768 << 10) / (4 * k.max(1))).clamp(4, 512) / 4 * 4
}

/// For each segment s: outs[s] [m × ns[s]] = x [m×k] · ws[s]ᵀ. Every segment's weights are
/// [ns[s] × k]. Threads split the concatenated weight rows. Requires `available()`.
pub fn gemm_nt<W: NtWeight>(x: &[f32], m: usize, k: usize, ws: &[&[W]], ns: &[usize], outs: &mut [&mut [f32]]) {
    let total: usize = ns.iter().sum();
    assert!(
        x.len() >= m * k && ws.len() == ns.len() && outs.len() == ns.len() && (0..ns.len()).all(|s| ws[s].len() >= ns[s] * k && outs[s].len() >= m * ns[s]),
        "gemm_nt operands out of bounds"
    );
    if m == 0 || total == 0 {
        return;
    }
    let mut starts = Vec::with_capacity(ns.len() + 1);
    starts.push(0usize);
    for n in ns {
        starts.push(starts.last().copied().unwrap_or(0) + n);
    }
    // 512-bit loads that straddle cache lines halve the load bandwidth; allocations here are
    // only 16-byte aligned, so x is copied to a 64-byte boundary when it is not on one (m·k
    // floats, against m·n·k FMAs).
    let kp = k.next_multiple_of(16);
    let mut x_buf = Aligned::default();
    let (x, xs) = if (x.as_ptr() as usize).is_multiple_of(64) && k == kp { (&x[..m * k], k) } else { (x_buf.rows_of(&x[..m * k], k, kp), kp) };
    let out_ptrs: Vec<SendPtr> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    let threads = rayon::current_num_threads().max(1);
    // Enough tasks to balance uneven tails, each a multiple of 4 rows.
    let tasks = if total * k * m < 1 << 18 { 1 } else { (threads * 2).min(total.div_ceil(16)) };
    let chunk = total.div_ceil(tasks).next_multiple_of(4);
    let run = |t: usize| {
        let (g0, g1) = (t * chunk, ((t + 1) * chunk).min(total));
        if g0 < g1 {
            // SAFETY: available() was required; task t writes only output columns of the
            // global weight rows g0..g1 (disjoint across tasks), inside the checked outputs.
            unsafe { run_rows(x, xs, m, k, ws, ns, &starts, &out_ptrs, g0, g1) };
        }
    };
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// A buffer whose returned slice starts on a 64-byte boundary.
#[derive(Default)]
struct Aligned(Vec<f32>);

impl Aligned {
    fn zeroed(&mut self, len: usize) -> &mut [f32] {
        self.0.clear();
        self.0.resize(len + 16, 0.0);
        let skip = self.0.as_ptr().align_offset(64).min(16);
        &mut self.0[skip..skip + len]
    }

    /// `src` (rows of k) copied with rows `stride` ≥ k floats apart.
    fn rows_of(&mut self, src: &[f32], k: usize, stride: usize) -> &[f32] {
        let rows = src.len() / k.max(1);
        let dst = self.zeroed(rows * stride);
        for (d, s) in dst.chunks_mut(stride).zip(src.chunks(k)) {
            d[..k].copy_from_slice(s);
        }
        dst
    }
}

/// The global weight rows g0..g1, in tiles of up to 4 rows that never cross a segment.
#[allow(clippy::too_many_arguments)]
unsafe fn run_rows<W: NtWeight>(x: &[f32], xs: usize, m: usize, k: usize, ws: &[&[W]], ns: &[usize], starts: &[usize], outs: &[SendPtr], g0: usize, g1: usize) {
    // Weight tiles go through an aligned L1 buffer when they are halves or misaligned f32.
    let mut tile_buf = Aligned::default();
    let kp = k.next_multiple_of(16);
    let buf = tile_buf.zeroed(TILE_N * kp);
    let mb = m_block(k);
    // Segment, row within it, and rows of the tile that starts at global row g.
    let tile_at = |g: usize| {
        let s = starts.partition_point(|&st| st <= g) - 1;
        let j = g - starts[s];
        (s, j, TILE_N.min(g1 - g).min(ns[s] - j))
    };
    let mut i0 = 0;
    while i0 < m {
        let i1 = (i0 + mb).min(m);
        let mut g = g0;
        while g < g1 {
            let (s, j, rn) = tile_at(g);
            let rows = &ws[s][j * k..(j + rn) * k];
            // The next tile's weights are fetched into L2 while this one computes: streamed from
            // DRAM on demand, they stall the widening copy (15% of a SmolLM2 prefill).
            let next = if g + rn < g1 {
                let (s2, j2, rn2) = tile_at(g + rn);
                let r = &ws[s2][j2 * k..(j2 + rn2) * k];
                (r.as_ptr() as *const u8, std::mem::size_of_val(r))
            } else {
                (std::ptr::null(), 0)
            };
            let (w, ws_): (&[f32], usize) = if W::IN_PLACE && (rows.as_ptr() as usize).is_multiple_of(64) && k == kp {
                // SAFETY: IN_PLACE is true only for f32, so the slice is an f32 slice.
                (std::slice::from_raw_parts(rows.as_ptr() as *const f32, rows.len()), k)
            } else {
                for r in 0..rn {
                    W::widen_row(&rows[r * k..(r + 1) * k], &mut buf[r * kp..r * kp + k]);
                }
                (&buf[..rn * kp], kp)
            };
            let out = outs[s].0.add(j);
            tile_rows(x, xs, k, w, ws_, rn, i0, i1, out, ns[s], next);
            g += rn;
        }
        i0 = i1;
    }
}

/// out[i][0..rn] for i in i0..i1, out rows `ld` apart, from x rows (`xs` apart) and rn weight
/// rows (f32, `wst` apart), each k long; `prefetch` (start, bytes) is spread over the row steps.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows(x: &[f32], xs: usize, k: usize, w: &[f32], wst: usize, rn: usize, i0: usize, i1: usize, out: *mut f32, ld: usize, prefetch: (*const u8, usize)) {
    #[cfg(target_arch = "x86_64")]
    {
        let lines = prefetch.1.div_ceil(64);
        let steps = if rn == TILE_N { (i1 - i0) / 4 + (i1 - i0) % 4 } else { i1 - i0 };
        let per_step = lines.div_ceil(steps.max(1));
        let mut line = 0;
        let mut fetch = || {
            for _ in 0..per_step.min(lines - line) {
                // Prefetch never faults; the range lies inside the next tile's weight rows.
                x86::prefetch_l2(prefetch.0.wrapping_add(64 * line));
                line += 1;
            }
        };
        let mut i = i0;
        if rn == TILE_N {
            while i + 4 <= i1 {
                fetch();
                x86::tile4::<TILE_N>(x.as_ptr().add(i * xs), xs, w.as_ptr(), wst, k, out.add(i * ld), ld);
                i += 4;
            }
        }
        while i < i1 {
            fetch();
            let xr = &x[i * xs..i * xs + k];
            for r in 0..rn {
                *out.add(i * ld + r) = <f32 as WeightElem>::dot(&w[r * wst..r * wst + k], xr);
            }
            i += 1;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, xs, k, w, wst, rn, i0, i1, out, ld, prefetch);
        unreachable!("gemm_nt::available() is false off x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn widen_f16(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i)));
            i += 16;
        }
        for j in i..n {
            dst[j] = src[j].to_f32();
        }
    }

    #[inline(always)]
    pub fn prefetch_l2(p: *const u8) {
        // SAFETY: prefetch is a hint; it never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) };
    }

    /// Mask of the first `rem` (< 16) lanes.
    #[inline(always)]
    fn tail_mask(rem: usize) -> __mmask16 {
        ((1u32 << rem) - 1) as __mmask16
    }

    /// out[i·ld + j] = Σ_{t<k} x[i·xs + t]·w[j·ws + t] for i < 4, j < N.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile4<const N: usize>(x: *const f32, xs: usize, w: *const f32, ws: usize, k: usize, out: *mut f32, ld: usize) {
        // acc[j][i]: groups of 4 weight rows reduce so that out[i][j0..j0 + 4] is 128-bit lane i.
        let mut acc = [[_mm512_setzero_ps(); 4]; N];
        let step = |acc: &mut [[__m512; 4]; N], t: usize, mk: __mmask16| {
            let xv = [0, 1, 2, 3].map(|i| _mm512_maskz_loadu_ps(mk, x.add(i * xs + t)));
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_maskz_loadu_ps(mk, w.add(j * ws + t));
                for i in 0..4 {
                    a[i] = _mm512_fmadd_ps(xv[i], wv, a[i]);
                }
            }
        };
        let mut t = 0;
        while t + 16 <= k {
            step(&mut acc, t, 0xffff);
            t += 16;
        }
        if t < k {
            step(&mut acc, t, tail_mask(k - t));
        }
        let mut j0 = 0;
        while j0 < N {
            let jn = (N - j0).min(4);
            let v: [__m512; 16] = std::array::from_fn(|e| if e / 4 < jn { acc[j0 + e / 4][e % 4] } else { _mm512_setzero_ps() });
            let sums = reduce16(&v);
            for i in 0..4 {
                let lane = match i {
                    0 => _mm512_extractf32x4_ps::<0>(sums),
                    1 => _mm512_extractf32x4_ps::<1>(sums),
                    2 => _mm512_extractf32x4_ps::<2>(sums),
                    _ => _mm512_extractf32x4_ps::<3>(sums),
                };
                let dst = out.add(i * ld + j0);
                if jn == 4 {
                    _mm_storeu_ps(dst, lane);
                } else {
                    let mut tmp = [0f32; 4];
                    _mm_storeu_ps(tmp.as_mut_ptr(), lane);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, jn);
                }
            }
            j0 += 4;
        }
    }

    /// Lane 4L + q of the result is the horizontal sum of v[L + 4q].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn reduce16(v: &[__m512; 16]) -> __m512 {
        // Pairs (a, b): 128-bit lanes 0–1 carry a's 8 partial sums, lanes 2–3 b's.
        let halves = |a: __m512, b: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
        // (ab, cd): lane L carries the 4 partial sums of the L-th of a, b, c, d.
        let quarters = |p: __m512, q: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(p, q), _mm512_shuffle_f32x4::<0xDD>(p, q));
        // Within each 128-bit lane: [p0 + p1, p2 + p3, q0 + q1, q2 + q3].
        let pairs = |p: __m512, q: __m512| _mm512_add_ps(_mm512_shuffle_ps::<0x88>(p, q), _mm512_shuffle_ps::<0xDD>(p, q));
        let h: [__m512; 8] = std::array::from_fn(|i| halves(v[2 * i], v[2 * i + 1]));
        let q: [__m512; 4] = std::array::from_fn(|i| quarters(h[2 * i], h[2 * i + 1]));
        pairs(pairs(q[0], q[1]), pairs(q[2], q[3]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// gemm_nt into NaN-filled outputs (so an unwritten element fails the comparison).
    fn run<W: NtWeight>(x: &[f32], m: usize, k: usize, ws: &[Vec<W>], ns: &[usize]) -> Vec<Vec<f32>> {
        let wsl: Vec<&[W]> = ws.iter().map(|w| w.as_slice()).collect();
        let mut outs: Vec<Vec<f32>> = ns.iter().map(|&n| vec![f32::NAN; m * n]).collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        gemm_nt(x, m, k, &wsl, ns, &mut refs);
        outs
    }

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    /// Every tile edge (m, n not multiples of 4, k not a multiple of 16), segments that split
    /// tiles, several threads' row ranges, and each weight dtype, against an f64 reference.
    #[test]
    fn matches_reference_on_ragged_shapes_and_segments() {
        if !available() {
            eprintln!("skipped: no AVX-512F");
            return;
        }
        for &(m, k, ns) in &[(1, 1, &[1][..]), (5, 17, &[3, 6][..]), (9, 576, &[576, 192, 190][..]), (130, 100, &[37][..]), (600, 48, &[13, 50][..])] {
            let x = rnd(m * k, 1);
            let ws: Vec<Vec<f32>> = ns.iter().enumerate().map(|(s, &n)| rnd(n * k, 10 + s as u64)).collect();
            let check = |outs: &[Vec<f32>], wf: &dyn Fn(usize) -> Vec<f32>, what: &str| {
                for (s, &n) in ns.iter().enumerate() {
                    let r = reference(&x, m, k, &wf(s), n);
                    for (e, (a, b)) in outs[s].iter().zip(&r).enumerate() {
                        assert!((a - b).abs() <= 1e-5 * (k as f32).sqrt() * (1.0 + b.abs()), "{what} m={m} k={k} seg {s} elem {e}: {a} vs {b}");
                    }
                }
            };
            check(&run(&x, m, k, &ws, ns), &|s| ws[s].clone(), "f32");
            let wb: Vec<Vec<bf16>> = ws.iter().map(|w| w.iter().map(|&v| bf16::from_f32(v)).collect()).collect();
            check(&run(&x, m, k, &wb, ns), &|s| wb[s].iter().map(|v| v.to_f32()).collect(), "bf16");
            let wh: Vec<Vec<f16>> = ws.iter().map(|w| w.iter().map(|&v| f16::from_f32(v)).collect()).collect();
            check(&run(&x, m, k, &wh, ns), &|s| wh[s].iter().map(|v| v.to_f32()).collect(), "f16");
        }
    }
}
