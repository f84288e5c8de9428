// SAM's two-way attention on factored weights (Backend::two_way_update / two_way_pool, spec in
// src/backend/two_way.rs) with both products on the tensor cores: mma.sync m16n8k8 on TF32
// operands (10-bit mantissa, f32 range; rounded to nearest by cvt.rna as each fragment is
// loaded) with f32 accumulators, for half-precision SAM checkpoints, whose image-side
// projections these kernels replace already run on TF32 (cuBLASLt, src/backend/cuda/lt.rs).
// Same arguments, outputs and limits (C ≤ 256, R ≤ 64) as two_way.cu's f32 kernels, whose
// header describes the ops; the pool's partials have the same layout, so two_way.cu's
// two_way_pool_combine_f32 merges them.
//
// two_way_update_tf32: 256 threads (8 warps) per block of 32 image tokens of one prompt (2-D
// grid). x is staged as [32][TWM_XLD] (f32). The scores S [32 × 64] = x·axᵀ: warp w computes
// the 16 × 16 tile at image rows 16·(w & 1), query rows 16·(w >> 1) (two m16n8k8 per k step)
// over chunks of 32 channels of ax staged as [64][TW_KLD] (the next chunk loaded into
// registers meanwhile), and stores it query-row major [64][TWM_USLD] (rows ≥ R come out 0, as
// ax is staged 0 there). The y term and the group softmax run on the CUDA cores (two_way.cuh),
// leaving p in place. Then z = x + bias + p·u: warp w accumulates image rows 16·(w & 1),
// channels 64·(w >> 1) .. + 63 (eight m16n8k8 per k step), starting from x + bias, with u
// staged 32 rows at a time as [32][TWM_ULD] over x's buffer; z goes back through that buffer
// so that warp w takes the LayerNorm of rows 4w .. 4w + 3 with warp sums, lanes on channels
// l + 32m, and writes them coalesced. Per image token: 4·C bytes read (none when shared), 4·C
// written; ax and u re-read per block from L2.
//
// two_way_pool_part_tf32: 256 threads per (b, chunk of TWP_CHUNK image tokens), walked in tiles
// of 32: x staged as [32][TWM_ULD], scores as in the update into [64][TWM_PSLD] (image rows past
// the chunk −inf), then warp w keeps the running max and sum of query rows 8w .. 8w + 7 (lanes on
// image rows, warp reductions) and overwrites the tile's scores with the weights
// exp(s − max) rounded to TF32 (the sum adds the rounded weights, so every output stays a
// convex combination of image tokens), and the rescale factor of each row in `scale`. Warp w
// then accumulates the weighted sums of query rows 16·(w & 3) (skipped past R), channels
// 128·(w >> 2) .. + 127: rescaled, plus weights · x on sixteen m16n8k8 per k step of 8 image
// tokens.
//
// Shared memory (static): update 48.3 KB, pool 47.5 KB. Strides chosen so that fragment loads
// hit 32 banks: a fragment of A reads 8 rows × 4 consecutive words (row stride ≡ 4 mod 32:
// TWM_XLD, TWM_PSLD), one of B 4 rows × 8 consecutive words (≡ 8 mod 32: TWM_ULD, TWM_USLD);
// the pool's x is read both ways (2-way conflicts in the scores' A fragments).
#include "common.cuh"
#include "two_way.cuh"

#define TWM_XLD (TW_C + 4)
#define TWM_ULD (TW_C + 8)
#define TWM_USLD (TW_ROWS + 8)
#define TWM_PSLD (TW_ROWS + 4)
#define TWM_YW 32

