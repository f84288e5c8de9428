//! Every CPU op against a naive f64 reference on seeded random inputs, with shape sweeps that
//! include size 1 and sizes not divisible by the SIMD width or block size.

mod common;

use common::{assert_close, Rng, Tol, F32_OP};
use visword::{Activation, AttnBias, AttnParams, Backend, DType, Tensor, TwoWayParams};

fn be() -> Backend {
    Backend::cpu()
}

/// Accumulation over K terms in f32: allow error growing with K.
fn tol_k(k: usize) -> Tol {
    Tol { atol: 2e-6 * (k as f32).sqrt().max(1.0), rtol: 1e-5 }
}

fn naive_linear(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut o = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            o[i * n + j] = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>() as f32;
        }
    }
    o
}

#[test]
fn linear_matches_reference_for_every_weight_dtype_and_epilogue() {
    let mut rng = Rng::new(1);
    eprintln!("seed 1");
    for &(m, k, n) in &[(1, 1, 1), (1, 37, 5), (2, 64, 17), (4, 100, 33), (5, 19, 7), (7, 130, 65), (33, 257, 40), (17, 900, 45)] {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let x = rng.tensor(&[m, k]);
            let w = rng.tensor(&[n, k]).to_dtype(dtype).unwrap();
            let b = rng.tensor(&[n]);
            let r = rng.tensor(&[m, n]);
            let wf = w.to_f32_vec().unwrap();
            let base = naive_linear(x.as_f32().unwrap(), m, k, &wf, n);
            for act in [Activation::None, Activation::Gelu, Activation::QuickGelu, Activation::Silu] {
                let got = be().linear(&x, &w, Some(&b), act, Some(&r)).unwrap();
                let want: Vec<f32> = base
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let z = (v + b.as_f32().unwrap()[i % n]) as f64;
                        let a = match act {
                            Activation::None => z,
                            Activation::Gelu => 0.5 * z * (1.0 + erf(z / 2f64.sqrt())),
                            Activation::QuickGelu => z / (1.0 + (-1.702 * z).exp()),
                            Activation::Silu => z / (1.0 + (-z).exp()),
                            _ => unreachable!(),
                        };
                        (a + r.as_f32().unwrap()[i] as f64) as f32
                    })
                    .collect();
                assert_close(&format!("linear {m}x{k}x{n} {dtype} {act:?}"), got.as_f32().unwrap(), &want, tol_k(k));
            }
        }
    }
    // A residual [1, R, N] shared by every entry of a [B, R, K] input, on the GEMV (M ≤ 4),
    // unpacked-GEMM and packed-GEMM paths.
    for &(bsz, rows, k, n) in &[(2, 2, 37, 5), (3, 3, 64, 17), (4, 120, 33, 20)] {
        let x = rng.tensor(&[bsz, rows, k]);
        let w = rng.tensor(&[n, k]);
        let r = rng.tensor(&[1, rows, n]);
        let base = naive_linear(x.as_f32().unwrap(), bsz * rows, k, w.as_f32().unwrap(), n);
        let want: Vec<f32> = base.iter().enumerate().map(|(i, v)| v + r.as_f32().unwrap()[i % (rows * n)]).collect();
        let got = be().linear(&x, &w, None, Activation::None, Some(&r)).unwrap();
        assert_eq!(got.shape(), [bsz, rows, n]);
        assert_close(&format!("linear {bsz}x{rows}x{k}x{n}, shared residual"), got.as_f32().unwrap(), &want, tol_k(k));
    }
    let x = rng.tensor(&[2, 3, 8]);
    assert!(be().linear(&x, &rng.tensor(&[4, 8]), None, Activation::None, Some(&rng.tensor(&[2, 1, 4]))).is_err(), "a residual broadcast over another dim");
}

