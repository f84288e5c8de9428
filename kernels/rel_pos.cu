// SAM's decomposed relative-position bias (the rel_h / rel_w operands of the attention kernels,
// AttnBias::DecomposedRelPos) computed from token-major queries on an S × S grid (token
// t = y·S + x):
//   rel_h[b, h, t, ky] = q[b, t, h]·rh[y, ky]        rel_w[b, h, t, kx] = q[b, t, h]·rw[x, kx]
// q [B, S², ·] with a row stride of q_row floats (≥ H·hd): head h is columns h·hd .. h·hd + hd,
// so the q third of a packed q|k|v projection is read in place. rh, rw [S, S, hd] (the tables
// already taken at q − k + S − 1); rel_h, rel_w [B, H, S², S], f32 throughout.
//
// Entry point rel_pos_f32. Grid (B·H, S, 2), block 256, S ≤ 64. Block (bh, p, 0) takes grid
// row y = p: its S queries (x = 0 .. S − 1) against rh[p]; block (bh, p, 1) grid column x = p:
// its queries (y = 0 .. S − 1) against rw[p]. Each is an S × S product over hd, staged 32
// columns of hd at a time (queries and table rows as [64][33] floats in shared memory, 16.9 KB;
// the loads coalesced along hd), every thread a 4 × 4 register tile (queries ty + 16i, keys
// tx + 16j; table reads hit 16 distinct banks, query reads are broadcasts).
//
// Napkin math (SAM ViT-H at 1024²): a windowed layer (25 windows, S = 14, 16 heads, hd 80) is
// 2·25·16·196·14·80 = 176 M multiply-adds, a global one (S = 64) 671 M; 7.6 G for the encoder,
// ~1 ms on the CUDA cores at ~15 TFLOP/s. It replaces two permutes of q, two batched SGEMMs
// and two permutes of their results per layer.
#include "common.cuh"

namespace {
constexpr int RP_S = 64, RP_C = 32, RP_THREADS = 256;
}

extern "C" __global__ void __launch_bounds__(RP_THREADS)
    rel_pos_f32(const float* __restrict__ q, long long q_row, const float* __restrict__ rh, const float* __restrict__ rw,
                float* __restrict__ rel_h, float* __restrict__ rel_w, int H, int S, int hd) {
    __shared__ float sq[RP_S][RP_C + 1];
    __shared__ float sr[RP_S][RP_C + 1];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const long long bh = blockIdx.x, b = bh / H;
    const int h = (int)(bh % H), p = blockIdx.y;
    const bool by_col = blockIdx.z == 1;
    const long long T = (long long)S * S;
    // Query i of this block is token i·S + p of a column, or p·S + i of a row.
    const long long t_step = by_col ? S : 1, t0 = by_col ? p : (long long)p * S;
    const float* qb = q + b * T * q_row + (long long)h * hd;
    const float* table = (by_col ? rw : rh) + (long long)p * S * hd;

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int c0 = 0; c0 < hd; c0 += RP_C) {
        for (int e = tid; e < RP_S * RP_C; e += RP_THREADS) {
            const int i = e / RP_C, c = e % RP_C;
            const bool in = i < S && c0 + c < hd;
            sq[i][c] = in ? qb[(t0 + i * t_step) * q_row + c0 + c] : 0.0f;
            sr[i][c] = in ? table[(long long)i * hd + c0 + c] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int c = 0; c < RP_C; ++c) {
            float a[4], r[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = sq[ty + 16 * i][c];
#pragma unroll
            for (int j = 0; j < 4; ++j) r[j] = sr[tx + 16 * j][c];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * r[j];
        }
        __syncthreads();
    }
    float* out = (by_col ? rel_w : rel_h) + bh * T * S;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int qi = ty + 16 * i;
        if (qi >= S) continue;
        float* row = out + (t0 + qi * t_step) * S;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int kj = tx + 16 * j;
            if (kj < S) row[kj] = acc[i][j];
        }
    }
}
