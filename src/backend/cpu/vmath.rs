//! Vectorised transcendental activations (AVX-512) for the pointwise ops: exp (SiLU, quick-GELU,
//! softmax) and erf (exact GELU). A prefill of SmolLM2 spent 7% of its time in scalar `expf`.
//!
//! exp: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two for exactness), e^r by a degree-6
//! polynomial, 2^n by exponent bits: relative error ~2 ulp over the f32 range; inputs below
//! −87 give exactly 0 (never a subnormal), above 88.7 saturate near f32::MAX.
//! erf: Abramowitz–Stegun 7.1.26, |error| ≤ 1.5e-7 — below f32 resolution of GELU's output
//! scale.

use crate::backend::Activation;

use super::elementwise::act_scalar;

/// Apply `act` to every element of `v`.
pub fn act_slice(v: &mut [f32], act: Activation) {
    #[cfg(target_arch = "x86_64")]
    if matches!(act, Activation::Silu | Activation::QuickGelu | Activation::Gelu) && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F checked above.
        unsafe { x86::act_avx512(v, act) };
        return;
    }
    v.iter_mut().for_each(|x| *x = act_scalar(*x, act));
}

/// out[i] = silu(g[i]) · u[i] for i < out.len() (g and u at least as long).
pub fn silu_mul_slice(out: &mut [f32], g: &[f32], u: &[f32]) {
    let (g, u) = (&g[..out.len()], &u[..out.len()]);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F checked above; g and u are as long as out.
        unsafe { x86::silu_mul_avx512(out, g, u) };
        return;
    }
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = act_scalar(g, Activation::Silu) * u;
    }
}

/// v[i] = exp(v[i] − shift); returns the sum of the results.
pub fn exp_shifted_sum(v: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F checked above.
        return unsafe { x86::exp_shifted_sum_avx512(v, shift) };
    }
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = (*x - shift).exp();
        s += *x;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::backend::Activation;

    use super::act_scalar;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp512(x_in: __m512) -> __m512 {
        // Results below e^-87 are flushed to exactly 0 (−∞ → 0 for masked scores): letting
        // them become subnormal made every later GEMM that read them take microcode assists
        // (a SmolLM2 prefill ran at half speed).
        let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x_in, _mm512_set1_ps(-87.0));
        let x = _mm512_max_ps(_mm512_min_ps(x_in, _mm512_set1_ps(88.72)), _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n))
    }

    /// 1 / d for d ≥ 1: the 14-bit reciprocal estimate and one Newton step (relative error
    /// ~2⁻²⁶, under an f32 ulp after rounding). A 512-bit divide issues once per ~10 cycles and
    /// was the bottleneck of SiLU.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn recip512(d: __m512) -> __m512 {
        let r = _mm512_rcp14_ps(d);
        _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0)), r)
    }

    /// x · sigmoid(a·x).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn x_sigmoid512(x: __m512, a: f32) -> __m512 {
        let e = exp512(_mm512_mul_ps(x, _mm512_set1_ps(-a)));
        _mm512_mul_ps(x, recip512(_mm512_add_ps(_mm512_set1_ps(1.0), e)))
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul_avx512(out: &mut [f32], g: &[f32], u: &[f32]) {
        let n = out.len().min(g.len()).min(u.len());
        let mut i = 0;
        while i + 16 <= n {
            let s = x_sigmoid512(_mm512_loadu_ps(g.as_ptr().add(i)), 1.0);
            _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_mul_ps(s, _mm512_loadu_ps(u.as_ptr().add(i))));
            i += 16;
        }
        for j in i..n {
            out[j] = act_scalar(g[j], Activation::Silu) * u[j];
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn act512(x: __m512, act: Activation) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        match act {
            Activation::Silu => x_sigmoid512(x, 1.0),
            Activation::QuickGelu => x_sigmoid512(x, 1.702),
            _ => {
                // GELU: 0.5·x·(1 + erf(x/√2)), erf by A&S 7.1.26 on |z| with the sign restored.
                let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
                let a = _mm512_abs_ps(z);
                let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.327_591_1), a, one));
                let mut p = _mm512_set1_ps(1.061_405_4);
                for c in [-1.453_152_1, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
                    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
                }
                p = _mm512_mul_ps(p, t);
                let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
                let erf_abs = _mm512_fnmadd_ps(p, e, one);
                let sign = _mm512_and_ps(z, _mm512_set1_ps(-0.0));
                let erf = _mm512_or_ps(erf_abs, sign);
                _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5), x), _mm512_add_ps(one, erf))
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn act_avx512(v: &mut [f32], act: Activation) {
        let mut chunks = v.chunks_exact_mut(16);
        for c in &mut chunks {
            _mm512_storeu_ps(c.as_mut_ptr(), act512(_mm512_loadu_ps(c.as_ptr()), act));
        }
        for x in chunks.into_remainder() {
            *x = act_scalar(*x, act);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_sum_avx512(v: &mut [f32], shift: f32) -> f32 {
        let s = _mm512_set1_ps(shift);
        let mut acc = _mm512_setzero_ps();
        let mut chunks = v.chunks_exact_mut(16);
        for c in &mut chunks {
            let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), s));
            _mm512_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm512_add_ps(acc, e);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        for x in chunks.into_remainder() {
            *x = (*x - shift).exp();
            sum += *x;
        }
        sum
    }
}
