// Superpixel scatter-mean pooling with the SSPE inputs in one pass (Backend::scatter_mean_pool):
//   out[s, c] = Σ_p weights[s, p] · (feats[p, c] + pos[p, c])
// weights [S, P] (row-normalised coverage), feats and pos [P, C], all f32.
//
// Deterministic, no atomics: a block of 256 threads covers one s and 32 columns as 8 slices of
// P; slice j (one warp) sums the p = j, j + 8, j + 16, ... with a nonzero weight, in order, and
// the 8 partials are then added in slice order, so reruns give identical bits (the same order
// as shaders/scatter_pool.wgsl). A zero weight (a patch the superpixel does not cover: most of
// them, ~P/S covered per superpixel) contributes nothing and is never read past.
//
// Each warp first reads its slice's weights, POOL_SCAN·32 candidates at a time (one load per
// lane per 32, all in flight together), and a ballot per 32 marks the nonzero ones; then, up to
// eight marked patches at a time, every lane (one column) loads their feats and pos values
// together (128 contiguous bytes of a row per warp) and adds them in p order. So a block waits
// on about two memory round trips for S = 40, P = 576 (72 candidates per slice, ~2 marked),
// where a loop that read each weight and then its row took 18 dependent steps (27 µs a call on
// an H200, bound by latency: its 4.7 MB is ~1 µs of bandwidth).
// Launch: grid (ceil(C / 32), S) — blockIdx.y ≤ 65535 superpixels — 256 threads.
#include "common.cuh"

#define POOL_COLS 32
#define POOL_SLICES 8
#define POOL_SCAN 4   // weight loads per lane in flight while scanning a slice
#define POOL_GATHER 8 // marked patches whose rows are loaded together

extern "C" __global__ void __launch_bounds__(256) scatter_mean_pool_f32(const float* __restrict__ weights, const float* __restrict__ feats,
                                                                        const float* __restrict__ pos, float* __restrict__ out, unsigned s_count,
                                                                        unsigned p_count, unsigned c_count) {
    __shared__ float partial[POOL_SLICES][POOL_COLS];
    const unsigned s = blockIdx.y;
    const unsigned lane = threadIdx.x % POOL_COLS, slice = threadIdx.x / POOL_COLS;
    const unsigned c = blockIdx.x * POOL_COLS + lane;
    const bool col = s < s_count && c < c_count;
    const float* wr = weights + (u64)s * p_count;
    // This slice's candidates: p = slice + 8·i for i < per_slice.
    const unsigned per_slice = p_count > slice ? (p_count - slice + POOL_SLICES - 1) / POOL_SLICES : 0;
    float acc = 0.0f;
    for (unsigned base = 0; s < s_count && base < per_slice; base += 32 * POOL_SCAN) {
        float wv[POOL_SCAN];
        unsigned marked[POOL_SCAN];
#pragma unroll
        for (int u = 0; u < POOL_SCAN; ++u) {
            const unsigned i = base + u * 32 + lane;
            wv[u] = i < per_slice ? wr[slice + (u64)POOL_SLICES * i] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < POOL_SCAN; ++u) marked[u] = __ballot_sync(0xffffffffu, wv[u] != 0.0f);
#pragma unroll
        for (int u = 0; u < POOL_SCAN; ++u) {
            unsigned m = marked[u]; // the same in every lane: the loop below is warp-uniform
            while (m) {
                u64 q[POOL_GATHER];
                float w[POOL_GATHER], v[POOL_GATHER];
                int n = 0;
#pragma unroll
                for (int k = 0; k < POOL_GATHER; ++k) {
                    const int b = m ? __ffs(m) - 1 : 0;
                    w[k] = __shfl_sync(0xffffffffu, wv[u], b);
                    q[k] = slice + (u64)POOL_SLICES * (base + u * 32 + b);
                    if (m) {
                        m &= m - 1;
                        n = k + 1;
                    }
                }
#pragma unroll
                for (int k = 0; k < POOL_GATHER; ++k) v[k] = col && k < n ? feats[q[k] * c_count + c] + pos[q[k] * c_count + c] : 0.0f;
#pragma unroll
                for (int k = 0; k < POOL_GATHER; ++k)
                    if (k < n) acc = fmaf(w[k], v[k], acc);
            }
        }
    }
    partial[slice][lane] = acc;
    __syncthreads();
    if (slice == 0 && col) {
        float total = 0.0f;
#pragma unroll
        for (int j = 0; j < POOL_SLICES; ++j) total += partial[j][lane];
        out[(u64)s * c_count + c] = total;
    }
}
