// Pointwise ops and softmax (f32 activations).
//
// * affine_f32:        y = x·s + t
// * act_f32:           y = act(x)                      (codes in common.cuh)
// * silu_mul_f32:      y = silu(g)·u                   (SwiGLU)
// * binary_f32:        y = a ∘ b, same shapes          (op 0 add, 1 sub, 2 mul)
// * binary_bcast_f32:  y = a ∘ b with numpy broadcasting: per output index, each operand's
//                      offset from per-dim strides that are 0 on broadcast dims (≤ 8 dims)
// * f32_to_bf16_rn(_x4), to_f32: dtype conversions around cuBLAS (see src/backend/cuda/matmul.rs)
// * epilogue_f32(x4): bias + activation + residual after a cuBLAS GEMM; the x4 variants move
//   four elements per step when the sizes allow
// * epilogue_bf16(x4): bias + activation written as bf16, the next bf16 GEMM's operand
// * softmax_f32:       softmax over the last dim, one block per row; a row of all −∞ → zeros
//
// Launch: the 1-D kernels use grid-stride loops (any n); softmax uses a 2-D grid of rows
// (block_row()) with blockDim.x a multiple of 32. Bytes moved per element: 8 (unary), 12
// (binary); softmax reads the row three times (max, sum, write) and writes it once.
#include "common.cuh"

extern "C" __global__ void affine_f32(const float* __restrict__ x, float* __restrict__ y, u64 n, float s, float t) {
    GRID_STRIDE(i, n) { y[i] = x[i] * s + t; }
}

extern "C" __global__ void act_f32(const float* __restrict__ x, float* __restrict__ y, u64 n, int act) {
    GRID_STRIDE(i, n) { y[i] = act_apply(x[i], act); }
}

extern "C" __global__ void silu_mul_f32(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) { y[i] = act_apply(g[i], ACT_SILU) * u[i]; }
}

__device__ __forceinline__ float binop(float a, float b, int op) {
    return op == 0 ? a + b : (op == 1 ? a - b : a * b);
}

extern "C" __global__ void binary_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, u64 n, int op) {
    GRID_STRIDE(i, n) { y[i] = binop(a[i], b[i], op); }
}

// Must match `Broadcast` in src/backend/cuda/elementwise.rs.
struct Broadcast {
    unsigned ndim;
    unsigned op;
    u64 shape[8];
    u64 sa[8];
    u64 sb[8];
};

extern "C" __global__ void binary_bcast_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, u64 n, Broadcast p) {
    GRID_STRIDE(i, n) {
        u64 r = i, ia = 0, ib = 0;
        for (int d = (int)p.ndim - 1; d >= 0; --d) {
            const u64 idx = r % p.shape[d];
            r /= p.shape[d];
            ia += idx * p.sa[d];
            ib += idx * p.sb[d];
        }
        y[i] = binop(a[ia], b[ib], (int)p.op);
    }
}

extern "C" __global__ void softmax_f32(const float* __restrict__ x, float* __restrict__ y, u64 rows, unsigned d) {
    __shared__ float scratch[32];
    const u64 row = block_row();
    if (row >= rows) return;
    const float* xr = x + row * d;
    float* yr = y + row * d;
    float m = NEG_INF;
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) m = fmaxf(m, xr[j]);
    m = block_max(m, scratch);
    if (m == NEG_INF) {
        for (unsigned j = threadIdx.x; j < d; j += blockDim.x) yr[j] = 0.0f;
        return;
    }
    float s = 0.0f;
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) s += expf(xr[j] - m);
    s = block_sum(s, scratch);
    const float inv = 1.0f / s;
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
}

// v += the four bias values from column c (dtype bdt).
__device__ __forceinline__ void add_bias4(float4& v, const void* bias, int bdt, unsigned c) {
    v.x += load_any(bias, bdt, c);
    v.y += load_any(bias, bdt, c + 1);
    v.z += load_any(bias, bdt, c + 2);
    v.w += load_any(bias, bdt, c + 3);
}

