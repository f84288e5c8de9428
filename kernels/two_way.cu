// SAM's two-way attention on factored weights (Backend::two_way_update / two_way_pool, spec
// and composed reference in src/backend/two_way.rs), f32 on the CUDA cores. Image token j of
// prompt b scores the prompt's R query rows:
//
//   s[b, j, r] = x[b or 0, j, :] · ax[b, r, :] + y[0, j, g·Dy .. (g+1)·Dy] · ay[b, r, :]
//
// with x [Bx, N, C] (Bx = 1: one set shared by every prompt, x_bstride = 0), y [1, N, G·Dy],
// ax [B, R, C], ay [B, R, Dy], R = G·T and g = r / T.
//
// two_way_update_f32: p = softmax of s[b, j, ·] within each group of T rows, then
// out[b, j] = LayerNorm(x[b, j] + bias + Σ_r p[r]·u[b, r]) (biased variance) → [B, N, C].
// Launch: 256 threads (8 warps) per block, one block per (b, TW_ROWS = 32 image tokens), 2-D
// grid (block_row()); static shared memory 47 KB, 80 registers (3 blocks per SM). The block
// stages its 32 rows of x once ([32][TW_C], zero beyond N and C) and forms the 32 × R scores as a register-tiled product
// (thread: 2 image rows × 4 query rows, query row rq + 16i) over chunks of 32 channels of ax
// staged as [64][36] (the padding keeps the float4 reads of 8 consecutive rows on distinct
// banks), the next chunk loaded into registers meanwhile. The scores go to shared memory
// transposed ([r][32]); y passes through shared memory 48 columns at a time ([32][49]) and one
// thread per (image row, group) adds its y term, then takes the group's softmax, leaving p in
// place. Warp w then owns image rows 4w..4w+3, lane l channels l + 32m (m < 8): it starts from
// x + bias read out of the staged tile, after which that buffer holds chunks of 32 rows of u
// ([32][TW_C]) for z += p·u (p as one broadcast float4 per query row), and the LayerNorm's mean
// and variance are warp sums. Nothing of size [B, N, ·] but x and out is touched: per image
// token 4·C bytes read (4·C·Bx/B when shared) and 4·C written, ~2·R·C FMAs; ax and u are
// re-read per block from L2 (2·4·R·C bytes per 32 image tokens).
//
// two_way_pool_part_f32 + two_way_pool_combine_f32: q = softmax over all N image tokens of
// s[b, ·, r], out[b, r] = Σ_j q[j]·x[b or 0, j] → [B, R, C]. The part kernel takes one block
// of 256 threads per (b, chunk of TWP_CHUNK = 256 image tokens), 2-D grid, static shared
// memory 47 KB, 128 registers (2 blocks per SM), and walks its chunk in tiles of 32 tokens:
// scores as in the update (image rows past N get −inf), then warp w owns query rows 8w..8w+7 (a running max and sum per row, kept
// alike in every lane; lane l holds channels l + 32m of the 8 rows' weighted sums): each tile
// rescales them by exp(old max − new max) and adds Σ_j exp(s − max)·x[j] from the staged
// tile, with the weights exp(s − max) transposed through shared memory ([32][68]) so a lane
// reads each token's 8 weights as two broadcast float4. It writes its chunk's partials to
// `part`: maxima [B, K, R], sums [B, K, R] and weighted sums [B, K, R, C] (K = ⌈N / 256⌉
// chunks, one buffer in that order). The combine kernel, one block of 256 threads per (b, r)
// (2-D grid), merges the K partials in chunk order: M = max_k m_k, out = Σ_k acc_k·e^(m_k − M)
// / Σ_k l_k·e^(m_k − M). No atomics: results are the same run to run. Bytes: x once per prompt
// (once in all when shared, from L2), partials 4·B·K·R·(C + 2) written and read once.
//
// SAM's sizes (B = 64, N = 4096, C = 256, R = 56, Dy = 16) on an H200: update 1.23 ms
// (12 TFLOP/s, well below the FMA peak), pool 1.66 ms.
//
// Limits (CudaBackend::two_way_fits): C ≤ TW_C = 256, R ≤ TW_R = 64; any N, G, Dy.
#include "common.cuh"
#include "two_way.cuh"

