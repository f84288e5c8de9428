//! Attention on CUDA: the wrapper of kernels/attention.cu. Same contract as the CPU backend's
//! `attention` (q [B, H, Nq, D], k/v [B, Hkv, Nk, D], GQA, scale, causal, kv_len, SAM's
//! decomposed relative-position bias), f32 in and out, head dims up to 128. The kernels take
//! each operand's batch/head/row strides, so `attention_tokens` ([B, N, H·D] operands, a shared
//! batch of 1) runs them on the models' token-major projections without permutes or copies.
//!
//! The kernels, picked by the number of keys and of queries per head (`attention_family`, which
//! the profile labels follow too):
//! * at most 64 keys with d ≤ 32 and no bias: `attention_fewkeys_d{16,32}_f32`, one thread per
//!   query row over the head's keys in shared memory (SAM's image-to-token attention);
//! * Nq > 8: `attention_fwd_d{DP}_f32`, flash forward, one block per 32 queries of one head;
//!   DP is D rounded up to a multiple of 16 (D = 80 runs the 80-wide variant, not 128). With
//!   `AttnParams::low_precision` (half-precision models) `attention_fwd_mma_d{DP}_f32`
//!   (kernels/attention_mma.cu) instead: blocks of 64 queries on the tensor cores, f16
//!   operands, unless switched off (`VISWORD_CUDA_ATTN=simt` at start-up, or
//!   `set_mma_attention(false)`).
//! * Nq <= 8 (unless Nq > 1 over ≥ DEC_TARGET_BLOCKS batch·heads, which takes the forward
//!   kernel, with blocks of 8 queries for DP ≤ 64: `attention_fwd_q8_d{DP}_f32`):
//!   `attention_decode_d{DP}_f32` (DP = D rounded up to 32), one block per query row
//!   and key split, then `attention_combine_f32` merges the splits when there is more than one.
//!   The split count depends only on the shapes (never on the card), so results are the same
//!   on every device and every run.
//!
//! K and V may also be bf16 (a bf16 KV cache, `Backend::kv_cache_dtype`): the forward,
//! tensor-core and decode kernels have `_bf16kv` twins that widen them as they read (the same
//! arithmetic on the same values at half the bytes); the few-keys and 8-query kernels have
//! none, so such calls take the forward or decode kernels.

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};

use super::{dev_err, kernels, CudaBackend, CudaData};
use crate::backend::packed_attention::PackedShape;
use crate::backend::{attention_shape, AttnBias, AttnParams, AttnShape, TokenAttnShape};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const OP: &str = "attention";
/// Largest head dim the kernels hold (per-thread accumulators are sized at compile time).
const MAX_HEAD_DIM: usize = 128;
/// Queries per head up to which the decode kernel runs: below this the forward kernel's
/// 32-query tiles would be mostly padding and its one-block-per-head grid too small to fill
/// the device for a long cache.
const DECODE_MAX_NQ: usize = 8;
/// Queries per forward block and threads per block (FWD_BQ, FWD_THREADS in the kernel).
const FWD_BQ: usize = 32;
/// Queries per block of the `attention_fwd_q8_d{16,32,64}` variants, and their widest DP.
const FWD_Q8: usize = 8;
const FWD_Q8_MAX_DP: usize = 64;
const FWD_THREADS: u32 = 128;
/// Queries per block of `attention_fwd_mma_*` (MMA_BQ in the kernel; same thread count).
const MMA_BQ: usize = 64;
/// The few-keys kernel: query rows (threads) per block, most keys and largest head dim
/// (FEW_THREADS, FEW_MAX_KEYS and its widest variant).
const FEW_THREADS: u32 = 128;
const FEW_MAX_KEYS: usize = 64;
const FEW_MAX_D: usize = 32;
/// Threads per decode block (DEC_THREADS): 4 warps taking 4 keys each per step.
const DEC_THREADS: u32 = 128;
const DEC_KEYS_PER_STEP: usize = 16;
/// A decode split covers at least this many keys by default: fewer would make the partial
/// results (one row of D floats per split) cost more traffic than the keys they cover.
const DEC_MIN_CHUNK: usize = 64;
/// Decode blocks to aim for by default: about 4 per SM of an H100/H200 (132 SMs), enough to
/// keep bandwidth-bound warps in flight. A constant, not the device's SM count, for determinism.
const DEC_TARGET_BLOCKS: usize = 512;
/// Grid limits: x up to 2^31 − 1, y up to 65535.
const GRID_X_MAX: usize = i32::MAX as usize;
const GRID_Y_MAX: usize = 65_535;
/// Sizes passed to the kernels as int stay below this, so index sums such as `start + chunk`
/// cannot overflow (element offsets are 64-bit in the kernels).
const DIM_MAX: usize = 1 << 30;

