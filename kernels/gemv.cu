// GEMV for linear layers with few rows (decode): y[mi, row] = epilogue(Σ_j x[mi, j] · w[row, j])
// for mi < m ≤ GEMV_MAX_M (4), streaming each weight row once in its stored dtype.
//
// Layout: x [m, k] f32, w [n, k] (f32 / f16 / bf16), y [m, n] f32, residual [m, n] f32,
// bias [n] of dtype bdt (null = none). Epilogue: y = act(acc + bias) + residual (the CPU's).
// Launch: one warp per weight row, 8 warps per 256-thread block, warps stride over rows (any
// n). gemv_many_*: the same over the rows of up to three weights sharing x, in one launch;
// gemv_norm_many_* with RMSNorm fused in front, gemv_norm_swiglu_* also with the SwiGLU product
// of a gate and an up weight (see gemv_many_impl). When k % 8 == 0 each lane loads 8 weights
// per step with 128-bit loads (two for f32) and the matching 8 activations with two float4
// loads; otherwise a scalar loop. Bytes per row:
// k·sizeof(w) of weights (read once, bypassing L1) + m·k·4 of x (L1/L2 resident).
// Flops: 2·m·n·k. Bound by weight bandwidth: a 576×1536 bf16 matrix is 1.8 MB.
#include "common.cuh"

#define GEMV_MAX_M 4

__device__ __forceinline__ void load8(const float* w, u64 e, float* o) {
    const float4 a = __ldg((const float4*)(w + e)), b = __ldg((const float4*)(w + e + 4));
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
template <int DT>
__device__ __forceinline__ void load8h(const u16* w, u64 e, float* o) {
    const uint4 v = __ldg((const uint4*)(w + e));
    const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const u16 lo = (u16)(u[q] & 0xffffu), hi = (u16)(u[q] >> 16);
        o[2 * q] = DT == DT_F16 ? f16_to_f32(lo) : bf16_to_f32(lo);
        o[2 * q + 1] = DT == DT_F16 ? f16_to_f32(hi) : bf16_to_f32(hi);
    }
}
__device__ __forceinline__ void load8w(const float* w, u64 e, float* o) { load8(w, e, o); }
template <int DT>
__device__ __forceinline__ void load8w(const u16* w, u64 e, float* o) { load8h<DT>(w, e, o); }

