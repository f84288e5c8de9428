// Superpixel scatter-mean pooling with the SSPE inputs in one pass (Backend::scatter_mean_pool):
//   out[s, c] = Σ_p weights[s, p] · (feats[p, c] + pos[p, c])
// weights [S, P] (row-normalised coverage), feats and pos [P, C], all f32.
//
// Deterministic: each output is one thread's sum over p in increasing order (no atomics, no
// split reduction), so reruns give identical bits. Coverage is sparse (a superpixel covers a
// few patches of the grid): a zero weight skips the patch, and because every thread of a block
// shares the same s, the branch is uniform.
// Launch: grid (ceil(C / 256), S) — blockIdx.y ≤ 65535 superpixels — 256 threads along c, so
// feats/pos rows are read coalesced; per covered patch 8 bytes per channel.
#include "common.cuh"

extern "C" __global__ void scatter_mean_pool_f32(const float* __restrict__ weights, const float* __restrict__ feats,
                                                 const float* __restrict__ pos, float* __restrict__ out, unsigned s_count,
                                                 unsigned p_count, unsigned c_count) {
    const unsigned s = blockIdx.y;
    const unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= s_count || c >= c_count) return;
    const float* wr = weights + (u64)s * p_count;
    float acc = 0.0f;
    for (unsigned p = 0; p < p_count; ++p) {
        const float wv = wr[p];
        if (wv != 0.0f) acc = fmaf(wv, feats[(u64)p * c_count + c] + pos[(u64)p * c_count + c], acc);
    }
    out[(u64)s * c_count + c] = acc;
}