/// How the decode kernel splits its keys: aim for `target_blocks` blocks in all, each split
/// covering at least `min_chunk` keys. Shapes alone decide the splits (never the card), so
/// results are the same on every device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeSplits {
    pub target_blocks: usize,
    pub min_chunk: usize,
}

impl Default for DecodeSplits {
    fn default() -> Self {
        DecodeSplits { target_blocks: DEC_TARGET_BLOCKS, min_chunk: DEC_MIN_CHUNK }
    }
}

impl DecodeSplits {
    /// Packed into one word for the backend's atomic (target in the high half).
    pub(crate) fn to_bits(self) -> u64 {
        ((self.target_blocks as u64) << 32) | self.min_chunk as u64
    }
    pub(crate) fn from_bits(b: u64) -> DecodeSplits {
        DecodeSplits { target_blocks: (b >> 32) as usize, min_chunk: (b & 0xffff_ffff) as usize }
    }
}

/// How the keys of a decode row are split: (number of splits, keys per split). Every split is
/// non-empty for the last row; chunk is a multiple of the keys one block takes per step.
fn decode_splits(rows: usize, nk: usize, cfg: DecodeSplits) -> (usize, usize) {
    let wanted = cfg.target_blocks.div_ceil(rows.max(1));
    let most = (nk / cfg.min_chunk).max(1);
    let n = wanted.clamp(1, most);
    let chunk = nk.div_ceil(n).next_multiple_of(DEC_KEYS_PER_STEP).max(DEC_KEYS_PER_STEP);
    (nk.div_ceil(chunk).max(1), chunk)
}

/// The kernel family a call takes: the dispatch in `run_attention` and the profile's label
/// (`Family::label`) both follow `CudaBackend::attention_family`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    FewKeys,
    Forward,
    ForwardQ8,
    ForwardMma,
    Decode,
}

impl Family {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Family::FewKeys => "few keys",
            Family::Forward => "flash",
            Family::ForwardQ8 => "flash, 8-query blocks",
            Family::ForwardMma => "flash, tensor cores",
            Family::Decode => "decode",
        }
    }
}

impl CudaBackend {
    /// Which kernels a call of shape `s` takes (see the module doc).
    /// `kv` is the dtype of k and v (f32, or bf16 from a bf16 KV cache).
    pub(crate) fn attention_family(&self, s: &AttnShape, p: &AttnParams, kv: DType) -> Family {
        // A decode step being recorded reads its key count on the device, so it takes the decode
        // kernel whatever the count is now.
        let recording = self.recorded_step(s, p).is_some();
        let bias = !matches!(p.bias, AttnBias::None);
        let f32_kv = kv == DType::F32;
        if f32_kv && !recording && !bias && s.nk <= FEW_MAX_KEYS && s.d <= FEW_MAX_D {
            Family::FewKeys
        } else if !recording && (s.nq > DECODE_MAX_NQ || (s.nq > 1 && s.b * s.h >= DEC_TARGET_BLOCKS)) {
            if f32_kv && s.nq <= FWD_Q8 && s.d.next_multiple_of(16) <= FWD_Q8_MAX_DP {
                Family::ForwardQ8
            } else if p.low_precision && self.mma_attention() {
                Family::ForwardMma
            } else {
                Family::Forward
            }
        } else {
            Family::Decode
        }
    }

