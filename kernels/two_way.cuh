// Shared by the two-way kernels (two_way.cu on the CUDA cores, two_way_mma.cu on the tensor
// cores): the block geometry and limits, the staging of image tokens, the y term of the scores
// and the per-group softmax of the update. Scores tiles are st[r · SLD + i] for query row r and
// image row i of the block's 32 (SLD ≥ TW_ROWS, chosen per kernel for its bank pattern).
#pragma once

#define TW_THREADS 256
#define TW_WARPS (TW_THREADS / 32)
// Image tokens per tile, and the channel and query-row limits (CudaBackend::two_way_fits).
#define TW_ROWS 32
#define TW_C 256
#define TW_R 64
// ax is staged TW_KC channels of every query row at a time, rows TW_KLD apart.
#define TW_KC 32
#define TW_KLD (TW_KC + 4)
// Image tokens per partial of the pool.
#define TWP_CHUNK 256

// The update kernels' argument list (two_way_update_f32 and _tf32 take the same), and the
// pool part kernels'.
#define TW_UPDATE_PARAMS                                                                                             \
    const float *__restrict__ x, u64 x_bstride, const float *__restrict__ y, const float *__restrict__ ax,            \
        const float *__restrict__ ay, const float *__restrict__ u, const float *__restrict__ bias,                    \
        const float *__restrict__ ln_w, const float *__restrict__ ln_b, float eps, float *__restrict__ out, unsigned B, \
        unsigned N, unsigned C, unsigned R, unsigned T, unsigned Dy
#define TW_POOL_PARAMS                                                                                                \
    const float *__restrict__ x, u64 x_bstride, const float *__restrict__ y, const float *__restrict__ ax,            \
        const float *__restrict__ ay, float *__restrict__ part, unsigned B, unsigned N, unsigned C, unsigned R,       \
        unsigned T, unsigned Dy

namespace {

// Image rows j0 .. j0 + 31 of one set of image tokens (xb = [N, C]) into xs [TW_ROWS][LD], zero
// at rows ≥ jend and channels ≥ C (up to TW_C). Warp w copies rows w, w + 8, ...; lanes read 32
// consecutive channels (coalesced).
template <int LD>
__device__ __forceinline__ void tw_stage_x(float* xs, const float* __restrict__ xb, unsigned j0, unsigned jend, unsigned C) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (unsigned row = warp; row < TW_ROWS; row += TW_WARPS) {
        const unsigned j = j0 + row;
        for (unsigned c = lane; c < TW_C; c += 32) xs[row * LD + c] = (j < jend && c < C) ? xb[(u64)j * C + c] : 0.0f;
    }
}

// Add the y term to the scores st [TW_R][SLD] of image rows j0.. (rows ≥ jend are left as they
// are): y's G·Dy columns pass through ys [TW_ROWS][YW + 1] YW at a time (staged coalesced; the
// odd row length puts a warp reading one column of 32 rows on 32 banks), and one thread per
// (image row, group) adds y[j, g·Dy + d]·ay[b, r, d] over the columns of its group in the slice
// for each of the group's T rows (ay through the L1: a warp's 32 lanes are 32 image rows of one
// group, so they read the same ay word). Starts and ends with a block barrier.
template <int SLD, int YW>
__device__ __forceinline__ void tw_add_y(float* st, float* ys, const float* __restrict__ y, const float* __restrict__ ayb, unsigned j0,
                                         unsigned jend, unsigned G, unsigned T, unsigned Dy) {
    constexpr unsigned YLD = YW + 1;
    const unsigned gdy = G * Dy;
    for (unsigned y0 = 0; y0 < gdy; y0 += YW) {
        __syncthreads();
        for (unsigned e = threadIdx.x; e < TW_ROWS * YW; e += TW_THREADS) {
            const unsigned row = e / YW, cc = e % YW, j = j0 + row;
            ys[row * YLD + cc] = (j < jend && y0 + cc < gdy) ? y[(u64)j * gdy + y0 + cc] : 0.0f;
        }
        __syncthreads();
        for (unsigned q = threadIdx.x; q < TW_ROWS * G; q += TW_THREADS) {
            const unsigned row = q % TW_ROWS, g = q / TW_ROWS;
            // This group's columns [lo, lo + Dy) within [y0, y0 + YW): d in [d0, d1).
            const unsigned lo = g * Dy;
            if (j0 + row >= jend || lo + Dy <= y0 || lo >= y0 + YW) continue;
            const unsigned d0 = max(lo, y0) - lo, d1 = min(lo + Dy, y0 + YW) - lo;
            const float* yr = ys + row * YLD + g * Dy - y0;
            for (unsigned t = 0; t < T; ++t) {
                const float* ar = ayb + (u64)(g * T + t) * Dy;
                float v = 0.0f;
                for (unsigned d = d0; d < d1; ++d) v = fmaf(yr[d], __ldg(ar + d), v);
                st[(g * T + t) * SLD + row] += v;
            }
        }
    }
    __syncthreads();
}

// The update's softmax within each group of T query rows, in place over st [TW_R][SLD]: one
// thread per (image row, group). Rows ≥ G·T are not touched. The caller syncs after it.
template <int SLD>
__device__ __forceinline__ void tw_group_softmax(float* st, unsigned G, unsigned T) {
    for (unsigned q = threadIdx.x; q < TW_ROWS * G; q += TW_THREADS) {
        const unsigned row = q % TW_ROWS, g = q / TW_ROWS;
        float* col = st + g * T * SLD + row;
        float mx = NEG_INF;
        for (unsigned t = 0; t < T; ++t) mx = fmaxf(mx, col[t * SLD]);
        float sum = 0.0f;
        for (unsigned t = 0; t < T; ++t) {
            const float e = expf(col[t * SLD] - mx);
            col[t * SLD] = e;
            sum += e;
        }
        const float inv = 1.0f / sum;
        for (unsigned t = 0; t < T; ++t) col[t * SLD] *= inv;
    }
}

// The update's last step for the 4 image rows j .. j + 3 (rows ≥ N skipped) a warp holds, lane
// l holding channels l + 32m in z[i][m] (0 at channels ≥ C): LayerNorm over the C channels
// (biased variance; mean and variance as warp sums), written to out rows [N, C] (coalesced).
__device__ __forceinline__ void tw_layer_norm_store(const float z[4][8], const float* __restrict__ ln_w, const float* __restrict__ ln_b,
                                                    float eps, float* __restrict__ out, unsigned j, unsigned N, unsigned C) {
    const unsigned lane = threadIdx.x & 31;
    float lw[8], lb[8];
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        const unsigned c = lane + 32 * m;
        lw[m] = c < C ? ln_w[c] : 0.0f;
        lb[m] = c < C ? ln_b[c] : 0.0f;
    }
    const float inv_c = 1.0f / (float)C;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float sum = 0.0f;
#pragma unroll
        for (int m = 0; m < 8; ++m) sum += z[i][m];
        const float mean = warp_sum(sum) * inv_c;
        float sq = 0.0f;
#pragma unroll
        for (int m = 0; m < 8; ++m) {
            const float d = lane + 32 * m < C ? z[i][m] - mean : 0.0f;
            sq = fmaf(d, d, sq);
        }
        const float rstd = rsqrtf(warp_sum(sq) * inv_c + eps);
        if (j + i < N) {
            float* o = out + (u64)(j + i) * C;
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                const unsigned c = lane + 32 * m;
                if (c < C) o[c] = (z[i][m] - mean) * rstd * lw[m] + lb[m];
            }
        }
    }
}

}  // namespace
