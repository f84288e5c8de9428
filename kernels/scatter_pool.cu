// Superpixel scatter-mean pooling with the SSPE inputs in one pass (Backend::scatter_mean_pool):
//   out[s, c] = Σ_p weights[s, p] · (feats[p, c] + pos[p, c])
// weights [S, P] (row-normalised coverage), feats and pos [P, C], all f32.
//
// Deterministic, no atomics: a block of 256 threads covers one s and 32 columns as 8 slices of
// P; slice j (one warp) sums p = j, j + 8, j + 16, ... in order, and the 8 partials are then
// added in slice order, so reruns give identical bits (the same order as
// shaders/scatter_pool.wgsl). A warp reads 128 contiguous bytes of a feats/pos row per p;
// weights[s, p] is a broadcast, and a zero weight (a patch the superpixel does not cover)
// skips the loads, uniformly across the warp. Each lane keeps 4 patches' loads in flight.
// Launch: grid (ceil(C / 32), S) — blockIdx.y ≤ 65535 superpixels — 256 threads.
// Napkin math for 576×1024 → 40: 4.7 MB of features and positions (read from L2 once per s),
// 40·576·1024·3 flops; 1280 blocks fill the chip.
#include "common.cuh"

#define POOL_COLS 32
#define POOL_SLICES 8

extern "C" __global__ void __launch_bounds__(256) scatter_mean_pool_f32(const float* __restrict__ weights, const float* __restrict__ feats,
                                                                        const float* __restrict__ pos, float* __restrict__ out, unsigned s_count,
                                                                        unsigned p_count, unsigned c_count) {
    __shared__ float partial[POOL_SLICES][POOL_COLS];
    const unsigned s = blockIdx.y;
    const unsigned lane = threadIdx.x % POOL_COLS, slice = threadIdx.x / POOL_COLS;
    const unsigned c = blockIdx.x * POOL_COLS + lane;
    const float* wr = weights + (u64)s * p_count;
    float acc = 0.0f;
    if (s < s_count && c < c_count) {
        unsigned p = slice;
        for (; p + 3 * POOL_SLICES < p_count; p += 4 * POOL_SLICES) {
            float wv[4], v[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const unsigned q = p + u * POOL_SLICES;
                wv[u] = wr[q];
                v[u] = wv[u] != 0.0f ? feats[(u64)q * c_count + c] + pos[(u64)q * c_count + c] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) acc = fmaf(wv[u], v[u], acc);
        }
        for (; p < p_count; p += POOL_SLICES) {
            const float wv = wr[p];
            if (wv != 0.0f) acc = fmaf(wv, feats[(u64)p * c_count + c] + pos[(u64)p * c_count + c], acc);
        }
    }
    partial[slice][lane] = acc;
    __syncthreads();
    if (slice == 0 && s < s_count && c < c_count) {
        float total = 0.0f;
#pragma unroll
        for (int j = 0; j < POOL_SLICES; ++j) total += partial[j][lane];
        out[(u64)s * c_count + c] = total;
    }
}