    /// The step-argument buffer when this call is a decode step being recorded (graph.rs).
    fn recorded_step(&self, s: &AttnShape, p: &AttnParams) -> Option<u64> {
        self.step_args().filter(|_| s.nq == 1 && p.kv_len.is_some())
    }

    /// Whether half-precision callers' attention (`AttnParams::low_precision`, more than 8
    /// queries) runs on the tensor cores (the default) or on the f32 flash kernel
    /// (`VISWORD_CUDA_ATTN=simt` at start-up, or this with `false`).
    pub fn mma_attention(&self) -> bool {
        self.core.mma_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_mma_attention(&self, on: bool) {
        self.core.mma_attention.store(on, std::sync::atomic::Ordering::Relaxed)
    }

    /// How decode attention splits its keys (`DecodeSplits::default()` unless set).
    pub fn decode_split_config(&self) -> DecodeSplits {
        DecodeSplits::from_bits(self.core.decode_splits.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Change how decode attention splits its keys (for measuring the choice: the kernels'
    /// timings sweep it). `target_blocks` in 1..=65535, `min_chunk` a positive multiple of the 16
    /// keys a block takes per step. Steps recorded before keep their splits.
    pub fn set_decode_split_config(&self, cfg: DecodeSplits) -> Result<()> {
        if cfg.target_blocks == 0 || cfg.target_blocks > GRID_Y_MAX || cfg.min_chunk == 0 || !cfg.min_chunk.is_multiple_of(DEC_KEYS_PER_STEP) || cfg.min_chunk > DIM_MAX {
            return Err(Error::arg("decode splits", format!("{cfg:?}: target_blocks must be 1..={GRID_Y_MAX} and min_chunk a positive multiple of {DEC_KEYS_PER_STEP}")));
        }
        self.core.decode_splits.store(cfg.to_bits(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

fn i32_arg(what: &str, x: usize) -> Result<i32> {
    if x >= DIM_MAX {
        return Err(Error::shape(OP, format!("{what} = {x} is too large for the CUDA kernels (limit {DIM_MAX})")));
    }
    Ok(x as i32)
}

/// Element strides of q, k/v and out (batch, head, row), the kernels' `AttnStrides`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Strides {
    q: [i64; 3],
    kv: [i64; 3],
    o: [i64; 3],
}

// SAFETY: plain old data of nine i64s, laid out as kernels/attention.cu's AttnStrides.
unsafe impl DeviceRepr for Strides {}

impl Strides {
    /// Contiguous [B, H, N, D] tensors.
    fn head_major(s: &AttnShape) -> Strides {
        let (nq, nk, d) = (s.nq as i64, s.nk_all as i64, s.d as i64);
        let (h, hkv) = (s.h as i64, s.hkv as i64);
        Strides { q: [h * nq * d, nq * d, d], kv: [hkv * nk * d, nk * d, d], o: [h * nq * d, nq * d, d] }
    }

    /// Contiguous [B, N, H·D] tensors; a shared q or k/v (batch 1) gets batch stride 0.
    fn token_major(t: &TokenAttnShape) -> Strides {
        let s = &t.s;
        let (nq, nk, d) = (s.nq as i64, s.nk_all as i64, s.d as i64);
        let (h, hkv) = (s.h as i64, s.hkv as i64);
        let q_b = if t.q_shared { 0 } else { nq * h * d };
        let kv_b = if t.kv_shared { 0 } else { nk * hkv * d };
        Strides { q: [q_b, d, h * d], kv: [kv_b, d, hkv * d], o: [nq * h * d, d, h * d] }
    }
}

impl CudaBackend {
    pub fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams) -> Result<Tensor> {
        let s = attention_shape(q, k, v, p)?;
        let shape = vec![s.b, s.h, s.nq, s.d];
        let mut out = self.alloc_f32(&shape)?;
        self.run_attention(self.operands(q, k, v)?, &mut out, &s, &Strides::head_major(&s), p)?;
        Ok(self.wrap_f32(out, shape))
    }

    /// The device pointers of f32 q and of k and v, both f32 or both bf16 (a bf16 KV cache).
    fn operands(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Operands> {
        let kv_ptr = |t: &Tensor| match self.data(t, OP)? {
            CudaData::F32(s) => Ok(self.ptr(s)),
            CudaData::BF16(s) => Ok(self.ptr(s)),
            _ => Err(Error::shape(OP, format!("k and v must be f32 or bf16, got {} {:?}", t.dtype(), t.shape()))),
        };
        if k.dtype() != v.dtype() {
            return Err(Error::shape(OP, format!("k is {} but v is {}: they must share a dtype", k.dtype(), v.dtype())));
        }
        Ok(Operands { q: self.f32_ptr(q, OP)?, k: kv_ptr(k)?, v: kv_ptr(v)?, kv: k.dtype() })
    }

    /// Whether `Backend::attention_packed` runs here as `attention_packed` (head dims the
    /// kernels hold, a bias grid `rel_pos_f32` holds); else it is composed.
    pub(crate) fn packed_attention_fits(&self, s: &PackedShape) -> bool {
        s.head_dim <= MAX_HEAD_DIM && s.side.is_none_or(|side| side <= super::rel_pos::MAX_SIDE)
    }

    /// `Backend::attention_packed`: q, k and v read in place from qkv [B, N, 3·H·D] (row
    /// stride 3·H·D, k and v H·D and 2·H·D floats in), the bias (when given) by
    /// kernels/rel_pos.cu from the same q, the output written token-major [B, N, H·D].
    pub(crate) fn attention_packed(&self, qkv: &Tensor, rel: Option<(&Tensor, &Tensor)>, low_precision: bool, ps: &PackedShape) -> Result<Tensor> {
        let PackedShape { b, n, heads: h, head_dim: d, side } = *ps;
        let base = self.f32_ptr(qkv, OP)?;
        let row = 3 * h * d;
        let bias = match (rel, side) {
            (Some((rh, rw)), Some(side)) => Some(self.rel_pos(base, row, rh, rw, b, h, side, d)?),
            _ => None,
        };
        let mut p = AttnParams { low_precision, ..AttnParams::new(d) };
        if let (Some((rel_h, rel_w)), Some(side)) = (&bias, side) {
            p.bias = AttnBias::DecomposedRelPos { rel_h, rel_w, k_h: side, k_w: side };
        }
        let s = AttnShape { b, h, hkv: h, nq: n, nk_all: n, nk: n, d };
        let (n64, row64, d64, hd64) = (n as i64, row as i64, d as i64, (h * d) as i64);
        let st = Strides { q: [n64 * row64, d64, row64], kv: [n64 * row64, d64, row64], o: [n64 * hd64, d64, hd64] };
        let shape = vec![b, n, h * d];
        let mut out = self.alloc_f32(&shape)?;
        let ops = Operands { q: base, k: base + 4 * (h * d) as u64, v: base + 8 * (h * d) as u64, kv: DType::F32 };
        self.run_attention(ops, &mut out, &s, &st, &p)?;
        Ok(self.wrap_f32(out, shape))
    }

    /// `Backend::attention_tokens`: the same kernels reading and writing [B, N, H·D] through
    /// strides (operands checked by `attention_tokens_shape`).
    pub(crate) fn attention_tokens(&self, q: &Tensor, k: &Tensor, v: &Tensor, t: &TokenAttnShape, p: &AttnParams) -> Result<Tensor> {
        let s = &t.s;
        let shape = vec![s.b, s.nq, s.h * s.d];
        let mut out = self.alloc_f32(&shape)?;
        self.run_attention(self.operands(q, k, v)?, &mut out, s, &Strides::token_major(t), p)?;
        Ok(self.wrap_f32(out, shape))
    }

    /// Queue the kernels of `attention_family` for operands at `ops` placed by `st`.
    fn run_attention(&self, ops: Operands, out: &mut CudaSlice<f32>, s: &AttnShape, st: &Strides, p: &AttnParams) -> Result<()> {
        let AttnShape { b, h, hkv, nq, nk, d, .. } = *s;
        if d > MAX_HEAD_DIM {
            return Err(Error::shape(OP, format!("head dim {d}: the CUDA kernels support head dims up to {MAX_HEAD_DIM}")));
        }
        let (rel, k_h, k_w) = match p.bias {
            AttnBias::None => (None, 0, 0),
            AttnBias::DecomposedRelPos { rel_h, rel_w, k_h, k_w } => (Some((self.f32_ptr(rel_h, OP)?, self.f32_ptr(rel_w, OP)?)), k_h, k_w),
        };
        if b * h * nq * d == 0 {
            return Ok(());
        }
        let Operands { q: qd, k: kd, v: vd, kv } = ops;
        // The kernels' name suffix: f32 operands, or bf16 K and V.
        let suffix = if kv == DType::BF16 { "bf16kv" } else { "f32" };
        // Without a bias the kernels never read rel_h / rel_w (k_w = 0): q stands in.
        let (rh, rw) = rel.unwrap_or((qd, qd));
        let (bh, rows) = (b * h, b * h * nq);
        let args = KernelArgs {
            h: i32_arg("heads", h)?,
            hkv: i32_arg("kv heads", hkv)?,
            nq: i32_arg("queries", nq)?,
            nk: i32_arg("keys", nk)?,
            d: d as i32,
            scale: p.scale,
            causal: p.causal as i32,
            k_h: i32_arg("k_h", k_h)?,
            k_w: i32_arg("k_w", k_w)?,
        };
        let stream = self.stream();
        let family = self.attention_family(s, p, kv);

        // A handful of keys: one thread per query row (kernels/attention.cu attention_fewkeys).
        if family == Family::FewKeys {
            let chunks = nq.div_ceil(FEW_THREADS as usize);
            if bh > GRID_X_MAX || chunks > GRID_Y_MAX {
                return Err(Error::shape(OP, format!("{bh} heads × {chunks} query chunks exceed the CUDA grid")));
            }
            let dp = if d <= 16 { 16 } else { 32 };
            let f = self.function(&kernels::ATTENTION, &format!("attention_fewkeys_d{dp}_f32"))?;
            let cfg = LaunchConfig { grid_dim: (bh as u32, chunks as u32, 1), block_dim: (FEW_THREADS, 1, 1), shared_mem_bytes: 0 };
            let mut l = stream.launch_builder(&f);
            l.arg(&qd).arg(&kd).arg(&vd).arg(&mut *out).arg(st).arg(&args.h).arg(&args.hkv).arg(&args.nq).arg(&args.nk).arg(&args.d).arg(&args.scale).arg(&args.causal);
            // SAFETY: argument list matches FEW_PARAMS in kernels/attention.cu; operands placed by
            // the strides as for the other kernels; nk <= 64 keys and d <= 32 fit its static
            // shared arrays (2·64·32 + 128·33 floats, 33 KB); grid (bh, ceil(nq / 128)) with 128
            // threads, a block reading and writing only its query rows < nq.
            unsafe { l.launch(cfg) }.map_err(dev_err(OP))?;
            return Ok(());
        }

        // A few queries over many heads (SAM's token-to-image attention: 64 prompts × 8 heads ×
        // 7 tokens) take the forward kernel too: it reads each head's keys once per block of 32
        // queries, where the decode kernel reads them once per query; with this many heads its
        // grid fills the device without key splits.
        if family != Family::Decode {
            let dp = d.next_multiple_of(16);
            // At most 8 queries: blocks of 8 (`attention_fwd_q8_*`, for DP up to 64). More, with
            // half-precision callers: blocks of 64 on the tensor cores (kernels/attention_mma.cu,
            // the same arguments).
            let (kernel, bq, name) = match family {
                Family::ForwardQ8 => (&kernels::ATTENTION, FWD_Q8, format!("attention_fwd_q8_d{dp}_f32")),
                Family::ForwardMma => (&kernels::ATTENTION_MMA, MMA_BQ, format!("attention_fwd_mma_d{dp}_{suffix}")),
                _ => (&kernels::ATTENTION, FWD_BQ, format!("attention_fwd_d{dp}_{suffix}")),
            };
            let tiles = nq.div_ceil(bq);
            if bh > GRID_X_MAX || tiles > GRID_Y_MAX {
                return Err(Error::shape(OP, format!("{bh} heads × {tiles} query tiles exceed the CUDA grid")));
            }
            let f = self.function(kernel, &name)?;
            let cfg = LaunchConfig { grid_dim: (bh as u32, tiles as u32, 1), block_dim: (FWD_THREADS, 1, 1), shared_mem_bytes: 0 };
            let mut l = stream.launch_builder(&f);
            l.arg(&qd).arg(&kd).arg(&vd).arg(&rh).arg(&rw).arg(&mut *out).arg(st);
            args.push(&mut l);
            // SAFETY: argument list matches FWD_PARAMS_KV in kernels/attention.cu, k and v of the
            // element type the suffix names (`operands` checked both are); the strides place
            // q [b, h, nq, d], k/v [b, hkv, nk_all, d] (nk <= nk_all) and out [b, h, nq, d]
            // inside their buffers (the callers' shape checks; a batch stride of 0 reads one
            // shared batch entry); rel_h/rel_w are [bh, nq, k_h/k_w] when k_w > 0; the kernel
            // reads keys < nk only, query rows < nq only, and the grid is (bh, ceil(nq / bq))
            // with 128 threads, bq the variant's block of queries, as it assumes (the mma
            // kernels' 64 included: 4 warps of 16 rows). Static shared memory (≤ 38.4 KB) needs
            // no opt-in.
            unsafe { l.launch(cfg) }.map_err(dev_err(OP))?;
            return Ok(());
        }

        // A recorded step spreads its keys over splits of the cache's capacity.
        let step = self.recorded_step(s, p);
        let (nsplit, chunk) = decode_splits(rows, if step.is_some() { s.nk_all } else { nk }, self.decode_split_config());
        let step = step.unwrap_or(0);
        if rows > GRID_X_MAX || nsplit > GRID_Y_MAX {
            return Err(Error::shape(OP, format!("{rows} query rows × {nsplit} splits exceed the CUDA grid")));
        }
        let chunk_arg = i32_arg("decode chunk", chunk)?;
        let dp = d.next_multiple_of(32);
        let f = self.function(&kernels::ATTENTION, &format!("attention_decode_d{dp}_{suffix}"))?;
        let cfg = LaunchConfig { grid_dim: (rows as u32, nsplit as u32, 1), block_dim: (DEC_THREADS, 1, 1), shared_mem_bytes: 0 };
        // Partial results: per row and split, the unnormalised output (d floats) and its max and
        // sum. With one split the kernel writes `out` itself and never touches these (q stands in).
        let mut parts: Option<(CudaSlice<f32>, CudaSlice<f32>)> = None;
        if nsplit > 1 {
            parts = Some((self.alloc::<f32>(rows * nsplit * d, OP)?, self.alloc::<f32>(rows * nsplit * 2, OP)?));
        }
        {
            let mut l = stream.launch_builder(&f);
            l.arg(&qd).arg(&kd).arg(&vd).arg(&rh).arg(&rw).arg(&mut *out).arg(st);
            args.push(&mut l);
            match parts.as_mut() {
                Some((po, pml)) => l.arg(po).arg(pml),
                None => l.arg(&qd).arg(&qd),
            };
            l.arg(&chunk_arg).arg(&step);
            // SAFETY: argument list matches DEC_PARAMS_KV in kernels/attention.cu; operands as for
            // the forward launch; grid (rows, nsplit) with nsplit · chunk >= nk, so block
            // (row, s) reads keys [s·chunk, min((s + 1)·chunk, nk)) only; with nsplit > 1 it
            // writes part_o[(row·nsplit + s)·d ..][..d] and part_ml[(row·nsplit + s)·2 ..][..2],
            // inside the rows·nsplit·d and rows·nsplit·2 buffers allocated above; with nsplit
            // = 1 it writes only out (the stand-in pointers are not dereferenced). A non-zero
            // step is the recorded step's argument buffer (three ints); the kernel then takes
            // its key count (at most nk_all) from there and spreads those keys over the nsplit
            // splits itself, each still within [0, nk).
            unsafe { l.launch(cfg) }.map_err(dev_err(OP))?;
        }
        if let Some((po, pml)) = &parts {
            let f = self.function(&kernels::ATTENTION, "attention_combine_f32")?;
            let threads = (d.next_multiple_of(32) as u32).min(DEC_THREADS);
            let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
            let (d_arg, n_arg) = (d as i32, nsplit as i32);
            let mut l = stream.launch_builder(&f);
            l.arg(po).arg(pml).arg(&mut *out).arg(st).arg(&args.h).arg(&args.nq).arg(&d_arg).arg(&n_arg);
            // SAFETY: part_o [rows, nsplit, d] and part_ml [rows, nsplit, 2] were fully written
            // by the decode launch queued before on the same stream; out is placed by the
            // strides as above; one block per row, threads stride over d.
            unsafe { l.launch(cfg) }.map_err(dev_err(OP))?;
        }
        Ok(())
    }
}

/// Device pointers of q, k and v, each placed by the strides from there, and the dtype of k
/// and v (f32 or bf16; q is f32).
#[derive(Clone, Copy)]
struct Operands {
    q: u64,
    k: u64,
    v: u64,
    kv: DType,
}

/// The scalar arguments shared by both kernels, in FWD_PARAMS order after the pointers.
struct KernelArgs {
    h: i32,
    hkv: i32,
    nq: i32,
    nk: i32,
    d: i32,
    scale: f32,
    causal: i32,
    k_h: i32,
    k_w: i32,
}

impl KernelArgs {
    fn push<'a>(&'a self, l: &mut cudarc::driver::LaunchArgs<'a>) {
        l.arg(&self.h).arg(&self.hkv).arg(&self.nq).arg(&self.nk).arg(&self.d).arg(&self.scale).arg(&self.causal).arg(&self.k_h).arg(&self.k_w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_splits_cover_every_key_once() {
        const _: () = assert!(DEC_TARGET_BLOCKS <= GRID_Y_MAX);
        for rows in [1, 7, 32, 100, 512, 5000] {
            for nk in [0, 1, 15, 16, 17, 63, 64, 65, 700, 4096, 100_000] {
                for cfg in [DecodeSplits::default(), DecodeSplits { target_blocks: 2048, min_chunk: 16 }, DecodeSplits { target_blocks: GRID_Y_MAX, min_chunk: 32 }] {
                    let (n, chunk) = decode_splits(rows, nk, cfg);
                    assert!(n >= 1 && chunk % DEC_KEYS_PER_STEP == 0, "rows {rows} nk {nk}: {n} × {chunk}");
                    assert!(n * chunk >= nk && (n - 1) * chunk < nk.max(1), "rows {rows} nk {nk}: {n} × {chunk}");
                    // n ≤ target_blocks ≤ GRID_Y_MAX (the setter's bound).
                    assert!(n <= cfg.target_blocks && n <= GRID_Y_MAX);
                    assert!(n == 1 || chunk >= cfg.min_chunk, "rows {rows} nk {nk} {cfg:?}: {n} × {chunk}");
                }
            }
        }
        // A 7B decode step (32 heads, 4096 cached keys) gets 16 splits of 256 keys: 512 blocks.
        assert_eq!(decode_splits(32, 4096, DecodeSplits::default()), (16, 256));
        // 616 keys: 8 splits of 80 by default; 1024 blocks of at least 32 keys give 13 of 48.
        assert_eq!(decode_splits(32, 616, DecodeSplits::default()), (8, 80));
        assert_eq!(decode_splits(32, 616, DecodeSplits { target_blocks: 1024, min_chunk: 32 }), (13, 48));
        let bits = DecodeSplits { target_blocks: 65535, min_chunk: 48 };
        assert_eq!(DecodeSplits::from_bits(bits.to_bits()), bits);
    }
}
