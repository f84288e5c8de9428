//! kernels/attention_mma.cu (flash attention on the tensor cores, f16 operands) against the CPU
//! backend on the operands rounded as the kernel rounds them (q·scale, k and v to f16): what is
//! left is the f16 rounding of the softmax weights before P·V (relative 2⁻¹¹) and the order of
//! sums, within `LOW_PRECISION_TOL` (as tests/gpu/attention.rs for half-precision callers).

use visword::{AttnBias, AttnParams, Backend, Tensor};

use crate::common::{assert_close, f16_round, Rng, LOW_PRECISION_TOL};
use crate::emu;

/// Queries per block and threads per block of the mma kernels (MMA_BQ, MMA_THREADS).
const BQ: usize = 64;
const THREADS: u32 = 128;

/// kernels/attention.cuh's AttnStrides.
#[repr(C)]
#[derive(Clone, Copy)]
struct Strides {
    q: [i64; 3],
    kv: [i64; 3],
    o: [i64; 3],
}

type Fwd = unsafe extern "C" fn(*const f32, *const f32, *const f32, *const f32, *const f32, *mut f32, Strides, i32, i32, i32, i32, i32, f32, i32, i32, i32);

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
}

impl Case {
    fn new(b: usize, h: usize, hkv: usize, nq: usize, nk: usize, d: usize) -> Case {
        Case { b, h, hkv, nq, nk_all: nk, nk, d, causal: false, grid: None, token_major_shared_kv: false }
    }
}

fn check(c: Case) {
    let Some(emu) = emu::kernels("attention_mma") else { return };
    let seed = 0xE3A0_0000 ^ (c.nq * 131 + c.nk_all * 7 + c.d) as u64;
    let mut rng = Rng::new(seed);
    let cpu = Backend::cpu();
    let (kv_b, kv_shape) = if c.token_major_shared_kv { (1, vec![1, c.hkv, c.nk_all, c.d]) } else { (c.b, vec![c.b, c.hkv, c.nk_all, c.d]) };
    let q = rng.tensor(&[c.b, c.h, c.nq, c.d]);
    let k = rng.tensor(&kv_shape);
    let v = rng.tensor(&kv_shape);
    let rel = c.grid.map(|(kh, kw)| (rng.tensor(&[c.b, c.h, c.nq, kh]), rng.tensor(&[c.b, c.h, c.nq, kw])));
    let scale = 1.0 / (c.d as f32).sqrt();
    let (qr, kr, vr) = (f16_round(&cpu, &q, scale), f16_round(&cpu, &k, 1.0), f16_round(&cpu, &v, 1.0));

    // The CPU reference on the rounded operands, head-major and with k/v repeated per batch.
    let rep = |t: &Tensor| if kv_b == 1 && c.b > 1 { cpu.concat(&vec![t; c.b], 0).unwrap() } else { t.clone() };
    let mut p = AttnParams::new(c.d);
    p.causal = c.causal;
    p.kv_len = (c.nk < c.nk_all).then_some(c.nk);
    if let (Some((rh, rw)), Some((k_h, k_w))) = (rel.as_ref(), c.grid) {
        p.bias = AttnBias::DecomposedRelPos { rel_h: rh, rel_w: rw, k_h, k_w };
    }
    let want = cpu.attention(&qr, &rep(&kr), &rep(&vr), &p).unwrap().to_f32_vec().unwrap();

    // The kernel on the unrounded operands, laid out as the case says.
    let (nq, nk_all, d, h, hkv) = (c.nq as i64, c.nk_all as i64, c.d as i64, c.h as i64, c.hkv as i64);
    let (qv, kv, vv, st) = if c.token_major_shared_kv {
        // q, k, v and out token-major [B, N, H·D]; k/v one shared batch entry.
        let tm = |t: &Tensor| cpu.permute(t, &[0, 2, 1, 3]).unwrap().to_f32_vec().unwrap();
        (tm(&q), tm(&k), tm(&v), Strides { q: [nq * h * d, d, h * d], kv: [0, d, hkv * d], o: [nq * h * d, d, h * d] })
    } else {
        let hm = |t: &Tensor| t.to_f32_vec().unwrap();
        (hm(&q), hm(&k), hm(&v), Strides { q: [h * nq * d, nq * d, d], kv: [hkv * nk_all * d, nk_all * d, d], o: [h * nq * d, nq * d, d] })
    };
    let (rh, rw) = match &rel {
        Some((a, b)) => (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap()),
        None => (vec![0.0], vec![0.0]),
    };
    let (k_h, k_w) = c.grid.unwrap_or((0, 0));
    let mut out = vec![f32::NAN; c.b * c.h * c.nq * c.d];
    let dp = c.d.next_multiple_of(16);
    // SAFETY: FWD_PARAMS of kernels/attention.cuh.
    let f: Fwd = unsafe { emu.kernel(&format!("attention_fwd_mma_d{dp}_f32")) };
    let o = out.as_mut_ptr() as usize;
    emu.launch(((c.b * c.h) as u32, c.nq.div_ceil(BQ) as u32, 1), (THREADS, 1, 1), || unsafe {
        f(qv.as_ptr(), kv.as_ptr(), vv.as_ptr(), rh.as_ptr(), rw.as_ptr(), o as *mut f32, st, c.h as i32, c.hkv as i32, c.nq as i32, c.nk as i32, c.d as i32, scale, c.causal as i32, k_h as i32, k_w as i32)
    });
    let got = if c.token_major_shared_kv {
        let t = Tensor::from_f32(out, vec![c.b, c.nq, c.h, c.d]).unwrap();
        cpu.permute(&t, &[0, 2, 1, 3]).unwrap().to_f32_vec().unwrap()
    } else {
        out
    };
    assert_close(&format!("attention_fwd_mma_d{dp} {c:?} seed {seed:#x}"), &got, &want, LOW_PRECISION_TOL);
}

#[test]
fn mma_attention_ragged_gqa() {
    // 70 queries (two blocks, the second mostly padding) over 130 keys (a partial third tile),
    // d 20 (zero-filled to 32), 4 heads on 2 K/V heads.
    check(Case::new(1, 4, 2, 70, 130, 20));
}

#[test]
fn mma_attention_causal_cache() {
    // Causal prefill continuing a cache: 65 queries ending at key 80 of a 96-row cache, d 80.
    check(Case { causal: true, nk_all: 96, ..Case::new(1, 2, 2, 65, 80, 80) });
}

#[test]
fn mma_attention_rel_pos_bias() {
    // SAM's decomposed relative-position bias on an 8 × 8 key grid, d 16, 2 batch entries.
    check(Case { grid: Some((8, 8)), ..Case::new(2, 2, 2, 64, 64, 16) });
}

#[test]
fn mma_attention_widest_head_shared_tokens() {
    // d 128; token-major tensors with one k/v shared by both batch entries (batch stride 0).
    check(Case { token_major_shared_kv: true, ..Case::new(2, 2, 2, 9, 70, 128) });
}

#[test]
fn mma_attention_one_key() {
    check(Case::new(1, 1, 1, 17, 1, 64));
}
