//! kernels/attention.cu and kernels/attention_mma.cu against the CPU backend's attention: the
//! f32 flash forward (blocks of 32 queries, and of 8), the few-keys kernel, the split decode
//! with its combine (host-given chunks, and the recorded step's device-side key count), and the
//! tensor-core forward. The tensor-core kernel runs on the operands as it rounds them (q·scale,
//! k and v to f16), so what is left is the f16 rounding of the softmax weights before P·V
//! (relative 2⁻¹¹) and the order of sums, within `LOW_PRECISION_TOL` (as tests/gpu/attention.rs
//! for half-precision callers); the f32 kernels are held to the f32 bound of `emu::tol`. The
//! `_bf16kv` twins (a bf16 KV cache) run on K and V as bf16 bits: they must give exactly the
//! bits of their f32 twin on the same values rounded to bf16, and match the CPU on those values.

use std::ffi::c_void;

use half::bf16;
use visword::{AttnBias, AttnParams, Backend, Tensor};

use crate::common::{assert_close, f16_round, Rng, LOW_PRECISION_TOL};
use crate::emu::{self, tol};

/// Threads per block of every attention kernel (FWD_THREADS, MMA_THREADS, DEC_THREADS,
/// FEW_THREADS), and queries per block of the forward kernels (FWD_BQ, the q8 variants, MMA_BQ)
/// and of the few-keys kernel; keys per decode block step (DEC_WARPS · DEC_KU).
const THREADS: u32 = 128;
const FWD_BQ: usize = 32;
const Q8_BQ: usize = 8;
const MMA_BQ: usize = 64;
const FEW_BQ: usize = 128;
const DEC_STEP: usize = 16;

/// kernels/attention.cuh's AttnStrides.
#[repr(C)]
#[derive(Clone, Copy)]
struct Strides {
    q: [i64; 3],
    kv: [i64; 3],
    o: [i64; 3],
}

// k and v are f32, or bf16 bits for the `_bf16kv` entry points.
type Fwd = unsafe extern "C" fn(*const f32, *const c_void, *const c_void, *const f32, *const f32, *mut f32, Strides, i32, i32, i32, i32, i32, f32, i32, i32, i32);
type Decode = unsafe extern "C" fn(*const f32, *const c_void, *const c_void, *const f32, *const f32, *mut f32, Strides, i32, i32, i32, i32, i32, f32, i32, i32, i32, *mut f32, *mut f32, i32, *const i32);
type Combine = unsafe extern "C" fn(*const f32, *const f32, *mut f32, Strides, i32, i32, i32, i32);
type Few = unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, Strides, i32, i32, i32, i32, i32, f32, i32);

/// Which kernel a case runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    /// attention_fwd_mma_d* (f16 operands).
    Mma,
    /// attention_fwd_d* (blocks of 32 queries).
    Fwd,
    /// attention_fwd_q8_d* (blocks of 8).
    Q8,
    /// attention_fewkeys_d* (at most 64 keys, d ≤ 32).
    FewKeys,
    /// attention_decode_d* over about `splits` key splits, merged by attention_combine_f32 when
    /// more than one; `recorded`: the key count comes from a recorded step's device buffer and
    /// the kernel spreads the keys over the splits itself.
    Decode { splits: usize, recorded: bool },
}

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    h: usize,
    hkv: usize,
    nq: usize,
    /// Keys in the cache (rows of k/v) and keys visible (nk ≤ nk_all).
    nk_all: usize,
    nk: usize,
    d: usize,
    causal: bool,
    grid: Option<(usize, usize)>,
    /// k/v shared by every batch entry (batch stride 0), token-major [B, N, H·D] layout.
    token_major_shared_kv: bool,
    /// q, k and v read in place from one packed projection [B, N, 3, H, D] (h = hkv, nq =
    /// nk), out token-major [B, N, H·D]: `attention_packed`'s strides.
    packed: bool,
    /// K and V given as bf16 (the `_bf16kv` entry points), the reference on them rounded.
    bf16_kv: bool,
}

impl Case {
    fn new(b: usize, h: usize, hkv: usize, nq: usize, nk: usize, d: usize) -> Case {
        Case { b, h, hkv, nq, nk_all: nk, nk, d, causal: false, grid: None, token_major_shared_kv: false, packed: false, bf16_kv: false }
    }
}