fn erf(x: f64) -> f64 {
    // Numerical Recipes' Chebyshev fit of erfc, relative error < 1.2e-7: well inside the
    // tolerances it is used with.
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = 1.0
        - t * (-x * x - 1.26551223
            + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 { y } else { -y }
}

#[test]
fn batched_matmul_plain_transposed_and_shared() {
    let mut rng = Rng::new(2);
    for &(bt, m, k, n) in &[(1, 1, 1, 1), (3, 5, 7, 9), (2, 33, 17, 65), (4, 8, 64, 8)] {
        let a = rng.tensor(&[bt, m, k]);
        let b = rng.tensor(&[bt, k, n]);
        let got = be().matmul(&a, &b, false).unwrap();
        let (av, bv) = (a.as_f32().unwrap(), b.as_f32().unwrap());
        let mut want = vec![0f32; bt * m * n];
        for i in 0..bt {
            for r in 0..m {
                for c in 0..n {
                    want[(i * m + r) * n + c] = (0..k).map(|t| av[(i * m + r) * k + t] as f64 * bv[(i * k + t) * n + c] as f64).sum::<f64>() as f32;
                }
            }
        }
        assert_close("matmul", got.as_f32().unwrap(), &want, tol_k(k));
        let bt_t = be().permute(&b, &[0, 2, 1]).unwrap();
        let got_t = be().matmul(&a, &bt_t, true).unwrap();
        assert_close("matmul trans_b", got_t.as_f32().unwrap(), &want, tol_k(k));
        // Shared 2-D right operand.
        let b0 = be().narrow(&b, 0, 0, 1).unwrap().reshape(&[k, n]).unwrap();
        let got_s = be().matmul(&a, &b0, false).unwrap();
        for i in 0..bt {
            let single = be().matmul(&be().narrow(&a, 0, i, 1).unwrap(), &b0.reshape(&[1, k, n]).unwrap(), false).unwrap();
            assert_close("matmul shared", &got_s.as_f32().unwrap()[i * m * n..][..m * n], single.as_f32().unwrap(), F32_OP);
        }
    }
    assert!(be().matmul(&rng.tensor(&[2, 3]), &rng.tensor(&[4, 5]), false).is_err());
}

/// f64 attention reference with every feature.
#[allow(clippy::too_many_arguments)]
fn naive_attention(q: &[f32], k: &[f32], v: &[f32], b: usize, h: usize, hkv: usize, nq: usize, nk_all: usize, nk: usize, d: usize, scale: f32, causal: bool, rel: Option<(&[f32], &[f32], usize, usize)>) -> Vec<f32> {
    let mut out = vec![0f32; b * h * nq * d];
    for bi in 0..b {
        for hi in 0..h {
            let kvh = bi * hkv + hi / (h / hkv);
            for i in 0..nq {
                let qr = &q[((bi * h + hi) * nq + i) * d..][..d];
                let mut s: Vec<f64> = (0..nk)
                    .map(|j| {
                        let kr = &k[(kvh * nk_all + j) * d..][..d];
                        let mut x = qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64;
                        if let Some((rh, rw, kh, kw)) = rel {
                            x += rh[((bi * h + hi) * nq + i) * kh + j / kw] as f64 + rw[((bi * h + hi) * nq + i) * kw + j % kw] as f64;
                        }
                        if causal && j > nk - nq + i {
                            x = f64::NEG_INFINITY;
                        }
                        x
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                s.iter_mut().for_each(|x| *x = (*x - m).exp());
                let z: f64 = s.iter().sum();
                for t in 0..d {
                    out[((bi * h + hi) * nq + i) * d + t] = (s.iter().enumerate().map(|(j, p)| p * v[(kvh * nk_all + j) * d + t] as f64).sum::<f64>() / z) as f32;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_reference_noncausal_causal_gqa_kvlen_relpos() {
    let mut rng = Rng::new(3);
    // (b, h, hkv, nq, nk_all, kv_len, d, causal)
    let cases = [
        (1, 1, 1, 1, 1, 1, 1, false),
        (2, 3, 3, 5, 5, 5, 8, false),
        (1, 4, 2, 33, 33, 33, 12, true),
        (1, 6, 2, 1, 40, 17, 64, true),
        (1, 2, 1, 7, 50, 20, 80, true),
        (1, 2, 2, 70, 70, 70, 128, false),
    ];
    for &(b, h, hkv, nq, nk_all, kv_len, d, causal) in &cases {
        let (q, k, v) = (rng.tensor(&[b, h, nq, d]), rng.tensor(&[b, hkv, nk_all, d]), rng.tensor(&[b, hkv, nk_all, d]));
        let mut p = AttnParams::new(d);
        p.causal = causal;
        p.kv_len = Some(kv_len);
        let got = be().attention(&q, &k, &v, &p).unwrap();
        let want = naive_attention(q.as_f32().unwrap(), k.as_f32().unwrap(), v.as_f32().unwrap(), b, h, hkv, nq, nk_all, kv_len, d, p.scale, causal, None);
        assert_close(&format!("attention {b}x{h}/{hkv}x{nq}x{kv_len}x{d} causal={causal}"), got.as_f32().unwrap(), &want, tol_k(d));
    }
    // SAM decomposed relative positions on a 5×7 key grid (35 keys, not a block multiple).
    let (b, h, kh, kw, d) = (2, 3, 5, 7, 16);
    let n = kh * kw;
    let (q, k, v) = (rng.tensor(&[b, h, n, d]), rng.tensor(&[b, h, n, d]), rng.tensor(&[b, h, n, d]));
    let (rh, rw) = (rng.tensor(&[b, h, n, kh]), rng.tensor(&[b, h, n, kw]));
    let mut p = AttnParams::new(d);
    p.bias = AttnBias::DecomposedRelPos { rel_h: &rh, rel_w: &rw, k_h: kh, k_w: kw };
    let got = be().attention(&q, &k, &v, &p).unwrap();
    let want = naive_attention(q.as_f32().unwrap(), k.as_f32().unwrap(), v.as_f32().unwrap(), b, h, h, n, n, n, d, p.scale, false, Some((rh.as_f32().unwrap(), rw.as_f32().unwrap(), kh, kw)));
    assert_close("attention rel-pos", got.as_f32().unwrap(), &want, tol_k(d));
    // Shape errors are reported, not panicked on.
    assert!(be().attention(&q, &rng.tensor(&[b, 2, n, d]), &rng.tensor(&[b, 2, n, d]), &AttnParams::new(d)).is_err());
    // Queries over an empty cache are refused; no queries (or a zero head dim) give an empty result.
    let e = be().attention(&q, &k, &v, &AttnParams { kv_len: Some(0), ..AttnParams::new(d) }).unwrap_err();
    assert!(e.to_string().contains("no keys"), "{e}");
    let q0 = rng.tensor(&[b, h, 0, d]);
    assert_eq!(be().attention(&q0, &k, &v, &AttnParams { kv_len: Some(0), ..AttnParams::new(d) }).unwrap().shape(), &[b, h, 0, d]);
    let (q1, k1) = (rng.tensor(&[1, 2, 3, 0]), rng.tensor(&[1, 2, 4, 0]));
    assert_eq!(be().attention(&q1, &k1, &k1, &AttnParams::new(1)).unwrap().shape(), &[1, 2, 3, 0]);
}

#[test]
fn attention_tokens_is_attention_on_token_major_tensors() {
    // q [Bq, Nq, H·D], k/v [Bk, Nk, Hkv·D] with one side's batch shared, against the f64
    // reference on each batch entry's heads.
    // Also: one query (the decode path), more queries than one block (128), a causal mask over
    // a cache read up to kv_len, and SAM's decomposed relative-position bias over a 3×5 key grid.
    let mut rng = Rng::new(0x70CE);
    let (b, h, hkv, d) = (3, 4, 2, 5);
    for (bq, bk, nq, nk, causal, kv_len, rel) in [
        (3, 3, 6, 9, false, None, false),
        (1, 3, 11, 4, false, None, false),
        (3, 1, 2, 13, false, None, false),
        (3, 1, 1, 13, false, None, false),
        (1, 3, 130, 7, false, None, false),
        (3, 3, 5, 12, true, Some(9), false),
        (3, 1, 4, 15, false, None, true),
    ] {
        let q = rng.tensor(&[bq, nq, h * d]);
        let k = rng.tensor(&[bk, nk, hkv * d]);
        let v = rng.tensor(&[bk, nk, hkv * d]);
        let (rel_h, rel_w) = (rng.tensor(&[b, h, nq, 3]), rng.tensor(&[b, h, nq, 5]));
        let mut p = AttnParams::new(d);
        p.causal = causal;
        p.kv_len = kv_len;
        if rel {
            p.bias = AttnBias::DecomposedRelPos { rel_h: &rel_h, rel_w: &rel_w, k_h: 3, k_w: 5 };
        }
        let got = be().attention_tokens(&q, &k, &v, h, &p).unwrap();
        assert_eq!(got.shape(), [b, nq, h * d]);
        let heads = |t: &Tensor, j: usize, nh: usize| -> Vec<f32> {
            let (n, j) = (t.dim(1), if t.dim(0) == 1 { 0 } else { j });
            let x = t.as_f32().unwrap();
            let mut out = Vec::with_capacity(nh * n * d);
            for hh in 0..nh {
                for i in 0..n {
                    out.extend_from_slice(&x[(j * n + i) * nh * d + hh * d..][..d]);
                }
            }
            out
        };
        let got = got.as_f32().unwrap();
        for j in 0..b {
            let bias = |t: &Tensor| t.as_f32().unwrap()[j * h * nq * t.dim(3)..][..h * nq * t.dim(3)].to_vec();
            let (rh, rw) = (bias(&rel_h), bias(&rel_w));
            let rel = rel.then_some((rh.as_slice(), rw.as_slice(), 3, 5));
            let want = naive_attention(&heads(&q, j, h), &heads(&k, j, hkv), &heads(&v, j, hkv), 1, h, hkv, nq, nk, kv_len.unwrap_or(nk), d, p.scale, causal, rel);
            for hh in 0..h {
                for i in 0..nq {
                    let g = &got[(j * nq + i) * h * d + hh * d..][..d];
                    assert_close(&format!("attention_tokens {bq}/{bk} entry {j} head {hh} row {i}"), g, &want[(hh * nq + i) * d..][..d], tol_k(d));
                }
            }
        }
    }
    // Batches that are neither equal nor 1, heads that do not divide the width, a KV width
    // that is no whole number of heads, a 4-D operand.
    let t = |s: &[usize]| Tensor::from_f32(vec![0.0; s.iter().product()], s.to_vec()).unwrap();
    let p = AttnParams::new(4);
    assert!(be().attention_tokens(&t(&[2, 3, 8]), &t(&[3, 3, 8]), &t(&[3, 3, 8]), 2, &p).is_err());
    assert!(be().attention_tokens(&t(&[1, 3, 8]), &t(&[1, 3, 8]), &t(&[1, 3, 8]), 3, &p).is_err());
    assert!(be().attention_tokens(&t(&[1, 3, 8]), &t(&[1, 3, 6]), &t(&[1, 3, 6]), 2, &p).is_err());
    assert!(be().attention_tokens(&t(&[1, 1, 3, 8]), &t(&[1, 3, 8]), &t(&[1, 3, 8]), 2, &p).is_err());
}

#[test]
fn norms_softmax_rope() {
    let mut rng = Rng::new(4);
    for &(rows, d) in &[(1, 1), (3, 7), (17, 576), (2, 1030)] {
        let x = rng.tensor(&[rows, d]);
        let (w, b) = (rng.tensor(&[d]), rng.tensor(&[d]));
        let xv = x.as_f32().unwrap();
        let (wv, bv) = (w.as_f32().unwrap(), b.as_f32().unwrap());
        let mut ln = vec![0f32; rows * d];
        let mut rms = vec![0f32; rows * d];
        let mut sm = vec![0f32; rows * d];
        for r in 0..rows {
            let row: Vec<f64> = xv[r * d..][..d].iter().map(|&v| v as f64).collect();
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
            for i in 0..d {
                ln[r * d + i] = ((row[i] - mean) / (var + 1e-5).sqrt() * wv[i] as f64 + bv[i] as f64) as f32;
                rms[r * d + i] = (row[i] / (ms + 1e-6).sqrt() * wv[i] as f64) as f32;
                sm[r * d + i] = ((row[i] - mx).exp() / z) as f32;
            }
        }
        let tol = Tol { atol: 1e-5, rtol: 1e-4 };
        assert_close("layer_norm", be().layer_norm(&x, &w, &b, 1e-5).unwrap().as_f32().unwrap(), &ln, tol);
        assert_close("rms_norm", be().rms_norm(&x, &w, 1e-6).unwrap().as_f32().unwrap(), &rms, tol);
        assert_close("softmax", be().softmax(&x).unwrap().as_f32().unwrap(), &sm, F32_OP);
    }
    // LayerNorm over channels == LayerNorm of the NHWC permutation.
    let x = rng.tensor(&[2, 5, 3, 4]);
    let (w, b) = (rng.tensor(&[5]), rng.tensor(&[5]));
    let got = be().layer_norm_channels(&x, &w, &b, 1e-6).unwrap();
    let nhwc = be().permute(&x, &[0, 2, 3, 1]).unwrap();
    let want = be().permute(&be().layer_norm(&nhwc, &w, &b, 1e-6).unwrap(), &[0, 3, 1, 2]).unwrap();
    assert_close("layer_norm_channels", got.as_f32().unwrap(), want.as_f32().unwrap(), F32_OP);
    // RoPE against the rotate_half formula.
    let (bsz, h, n, d) = (1, 2, 5, 6);
    let x = rng.tensor(&[bsz, h, n, d]);
    let (cos, sin) = (rng.tensor(&[10, d / 2]), rng.tensor(&[10, d / 2]));
    let got = be().rope(&x, &cos, &sin, 3).unwrap();
    let (xv, cv, sv) = (x.as_f32().unwrap(), cos.as_f32().unwrap(), sin.as_f32().unwrap());
    let mut want = vec![0f32; xv.len()];
    for hh in 0..h {
        for t in 0..n {
            for i in 0..d {
                let j = i % (d / 2);
                let rot = if i < d / 2 { -xv[(hh * n + t) * d + i + d / 2] } else { xv[(hh * n + t) * d + i - d / 2] };
                want[(hh * n + t) * d + i] = xv[(hh * n + t) * d + i] * cv[(3 + t) * (d / 2) + j] + rot * sv[(3 + t) * (d / 2) + j];
            }
        }
    }
    assert_close("rope", got.as_f32().unwrap(), &want, F32_OP);
    assert!(be().rope(&x, &cos, &sin, 8).is_err(), "positions past the table must be an error");
}

#[test]
fn layout_ops_and_broadcasting() {
    let mut rng = Rng::new(5);
    let x = rng.tensor(&[2, 3, 4]);
    let xv = x.as_f32().unwrap().to_vec();
    let p = be().permute(&x, &[2, 0, 1]).unwrap();
    assert_eq!(p.shape(), &[4, 2, 3]);
    for a in 0..2 {
        for b in 0..3 {
            for c in 0..4 {
                assert_eq!(p.as_f32().unwrap()[(c * 2 + a) * 3 + b], xv[(a * 3 + b) * 4 + c]);
            }
        }
    }
    let n = be().narrow(&x, 1, 1, 2).unwrap();
    assert_eq!(n.shape(), &[2, 2, 4]);
    assert_eq!(n.as_f32().unwrap()[4..8], xv[8..12]);
    let c = be().concat(&[&be().narrow(&x, 1, 0, 1).unwrap(), &n], 1).unwrap();
    assert_eq!(c.as_f32().unwrap(), &xv[..]);
    // Broadcasting: [2,3,4] + [3,1] and [4].
    let y = rng.tensor(&[3, 1]);
    let s = be().add(&x, &y).unwrap();
    for (i, v) in xv.iter().enumerate() {
        assert_eq!(s.as_f32().unwrap()[i], v + y.as_f32().unwrap()[(i / 4) % 3]);
    }
    let z = rng.tensor(&[4]);
    let m = be().mul(&x, &z).unwrap();
    for (i, v) in xv.iter().enumerate() {
        assert_eq!(m.as_f32().unwrap()[i], v * z.as_f32().unwrap()[i % 4]);
    }
    assert!(be().add(&x, &rng.tensor(&[5])).is_err());
    let d = be().sub(&x, &y).unwrap();
    let a = be().affine(&x, -2.0, 0.5).unwrap();
    for (i, v) in xv.iter().enumerate() {
        assert_eq!(d.as_f32().unwrap()[i], v - y.as_f32().unwrap()[(i / 4) % 3]);
        assert_eq!(a.as_f32().unwrap()[i], v * -2.0 + 0.5);
    }
    let padded = be().pad2d(&x, 1, 0, 2, 1).unwrap();
    assert_eq!(padded.shape(), &[2, 4, 7]);
    assert_eq!(padded.as_f32().unwrap()[7 + 2], xv[0]);
    // Embedding: f32 and bf16 tables, out-of-range id is an argument error.
    let table = rng.tensor(&[10, 3]);
    let e = be().embedding(&table.to_dtype(DType::BF16).unwrap(), &[9, 0]).unwrap();
    assert_eq!(e.shape(), &[2, 3]);
    assert!((e.as_f32().unwrap()[0] - table.as_f32().unwrap()[27]).abs() < 1e-2);
    assert!(be().embedding(&table, &[10]).is_err());
    // write_kv then read back.
    let mut cache = Tensor::zeros(vec![1, 2, 6, 3]);
    let new = rng.tensor(&[1, 2, 2, 3]);
    be().write_kv(&mut cache, &new, 4).unwrap();
    assert_eq!(&cache.as_f32().unwrap()[12..18], &new.as_f32().unwrap()[..6]);
    assert!(be().write_kv(&mut cache, &new, 5).is_err());
}

#[test]
fn conv2d_matches_direct_loops() {
    let mut rng = Rng::new(6);
    for &(b, cin, h, w, cout, k, stride, pad) in &[(1, 1, 1, 1, 1, 1, 1, 0), (2, 3, 7, 9, 5, 3, 1, 1), (1, 4, 8, 8, 6, 2, 2, 0), (1, 3, 10, 6, 2, 4, 4, 0)] {
        let x = rng.tensor(&[b, cin, h, w]);
        let wt = rng.tensor(&[cout, cin, k, k]);
        let bias = rng.tensor(&[cout]);
        let got = be().conv2d(&x, &wt, Some(&bias), stride, pad).unwrap();
        let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        assert_eq!(got.shape(), &[b, cout, oh, ow]);
        let (xv, wv) = (x.as_f32().unwrap(), wt.as_f32().unwrap());
        let mut want = vec![0f32; b * cout * oh * ow];
        for bi in 0..b {
            for co in 0..cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = bias.as_f32().unwrap()[co] as f64;
                        for ci in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = ((oy * stride + ky) as isize - pad as isize, (ox * stride + kx) as isize - pad as isize);
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                        s += xv[((bi * cin + ci) * h + iy as usize) * w + ix as usize] as f64 * wv[((co * cin + ci) * k + ky) * k + kx] as f64;
                                    }
                                }
                            }
                        }
                        want[((bi * cout + co) * oh + oy) * ow + ox] = s as f32;
                    }
                }
            }
        }
        assert_close("conv2d", got.as_f32().unwrap(), &want, tol_k(cin * k * k));
    }
}

/// The fused upscaler tail against its definition in f64: HF's ConvTranspose2d(k = s = 2) on
/// channels-first maps, LayerNorm2d, GELU, ConvTranspose2d, GELU, then the hypernetwork product.
#[test]
fn upscale_masks_matches_the_upscaler_and_hypernetwork_product() {
    let mut rng = Rng::new(41);
    for (p, e, c1, c2, m) in [(2usize, 3usize, 8usize, 4usize, 3usize), (1, 2, 6, 3, 1), (3, 1, 4, 5, 2)] {
        let y = rng.tensor(&[p, e, e, 4 * c1]);
        let (lw, lb) = (rng.tensor(&[c1]), rng.tensor(&[c1]));
        // HF layout [C1, C2, 2, 2], and the op's [4·C2, C1] rows (c·2 + d)·C2 + o.
        let w_hf = rng.tensor(&[c1, c2, 2, 2]);
        let whf = w_hf.as_f32().unwrap();
        let mut w2 = vec![0f32; 4 * c2 * c1];
        for ch in 0..c1 {
            for o in 0..c2 {
                for cd in 0..4 {
                    w2[(cd * c2 + o) * c1 + ch] = whf[(ch * c2 + o) * 4 + cd];
                }
            }
        }
        let w2 = Tensor::from_f32(w2, vec![4 * c2, c1]).unwrap();
        let b2 = rng.tensor(&[c2]);
        let hyper = rng.tensor(&[p, m, c2]);
        let got = be().upscale_masks(&y, (&lw, &lb, 1e-6), &w2, &b2, &hyper).unwrap();
        assert_eq!(got.shape(), &[p, m, 4 * e, 4 * e]);

        let (yv, lwv, lbv, b2v, hv) = (y.as_f32().unwrap(), lw.as_f32().unwrap(), lb.as_f32().unwrap(), b2.as_f32().unwrap(), hyper.as_f32().unwrap());
        let gelu = |x: f64| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2));
        let (s2, s4) = (2 * e, 4 * e);
        let mut want = vec![0f32; p * m * s4 * s4];
        for pi in 0..p {
            // First map, channels-first [C1, 2E, 2E], normalised and activated per pixel.
            let mut f1 = vec![0f64; c1 * s2 * s2];
            for r in 0..s2 {
                for q in 0..s2 {
                    let px = &yv[(((pi * e + r / 2) * e + q / 2) * 4 + (r % 2) * 2 + q % 2) * c1..][..c1];
                    let mean = px.iter().map(|&v| v as f64).sum::<f64>() / c1 as f64;
                    let var = px.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c1 as f64;
                    for ch in 0..c1 {
                        let n = (px[ch] as f64 - mean) / (var + 1e-6).sqrt() * lwv[ch] as f64 + lbv[ch] as f64;
                        f1[(ch * s2 + r) * s2 + q] = gelu(n);
                    }
                }
            }
            for oy in 0..s4 {
                for ox in 0..s4 {
                    let feats: Vec<f64> = (0..c2)
                        .map(|o| {
                            let mut z = b2v[o] as f64;
                            for ch in 0..c1 {
                                z += f1[(ch * s2 + oy / 2) * s2 + ox / 2] * whf[((ch * c2 + o) * 2 + oy % 2) * 2 + ox % 2] as f64;
                            }
                            gelu(z)
                        })
                        .collect();
                    for mi in 0..m {
                        let h = &hv[(pi * m + mi) * c2..][..c2];
                        want[((pi * m + mi) * s4 + oy) * s4 + ox] = feats.iter().zip(h).map(|(f, &w)| f * w as f64).sum::<f64>() as f32;
                    }
                }
            }
        }
        assert_close(&format!("upscale_masks P{p} E{e} C1 {c1} C2 {c2} M{m}"), got.as_f32().unwrap(), &want, tol_k(c1 * c2));
    }
    // Operands that do not fit each other are an error, not a panic.
    let y = rng.tensor(&[1, 2, 2, 32]);
    let (lw, lb, b2) = (rng.tensor(&[8]), rng.tensor(&[8]), rng.tensor(&[4]));
    let (w2, hyper) = (rng.tensor(&[16, 8]), rng.tensor(&[1, 3, 4]));
    assert!(be().upscale_masks(&y, (&lw, &lb, 1e-6), &w2, &b2, &hyper).is_ok());
    assert!(be().upscale_masks(&rng.tensor(&[1, 2, 3, 32]), (&lw, &lb, 1e-6), &w2, &b2, &hyper).is_err(), "non-square grid");
    assert!(be().upscale_masks(&y, (&lw, &lb, 1e-6), &rng.tensor(&[16, 7]), &b2, &hyper).is_err(), "w2 width ≠ C1");
    assert!(be().upscale_masks(&y, (&lw, &lb, 1e-6), &w2, &b2, &rng.tensor(&[2, 3, 4])).is_err(), "hyper for another P");
    assert!(be().upscale_masks(&y, (&lw, &lb, 1e-6), &w2, &b2, &rng.tensor(&[1, 3, 5])).is_err(), "hyper width ≠ C2");
}

