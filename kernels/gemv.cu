// GEMV for linear layers with few rows (decode): y[mi, row] = epilogue(Σ_j x[mi, j] · w[row, j])
// for mi < m ≤ GEMV_MAX_M (4), streaming each weight row once in its stored dtype.
//
// Layout: x [m, k] f32, w [n, k] (f32 / f16 / bf16), y [m, n] f32, residual [m, n] f32,
// bias [n] of dtype bdt (null = none). Epilogue: y = act(acc + bias) + residual (the CPU's).
// Launch: one warp per weight row, 8 warps per 256-thread block, warps stride over rows (any
// n). gemv_many_*: the same over the rows of up to three weights sharing x, in one launch;
// gemv_norm_many_* with RMSNorm fused in front, gemv_norm_swiglu_* also with the SwiGLU product
// of a gate and an up weight (see gemv_many_impl). Every kernel also comes as *_m1_* for m = 1.
// When k % 8 == 0 a lane takes chunks of 8 weights (one 128-bit load, two for f32) and issues a
// batch of them, 128 bytes, before widening any (row_dot); the matching 8 activations come in two
// float4 loads; otherwise a scalar loop. Bytes per row:
// k·sizeof(w) of weights (read once, through the read-only path) + m·k·4 of x (L1/L2 resident).
// Flops: 2·m·n·k. Bound by weight bandwidth: a 576×1536 bf16 matrix is 1.8 MB.
#include "common.cuh"

#define GEMV_MAX_M 4

// One chunk of 8 weights as loaded (one 16-byte load for f16/bf16, two for f32), then widened.
// Loading a whole batch of chunks into registers before any is used keeps that many loads in
// flight per lane: left to itself the compiler issued the next chunk's load only after the
// current chunk's FMAs, one 16-byte load in flight per lane, and the decode GEMVs streamed
// weights at 2.3–3.3 TB/s of the H200's ~4.8.
template <typename W> struct Raw8;
template <> struct Raw8<u16> { uint4 v; };
template <> struct Raw8<float> { float4 a, b; };
// Chunks per batch: 128 bytes of weights in flight per lane for every dtype.
template <typename W> struct Batch { static constexpr int N = sizeof(W) == 2 ? 8 : 4; };

__device__ __forceinline__ void load_raw(const u16* w, u64 e, Raw8<u16>& r) { r.v = __ldg((const uint4*)(w + e)); }
__device__ __forceinline__ void load_raw(const float* w, u64 e, Raw8<float>& r) {
    r.a = __ldg((const float4*)(w + e));
    r.b = __ldg((const float4*)(w + e + 4));
}
template <int DT>
__device__ __forceinline__ void widen(const Raw8<u16>& r, float* o) {
    const unsigned u[4] = {r.v.x, r.v.y, r.v.z, r.v.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const u16 lo = (u16)(u[q] & 0xffffu), hi = (u16)(u[q] >> 16);
        o[2 * q] = DT == DT_F16 ? f16_to_f32(lo) : bf16_to_f32(lo);
        o[2 * q + 1] = DT == DT_F16 ? f16_to_f32(hi) : bf16_to_f32(hi);
    }
}
template <int DT>
__device__ __forceinline__ void widen(const Raw8<float>& r, float* o) {
    o[0] = r.a.x; o[1] = r.a.y; o[2] = r.a.z; o[3] = r.a.w; o[4] = r.b.x; o[5] = r.b.y; o[6] = r.b.z; o[7] = r.b.w;
}