/// Values rounded to bf16 (round to nearest even), as f32.
fn bf16_round(t: &Tensor) -> Tensor {
    let v = t.to_f32_vec().unwrap().iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    Tensor::from_f32(v, t.shape().to_vec()).unwrap()
}

fn check(kernel: Kernel, c: Case) {
    let file = if kernel == Kernel::Mma { "attention_mma" } else { "attention" };
    let Some(emu) = emu::kernels(file) else { return };
    let seed = 0xE3A0_0000 ^ (c.nq * 131 + c.nk_all * 7 + c.d) as u64;
    let mut rng = Rng::new(seed);
    let cpu = Backend::cpu();
    let (kv_b, kv_shape) = if c.token_major_shared_kv { (1, vec![1, c.hkv, c.nk_all, c.d]) } else { (c.b, vec![c.b, c.hkv, c.nk_all, c.d]) };
    let q = rng.tensor(&[c.b, c.h, c.nq, c.d]);
    assert!(!(c.bf16_kv && c.packed), "a packed projection is one f32 buffer");
    let (k, v) = (rng.tensor(&kv_shape), rng.tensor(&kv_shape));
    // A bf16 cache holds the values rounded: the reference and the f32 twin see those.
    let (k, v) = if c.bf16_kv { (bf16_round(&k), bf16_round(&v)) } else { (k, v) };
    let rel = c.grid.map(|(kh, kw)| (rng.tensor(&[c.b, c.h, c.nq, kh]), rng.tensor(&[c.b, c.h, c.nq, kw])));
    let scale = 1.0 / (c.d as f32).sqrt();
    let (qr, kr, vr) = if kernel == Kernel::Mma { (f16_round(&cpu, &q, scale), f16_round(&cpu, &k, 1.0), f16_round(&cpu, &v, 1.0)) } else { (q.clone(), k.clone(), v.clone()) };

    // The CPU reference (on the rounded operands for the mma kernel), head-major and with k/v repeated per batch.
    let rep = |t: &Tensor| if kv_b == 1 && c.b > 1 { cpu.concat(&vec![t; c.b], 0).unwrap() } else { t.clone() };
    let mut p = AttnParams::new(c.d);
    p.causal = c.causal;
    p.kv_len = (c.nk < c.nk_all).then_some(c.nk);
    if let (Some((rh, rw)), Some((k_h, k_w))) = (rel.as_ref(), c.grid) {
        p.bias = AttnBias::DecomposedRelPos { rel_h: rh, rel_w: rw, k_h, k_w };
    }
    let want = cpu.attention(&qr, &rep(&kr), &rep(&vr), &p).unwrap().to_f32_vec().unwrap();

    let out = run(emu, kernel, &c, &q, &k, &v, rel.as_ref(), c.bf16_kv);
    if c.bf16_kv {
        let twin = run(emu, kernel, &c, &q, &k, &v, rel.as_ref(), false);
        let differ = out.iter().zip(&twin).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{kernel:?} {c:?}: the bf16-K/V kernel differs from its f32 twin on the same values in {differ} outputs");
    }
    let got = if c.token_major_shared_kv || c.packed {
        let t = Tensor::from_f32(out, vec![c.b, c.nq, c.h, c.d]).unwrap();
        cpu.permute(&t, &[0, 2, 1, 3]).unwrap().to_f32_vec().unwrap()
    } else {
        out
    };
    let tol = if kernel == Kernel::Mma { LOW_PRECISION_TOL } else { tol(c.nk.max(c.d)) };
    assert_close(&format!("{kernel:?} {c:?} seed {seed:#x}"), &got, &want, tol);
}