#define TW_PLD (TW_R + 4)
// The second buffer: an ax chunk [TW_R][TW_KLD], then the scores / p [TW_R][TW_ROWS], or the
// pool's weights [TW_ROWS][TW_PLD].
#define TW_WS (TW_R * TW_KLD)
// y staged for the y term: TW_YW columns of 32 rows at a time.
#define TW_YW 48

namespace {

// The x·ax part of the scores of the 32 staged image rows: thread t gets s[i][k] for image row
// 2·(t / 16) + i and query row t % 16 + 16k (rows ≥ R come out 0). axb = ax[b] [R, C]. ws holds
// one chunk of TW_KC channels of every query row at a time ([TW_R][TW_KLD], zero past R and C).
// Starts and ends with a block barrier, so xs may have been written just before and ws may be
// reused just after.
template <bool PREFETCH>
__device__ __forceinline__ void tw_scores(const float* xs, float* ws, const float* __restrict__ axb, unsigned R, unsigned C, float s[2][4]) {
    const unsigned tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const unsigned rg = tid >> 4, rq = tid & 15;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 4; ++k) s[i][k] = 0.0f;
    const float* x0p = xs + (2 * rg) * TW_C;
    const float* x1p = x0p + TW_C;
    // PREFETCH: the next chunk of ax is loaded into registers while this one is used (the
    // pool, whose weighted sums stay live here, has no registers to spare for it).
    float next[TW_R / TW_WARPS];
#pragma unroll
    for (int i = 0; i < TW_R / TW_WARPS; ++i) {
        const unsigned r = warp + TW_WARPS * i;
        next[i] = (PREFETCH && r < R && lane < C) ? axb[(u64)r * C + lane] : 0.0f;
    }
    for (unsigned c0 = 0; c0 < C; c0 += TW_KC) {
        __syncthreads();
        if (PREFETCH) {
#pragma unroll
            for (int i = 0; i < TW_R / TW_WARPS; ++i) ws[(warp + TW_WARPS * i) * TW_KLD + lane] = next[i];
        } else {
            const unsigned c = c0 + lane;
#pragma unroll 1
            for (unsigned r = warp; r < TW_R; r += TW_WARPS) ws[r * TW_KLD + lane] = (r < R && c < C) ? axb[(u64)r * C + c] : 0.0f;
        }
        __syncthreads();
        if (PREFETCH && c0 + TW_KC < C) {
            const unsigned c = c0 + TW_KC + lane;
#pragma unroll
            for (int i = 0; i < TW_R / TW_WARPS; ++i) {
                const unsigned r = warp + TW_WARPS * i;
                next[i] = (r < R && c < C) ? axb[(u64)r * C + c] : 0.0f;
            }
        }
        // Not unrolled: the pool's weighted sums stay live across this loop, and unrolled loads
        // would push it past 128 registers (two blocks per SM).
#pragma unroll 1
        for (unsigned kk = 0; kk < TW_KC; kk += 4) {
            const float4 a = *reinterpret_cast<const float4*>(x0p + c0 + kk);
            const float4 b = *reinterpret_cast<const float4*>(x1p + c0 + kk);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const float4 w = *reinterpret_cast<const float4*>(ws + (rq + 16 * k) * TW_KLD + kk);
                s[0][k] = fmaf(a.x, w.x, s[0][k]);
                s[0][k] = fmaf(a.y, w.y, s[0][k]);
                s[0][k] = fmaf(a.z, w.z, s[0][k]);
                s[0][k] = fmaf(a.w, w.w, s[0][k]);
                s[1][k] = fmaf(b.x, w.x, s[1][k]);
                s[1][k] = fmaf(b.y, w.y, s[1][k]);
                s[1][k] = fmaf(b.z, w.z, s[1][k]);
                s[1][k] = fmaf(b.w, w.w, s[1][k]);
            }
        }
    }
    __syncthreads();
}

