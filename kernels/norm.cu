// Normalisations (f32 activations; weight and bias may be f32, f16 or bf16: dtype codes in
// common.cuh), matching the CPU backend's two-pass formulas.
//
// * layer_norm_f32:           rows of length d: (x − mean)·rsqrt(var + eps)·w + b
// * layer_norm_warp{V}_f32:   the same for d % 4 == 0, d <= 128·V, V = 1, 2, 4, 8 (SAM's mask
//                             decoder: 262144 rows of 256 per batch; ViT-L: rows of 1024): one
//                             warp per row, 8 rows per block, the row held in registers as V
//                             float4s per lane (read once, written once), both sums as warp
//                             shuffles, no shared memory
// * layer_norm_bf16, layer_norm_warp{V}_bf16: the same two, written as bf16 (round to nearest
//                             even): the operand of a bf16 tensor-core GEMM after the norm
//                             (`layer_norm_mlp`), in one pass where the norm and a rounding
//                             pass were two
// * rms_norm_f32:             rows of length d: w · (x · rsqrt(mean(x²) + eps))
// * rms_norm_bf16:            the same, written as bf16 (round to nearest even): the input of
//                             the bf16 tensor-core GEMMs after it (prefill's Q/K/V and gate/up),
//                             in one pass where the norm and a rounding pass were two
// * layer_norm_channels_f32:  x [B, C, H·W]: each (b, pixel) normalised over C (SAM's
//                             LayerNorm2d); one thread per pixel, channel loop strided by H·W so a
//                             warp reads 32 consecutive pixels (coalesced)
//
// Launch: the row kernels take a 2-D grid of rows (block_row()), blockDim.x a multiple of 32
// (layer_norm_warp*_f32: a 1-D grid of ceil(rows / 8) blocks of 256 threads);
// each row is read twice (layer_norm: three times: mean, variance, write) from L1/L2. The
// channel kernel is 1-D with a grid-stride loop over B·H·W.
#include "common.cuh"

__device__ __forceinline__ float wload(const void* p, int dt, u64 i) {
    if (dt == DT_F16) return f16_to_f32(((const u16*)p)[i]);
    if (dt == DT_BF16) return bf16_to_f32(((const u16*)p)[i]);
    return ((const float*)p)[i];
}

// An f32 value stored as T (f32, or bf16 bits rounded to nearest even).
template <typename T>
__device__ __forceinline__ T store_as(float v) {
    if constexpr (sizeof(T) == 2) {
        return f32_to_bf16(v);
    } else {
        return v;
    }
}

template <typename T>
__device__ __forceinline__ void layer_norm_row(const float* __restrict__ x, T* __restrict__ y, u64 rows, unsigned d,
                                               const void* w, int wdt, const void* b, int bdt, float eps) {
    __shared__ float scratch[32];
    const u64 row = block_row();
    if (row >= rows) return;
    const float* xr = x + row * d;
    T* yr = y + row * d;
    float s = 0.0f;
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const float mean = block_sum(s, scratch) / (float)d;
    float v = 0.0f;
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) {
        const float t = xr[j] - mean;
        v += t * t;
    }
    const float var = block_sum(v, scratch) / (float)d;
    const float r = 1.0f / sqrtf(var + eps);
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) yr[j] = store_as<T>((xr[j] - mean) * r * wload(w, wdt, j) + wload(b, bdt, j));
}

extern "C" __global__ void layer_norm_f32(const float* __restrict__ x, float* __restrict__ y, u64 rows, unsigned d,
                                          const void* w, int wdt, const void* b, int bdt, float eps) {
    layer_norm_row(x, y, rows, d, w, wdt, b, bdt, eps);
}
extern "C" __global__ void layer_norm_bf16(const float* __restrict__ x, u16* __restrict__ y, u64 rows, unsigned d,
                                           const void* w, int wdt, const void* b, int bdt, float eps) {
    layer_norm_row(x, y, rows, d, w, wdt, b, bdt, eps);
}

constexpr int LN_WARP_ROWS = 8; // rows (warps) per block of layer_norm_warp*_f32

// Four weights from column c0 (a multiple of 4; f32 buffers are 16-byte aligned there).
__device__ __forceinline__ float4 wload4(const void* p, int dt, u64 c0) {
    if (dt == DT_F32) return reinterpret_cast<const float4*>(p)[c0 / 4];
    return make_float4(wload(p, dt, c0), wload(p, dt, c0 + 1), wload(p, dt, c0 + 2), wload(p, dt, c0 + 3));
}

// Four normalised values of a row as float4, or as four bf16 (uint2, lower columns in the lower
// halves).
__device__ __forceinline__ void store4(float4* p, float4 v) { *p = v; }
__device__ __forceinline__ void store4(uint2* p, float4 v) {
    *p = make_uint2((unsigned)f32_to_bf16(v.x) | (unsigned)f32_to_bf16(v.y) << 16, (unsigned)f32_to_bf16(v.z) | (unsigned)f32_to_bf16(v.w) << 16);
}