/// Run `kernel` on q, k, v (and the bias) laid out as the case says, k and v passed as bf16 bits
/// to the `_bf16kv` entry point when `bf16_kv` (they must then hold bf16 values). Returns the
/// output as laid out by the case's strides.
#[allow(clippy::too_many_arguments)]
fn run(emu: &emu::Emu, kernel: Kernel, c: &Case, q: &Tensor, k: &Tensor, v: &Tensor, rel: Option<&(Tensor, Tensor)>, bf16_kv: bool) -> Vec<f32> {
    let cpu = Backend::cpu();
    let scale = 1.0 / (c.d as f32).sqrt();
    let (nq, nk_all, d, h, hkv) = (c.nq as i64, c.nk_all as i64, c.d as i64, c.h as i64, c.hkv as i64);
    // The packed case keeps its one buffer here; q, k and v point into it.
    let packed;
    let (qv, kv, vv, st) = if c.packed {
        // [B, H, N, D] each → [B, N, 3, H, D].
        let stacked = cpu.concat(&[q, k, v], 1).unwrap().reshape(&[c.b, 3, c.h, c.nq, c.d]).unwrap();
        packed = cpu.permute(&stacked, &[0, 3, 1, 2, 4]).unwrap().to_f32_vec().unwrap();
        let row = 3 * h * d;
        let st = Strides { q: [nq * row, d, row], kv: [nq * row, d, row], o: [nq * h * d, d, h * d] };
        (packed.clone(), packed[(h * d) as usize..].to_vec(), packed[(2 * h * d) as usize..].to_vec(), st)
    } else if c.token_major_shared_kv {
        // q, k, v and out token-major [B, N, H·D]; k/v one shared batch entry.
        let tm = |t: &Tensor| cpu.permute(t, &[0, 2, 1, 3]).unwrap().to_f32_vec().unwrap();
        (tm(q), tm(k), tm(v), Strides { q: [nq * h * d, d, h * d], kv: [0, d, hkv * d], o: [nq * h * d, d, h * d] })
    } else {
        let hm = |t: &Tensor| t.to_f32_vec().unwrap();
        (hm(q), hm(k), hm(v), Strides { q: [h * nq * d, nq * d, d], kv: [hkv * nk_all * d, nk_all * d, d], o: [h * nq * d, nq * d, d] })
    };
    let (rh, rw) = match rel {
        Some((a, b)) => (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap()),
        None => (vec![0.0], vec![0.0]),
    };
    let (k_h, k_w) = c.grid.unwrap_or((0, 0));
    // K and V as the entry point takes them: f32, or bf16 bits (exact: they hold bf16 values).
    let bits = |x: &[f32]| x.iter().map(|&f| bf16::from_f32(f).to_bits()).collect::<Vec<u16>>();
    let (kb, vb) = (bits(&kv), bits(&vv));
    let (kp, vp) = if bf16_kv { (kb.as_ptr() as *const c_void, vb.as_ptr() as *const c_void) } else { (kv.as_ptr() as *const c_void, vv.as_ptr() as *const c_void) };
    let (kp, vp) = (kp as usize, vp as usize);
    let suffix = if bf16_kv { "bf16kv" } else { "f32" };
    let mut out = vec![f32::NAN; c.b * c.h * c.nq * c.d];
    let o = out.as_mut_ptr() as usize;
    let (h32, hkv32, nq32, nk32, d32, causal) = (c.h as i32, c.hkv as i32, c.nq as i32, c.nk as i32, c.d as i32, c.causal as i32);
    let (bh, rows) = (c.b * c.h, c.b * c.h * c.nq);
    let name = match kernel {
        Kernel::Mma => format!("attention_fwd_mma_d{}_{suffix}", c.d.next_multiple_of(16)),
        Kernel::Fwd => format!("attention_fwd_d{}_{suffix}", c.d.next_multiple_of(16)),
        Kernel::Q8 => format!("attention_fwd_q8_d{}_f32", c.d.next_multiple_of(16)),
        Kernel::FewKeys => format!("attention_fewkeys_d{}_f32", if c.d <= 16 { 16 } else { 32 }),
        Kernel::Decode { .. } => format!("attention_decode_d{}_{suffix}", c.d.next_multiple_of(32)),
    };
    match kernel {
        Kernel::Mma | Kernel::Fwd | Kernel::Q8 => {
            let bq = match kernel {
                Kernel::Mma => MMA_BQ,
                Kernel::Q8 => Q8_BQ,
                _ => FWD_BQ,
            };
            // SAFETY: FWD_PARAMS of kernels/attention.cuh.
            let f: Fwd = unsafe { emu.kernel(&name) };
            emu.launch((bh as u32, c.nq.div_ceil(bq) as u32, 1), (THREADS, 1, 1), || unsafe {
                f(qv.as_ptr(), kp as *const c_void, vp as *const c_void, rh.as_ptr(), rw.as_ptr(), o as *mut f32, st, h32, hkv32, nq32, nk32, d32, scale, causal, k_h as i32, k_w as i32)
            });
        }
        Kernel::FewKeys => {
            // SAFETY: FEW_PARAMS of kernels/attention.cu.
            let f: Few = unsafe { emu.kernel(&name) };
            emu.launch((bh as u32, c.nq.div_ceil(FEW_BQ) as u32, 1), (THREADS, 1, 1), || unsafe {
                f(qv.as_ptr(), kv.as_ptr(), vv.as_ptr(), o as *mut f32, st, h32, hkv32, nq32, nk32, d32, scale, causal)
            });
        }
        Kernel::Decode { splits, recorded } => {
            // Host-given chunks: whole block steps covering the keys in about `splits` parts.
            // Recorded: the grid has `splits` parts and the key count is read on the device.
            let (nsplit, chunk, nk_arg) = if recorded {
                (splits, 0, c.nk_all)
            } else {
                let chunk = c.nk.div_ceil(splits).next_multiple_of(DEC_STEP);
                (c.nk.div_ceil(chunk), chunk, c.nk)
            };
            let step = [0i32, 0, c.nk as i32];
            let mut part_o = vec![f32::NAN; rows * nsplit * c.d];
            let mut part_ml = vec![f32::NAN; rows * nsplit * 2];
            let (po, pml) = (part_o.as_mut_ptr() as usize, part_ml.as_mut_ptr() as usize);
            // SAFETY: DEC_PARAMS of kernels/attention.cu.
            let f: Decode = unsafe { emu.kernel(&name) };
            emu.launch((rows as u32, nsplit as u32, 1), (THREADS, 1, 1), || unsafe {
                let (po, pml) = if nsplit > 1 { (po as *mut f32, pml as *mut f32) } else { (std::ptr::null_mut(), std::ptr::null_mut()) };
                let stepp = if recorded { step.as_ptr() } else { std::ptr::null() };
                f(qv.as_ptr(), kp as *const c_void, vp as *const c_void, rh.as_ptr(), rw.as_ptr(), o as *mut f32, st, h32, hkv32, nq32, nk_arg as i32, d32, scale, causal, k_h as i32, k_w as i32, po, pml, chunk as i32, stepp)
            });
            if nsplit > 1 {
                // SAFETY: attention_combine_f32's parameter list.
                let f: Combine = unsafe { emu.kernel("attention_combine_f32") };
                emu.launch((rows as u32, 1, 1), (c.d.next_multiple_of(32).min(THREADS as usize) as u32, 1, 1), || unsafe {
                    f(po as *const f32, pml as *const f32, o as *mut f32, st, h32, nq32, d32, nsplit as i32)
                });
            }
        }
    }
    out
}