// GEMM epilogue, in place on y [m, n]: y = act(y + bias[col]) + residual. bias (dtype bdt)
// and residual may be null. The residual has res_n elements (a whole number of rows): when
// fewer than y's, its rows repeat (one residual shared by every batch entry).
extern "C" __global__ void epilogue_f32(float* __restrict__ y, u64 total, unsigned n, const void* bias, int bdt,
                                        int act, const float* __restrict__ residual, u64 res_n) {
    GRID_STRIDE(i, total) {
        float v = y[i];
        if (bias) v += load_any(bias, bdt, i % n);
        v = act_apply(v, act);
        if (residual) v += residual[i < res_n ? i : i % res_n];
        y[i] = v;
    }
}

// The same four columns at a time (n % 4 == 0, total / 4 < 2^31): one float4 load and store of
// y (and residual) per thread step and 32-bit column arithmetic, so the pass runs at copy
// bandwidth instead of paying a 64-bit modulo per element.
extern "C" __global__ void epilogue_f32x4(float4* __restrict__ y, unsigned total4, unsigned n4, const void* bias, int bdt, int act,
                                          const float4* __restrict__ residual, unsigned res4) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total4; i += blockDim.x * gridDim.x) {
        float4 v = y[i];
        if (bias) add_bias4(v, bias, bdt, (i % n4) * 4);
        v = make_float4(act_apply(v.x, act), act_apply(v.y, act), act_apply(v.z, act), act_apply(v.w, act));
        if (residual) {
            const float4 r = residual[i < res4 ? i : i % res4];
            v = make_float4(v.x + r.x, v.y + r.y, v.z + r.z, v.w + r.w);
        }
        y[i] = v;
    }
}

// The epilogue without a residual, written to a new bf16 buffer (round to nearest even):
// out = bf16(act(y + bias[col])), the operand of the bf16 GEMM after it (an MLP's hidden
// layer), in one pass where the epilogue and a rounding pass were two.
extern "C" __global__ void epilogue_bf16(const float* __restrict__ y, u16* __restrict__ out, u64 total, unsigned n,
                                         const void* bias, int bdt, int act) {
    GRID_STRIDE(i, total) {
        float v = y[i];
        if (bias) v += load_any(bias, bdt, i % n);
        out[i] = f32_to_bf16(act_apply(v, act));
    }
}

// The same four columns at a time (n % 4 == 0, total / 4 < 2^31).
extern "C" __global__ void epilogue_bf16x4(const float4* __restrict__ y, uint2* __restrict__ out, unsigned total4, unsigned n4,
                                           const void* bias, int bdt, int act) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total4; i += blockDim.x * gridDim.x) {
        float4 v = y[i];
        if (bias) add_bias4(v, bias, bdt, (i % n4) * 4);
        out[i] = make_uint2(pack_bf16x2(act_apply(v.x, act), act_apply(v.y, act)), pack_bf16x2(act_apply(v.z, act), act_apply(v.w, act)));
    }
}

// y [outer, c, hw] += bias[c] (conv bias), bias of dtype bdt.
extern "C" __global__ void bias_channels_f32(float* __restrict__ y, u64 total, unsigned c, u64 hw, const void* bias, int bdt) {
    GRID_STRIDE(i, total) { y[i] += load_any(bias, bdt, (i / hw) % c); }
}

// f32 activations → bf16 (round to nearest even), the operand of the bf16 tensor-core GEMM.
extern "C" __global__ void f32_to_bf16_rn(const float* __restrict__ x, u16* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) { y[i] = f32_to_bf16(x[i]); }
}

// The same, four elements per thread step (n % 4 == 0, n / 4 < 2^31): float4 in, 8 bytes out.
extern "C" __global__ void f32_to_bf16_rn_x4(const float4* __restrict__ x, uint2* __restrict__ y, unsigned n4) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += blockDim.x * gridDim.x) {
        const float4 v = x[i];
        y[i] = make_uint2((unsigned)f32_to_bf16(v.x) | ((unsigned)f32_to_bf16(v.y) << 16),
                          (unsigned)f32_to_bf16(v.z) | ((unsigned)f32_to_bf16(v.w) << 16));
    }
}

// f16 / bf16 buffer → f32 buffer (weights handed to cuBLAS's f32 GEMM).
extern "C" __global__ void to_f32(const void* __restrict__ x, int dt, float* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) { y[i] = load_any(x, dt, i); }
}