__device__ __forceinline__ float load1(const float* w, u64 e, int) { return __ldg(w + e); }
__device__ __forceinline__ float load1(const u16* w, u64 e, int dt) {
    const u16 h = __ldg(w + e);
    return dt == DT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// acc[mi] += wv · x[mi, c·8 .. c·8 + 8) for mi < m (chunk c of every x row). NORM: x ⊙ g
// instead, and ss[mi] += Σ x² over the chunk.
template <bool NORM, int MM>
__device__ __forceinline__ void chunk_dot(const float* __restrict__ x, const float* __restrict__ g, const float* wv, unsigned m,
                                          unsigned k, unsigned c, float* acc, float* ss) {
    float4 ga, gb;
    if constexpr (NORM) {
        ga = *(const float4*)(g + (u64)c * 8);
        gb = *(const float4*)(g + (u64)c * 8 + 4);
    }
#pragma unroll
    for (int mi = 0; mi < MM; ++mi) {
        if (mi < (int)m) {
            const float* xr = x + (u64)mi * k + (u64)c * 8;
            float4 a = *(const float4*)xr, b = *(const float4*)(xr + 4);
            if constexpr (NORM) {
                float q = ss[mi];
                q = fmaf(a.x, a.x, q); q = fmaf(a.y, a.y, q); q = fmaf(a.z, a.z, q); q = fmaf(a.w, a.w, q);
                q = fmaf(b.x, b.x, q); q = fmaf(b.y, b.y, q); q = fmaf(b.z, b.z, q); q = fmaf(b.w, b.w, q);
                ss[mi] = q;
                a = make_float4(a.x * ga.x, a.y * ga.y, a.z * ga.z, a.w * ga.w);
                b = make_float4(b.x * gb.x, b.y * gb.y, b.z * gb.z, b.w * gb.w);
            }
            float s = acc[mi];
            s = fmaf(wv[0], a.x, s); s = fmaf(wv[1], a.y, s); s = fmaf(wv[2], a.z, s); s = fmaf(wv[3], a.w, s);
            s = fmaf(wv[4], b.x, s); s = fmaf(wv[5], b.y, s); s = fmaf(wv[6], b.z, s); s = fmaf(wv[7], b.w, s);
            acc[mi] = s;
        }
    }
}

// acc[mi] (summed over the warp, every lane gets it) = x[mi, :] · wr[:] for mi < m. NORM: the
// dot product is with x ⊙ g instead, and ss[mi] gets Σ x[mi, :]² (RMSNorm fused in front).
template <typename W, int DT, int MM, bool NORM = false>
__device__ __forceinline__ void row_dot(const float* __restrict__ x, const W* __restrict__ wr, unsigned m, unsigned k, unsigned lane,
                                        float* acc, const float* __restrict__ g = nullptr, float* ss = nullptr) {
#pragma unroll
    for (int mi = 0; mi < MM; ++mi) {
        acc[mi] = 0.0f;
        if constexpr (NORM) ss[mi] = 0.0f;
    }
    if ((k & 7u) == 0) {
        // Lane chunks c = lane + 32·u of a batch: every load of the batch first, then the math
        // (a 4096-wide bf16 row is two batches of eight 16-byte loads per lane).
        constexpr int U = Batch<W>::N;
        const unsigned chunks = k >> 3;
        for (unsigned c0 = lane; c0 < chunks; c0 += 32 * U) {
            Raw8<W> raw[U];
#pragma unroll
            for (int u = 0; u < U; ++u)
                if (c0 + 32 * u < chunks) load_raw(wr, (u64)(c0 + 32 * u) * 8, raw[u]);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (c0 + 32 * u < chunks) {
                    float wv[8];
                    widen<DT>(raw[u], wv);
                    chunk_dot<NORM, MM>(x, g, wv, m, k, c0 + 32 * u, acc, ss);
                }
            }
        }
    } else {
        for (unsigned j = lane; j < k; j += 32) {
            const float wv = load1(wr, j, DT);
#pragma unroll
            for (int mi = 0; mi < MM; ++mi)
                if (mi < (int)m) {
                    const float xv = x[(u64)mi * k + j];
                    if constexpr (NORM) {
                        ss[mi] = fmaf(xv, xv, ss[mi]);
                        acc[mi] = fmaf(wv, xv * g[j], acc[mi]);
                    } else {
                        acc[mi] = fmaf(wv, xv, acc[mi]);
                    }
                }
        }
    }
    // Only the m rows in use are reduced (m is the same in every lane: no divergence).
#pragma unroll
    for (int mi = 0; mi < MM; ++mi) {
        if (mi < (int)m) {
            acc[mi] = warp_sum(acc[mi]);
            if constexpr (NORM) ss[mi] = warp_sum(ss[mi]);
        }
    }
}