// Store tw_scores' registers as st [TW_R][TW_ROWS] (query row major) in ws.
__device__ __forceinline__ void tw_store_scores(float* st, const float s[2][4]) {
    const unsigned rg = threadIdx.x >> 4, rq = threadIdx.x & 15;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        st[(rq + 16 * k) * TW_ROWS + 2 * rg] = s[0][k];
        st[(rq + 16 * k) * TW_ROWS + 2 * rg + 1] = s[1][k];
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(TW_THREADS, 2) two_way_update_f32(TW_UPDATE_PARAMS) {
    __shared__ __align__(16) float xs[TW_ROWS * TW_C];
    __shared__ __align__(16) float ws[TW_WS];
    __shared__ float ys[TW_ROWS * (TW_YW + 1)];
    const unsigned tiles = (N + TW_ROWS - 1) / TW_ROWS;
    const u64 blk = block_row();
    if (blk >= (u64)B * tiles) return;
    const unsigned b = (unsigned)(blk / tiles), j0 = (unsigned)(blk % tiles) * TW_ROWS;
    const unsigned tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    tw_stage_x<TW_C>(xs, x + (u64)b * x_bstride, j0, N, C);
    float s[2][4];
    tw_scores<true>(xs, ws, ax + (u64)b * R * C, R, C, s);
    float* pt = ws;  // [TW_R][TW_ROWS]: scores, then p
    tw_store_scores(pt, s);
    const unsigned G = R / T;
    tw_add_y<TW_ROWS, TW_YW>(pt, ys, y, ay + (u64)b * R * Dy, j0, N, G, T, Dy);

    tw_group_softmax<TW_ROWS>(pt, G, T);
    __syncthreads();

    // z = x + bias + p·u: warp w owns image rows 4w..4w+3, lane l channels l + 32m.
    const unsigned r4 = 4 * warp;
    float z[4][8];
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        const unsigned c = lane + 32 * m;
        const float bc = c < C ? bias[c] : 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) z[i][m] = xs[(r4 + i) * TW_C + c] + bc;
    }
    const float* ub = u + (u64)b * R * C;
    for (unsigned r0 = 0; r0 < R; r0 += TW_ROWS) {
        const unsigned rc = min((unsigned)TW_ROWS, R - r0);
        __syncthreads();  // xs (x, or the previous chunk of u) is no longer read
        for (unsigned rr = warp; rr < rc; rr += TW_WARPS)
            for (unsigned c = lane; c < TW_C; c += 32) xs[rr * TW_C + c] = c < C ? ub[(u64)(r0 + rr) * C + c] : 0.0f;
        __syncthreads();
#pragma unroll 2
        for (unsigned rr = 0; rr < rc; ++rr) {
            const float4 p = *reinterpret_cast<const float4*>(pt + (r0 + rr) * TW_ROWS + r4);
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                const float uv = xs[rr * TW_C + lane + 32 * m];
                z[0][m] = fmaf(p.x, uv, z[0][m]);
                z[1][m] = fmaf(p.y, uv, z[1][m]);
                z[2][m] = fmaf(p.z, uv, z[2][m]);
                z[3][m] = fmaf(p.w, uv, z[3][m]);
            }
        }
    }

    // LayerNorm over the C channels of each row (z is 0 at channels ≥ C).
    tw_layer_norm_store(z, ln_w, ln_b, eps, out + (u64)b * N * C, j0 + r4, N, C);
}