#[test]
fn mma_attention_ragged_gqa() {
    // 70 queries (two blocks, the second mostly padding) over 130 keys (a partial third tile),
    // d 20 (zero-filled to 32), 4 heads on 2 K/V heads.
    check(Kernel::Mma, Case::new(1, 4, 2, 70, 130, 20));
}

#[test]
fn mma_attention_causal_cache() {
    // Causal prefill continuing a cache: 65 queries ending at key 80 of a 96-row cache, d 80.
    check(Kernel::Mma, Case { causal: true, nk_all: 96, ..Case::new(1, 2, 2, 65, 80, 80) });
}

#[test]
fn mma_attention_rel_pos_bias() {
    // SAM's decomposed relative-position bias on an 8 × 8 key grid, d 16, 2 batch entries.
    check(Kernel::Mma, Case { grid: Some((8, 8)), ..Case::new(2, 2, 2, 64, 64, 16) });
}

#[test]
fn mma_attention_widest_head_shared_tokens() {
    // d 128; token-major tensors with one k/v shared by both batch entries (batch stride 0).
    check(Kernel::Mma, Case { token_major_shared_kv: true, ..Case::new(2, 2, 2, 9, 70, 128) });
}

#[test]
fn mma_attention_packed_projection() {
    // q, k and v read in place from SAM's packed qkv projection, with its bias on a 7 × 7 key
    // grid (49 tokens, a partial block), d 16, 2 windows, 3 heads.
    check(Kernel::Mma, Case { packed: true, grid: Some((7, 7)), ..Case::new(2, 3, 3, 49, 49, 16) });
    check(Kernel::Mma, Case { packed: true, ..Case::new(1, 2, 2, 70, 70, 80) });
}

#[test]
fn mma_attention_one_key() {
    check(Kernel::Mma, Case::new(1, 1, 1, 17, 1, 64));
}