namespace {

__device__ __forceinline__ float tf32_round(float v) { return __uint_as_float(f32_to_tf32(v)); }

// S = x·axᵀ for the 32 staged image rows (xs [TW_ROWS][XLD]) against query rows 0..63 of
// axb = ax[b] [R, C], stored as st [TW_R][SLD] (st[r·SLD + i]), which may alias ws: ax passes
// through ws [TW_R][TW_KLD] one chunk of TW_KC channels at a time (zero past R and C). Starts
// and ends with a block barrier.
template <int XLD, int SLD>
__device__ __forceinline__ void twm_scores(const float* xs, float* ws, const float* __restrict__ axb, unsigned R, unsigned C, float* st) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const unsigned m0 = 16 * (warp & 1), n0 = 16 * (warp >> 1);
    float acc[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
    float next[TW_R / TW_WARPS];
#pragma unroll
    for (int i = 0; i < TW_R / TW_WARPS; ++i) {
        const unsigned r = warp + TW_WARPS * i;
        next[i] = (r < R && lane < C) ? axb[(u64)r * C + lane] : 0.0f;
    }
    const float* xa = xs + (m0 + g) * XLD + t;
    for (unsigned c0 = 0; c0 < C; c0 += TW_KC) {
        __syncthreads();
#pragma unroll
        for (int i = 0; i < TW_R / TW_WARPS; ++i) ws[(warp + TW_WARPS * i) * TW_KLD + lane] = next[i];
        __syncthreads();
        if (c0 + TW_KC < C) {
            const unsigned c = c0 + TW_KC + lane;
#pragma unroll
            for (int i = 0; i < TW_R / TW_WARPS; ++i) {
                const unsigned r = warp + TW_WARPS * i;
                next[i] = (r < R && c < C) ? axb[(u64)r * C + c] : 0.0f;
            }
        }
#pragma unroll
        for (unsigned kk = 0; kk < TW_KC; kk += 8) {
            const float* a = xa + c0 + kk;
            const unsigned a0 = f32_to_tf32(a[0]), a1 = f32_to_tf32(a[8 * XLD]), a2 = f32_to_tf32(a[4]), a3 = f32_to_tf32(a[8 * XLD + 4]);
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const float* bp = ws + (n0 + 8 * j + g) * TW_KLD + kk + t;
                mma_tf32_1688(acc[j], a0, a1, a2, a3, f32_to_tf32(bp[0]), f32_to_tf32(bp[4]));
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const unsigned r = n0 + 8 * j + 2 * t;
        st[r * SLD + m0 + g] = acc[j][0];
        st[(r + 1) * SLD + m0 + g] = acc[j][1];
        st[r * SLD + m0 + g + 8] = acc[j][2];
        st[(r + 1) * SLD + m0 + g + 8] = acc[j][3];
    }
    __syncthreads();
}

}  // namespace

extern "C" __global__ void __launch_bounds__(TW_THREADS, 2) two_way_update_tf32(TW_UPDATE_PARAMS) {
    // x [TW_ROWS][TWM_XLD], then chunks of u and finally z [TW_ROWS][TWM_ULD].
    __shared__ __align__(16) float xs[TW_ROWS * TWM_ULD];
    // ax chunks [TW_R][TW_KLD], then the scores / p [TW_R][TWM_USLD].
    __shared__ __align__(16) float ws[TW_R * TWM_USLD];
    __shared__ float ys[TW_ROWS * (TWM_YW + 1)];
    const unsigned tiles = (N + TW_ROWS - 1) / TW_ROWS;
    const u64 blk = block_row();
    if (blk >= (u64)B * tiles) return;
    const unsigned b = (unsigned)(blk / tiles), j0 = (unsigned)(blk % tiles) * TW_ROWS;
    const unsigned tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;

    tw_stage_x<TWM_XLD>(xs, x + (u64)b * x_bstride, j0, N, C);
    float* pt = ws;
    twm_scores<TWM_XLD, TWM_USLD>(xs, ws, ax + (u64)b * R * C, R, C, pt);
    const unsigned G = R / T;
    tw_add_y<TWM_USLD, TWM_YW>(pt, ys, y, ay + (u64)b * R * Dy, j0, N, G, T, Dy);
    tw_group_softmax<TWM_USLD>(pt, G, T);
    __syncthreads();

    // z = x + bias + p·u: warp w holds image rows mz + g (+ 8), channels cz + 8j + 2t (+ 1).
    const unsigned mz = 16 * (warp & 1), cz = 64 * (warp >> 1);
    float z[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const unsigned c = cz + 8 * j + 2 * t;
        const float b0 = c < C ? bias[c] : 0.0f, b1 = c + 1 < C ? bias[c + 1] : 0.0f;
        const float* xr = xs + (mz + g) * TWM_XLD + c;
        z[j][0] = xr[0] + b0;
        z[j][1] = xr[1] + b1;
        z[j][2] = xr[8 * TWM_XLD] + b0;
        z[j][3] = xr[8 * TWM_XLD + 1] + b1;
    }
    const float* ub = u + (u64)b * R * C;
    // p is 0 at rows R .. 63 (their scores are), so the k steps run to R rounded up to 8.
    const unsigned rk = (R + 7) & ~7u;
    for (unsigned r0 = 0; r0 < rk; r0 += TW_ROWS) {
        __syncthreads();  // x, or the previous chunk of u, is no longer read
        for (unsigned rr = warp; rr < TW_ROWS; rr += TW_WARPS)
            for (unsigned c = lane; c < TW_C; c += 32) xs[rr * TWM_ULD + c] = (r0 + rr < R && c < C) ? ub[(u64)(r0 + rr) * C + c] : 0.0f;
        __syncthreads();
        const unsigned kend = min((unsigned)TW_ROWS, rk - r0);
        for (unsigned kk = 0; kk < kend; kk += 8) {
            const float* pa = pt + (r0 + kk + t) * TWM_USLD + mz + g;
            const unsigned a0 = f32_to_tf32(pa[0]), a1 = f32_to_tf32(pa[8]), a2 = f32_to_tf32(pa[4 * TWM_USLD]), a3 = f32_to_tf32(pa[4 * TWM_USLD + 8]);
            const float* ur = xs + (kk + t) * TWM_ULD + cz + g;
#pragma unroll
            for (int j = 0; j < 8; ++j) mma_tf32_1688(z[j], a0, a1, a2, a3, f32_to_tf32(ur[8 * j]), f32_to_tf32(ur[4 * TWM_ULD + 8 * j]));
        }
    }
    __syncthreads();  // u is no longer read: z goes to xs
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        float* zr = xs + (mz + g) * TWM_ULD + cz + 8 * j + 2 * t;
        zr[0] = z[j][0];
        zr[1] = z[j][1];
        zr[8 * TWM_ULD] = z[j][2];
        zr[8 * TWM_ULD + 1] = z[j][3];
    }
    __syncthreads();