// V float4s per lane: rows of d <= 128·V (d % 4 == 0); y four columns per element of T4.
template <int V, typename T4>
__device__ __forceinline__ void layer_norm_warp(const float4* __restrict__ x, T4* __restrict__ y, u64 rows, unsigned d,
                                                const void* w, int wdt, const void* b, int bdt, float eps) {
    const unsigned lane = threadIdx.x & 31;
    const u64 row = (u64)blockIdx.x * LN_WARP_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const unsigned d4 = d / 4;
    const float4* xr = x + row * d4;
    float4 v[V];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) {
        const unsigned j = lane + 32 * i;
        v[i] = j < d4 ? xr[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        s += (v[i].x + v[i].y) + (v[i].z + v[i].w);
    }
    const float mean = warp_sum(s) / (float)d;
    float q = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) {
        if (lane + 32 * i < d4) {
            const float a = v[i].x - mean, bb = v[i].y - mean, c = v[i].z - mean, e = v[i].w - mean;
            q += (a * a + bb * bb) + (c * c + e * e);
        }
    }
    const float r = 1.0f / sqrtf(warp_sum(q) / (float)d + eps);
    T4* yr = y + row * d4;
#pragma unroll
    for (int i = 0; i < V; ++i) {
        const unsigned j = lane + 32 * i;
        if (j < d4) {
            const float4 g = wload4(w, wdt, 4 * (u64)j), o = wload4(b, bdt, 4 * (u64)j);
            store4(&yr[j], make_float4((v[i].x - mean) * r * g.x + o.x, (v[i].y - mean) * r * g.y + o.y,
                                       (v[i].z - mean) * r * g.z + o.z, (v[i].w - mean) * r * g.w + o.w));
        }
    }
}

#define LN_WARP_PARAMS(T4)                                                                         \
    const float4 *__restrict__ x, T4 *__restrict__ y, u64 rows, unsigned d, const void *w, int wdt, \
        const void *b, int bdt, float eps
#define LN_WARP_ARGS x, y, rows, d, w, wdt, b, bdt, eps
extern "C" __global__ void layer_norm_warp1_f32(LN_WARP_PARAMS(float4)) { layer_norm_warp<1>(LN_WARP_ARGS); }
extern "C" __global__ void layer_norm_warp2_f32(LN_WARP_PARAMS(float4)) { layer_norm_warp<2>(LN_WARP_ARGS); }
extern "C" __global__ void layer_norm_warp4_f32(LN_WARP_PARAMS(float4)) { layer_norm_warp<4>(LN_WARP_ARGS); }
extern "C" __global__ void layer_norm_warp8_f32(LN_WARP_PARAMS(float4)) { layer_norm_warp<8>(LN_WARP_ARGS); }
extern "C" __global__ void layer_norm_warp1_bf16(LN_WARP_PARAMS(uint2)) { layer_norm_warp<1>(LN_WARP_ARGS); }
extern "C" __global__ void layer_norm_warp2_bf16(LN_WARP_PARAMS(uint2)) { layer_norm_warp<2>(LN_WARP_ARGS); }
extern "C" __global__ void layer_norm_warp4_bf16(LN_WARP_PARAMS(uint2)) { layer_norm_warp<4>(LN_WARP_ARGS); }
extern "C" __global__ void layer_norm_warp8_bf16(LN_WARP_PARAMS(uint2)) { layer_norm_warp<8>(LN_WARP_ARGS); }

template <typename T>
__device__ __forceinline__ void rms_norm_row(const float* __restrict__ x, T* __restrict__ y, u64 rows, unsigned d, const void* w, int wdt,
                                             float eps) {
    __shared__ float scratch[32];
    const u64 row = block_row();
    if (row >= rows) return;
    const float* xr = x + row * d;
    T* yr = y + row * d;
    float s = 0.0f;
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) s += xr[j] * xr[j];
    const float ms = block_sum(s, scratch) / (float)d;
    const float r = 1.0f / sqrtf(ms + eps);
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) yr[j] = store_as<T>(wload(w, wdt, j) * (xr[j] * r));
}

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, float* __restrict__ y, u64 rows, unsigned d, const void* w, int wdt,
                                        float eps) {
    rms_norm_row(x, y, rows, d, w, wdt, eps);
}

extern "C" __global__ void rms_norm_bf16(const float* __restrict__ x, u16* __restrict__ y, u64 rows, unsigned d, const void* w, int wdt,
                                         float eps) {
    rms_norm_row(x, y, rows, d, w, wdt, eps);
}

extern "C" __global__ void layer_norm_channels_f32(const float* __restrict__ x, float* __restrict__ y, u64 pixels, unsigned c, u64 hw,
                                                   const void* w, int wdt, const void* b, int bdt, float eps) {
    GRID_STRIDE(i, pixels) {
        const u64 bi = i / hw, p = i % hw;
        const float* xp = x + bi * c * hw + p;
        float* yp = y + bi * c * hw + p;
        float s = 0.0f;
        for (unsigned ch = 0; ch < c; ++ch) s += xp[ch * hw];
        const float mean = s / (float)c;
        float v = 0.0f;
        for (unsigned ch = 0; ch < c; ++ch) {
            const float t = xp[ch * hw] - mean;
            v += t * t;
        }
        const float r = 1.0f / sqrtf(v / (float)c + eps);
        for (unsigned ch = 0; ch < c; ++ch) yp[ch * hw] = (xp[ch * hw] - mean) * r * wload(w, wdt, ch) + wload(b, bdt, ch);
    }
}
