// Normalisations (f32 activations; weight and bias may be f32, f16 or bf16: dtype codes in
// common.cuh), matching the CPU backend's two-pass formulas.
//
// * layer_norm_f32:           rows of length d: (x − mean)·rsqrt(var + eps)·w + b
// * rms_norm_f32:             rows of length d: w · (x · rsqrt(mean(x²) + eps))
// * layer_norm_channels_f32:  x [B, C, H·W]: each (b, pixel) normalised over C (SAM's
//                             LayerNorm2d); one thread per pixel, channel loop strided by H·W so a
//                             warp reads 32 consecutive pixels (coalesced)
//
// Launch: the row kernels take a 2-D grid of rows (block_row()), blockDim.x a multiple of 32;
// each row is read twice (layer_norm: three times: mean, variance, write) from L1/L2. The
// channel kernel is 1-D with a grid-stride loop over B·H·W.
#include "common.cuh"

__device__ __forceinline__ float wload(const void* p, int dt, u64 i) {
    if (dt == DT_F16) return f16_to_f32(((const u16*)p)[i]);
    if (dt == DT_BF16) return bf16_to_f32(((const u16*)p)[i]);
    return ((const float*)p)[i];
}

extern "C" __global__ void layer_norm_f32(const float* __restrict__ x, float* __restrict__ y, u64 rows, unsigned d,
                                          const void* w, int wdt, const void* b, int bdt, float eps) {
    __shared__ float scratch[32];
    const u64 row = block_row();
    if (row >= rows) return;
    const float* xr = x + row * d;
    float* yr = y + row * d;
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
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) yr[j] = (xr[j] - mean) * r * wload(w, wdt, j) + wload(b, bdt, j);
}

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, float* __restrict__ y, u64 rows, unsigned d,
                                        const void* w, int wdt, float eps) {
    __shared__ float scratch[32];
    const u64 row = block_row();
    if (row >= rows) return;
    const float* xr = x + row * d;
    float* yr = y + row * d;
    float s = 0.0f;
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) s += xr[j] * xr[j];
    const float ms = block_sum(s, scratch) / (float)d;
    const float r = 1.0f / sqrtf(ms + eps);
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) yr[j] = wload(w, wdt, j) * (xr[j] * r);
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