// Two weight rows against the same RMS-normalised x in one pass (the SwiGLU gate and up rows):
// both rows' batches are loaded before either is used (half a batch each, so the bytes in
// flight per lane match row_dot's). acc / acc2 as row_dot's acc for wa / wb; ss as its ss.
// K a multiple of 8 (the caller falls back to two row_dot calls otherwise).
template <typename W, int DT, int MM>
__device__ __forceinline__ void row_dot2_norm(const float* __restrict__ x, const W* __restrict__ wa, const W* __restrict__ wb,
                                              unsigned m, unsigned k, unsigned lane, float* acc, float* acc2,
                                              const float* __restrict__ g, float* ss) {
#pragma unroll
    for (int mi = 0; mi < MM; ++mi) acc[mi] = acc2[mi] = ss[mi] = 0.0f;
    constexpr int U = Batch<W>::N / 2;
    const unsigned chunks = k >> 3;
    for (unsigned c0 = lane; c0 < chunks; c0 += 32 * U) {
        Raw8<W> ra[U], rb[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (c0 + 32 * u < chunks) {
                load_raw(wa, (u64)(c0 + 32 * u) * 8, ra[u]);
                load_raw(wb, (u64)(c0 + 32 * u) * 8, rb[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const unsigned c = c0 + 32 * u;
            if (c >= chunks) continue;
            float va[8], vb[8];
            widen<DT>(ra[u], va);
            widen<DT>(rb[u], vb);
            const float4 ga = *(const float4*)(g + (u64)c * 8), gb = *(const float4*)(g + (u64)c * 8 + 4);
            const float gv[8] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
#pragma unroll
            for (int mi = 0; mi < MM; ++mi) {
                if (mi < (int)m) {
                    const float* xr = x + (u64)mi * k + (u64)c * 8;
                    const float4 a = *(const float4*)xr, b = *(const float4*)(xr + 4);
                    const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                    float q = ss[mi], s1 = acc[mi], s2 = acc2[mi];
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        q = fmaf(xv[e], xv[e], q);
                        const float xg = xv[e] * gv[e];
                        s1 = fmaf(va[e], xg, s1);
                        s2 = fmaf(vb[e], xg, s2);
                    }
                    ss[mi] = q;
                    acc[mi] = s1;
                    acc2[mi] = s2;
                }
            }
        }
    }
#pragma unroll
    for (int mi = 0; mi < MM; ++mi) {
        if (mi < (int)m) {
            acc[mi] = warp_sum(acc[mi]);
            acc2[mi] = warp_sum(acc2[mi]);
            ss[mi] = warp_sum(ss[mi]);
        }
    }
}

template <typename W, int DT, int MM>
__device__ __forceinline__ void gemv_impl(const float* __restrict__ x, const W* __restrict__ w, float* __restrict__ y, unsigned m,
                                          u64 n, unsigned k, const void* bias, int bdt, int act, const float* __restrict__ residual) {
    const unsigned lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
    const u64 step = (u64)gridDim.x * wpb;
    for (u64 row = (u64)blockIdx.x * wpb + (threadIdx.x >> 5); row < n; row += step) {
        float acc[MM];
        row_dot<W, DT, MM>(x, w + row * k, m, k, lane, acc);
        if (lane == 0) {
            float b = 0.0f;
            if (bias) b = bdt == DT_F32 ? ((const float*)bias)[row] : load1((const u16*)bias, row, bdt);
            for (unsigned mi = 0; mi < m; ++mi) {
                float v = act_apply(acc[mi] + b, act);
                if (residual) v += residual[(u64)mi * n + row];
                y[(u64)mi * n + row] = v;
            }
        }
    }
}

// Up to three weights that share x (fused Q/K/V or gate/up, Backend::linear_many) in one launch:
// their rows are numbered one after another (n0, then n1, then n2; an unused weight has n = 0)
// and each warp row writes y_s[mi, r] of its own weight s. No epilogue.
// NORM (Backend::rms_norm_linear_many): x is RMS-normalised first, y = rstd · (x ⊙ g) · wᵀ with
// rstd = 1 / sqrt(mean(x²) + eps), each warp summing x² itself (x is L1/L2 resident).
// SWIGLU (Backend::rms_norm_swiglu): w0 = gate and w1 = up with n0 = n1 rows; warp row r takes
// both and writes y0[mi, r] = silu(gate) · up.
template <typename W, int DT, bool NORM, bool SWIGLU, int MM>
__device__ __forceinline__ void gemv_many_impl(const float* __restrict__ x, const float* __restrict__ g, float eps, const W* w0,
                                               const W* w1, const W* w2, float* y0, float* y1, float* y2, unsigned m, u64 n0,
                                               u64 n1, u64 n2, unsigned k) {
    static_assert(!SWIGLU || NORM, "the SwiGLU GEMV always has the RMSNorm in front");
    const unsigned lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
    const u64 step = (u64)gridDim.x * wpb, total = SWIGLU ? n0 : n0 + n1 + n2;
    for (u64 row = (u64)blockIdx.x * wpb + (threadIdx.x >> 5); row < total; row += step) {
        const W* w;
        float* y;
        u64 r, n;
        if (SWIGLU || row < n0) { w = w0; y = y0; r = row; n = n0; }
        else if (row < n0 + n1) { w = w1; y = y1; r = row - n0; n = n1; }
        else { w = w2; y = y2; r = row - n0 - n1; n = n2; }
        float acc[MM], ss[MM];
        if constexpr (SWIGLU) {
            float up[MM];
            if ((k & 7u) == 0) {
                row_dot2_norm<W, DT, MM>(x, w0 + r * k, w1 + r * k, m, k, lane, acc, up, g, ss);
            } else {
                float ss2[MM];
                row_dot<W, DT, MM, NORM>(x, w0 + r * k, m, k, lane, acc, g, ss);
                row_dot<W, DT, MM, NORM>(x, w1 + r * k, m, k, lane, up, g, ss2);
            }
#pragma unroll
            for (int mi = 0; mi < MM; ++mi) {
                if constexpr (NORM) {
                    const float rstd = rsqrtf(ss[mi] / (float)k + eps);
                    acc[mi] *= rstd;
                    up[mi] *= rstd;
                }
                acc[mi] = act_apply(acc[mi], ACT_SILU) * up[mi];
            }
        } else {
            row_dot<W, DT, MM, NORM>(x, w + r * k, m, k, lane, acc, g, ss);
        }
        if constexpr (!SWIGLU && NORM) {
#pragma unroll
            for (int mi = 0; mi < MM; ++mi) acc[mi] *= rsqrtf(ss[mi] / (float)k + eps);
        }
        if (lane == 0)
            for (unsigned mi = 0; mi < m; ++mi) y[(u64)mi * n + r] = acc[mi];
    }
}

// Each kernel in two builds: gemv_* for any m ≤ GEMV_MAX_M, gemv_m1_* for m = 1 (decode), whose
// registers for one row of x leave room for more blocks per SM (ptxas, sm_90: 72–104 registers
// per thread for the first, ~half that for the second).
#define GEMV(name, W, DT, MM)                                                                                            \
    extern "C" __global__ void gemv_##name(const float* x, const W* w, float* y, unsigned m, u64 n, unsigned k,           \
                                           const void* bias, int bdt, int act, const float* residual) {                  \
        gemv_impl<W, DT, MM>(x, w, y, m, n, k, bias, bdt, act, residual);                                                \
    }
GEMV(f32, float, DT_F32, GEMV_MAX_M)
GEMV(f16, u16, DT_F16, GEMV_MAX_M)
GEMV(bf16, u16, DT_BF16, GEMV_MAX_M)
GEMV(m1_f32, float, DT_F32, 1)
GEMV(m1_f16, u16, DT_F16, 1)
GEMV(m1_bf16, u16, DT_BF16, 1)

#define GEMV_MANY1(name, W, DT, NORM, SWIGLU, MM)                                                                         \
    extern "C" __global__ void gemv_##name(const float* x, const float* g, float eps, const W* w0, const W* w1, const W* w2, float* y0, \
                                    float* y1, float* y2, unsigned m, u64 n0, u64 n1, u64 n2, unsigned k) {                   \
        gemv_many_impl<W, DT, NORM, SWIGLU, MM>(x, g, eps, w0, w1, w2, y0, y1, y2, m, n0, n1, n2, k);                              \
    }
#define GEMV_MANY(family, dt, W, DT, NORM, SWIGLU)               \
    GEMV_MANY1(family##_##dt, W, DT, NORM, SWIGLU, GEMV_MAX_M) \
    GEMV_MANY1(family##_m1_##dt, W, DT, NORM, SWIGLU, 1)
GEMV_MANY(many, f32, float, DT_F32, false, false)
GEMV_MANY(many, f16, u16, DT_F16, false, false)
GEMV_MANY(many, bf16, u16, DT_BF16, false, false)
GEMV_MANY(norm_many, f32, float, DT_F32, true, false)
GEMV_MANY(norm_many, f16, u16, DT_F16, true, false)
GEMV_MANY(norm_many, bf16, u16, DT_BF16, true, false)
GEMV_MANY(norm_swiglu, f32, float, DT_F32, true, true)
GEMV_MANY(norm_swiglu, f16, u16, DT_F16, true, true)
GEMV_MANY(norm_swiglu, bf16, u16, DT_BF16, true, true)