__device__ __forceinline__ float load1(const float* w, u64 e, int) { return __ldg(w + e); }
__device__ __forceinline__ float load1(const u16* w, u64 e, int dt) {
    const u16 h = __ldg(w + e);
    return dt == DT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// acc[mi] (summed over the warp, every lane gets it) = x[mi, :] · wr[:] for mi < m. NORM: the
// dot product is with x ⊙ g instead, and ss[mi] gets Σ x[mi, :]² (RMSNorm fused in front).
template <typename W, int DT, bool NORM = false>
__device__ __forceinline__ void row_dot(const float* __restrict__ x, const W* __restrict__ wr, unsigned m, unsigned k, unsigned lane,
                                        float* acc, const float* __restrict__ g = nullptr, float* ss = nullptr) {
#pragma unroll
    for (int mi = 0; mi < GEMV_MAX_M; ++mi) {
        acc[mi] = 0.0f;
        if constexpr (NORM) ss[mi] = 0.0f;
    }
    if ((k & 7u) == 0) {
        const unsigned chunks = k >> 3;
        // Four 16-byte weight loads in flight per lane (a 4096-wide bf16 row is 16 per lane).
#pragma unroll 4
        for (unsigned c = lane; c < chunks; c += 32) {
            float wv[8];
            if constexpr (DT == DT_F32) load8w(wr, (u64)c * 8, wv);
            else load8w<DT>(wr, (u64)c * 8, wv);
            float4 ga, gb;
            if constexpr (NORM) {
                ga = *(const float4*)(g + (u64)c * 8);
                gb = *(const float4*)(g + (u64)c * 8 + 4);
            }
#pragma unroll
            for (int mi = 0; mi < GEMV_MAX_M; ++mi) {
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
    } else {
        for (unsigned j = lane; j < k; j += 32) {
            const float wv = load1(wr, j, DT);
#pragma unroll
            for (int mi = 0; mi < GEMV_MAX_M; ++mi)
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
    for (int mi = 0; mi < GEMV_MAX_M; ++mi) {
        if (mi < (int)m) {
            acc[mi] = warp_sum(acc[mi]);
            if constexpr (NORM) ss[mi] = warp_sum(ss[mi]);
        }
    }
}

// Two weight rows against the same RMS-normalised x in one pass (the SwiGLU gate and up rows):
// both rows' loads are in flight together. acc / acc2 as row_dot's acc for wa / wb; ss as its
// ss. K a multiple of 8 (the caller falls back to two row_dot calls otherwise).
template <typename W, int DT>
__device__ __forceinline__ void row_dot2_norm(const float* __restrict__ x, const W* __restrict__ wa, const W* __restrict__ wb,
                                              unsigned m, unsigned k, unsigned lane, float* acc, float* acc2,
                                              const float* __restrict__ g, float* ss) {
#pragma unroll
    for (int mi = 0; mi < GEMV_MAX_M; ++mi) acc[mi] = acc2[mi] = ss[mi] = 0.0f;
    const unsigned chunks = k >> 3;
#pragma unroll 2
    for (unsigned c = lane; c < chunks; c += 32) {
        float va[8], vb[8];
        if constexpr (DT == DT_F32) {
            load8w(wa, (u64)c * 8, va);
            load8w(wb, (u64)c * 8, vb);
        } else {
            load8w<DT>(wa, (u64)c * 8, va);
            load8w<DT>(wb, (u64)c * 8, vb);
        }
        const float4 ga = *(const float4*)(g + (u64)c * 8), gb = *(const float4*)(g + (u64)c * 8 + 4);
#pragma unroll
        for (int mi = 0; mi < GEMV_MAX_M; ++mi) {
            if (mi < (int)m) {
                const float* xr = x + (u64)mi * k + (u64)c * 8;
                const float4 a = *(const float4*)xr, b = *(const float4*)(xr + 4);
                const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                const float gv[8] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
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
#pragma unroll
    for (int mi = 0; mi < GEMV_MAX_M; ++mi) {
        if (mi < (int)m) {
            acc[mi] = warp_sum(acc[mi]);
            acc2[mi] = warp_sum(acc2[mi]);
            ss[mi] = warp_sum(ss[mi]);
        }
    }
}

template <typename W, int DT>
__device__ __forceinline__ void gemv_impl(const float* __restrict__ x, const W* __restrict__ w, float* __restrict__ y, unsigned m,
                                          u64 n, unsigned k, const void* bias, int bdt, int act, const float* __restrict__ residual) {
    const unsigned lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
    const u64 step = (u64)gridDim.x * wpb;
    for (u64 row = (u64)blockIdx.x * wpb + (threadIdx.x >> 5); row < n; row += step) {
        float acc[GEMV_MAX_M];
        row_dot<W, DT>(x, w + row * k, m, k, lane, acc);
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
template <typename W, int DT, bool NORM, bool SWIGLU>
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
        float acc[GEMV_MAX_M], ss[GEMV_MAX_M];
        if constexpr (SWIGLU) {
            float up[GEMV_MAX_M];
            if ((k & 7u) == 0) {
                row_dot2_norm<W, DT>(x, w0 + r * k, w1 + r * k, m, k, lane, acc, up, g, ss);
            } else {
                float ss2[GEMV_MAX_M];
                row_dot<W, DT, NORM>(x, w0 + r * k, m, k, lane, acc, g, ss);
                row_dot<W, DT, NORM>(x, w1 + r * k, m, k, lane, up, g, ss2);
            }
#pragma unroll
            for (int mi = 0; mi < GEMV_MAX_M; ++mi) {
                if constexpr (NORM) {
                    const float rstd = rsqrtf(ss[mi] / (float)k + eps);
                    acc[mi] *= rstd;
                    up[mi] *= rstd;
                }
                acc[mi] = act_apply(acc[mi], ACT_SILU) * up[mi];
            }
        } else {
            row_dot<W, DT, NORM>(x, w + r * k, m, k, lane, acc, g, ss);
        }
        if constexpr (!SWIGLU && NORM) {
#pragma unroll
            for (int mi = 0; mi < GEMV_MAX_M; ++mi) acc[mi] *= rsqrtf(ss[mi] / (float)k + eps);
        }
        if (lane == 0)
            for (unsigned mi = 0; mi < m; ++mi) y[(u64)mi * n + r] = acc[mi];
    }
}

extern "C" __global__ void gemv_f32(const float* x, const float* w, float* y, unsigned m, u64 n, unsigned k, const void* bias,
                                    int bdt, int act, const float* residual) {
    gemv_impl<float, DT_F32>(x, w, y, m, n, k, bias, bdt, act, residual);
}
extern "C" __global__ void gemv_f16(const float* x, const u16* w, float* y, unsigned m, u64 n, unsigned k, const void* bias,
                                    int bdt, int act, const float* residual) {
    gemv_impl<u16, DT_F16>(x, w, y, m, n, k, bias, bdt, act, residual);
}
extern "C" __global__ void gemv_bf16(const float* x, const u16* w, float* y, unsigned m, u64 n, unsigned k, const void* bias,
                                     int bdt, int act, const float* residual) {
    gemv_impl<u16, DT_BF16>(x, w, y, m, n, k, bias, bdt, act, residual);
}

#define GEMV_MANY(name, W, DT, NORM, SWIGLU)                                                                         \
    extern "C" __global__ void gemv_##name(const float* x, const float* g, float eps, const W* w0, const W* w1, const W* w2, float* y0, \
                                    float* y1, float* y2, unsigned m, u64 n0, u64 n1, u64 n2, unsigned k) {                   \
        gemv_many_impl<W, DT, NORM, SWIGLU>(x, g, eps, w0, w1, w2, y0, y1, y2, m, n0, n1, n2, k);                              \
    }
GEMV_MANY(many_f32, float, DT_F32, false, false)
GEMV_MANY(many_f16, u16, DT_F16, false, false)
GEMV_MANY(many_bf16, u16, DT_BF16, false, false)
GEMV_MANY(norm_many_f32, float, DT_F32, true, false)
GEMV_MANY(norm_many_f16, u16, DT_F16, true, false)
GEMV_MANY(norm_many_bf16, u16, DT_BF16, true, false)
GEMV_MANY(norm_swiglu_f32, float, DT_F32, true, true)
GEMV_MANY(norm_swiglu_f16, u16, DT_F16, true, true)
GEMV_MANY(norm_swiglu_bf16, u16, DT_BF16, true, true)