#[test]
fn f32_forward_ragged_causal_and_bias() {
    // Blocks of 32 queries: 70 queries over 130 keys with GQA at d 20; a causal prefill ending
    // at key 80 of a 96-row cache at d 80; SAM's decomposed bias on an 8 × 8 grid at d 16.
    check(Kernel::Fwd, Case::new(1, 4, 2, 70, 130, 20));
    check(Kernel::Fwd, Case { causal: true, nk_all: 96, ..Case::new(1, 2, 2, 65, 80, 80) });
    check(Kernel::Fwd, Case { grid: Some((8, 8)), ..Case::new(2, 2, 2, 40, 64, 16) });
    check(Kernel::Fwd, Case { token_major_shared_kv: true, ..Case::new(2, 2, 2, 9, 70, 128) });
    check(Kernel::Fwd, Case { packed: true, grid: Some((6, 6)), ..Case::new(2, 2, 2, 36, 36, 24) });
}

#[test]
fn f32_forward_blocks_of_eight() {
    // SAM's token-to-image shape, small: 7 queries per prompt over a shared token-major set of
    // 300 keys, d 16; and 3 queries at d 64 with GQA.
    check(Kernel::Q8, Case { token_major_shared_kv: true, ..Case::new(3, 4, 4, 7, 300, 16) });
    check(Kernel::Q8, Case::new(1, 2, 1, 3, 40, 64));
}

#[test]
fn few_keys() {
    // SAM's image-to-token shape, small: 200 queries (a partial second block of 128) over 7
    // keys, d 16, token-major with shared keys; 130 causal queries over 64 keys at d 24.
    check(Kernel::FewKeys, Case { token_major_shared_kv: true, ..Case::new(2, 2, 2, 200, 7, 16) });
    check(Kernel::FewKeys, Case { causal: true, ..Case::new(1, 2, 1, 64, 64, 24) });
    check(Kernel::FewKeys, Case::new(1, 1, 1, 130, 1, 32));
}

#[test]
fn decode_splits_and_recorded_steps() {
    // One query over 300 keys in 3 splits (d 128, GQA); 4 causal queries over the first 100
    // keys of a 128-row cache in 2 splits (d 64); one split writing the output itself; a
    // recorded step reading 150 of 256 cached keys from its device buffer over 4 splits (d 96),
    // and one whose keys leave splits empty.
    check(Kernel::Decode { splits: 3, recorded: false }, Case::new(1, 4, 2, 1, 300, 128));
    check(Kernel::Decode { splits: 2, recorded: false }, Case { causal: true, nk_all: 128, ..Case::new(1, 2, 2, 4, 100, 64) });
    check(Kernel::Decode { splits: 1, recorded: false }, Case::new(2, 2, 1, 1, 37, 32));
    check(Kernel::Decode { splits: 4, recorded: true }, Case { nk_all: 256, ..Case::new(1, 2, 1, 1, 150, 96) });
    check(Kernel::Decode { splits: 8, recorded: true }, Case { causal: true, nk_all: 256, ..Case::new(1, 2, 2, 2, 20, 64) });
}

#[test]
fn bf16_kv_cache_kernels() {
    // A bf16 KV cache: the `_bf16kv` entry points on the shapes a causal prefill and a decode
    // step give them (a continued cache, GQA, every head dim family, splits and a recorded step).
    let bf16 = |c: Case| Case { bf16_kv: true, ..c };
    check(Kernel::Mma, bf16(Case { causal: true, nk_all: 96, ..Case::new(1, 2, 2, 65, 80, 80) }));
    check(Kernel::Mma, bf16(Case::new(1, 4, 2, 70, 130, 20)));
    check(Kernel::Fwd, bf16(Case { causal: true, nk_all: 96, ..Case::new(1, 2, 2, 65, 80, 80) }));
    check(Kernel::Fwd, bf16(Case { token_major_shared_kv: true, ..Case::new(2, 2, 2, 9, 70, 128) }));
    check(Kernel::Decode { splits: 3, recorded: false }, bf16(Case::new(1, 4, 2, 1, 300, 128)));
    check(Kernel::Decode { splits: 1, recorded: false }, bf16(Case::new(2, 2, 1, 1, 37, 32)));
    check(Kernel::Decode { splits: 4, recorded: true }, bf16(Case { nk_all: 256, ..Case::new(1, 2, 1, 1, 150, 96) }));
    check(Kernel::Decode { splits: 2, recorded: false }, bf16(Case { causal: true, nk_all: 128, ..Case::new(1, 2, 2, 4, 100, 64) }));
}