#[test]
fn linear_many_equals_separate_linears() {
    let mut rng = Rng::new(9);
    for &(m, k) in &[(1, 37), (3, 576), (6, 20)] {
        for dtype in [DType::F32, DType::BF16] {
            let x = rng.tensor(&[m, k]);
            let ws: Vec<Tensor> = [5, 64, 3].iter().map(|&n| rng.tensor(&[n, k]).to_dtype(dtype).unwrap()).collect();
            let refs: Vec<&Tensor> = ws.iter().collect();
            let got = be().linear_many(&x, &refs).unwrap();
            assert_eq!(got.len(), 3);
            for (g, w) in got.iter().zip(&ws) {
                let want = be().linear(&x, w, None, Activation::None, None).unwrap();
                assert_eq!(g.shape(), want.shape());
                assert_close("linear_many", g.as_f32().unwrap(), want.as_f32().unwrap(), F32_OP);
            }
        }
    }
    // A weight whose K disagrees is an error, not a panic.
    assert!(be().linear_many(&rng.tensor(&[1, 8]), &[&rng.tensor(&[4, 8]), &rng.tensor(&[4, 9])]).is_err());
}

#[test]
fn activations_match_f64_over_the_whole_range() {
    // Dense sweep plus extremes: the vectorised exp/erf must saturate like expf/erff.
    let mut xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.01).collect();
    xs.extend([-1000.0, -120.0, -88.0, -87.0, 87.0, 88.0, 120.0, 1000.0, 0.0, -0.0, 1e-30, -1e-30]);
    let n = xs.len();
    let x = Tensor::from_f32(xs.clone(), vec![n]).unwrap();
    let tol = Tol { atol: 1e-6, rtol: 2e-6 };
    for act in [Activation::Silu, Activation::QuickGelu, Activation::Gelu] {
        let got = be().activate(&x, act).unwrap();
        let want: Vec<f32> = xs
            .iter()
            .map(|&v| {
                let z = v as f64;
                (match act {
                    Activation::Silu => z / (1.0 + (-z).exp()),
                    Activation::QuickGelu => z / (1.0 + (-1.702 * z).exp()),
                    _ => 0.5 * z * (1.0 + erf(z / 2f64.sqrt())),
                }) as f32
            })
            .collect();
        assert_close(&format!("{act:?}"), got.as_f32().unwrap(), &want, tol);
    }
    // Softmax rows with huge spreads stay finite and sum to 1.
    let row = Tensor::from_f32(vec![-1000.0, 0.0, 1000.0, 999.0, 5.0, -3.0, 2.0, 1.0, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0], vec![1, 17]).unwrap();
    let s = be().softmax(&row).unwrap();
    let sum: f32 = s.as_f32().unwrap().iter().sum();
    assert!((sum - 1.0).abs() < 1e-6 && s.as_f32().unwrap().iter().all(|v| v.is_finite()));
    assert!((s.as_f32().unwrap()[2] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
}

/// Mask planes with blobs of several logit levels (so the three counts differ), empty planes,
/// NaN and ±∞.
fn mask_planes(rng: &mut Rng, planes: usize, ph: usize, pw: usize) -> Tensor {
    let mut v = vec![0f32; planes * ph * pw];
    for (i, plane) in v.chunks_mut(ph * pw).enumerate() {
        let (cy, cx, r) = (rng.uniform().abs() * ph as f32, rng.uniform().abs() * pw as f32, 1.0 + rng.uniform().abs() * (ph.min(pw) as f32 / 2.0));
        for (j, x) in plane.iter_mut().enumerate() {
            let (y, xx) = ((j / pw) as f32, (j % pw) as f32);
            let d = ((y - cy).powi(2) + (xx - cx).powi(2)).sqrt();
            // Plane 1 stays empty (all below zero); the others fall off from +3 to −3.
            *x = if i == 1 { -2.0 } else { 3.0 * (1.0 - d / r).clamp(-1.0, 1.0) + 0.1 * rng.uniform() };
        }
    }
    if v.len() > 10 {
        v[3] = f32::NAN;
        v[5] = f32::INFINITY;
        v[7] = f32::NEG_INFINITY;
    }
    Tensor::from_f32(v, vec![planes, ph, pw]).unwrap()
}

/// One plane's `mask_stats` row, cell by cell.
fn naive_mask_stats(plane: &[f32], pw: usize, [y0, x0, h, w]: [usize; 4], offset: f32) -> Vec<i32> {
    let words = w.div_ceil(32);
    let mut row = vec![0i32; visword::MASK_STATS_HEADER + h * words];
    let mut bbox = [-1i32; 4];
    for r in 0..h {
        for c in 0..w {
            let v = plane[(y0 + r) * pw + x0 + c];
            row[1] += (v > offset) as i32;
            row[2] += (v > -offset) as i32;
            if v > 0.0 {
                row[0] += 1;
                row[visword::MASK_STATS_HEADER + r * words + c / 32] |= 1 << (c % 32);
                let (c, r) = (c as i32, r as i32);
                bbox = if bbox[0] < 0 { [c, r, c, r] } else { [bbox[0].min(c), bbox[1].min(r), bbox[2].max(c), bbox[3].max(r)] };
            }
        }
    }
    row[3..7].copy_from_slice(&bbox);
    row
}

#[test]
fn mask_stats_counts_boxes_and_bits() {
    let mut rng = Rng::new(21);
    for &(planes, ph, pw, rect) in &[(4usize, 16usize, 16usize, [0usize, 0usize, 16usize, 16usize]), (3, 40, 70, [3, 5, 30, 65]), (2, 9, 33, [8, 32, 1, 1]), (5, 64, 64, [0, 0, 64, 33])] {
        let t = mask_planes(&mut rng, planes, ph, pw);
        let got = be().mask_stats(&t, rect, 1.0).unwrap();
        let row_len = visword::MASK_STATS_HEADER + rect[2] * rect[3].div_ceil(32);
        assert_eq!(got.shape(), &[planes, row_len]);
        let got = got.as_i32().unwrap();
        for (i, plane) in t.as_f32().unwrap().chunks(ph * pw).enumerate() {
            assert_eq!(&got[i * row_len..(i + 1) * row_len], naive_mask_stats(plane, pw, rect, 1.0).as_slice(), "plane {i} of {planes}×{ph}×{pw}, rect {rect:?}");
        }
    }
    let t = mask_planes(&mut rng, 2, 8, 8);
    for rect in [[0, 0, 9, 1], [0, 4, 1, 5], [0, 0, 0, 3]] {
        assert!(be().mask_stats(&t, rect, 1.0).is_err(), "rect {rect:?} must be refused");
    }
    assert!(be().mask_stats(&Tensor::from_f32(vec![0.0; 3], vec![3]).unwrap(), [0, 0, 1, 1], 1.0).is_err());
}

/// The two-way ops' scores in f64 from their definition (src/backend/two_way.rs):
/// s[b, j, r] = x[b|0, j]·ax[b, r] + y[j, r / T]·ay[b, r], as [B][N][R].
#[allow(clippy::too_many_arguments)]
fn naive_two_way_scores(x: &[f32], bx: usize, y: &[f32], ax: &[f32], ay: &[f32], b: usize, n: usize, c: usize, r: usize, groups: usize, dy: usize) -> Vec<f64> {
    let t = r / groups;
    let mut s = vec![0f64; b * n * r];
    for bi in 0..b {
        let xb = if bx == 1 { 0 } else { bi };
        for j in 0..n {
            for ri in 0..r {
                let g = ri / t;
                let dx: f64 = (0..c).map(|k| x[(xb * n + j) * c + k] as f64 * ax[(bi * r + ri) * c + k] as f64).sum();
                let dyv: f64 = (0..dy).map(|k| y[j * groups * dy + g * dy + k] as f64 * ay[(bi * r + ri) * dy + k] as f64).sum();
                s[(bi * n + j) * r + ri] = dx + dyv;
            }
        }
    }
    s
}

fn softmax_f64(v: &mut [f64]) {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = v.iter_mut().map(|e| {
        *e = (*e - m).exp();
        *e
    }).sum();
    v.iter_mut().for_each(|e| *e /= sum);
}

/// `two_way_update` and `two_way_pool` against f64 references written from their definitions:
/// one shared set of image tokens and one per prompt, one group and eight, size 1, SAM's
/// channel and row counts, sizes off every block size.
#[test]
fn two_way_update_and_pool_match_reference() {
    let mut rng = Rng::new(29);
    eprintln!("seed 29");
    // (B, Bx, N, C, groups, T, Dy)
    for &(b, bx, n, c, groups, t, dy) in &[(1, 1, 1, 1, 1, 1, 1), (2, 2, 37, 32, 2, 7, 8), (3, 1, 64, 16, 8, 3, 2), (2, 1, 130, 256, 8, 7, 16), (1, 1, 5, 9, 3, 40, 5)] {
        let r = groups * t;
        let x = rng.tensor(&[bx, n, c]);
        let y = rng.tensor(&[1, n, groups * dy]);
        // Scores of a few units, as SAM's scaled ones are.
        let scale = 1.0 / (c as f32).sqrt();
        let ax = Tensor::from_f32(rng.vec(b * r * c).iter().map(|v| v * 2.0 * scale).collect(), vec![b, r, c]).unwrap();
        let ay = rng.tensor(&[b, r, dy]);
        let u = rng.tensor(&[b, r, c]);
        let (bias, lw, lb) = (rng.tensor(&[c]), rng.tensor(&[c]), rng.tensor(&[c]));
        let f = |t: &Tensor| t.to_f32_vec().unwrap();
        let (xv, uv, bv, lwv, lbv) = (f(&x), f(&u), f(&bias), f(&lw), f(&lb));
        let s = naive_two_way_scores(&xv, bx, &f(&y), &f(&ax), &f(&ay), b, n, c, r, groups, dy);

        let mut want_update = vec![0f32; b * n * c];
        for bi in 0..b {
            let xb = if bx == 1 { 0 } else { bi };
            for j in 0..n {
                let mut p = s[(bi * n + j) * r..(bi * n + j + 1) * r].to_vec();
                p.chunks_mut(t).for_each(softmax_f64);
                let z: Vec<f64> = (0..c).map(|k| xv[(xb * n + j) * c + k] as f64 + bv[k] as f64 + (0..r).map(|ri| p[ri] * uv[(bi * r + ri) * c + k] as f64).sum::<f64>()).collect();
                let mean = z.iter().sum::<f64>() / c as f64;
                let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
                for k in 0..c {
                    want_update[(bi * n + j) * c + k] = ((z[k] - mean) / (var + 1e-6).sqrt() * lwv[k] as f64 + lbv[k] as f64) as f32;
                }
            }
        }
        let got = be().two_way_update(&x, &y, &ax, &ay, &u, &bias, (&lw, &lb, 1e-6), TwoWayParams::new(groups)).unwrap();
        assert_eq!(got.shape(), [b, n, c]);
        let what = format!("two_way_update B{b} Bx{bx} N{n} C{c} G{groups} T{t} Dy{dy}");
        assert_close(&what, got.as_f32().unwrap(), &want_update, Tol { atol: 2e-5 * (c as f32).sqrt(), rtol: 1e-4 });

        let mut want_pool = vec![0f32; b * r * c];
        for bi in 0..b {
            let xb = if bx == 1 { 0 } else { bi };
            for ri in 0..r {
                let mut p: Vec<f64> = (0..n).map(|j| s[(bi * n + j) * r + ri]).collect();
                softmax_f64(&mut p);
                for k in 0..c {
                    want_pool[(bi * r + ri) * c + k] = (0..n).map(|j| p[j] * xv[(xb * n + j) * c + k] as f64).sum::<f64>() as f32;
                }
            }
        }
        let got = be().two_way_pool(&x, &y, &ax, &ay, TwoWayParams::new(groups)).unwrap();
        assert_eq!(got.shape(), [b, r, c]);
        let what = format!("two_way_pool B{b} Bx{bx} N{n} C{c} G{groups} T{t} Dy{dy}");
        assert_close(&what, got.as_f32().unwrap(), &want_pool, Tol { atol: 2e-5 * (c as f32).sqrt(), rtol: 1e-4 });
    }
}

/// Mismatched operands are typed errors, not panics.
#[test]
fn two_way_ops_reject_bad_shapes() {
    let mut rng = Rng::new(30);
    let (x, y) = (rng.tensor(&[2, 10, 8]), rng.tensor(&[1, 10, 4]));
    let (ax, ay, u) = (rng.tensor(&[2, 6, 8]), rng.tensor(&[2, 6, 2]), rng.tensor(&[2, 6, 8]));
    let (bias, lw, lb) = (rng.tensor(&[8]), rng.tensor(&[8]), rng.tensor(&[8]));
    let ln = (&lw, &lb, 1e-6);
    assert!(be().two_way_pool(&x, &y, &ax, &ay, TwoWayParams::new(2)).is_ok());
    // R not a multiple of the groups; y's width not groups · Dy; x's batch neither 1 nor B;
    // ax's channels not x's; f16 operands; u of the wrong shape; a bias of the wrong length.
    assert!(be().two_way_pool(&x, &y, &ax, &ay, TwoWayParams::new(4)).is_err());
    assert!(be().two_way_pool(&x, &rng.tensor(&[1, 10, 5]), &ax, &ay, TwoWayParams::new(2)).is_err());
    assert!(be().two_way_pool(&rng.tensor(&[3, 10, 8]), &y, &rng.tensor(&[2, 6, 8]), &ay, TwoWayParams::new(2)).is_err());
    assert!(be().two_way_pool(&x, &y, &rng.tensor(&[2, 6, 7]), &ay, TwoWayParams::new(2)).is_err());
    assert!(be().two_way_pool(&x.to_dtype(DType::F16).unwrap(), &y, &ax, &ay, TwoWayParams::new(2)).is_err());
    assert!(be().two_way_update(&x, &y, &ax, &ay, &rng.tensor(&[2, 5, 8]), &bias, ln, TwoWayParams::new(2)).is_err());
    assert!(be().two_way_update(&x, &y, &ax, &ay, &u, &rng.tensor(&[7]), ln, TwoWayParams::new(2)).is_err());
    assert!(be().two_way_update(&x, &y, &ax, &ay, &u, &bias, ln, TwoWayParams::new(2)).is_ok());
}