extern "C" __global__ void __launch_bounds__(TW_THREADS, 2) two_way_pool_part_f32(TW_POOL_PARAMS) {
    __shared__ __align__(16) float xs[TW_ROWS * TW_C];
    __shared__ __align__(16) float ws[TW_WS];
    __shared__ float ys[TW_ROWS * (TW_YW + 1)];
    const unsigned chunks = (N + TWP_CHUNK - 1) / TWP_CHUNK;
    const u64 blk = block_row();
    if (blk >= (u64)B * chunks) return;
    const unsigned b = (unsigned)(blk / chunks), ch = (unsigned)(blk % chunks);
    const unsigned jbeg = ch * TWP_CHUNK, jend = min(N, jbeg + (unsigned)TWP_CHUNK);
    const unsigned tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const unsigned G = R / T, r8 = 8 * warp;
    const float* xb = x + (u64)b * x_bstride;
    const float* axb = ax + (u64)b * R * C;

    // Query rows r8 + i: running max and sum (alike in every lane), weighted sums of channels
    // lane + 32m.
    float acc[8][8], mrun[8], lrun[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        mrun[i] = NEG_INF;
        lrun[i] = 0.0f;
#pragma unroll
        for (int m = 0; m < 8; ++m) acc[i][m] = 0.0f;
    }
    for (unsigned j0 = jbeg; j0 < jend; j0 += TW_ROWS) {
        __syncthreads();  // the previous tile's xs and weights are no longer read
        tw_stage_x<TW_C>(xs, xb, j0, jend, C);
        float s[2][4];
        tw_scores<false>(xs, ws, axb, R, C, s);
        float* st = ws;  // [TW_R][TW_ROWS]
        tw_store_scores(st, s);
        tw_add_y<TW_ROWS, TW_YW>(st, ys, y, ay + (u64)b * R * Dy, j0, jend, G, T, Dy);
        // Image rows past the chunk get −inf.
        if (j0 + TW_ROWS > jend) {
            for (unsigned q = tid; q < TW_R * TW_ROWS; q += TW_THREADS)
                if (j0 + q % TW_ROWS >= jend) st[q] = NEG_INF;
            __syncthreads();
        }
        // Online softmax over this tile's 32 image rows (lane = image row), per query row.
        float e[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned r = r8 + i;
            const float v = r < R ? st[r * TW_ROWS + lane] : NEG_INF;
            const float mn = fmaxf(mrun[i], warp_max(v));
            const float sc = mn == NEG_INF ? 1.0f : expf(mrun[i] - mn);
            e[i] = mn == NEG_INF ? 0.0f : expf(v - mn);
            lrun[i] = fmaf(lrun[i], sc, warp_sum(e[i]));
            mrun[i] = mn;
#pragma unroll
            for (int m = 0; m < 8; ++m) acc[i][m] *= sc;
        }
        __syncthreads();  // the scores are read; ws now holds the weights [TW_ROWS][TW_PLD]
        float* et = ws;
#pragma unroll
        for (int i = 0; i < 8; ++i) et[lane * TW_PLD + r8 + i] = e[i];
        __syncthreads();
#pragma unroll 2
        for (unsigned jj = 0; jj < TW_ROWS; ++jj) {
            const float4 ea = *reinterpret_cast<const float4*>(et + jj * TW_PLD + r8);
            const float4 eb = *reinterpret_cast<const float4*>(et + jj * TW_PLD + r8 + 4);
            const float ev[8] = {ea.x, ea.y, ea.z, ea.w, eb.x, eb.y, eb.z, eb.w};
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                const float xv = xs[jj * TW_C + lane + 32 * m];
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[i][m] = fmaf(ev[i], xv, acc[i][m]);
            }
        }
    }

    const u64 slots = (u64)B * chunks * R, prow = ((u64)b * chunks + ch) * R;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const unsigned r = r8 + i;
        if (r < R) {
            if (lane == 0) {
                part[prow + r] = mrun[i];
                part[slots + prow + r] = lrun[i];
            }
            float* pa = part + 2 * slots + (prow + r) * C;
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                const unsigned c = lane + 32 * m;
                if (c < C) pa[c] = acc[i][m];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(TW_THREADS) two_way_pool_combine_f32(const float* __restrict__ part, float* __restrict__ out,
                                                                                 unsigned B, unsigned N, unsigned C, unsigned R) {
    const unsigned chunks = (N + TWP_CHUNK - 1) / TWP_CHUNK;
    const u64 row = block_row();  // b·R + r
    if (row >= (u64)B * R) return;
    const u64 b = row / R, r = row % R;
    const u64 slots = (u64)B * chunks * R;
    const float* pm = part + b * chunks * R + r;  // chunk k at pm[k·R]
    const float* pl = pm + slots;
    float mx = NEG_INF;
    for (unsigned k = 0; k < chunks; ++k) mx = fmaxf(mx, pm[(u64)k * R]);
    float l = 0.0f;
    for (unsigned k = 0; k < chunks; ++k) l = fmaf(pl[(u64)k * R], expf(pm[(u64)k * R] - mx), l);
    const float inv = 1.0f / l;
    const float* pa = part + 2 * slots + (b * chunks * R + r) * C;  // chunk k at pa[k·R·C]
    for (unsigned c = threadIdx.x; c < C; c += blockDim.x) {
        float v = 0.0f;
        for (unsigned k = 0; k < chunks; ++k) v = fmaf(pa[(u64)k * R * C + c], expf(pm[(u64)k * R] - mx), v);
        out[row * C + c] = v * inv;
    }
}