    // LayerNorm over the C channels of rows 4w .. 4w + 3 (z is 0 at channels ≥ C).
    float zr[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int m = 0; m < 8; ++m) zr[i][m] = xs[(4 * warp + i) * TWM_ULD + lane + 32 * m];
    tw_layer_norm_store(zr, ln_w, ln_b, eps, out + (u64)b * N * C, j0 + 4 * warp, N, C);
}

extern "C" __global__ void __launch_bounds__(TW_THREADS, 2) two_way_pool_part_tf32(TW_POOL_PARAMS) {
    __shared__ __align__(16) float xs[TW_ROWS * TWM_ULD];
    // ax chunks [TW_R][TW_KLD], then the scores / weights [TW_R][TWM_PSLD].
    __shared__ __align__(16) float ws[TW_R * TW_KLD];
    __shared__ float ys[TW_ROWS * (TWM_YW + 1)];
    __shared__ float scale[TW_R];
    const unsigned chunks = (N + TWP_CHUNK - 1) / TWP_CHUNK;
    const u64 blk = block_row();
    if (blk >= (u64)B * chunks) return;
    const unsigned b = (unsigned)(blk / chunks), ch = (unsigned)(blk % chunks);
    const unsigned jbeg = ch * TWP_CHUNK, jend = min(N, jbeg + (unsigned)TWP_CHUNK);
    const unsigned tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const unsigned G = R / T, r8 = 8 * warp;
    const unsigned mr = 16 * (warp & 3), cb = 128 * (warp >> 2);
    const float* xb = x + (u64)b * x_bstride;
    const float* axb = ax + (u64)b * R * C;
    float* st = ws;

    // Statistics of query rows r8 + i (alike in every lane); weighted sums of rows mr + g (+ 8),
    // channels cb + 8j + 2t (+ 1).
    float mrun[8], lrun[8], acc[16][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) mrun[i] = NEG_INF, lrun[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;

    for (unsigned j0 = jbeg; j0 < jend; j0 += TW_ROWS) {
        __syncthreads();  // the previous tile's x and weights are no longer read
        tw_stage_x<TWM_ULD>(xs, xb, j0, jend, C);
        twm_scores<TWM_ULD, TWM_PSLD>(xs, ws, axb, R, C, st);
        tw_add_y<TWM_PSLD, TWM_YW>(st, ys, y, ay + (u64)b * R * Dy, j0, jend, G, T, Dy);
        if (j0 + TW_ROWS > jend) {
            for (unsigned q = tid; q < TW_R * TW_ROWS; q += TW_THREADS)
                if (j0 + q % TW_ROWS >= jend) st[(q / TW_ROWS) * TWM_PSLD + q % TW_ROWS] = NEG_INF;
            __syncthreads();
        }
        // Online softmax over the tile's image rows (lane = image row) for rows r8 + i; the
        // weights replace the scores in place (0 at rows ≥ R).
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned r = r8 + i;
            const float v = r < R ? st[r * TWM_PSLD + lane] : NEG_INF;
            const float mn = fmaxf(mrun[i], warp_max(v));
            const float sc = mn == NEG_INF ? 1.0f : expf(mrun[i] - mn);
            const float e = mn == NEG_INF ? 0.0f : tf32_round(expf(v - mn));
            lrun[i] = fmaf(lrun[i], sc, warp_sum(e));
            mrun[i] = mn;
            st[r * TWM_PSLD + lane] = e;
            if (lane == 0) scale[r] = sc;
        }
        __syncthreads();
        if (mr < R) {
            const float s0 = scale[mr + g], s1 = scale[mr + g + 8];
#pragma unroll
            for (int j = 0; j < 16; ++j) acc[j][0] *= s0, acc[j][1] *= s0, acc[j][2] *= s1, acc[j][3] *= s1;
#pragma unroll
            for (unsigned kk = 0; kk < TW_ROWS; kk += 8) {
                const float* ea = st + (mr + g) * TWM_PSLD + kk + t;
                const unsigned a0 = f32_to_tf32(ea[0]), a1 = f32_to_tf32(ea[8 * TWM_PSLD]), a2 = f32_to_tf32(ea[4]), a3 = f32_to_tf32(ea[8 * TWM_PSLD + 4]);
                const float* xr = xs + (kk + t) * TWM_ULD + cb + g;
#pragma unroll
                for (int j = 0; j < 16; ++j)
                    if (cb + 8 * j < C) mma_tf32_1688(acc[j], a0, a1, a2, a3, f32_to_tf32(xr[8 * j]), f32_to_tf32(xr[4 * TWM_ULD + 8 * j]));
            }
        }
    }

    const u64 slots = (u64)B * chunks * R, prow = ((u64)b * chunks + ch) * R;
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned r = r8 + i;
            if (r < R) {
                part[prow + r] = mrun[i];
                part[slots + prow + r] = lrun[i];
            }
        }
    }
    if (mr < R) {
        float* pa = part + 2 * slots + prow * C;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const unsigned c = cb + 8 * j + 2 * t;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const unsigned r = mr + g + 8 * h;
                if (r >= R) continue;
                if (c < C) pa[(u64)r * C + c] = acc[j][2 * h];
                if (c + 1 < C) pa[(u64)r * C + c + 1] = acc[j][2 * h + 1];
            }
        }
    }
}
