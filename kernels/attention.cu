// Scaled dot-product attention in f32 with an online softmax: the score matrix never exists in
// memory, only one tile of it per block (flash attention) or one score per warp step (decode).
//
// Contract (the CPU backend's `attention` is the spec; src/backend/cuda/attention.rs checks it):
//   q   [B, H, Nq, d]        f32, rows of d contiguous, placed by AttnStrides (below)
//   k,v [B, Hkv, nk_all, d]  f32 likewise; H a multiple of Hkv (GQA: head h reads kv head
//                            h / (H / Hkv)); only the first `nk` keys are valid (nk <= nk_all,
//                            a KV cache larger than the sequence). The `_bf16kv` entry points
//                            of the forward and decode kernels take k and v as bf16 (a bf16 KV
//                            cache), widened exactly as they are read (kv_load): the same
//                            arithmetic as the f32 kernel on those values, at half the bytes.
//   out [B, H, Nq, d]
//   Element (b, h, i, c) of q sits at q[b·q_b + h·q_h + i·q_r + c] (k and v share kv_*, out has
//   o_*): head-major tensors ([B, H, N, d]) and token-major ones ([B, N, H·d], no permutes) are
//   both just strides, and a batch stride of 0 shares one q or k/v among every batch entry.
//   score(i, j) = (q_i · k_j) · scale + bias(i, j), softmax over the valid keys j of row i
//   causal: query i sits at absolute position nk − Nq + i and sees keys j <= that position
//   bias (k_w > 0): SAM's decomposed relative position, key j at grid cell (j / k_w, j % k_w) of
//     a k_h × k_w grid (k_h·k_w = nk): bias = rel_h[b, h, i, j / k_w] + rel_w[b, h, i, j % k_w],
//     rel_h [B, H, Nq, k_h], rel_w [B, H, Nq, k_w]. k_w = 0: no bias (rel_h/rel_w unused).
//   A row with no visible key (nk = 0) yields zeros, like the CPU.
//
// Entry points (one template per family; the wrapper picks the variant by head dim d):
//   attention_fwd_d{16,32,...,128}_f32  flash forward for Nq > 8 (prefill, ViT, SAM windows and
//       global layers). Any d <= DP is exact: columns d..DP are zero-filled in shared memory.
//       grid (B·H, ceil(Nq / 32)), block 128, static shared 4·(64·(DP + 4) + 32·36) bytes
//       (38.4 KB at DP = 128). Each block: 32 queries against K/V tiles of 32 keys. Thread
//       (tr = tid / 16, tc = tid % 16) owns query rows tr + 8i (i < 4), score columns tc + 16j
//       (j < 2) and output columns tc + 16j (j < DP / 16); the 16 threads of one row group are
//       a half warp, so row max / row sum are xor shuffles over lanes 1, 2, 4, 8.
//       Causal blocks stop at the key of their last query (early exit).
//   attention_fwd_q8_d{16,32,64}_f32  the same kernel with blocks of 8 queries (one row per
//       thread, tr = the row): a few queries over many heads (SAM's token-to-image attention, 7
//       tokens per prompt), where a 32-query tile would be 78% padding. grid (B·H, ceil(Nq / 8)).
//   attention_decode_d{32,64,96,128}_f32  Nq <= 8 (decode over the KV cache): flash-decoding.
//       grid (B·H·Nq, nsplit), block 128 = 4 warps; block (row, s) covers keys
//       [s·chunk, (s + 1)·chunk) of row's visible range; each warp takes 4 keys per step (lanes
//       split d, so loads are coalesced 128-byte rows), keeps its own running max / sum /
//       output, and the 4 warps merge in shared memory. nsplit = 1 writes `out` directly;
//       otherwise it writes the unnormalised partial output (part_o [rows, nsplit, d]) with its
//       max and sum (part_ml [rows, nsplit, 2]) and
//   attention_combine_f32 merges the splits in a fixed order (deterministic, no atomics):
//       grid (B·H·Nq), block min(128, d rounded up to 32) threads striding over d.
//   attention_fewkeys_d{16,32}_f32  at most 64 keys, d <= 32, no bias (SAM's image-to-token
//       attention: 4096 queries per head over 7 tokens, where a 32-key tile would be mostly
//       padding): grid (B·H, ceil(Nq / 128)), block 128, one query row per thread with the
//       head's K and V in static shared memory (2·64·DP floats) and the block's q rows and
//       outputs staged there too (128·(DP + 1) floats), so global accesses are row-contiguous.
//
// Napkin math: forward does 4·Nq·nk·d flops per head and reads K/V once per 32 queries
// (8·nk·d / 32 bytes per query); it is bound by the FMA pipe and shared-memory loads (per 4
// head-dim steps of the score tile: 6 float4 loads for 32 FMAs; per 4 keys of the P·V product:
// 4 float4 + 4·DP/16 scalar loads for 16·DP/16 FMAs). Decode reads 8·nk·d bytes per head (4·nk·d from a bf16 cache)
// (K and V once) for 4·nk·d flops: bandwidth-bound, which the splits exist to saturate.
// Measured on an H100 SXM (median of 20): SAM-H global layer (16 heads, 4096², d 80, bias)
// 5.1 ms = 16.8 TFLOP/s, about a quarter of the FP32 FMA peak (PyTorch's f32 SDPA: 3.4 ms);
// Llama-7B decode over 4096 keys (32 heads, d 128) 67 µs = 2.0 TB/s of K/V.
// The tensor-core forward for half-precision models (f16 operands) is attention_mma.cu.

#include "common.cuh"
#include "attention.cuh"

namespace {

constexpr int FWD_BQ = 32;                   // queries per block (the q8 variants: 8)
constexpr int FWD_BK = 32;                   // keys per shared-memory tile
constexpr int FWD_THREADS = 128;
constexpr int FWD_TC = 16;                   // threads across columns
constexpr int FWD_TR = FWD_THREADS / FWD_TC; // 8 threads across rows
constexpr int FWD_SPT = FWD_BK / FWD_TC;     // 2 score columns per thread
constexpr int FWD_PSTRIDE = FWD_BK + 4;      // 16-byte aligned rows, float4 reads conflict-free

constexpr int DEC_THREADS = 128;
constexpr int DEC_WARPS = DEC_THREADS / 32;
constexpr int DEC_KU = 4; // keys per warp step: 4 K rows and 4 V rows in flight per lane

// Max over the 16 lanes of a half warp (the threads that share a query row).
__device__ __forceinline__ float half_warp_max(float x) {
#pragma unroll
    for (int off = 1; off < FWD_TC; off <<= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

__device__ __forceinline__ float half_warp_sum(float x) {
#pragma unroll
    for (int off = 1; off < FWD_TC; off <<= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

template <int DP, int BQ, typename KV>
__device__ __forceinline__ void attention_fwd(const float* __restrict__ q, const KV* __restrict__ k,
                                              const KV* __restrict__ v, const float* __restrict__ rel_h,
                                              const float* __restrict__ rel_w, float* __restrict__ out,
                                              AttnStrides st, int H, int Hkv, int nq, int nk, int d,
                                              float scale, int causal, int k_h, int k_w) {
    static_assert(DP % FWD_TC == 0 && DP <= 128, "DP must be a multiple of 16, at most 128");
    static_assert(BQ % FWD_TR == 0 && BQ * DP % FWD_THREADS == 0, "BQ must be a multiple of 8");
    constexpr int RPT = BQ / FWD_TR; // query rows per thread
    // Row stride DP + 4: rows stay 16-byte aligned for float4 reads, and (DP + 4) / 4 is odd, so
    // the 8 rows one quarter warp reads at once land in distinct bank groups.
    constexpr int STRIDE = DP + 4;
    constexpr int OPT = DP / FWD_TC; // output columns per thread
    __shared__ __align__(16) float sQ[BQ * STRIDE];
    __shared__ __align__(16) float sKV[FWD_BK * STRIDE];
    __shared__ __align__(16) float sP[BQ * FWD_PSTRIDE];

    const int tid = threadIdx.x;
    const int tr = tid / FWD_TC, tc = tid % FWD_TC;
    const long long bh = blockIdx.x; // b·H + h
    const long long b = bh / H;
    const int h = (int)(bh % H), kvh = h / (H / Hkv);
    const int q0 = blockIdx.y * BQ;
    const float* qh = q + b * st.q_b + h * st.q_h + q0 * st.q_r;
    const KV* kh = k + b * st.kv_b + kvh * st.kv_h;
    const KV* vh = v + b * st.kv_b + kvh * st.kv_h;
    const int bq = min(BQ, nq - q0);
    // Keys any query of this block sees: causally, up to the last query's position.
    const int kend = causal ? nk - nq + q0 + bq : nk;

#pragma unroll 4
    for (int t = 0; t < BQ * DP / FWD_THREADS; ++t) {
        const int idx = tid + t * FWD_THREADS, r = idx / DP, c = idx % DP;
        sQ[r * STRIDE + c] = (r < bq && c < d) ? qh[r * st.q_r + c] : 0.0f;
    }

    float m[RPT], l[RPT], acc[RPT][OPT];
#pragma unroll
    for (int i = 0; i < RPT; ++i) {
        m[i] = NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < OPT; ++j) acc[i][j] = 0.0f;
    }

    for (int k0 = 0; k0 < kend; k0 += FWD_BK) {
#pragma unroll 4 // fully unrolled, the 32 loads of a tile pin 32+ registers
        for (int t = 0; t < FWD_BK * DP / FWD_THREADS; ++t) {
            const int idx = tid + t * FWD_THREADS, r = idx / DP, c = idx % DP;
            sKV[r * STRIDE + c] = (k0 + r < kend && c < d) ? kv_load(kh, (k0 + r) * st.kv_r + c) : 0.0f;
        }
        __syncthreads(); // K tile (and, on the first pass, the Q tile) in place

        float s[RPT][FWD_SPT];
#pragma unroll
        for (int i = 0; i < RPT; ++i)
#pragma unroll
            for (int j = 0; j < FWD_SPT; ++j) s[i][j] = 0.0f;
#pragma unroll 2
        for (int c = 0; c < DP; c += 4) {
            float4 qv[RPT], kv[FWD_SPT];
#pragma unroll
            for (int i = 0; i < RPT; ++i) qv[i] = *reinterpret_cast<const float4*>(&sQ[(tr + FWD_TR * i) * STRIDE + c]);
#pragma unroll
            for (int j = 0; j < FWD_SPT; ++j) kv[j] = *reinterpret_cast<const float4*>(&sKV[(tc + FWD_TC * j) * STRIDE + c]);
#pragma unroll
            for (int i = 0; i < RPT; ++i)
#pragma unroll
                for (int j = 0; j < FWD_SPT; ++j) {
                    s[i][j] = fmaf(qv[i].x, kv[j].x, s[i][j]);
                    s[i][j] = fmaf(qv[i].y, kv[j].y, s[i][j]);
                    s[i][j] = fmaf(qv[i].z, kv[j].z, s[i][j]);
                    s[i][j] = fmaf(qv[i].w, kv[j].w, s[i][j]);
                }
        }

        // Scale, bias, mask, then the online softmax update of each row this thread shares.
#pragma unroll
        for (int i = 0; i < RPT; ++i) {
            const int r = tr + FWD_TR * i;
            const int qi = q0 + r;
            const int last = causal ? nk - nq + qi : kend - 1; // last key this row sees
            float mx = NEG_INF;
#pragma unroll
            for (int j = 0; j < FWD_SPT; ++j) {
                const int key = k0 + tc + FWD_TC * j;
                float x = NEG_INF;
                if (r < bq && key < kend && key <= last) {
                    x = s[i][j] * scale;
                    if (k_w > 0) {
                        const long long qrow = bh * nq + qi;
                        x += rel_h[qrow * k_h + key / k_w] + rel_w[qrow * k_w + key % k_w];
                    }
                }
                s[i][j] = x;
                mx = fmaxf(mx, x);
            }
            const float m_new = fmaxf(m[i], half_warp_max(mx));
            const float alpha = rescale(m[i], m_new);
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < FWD_SPT; ++j) {
                const float p = s[i][j] == NEG_INF ? 0.0f : expf(s[i][j] - m_new);
                sP[r * FWD_PSTRIDE + tc + FWD_TC * j] = p;
                sum += p;
            }
            l[i] = l[i] * alpha + half_warp_sum(sum);
            m[i] = m_new;
#pragma unroll
            for (int j = 0; j < OPT; ++j) acc[i][j] *= alpha;
        }
        __syncthreads(); // every score read from the K tile; P complete

#pragma unroll 4 // fully unrolled, the 32 loads of a tile pin 32+ registers
        for (int t = 0; t < FWD_BK * DP / FWD_THREADS; ++t) {
            const int idx = tid + t * FWD_THREADS, r = idx / DP, c = idx % DP;
            sKV[r * STRIDE + c] = (k0 + r < kend && c < d) ? kv_load(vh, (k0 + r) * st.kv_r + c) : 0.0f;
        }
        __syncthreads(); // V tile in place

#pragma unroll 2
        for (int jj = 0; jj < FWD_BK; jj += 4) {
            float4 pv[RPT];
#pragma unroll
            for (int i = 0; i < RPT; ++i) pv[i] = *reinterpret_cast<const float4*>(&sP[(tr + FWD_TR * i) * FWD_PSTRIDE + jj]);
#pragma unroll
            for (int j = 0; j < OPT; ++j) {
                const int c = tc + FWD_TC * j;
                const float v0 = sKV[(jj + 0) * STRIDE + c], v1 = sKV[(jj + 1) * STRIDE + c];
                const float v2 = sKV[(jj + 2) * STRIDE + c], v3 = sKV[(jj + 3) * STRIDE + c];
#pragma unroll
                for (int i = 0; i < RPT; ++i) {
                    acc[i][j] = fmaf(pv[i].x, v0, acc[i][j]);
                    acc[i][j] = fmaf(pv[i].y, v1, acc[i][j]);
                    acc[i][j] = fmaf(pv[i].z, v2, acc[i][j]);
                    acc[i][j] = fmaf(pv[i].w, v3, acc[i][j]);
                }
            }
        }
        __syncthreads(); // P and the V tile consumed before the next tile overwrites them
    }

#pragma unroll
    for (int i = 0; i < RPT; ++i) {
        const int r = tr + FWD_TR * i;
        if (r >= bq) continue;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        float* orow = out + b * st.o_b + h * st.o_h + (q0 + r) * st.o_r;
#pragma unroll
        for (int j = 0; j < OPT; ++j) {
            const int c = tc + FWD_TC * j;
            if (c < d) orow[c] = acc[i][j] * inv;
        }
    }
}

template <int DP, typename KV>
__device__ __forceinline__ void attention_decode(const float* __restrict__ q, const KV* __restrict__ k,
                                                 const KV* __restrict__ v, const float* __restrict__ rel_h,
                                                 const float* __restrict__ rel_w, float* __restrict__ out,
                                                 AttnStrides st, int H, int Hkv, int nq, int nk, int d,
                                                 float scale, int causal, int k_h, int k_w, float* __restrict__ part_o,
                                                 float* __restrict__ part_ml, int chunk, const int* __restrict__ step) {
    static_assert(DP % 32 == 0 && DP <= 128, "DP must be a multiple of 32, at most 128");
    // A captured decode step reads its key count on the device and spreads the keys over its
    // splits (as many as the cache's capacity gets, so their count is fixed) in whole steps of
    // DEC_WARPS·DEC_KU keys; splits past the keys write empty partials (max −inf, sum 0).
    if (step) {
        nk = step[STEP_KV_LEN];
        constexpr int per_step = DEC_WARPS * DEC_KU;
        chunk = ((nk + gridDim.y - 1) / gridDim.y + per_step - 1) / per_step * per_step;
    }
    constexpr int CPL = DP / 32; // head-dim columns per lane: lane + 32·i
    __shared__ float sM[DEC_WARPS], sL[DEC_WARPS];
    __shared__ float sO[DEC_WARPS * DP];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long row = blockIdx.x; // (b·H + h)·Nq + i
    const int split = blockIdx.y, nsplit = gridDim.y;
    const long long bh = row / nq, b = bh / H;
    const int qi = (int)(row % nq), h = (int)(bh % H), kvh = h / (H / Hkv);
    const float* qrow = q + b * st.q_b + h * st.q_h + qi * st.q_r;
    const KV* kh = k + b * st.kv_b + kvh * st.kv_h;
    const KV* vh = v + b * st.kv_b + kvh * st.kv_h;
    const int kend = causal ? nk - nq + qi + 1 : nk;
    const int start = split * chunk;
    const int stop = min(start + chunk, kend);

    float qr[CPL], o[CPL];
#pragma unroll
    for (int i = 0; i < CPL; ++i) {
        const int c = lane + 32 * i;
        qr[i] = c < d ? qrow[c] : 0.0f;
        o[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;

    for (int key0 = start + warp * DEC_KU; key0 < stop; key0 += DEC_WARPS * DEC_KU) {
        // Issue all K and V loads of the step before the shuffles, so they overlap.
        float s[DEC_KU], vv[DEC_KU][CPL];
#pragma unroll
        for (int u = 0; u < DEC_KU; ++u) {
            const int key = key0 + u;
            s[u] = 0.0f;
#pragma unroll
            for (int i = 0; i < CPL; ++i) {
                const int c = lane + 32 * i;
                const bool ok = key < stop && c < d;
                s[u] = ok ? fmaf(qr[i], kv_load(kh, (long long)key * st.kv_r + c), s[u]) : s[u];
                vv[u][i] = ok ? kv_load(vh, (long long)key * st.kv_r + c) : 0.0f;
            }
        }
        // Butterfly sums: every lane ends with the same bits (each step adds the same pair).
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
#pragma unroll
            for (int u = 0; u < DEC_KU; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], off);

        float mx = NEG_INF;
#pragma unroll
        for (int u = 0; u < DEC_KU; ++u) {
            const int key = key0 + u;
            float x = NEG_INF;
            if (key < stop) {
                x = s[u] * scale;
                if (k_w > 0) x += rel_h[row * k_h + key / k_w] + rel_w[row * k_w + key % k_w];
            }
            s[u] = x;
            mx = fmaxf(mx, x);
        }
        const float m_new = fmaxf(m, mx);
        const float alpha = rescale(m, m_new);
        float sum = 0.0f;
#pragma unroll
        for (int u = 0; u < DEC_KU; ++u) {
            s[u] = s[u] == NEG_INF ? 0.0f : expf(s[u] - m_new);
            sum += s[u];
        }
        l = l * alpha + sum;
        m = m_new;
#pragma unroll
        for (int i = 0; i < CPL; ++i) {
            o[i] *= alpha;
#pragma unroll
            for (int u = 0; u < DEC_KU; ++u) o[i] = fmaf(s[u], vv[u][i], o[i]);
        }
    }

    if (lane == 0) {
        sM[warp] = m;
        sL[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < CPL; ++i) sO[warp * DP + lane + 32 * i] = o[i];
    __syncthreads();

    float bm = NEG_INF;
#pragma unroll
    for (int w = 0; w < DEC_WARPS; ++w) bm = fmaxf(bm, sM[w]);
    for (int c = threadIdx.x; c < d; c += DEC_THREADS) {
        float bl = 0.0f, bo = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) {
            const float wt = sM[w] == NEG_INF ? 0.0f : expf(sM[w] - bm);
            bl += sL[w] * wt;
            bo += sO[w * DP + c] * wt;
        }
        if (nsplit == 1) {
            out[b * st.o_b + h * st.o_h + qi * st.o_r + c] = bl > 0.0f ? bo / bl : 0.0f;
        } else {
            const long long slot = row * nsplit + split;
            part_o[slot * d + c] = bo;
            if (c == 0) {
                part_ml[slot * 2] = bm;
                part_ml[slot * 2 + 1] = bl;
            }
        }
    }
}

constexpr int FEW_THREADS = 128; // query rows per block of attention_fewkeys
constexpr int FEW_MAX_KEYS = 64;

// A handful of keys (SAM's image-to-token attention: 4096 image queries per head over 7 prompt
// tokens): one thread per query row, the head's K and V in shared memory, the scores in two
// passes over them (max, then exp-sum and P·V). No bias. The block's 128 query rows are
// loaded and its outputs stored through shared memory, so global accesses run along each
// row's d contiguous floats (one thread per row would touch 32 rows per instruction).
template <int DP>
__device__ __forceinline__ void attention_fewkeys(const float* __restrict__ q, const float* __restrict__ k,
                                                  const float* __restrict__ v, float* __restrict__ out, AttnStrides st,
                                                  int H, int Hkv, int nq, int nk, int d, float scale, int causal) {
    constexpr int QS = DP + 1; // odd row stride: each thread's own row is conflict-free
    __shared__ float sK[FEW_MAX_KEYS * DP];
    __shared__ float sV[FEW_MAX_KEYS * DP];
    __shared__ float sQ[FEW_THREADS * QS];
    const long long bh = blockIdx.x, b = bh / H;
    const int h = (int)(bh % H), kvh = h / (H / Hkv);
    const float* kh = k + b * st.kv_b + kvh * st.kv_h;
    const float* vh = v + b * st.kv_b + kvh * st.kv_h;
    const int q0 = blockIdx.y * FEW_THREADS;
    const int rows = min(FEW_THREADS, nq - q0);
    const float* qh = q + b * st.q_b + h * st.q_h + q0 * st.q_r;
    float* oh = out + b * st.o_b + h * st.o_h + q0 * st.o_r;
    // Columns d..DP are zero: the score loop runs over all DP (shared memory holds whatever
    // the last kernel left, and 0 · NaN is NaN).
    for (int idx = threadIdx.x; idx < nk * DP; idx += FEW_THREADS) {
        const int j = idx / DP, c = idx % DP;
        sK[idx] = c < d ? kh[j * st.kv_r + c] : 0.0f;
        sV[idx] = c < d ? vh[j * st.kv_r + c] : 0.0f;
    }
    for (int idx = threadIdx.x; idx < rows * d; idx += FEW_THREADS) {
        const int r = idx / d, c = idx % d;
        sQ[r * QS + c] = qh[r * st.q_r + c];
    }
    __syncthreads();
    const int r = threadIdx.x;
    if (r < rows) {
        float qr[DP], acc[DP];
#pragma unroll
        for (int c = 0; c < DP; ++c) {
            qr[c] = c < d ? sQ[r * QS + c] : 0.0f;
            acc[c] = 0.0f;
        }
        const int kend = causal ? nk - nq + q0 + r + 1 : nk;
        float m = NEG_INF;
        for (int j = 0; j < kend; ++j) {
            float sc = 0.0f;
#pragma unroll
            for (int c = 0; c < DP; ++c) sc = fmaf(qr[c], sK[j * DP + c], sc);
            m = fmaxf(m, sc * scale);
        }
        float l = 0.0f;
        for (int j = 0; j < kend; ++j) {
            float sc = 0.0f;
#pragma unroll
            for (int c = 0; c < DP; ++c) sc = fmaf(qr[c], sK[j * DP + c], sc);
            const float p = expf(sc * scale - m);
            l += p;
#pragma unroll
            for (int c = 0; c < DP; ++c) acc[c] = fmaf(p, sV[j * DP + c], acc[c]);
        }
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        // Each thread overwrites only its own row of sQ, which only it has read.
#pragma unroll
        for (int c = 0; c < DP; ++c)
            if (c < d) sQ[r * QS + c] = acc[c] * inv;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < rows * d; idx += FEW_THREADS) {
        const int rr = idx / d, c = idx % d;
        oh[rr * st.o_r + c] = sQ[rr * QS + c];
    }
}

} // namespace

// Entry points, spelled out so each name is greppable; the argument lists are shared (FWD_PARAMS
// in attention.cuh).

extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d16_f32(FWD_PARAMS) { attention_fwd<16, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d32_f32(FWD_PARAMS) { attention_fwd<32, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d48_f32(FWD_PARAMS) { attention_fwd<48, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d64_f32(FWD_PARAMS) { attention_fwd<64, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d80_f32(FWD_PARAMS) { attention_fwd<80, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d96_f32(FWD_PARAMS) { attention_fwd<96, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d112_f32(FWD_PARAMS) { attention_fwd<112, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d128_f32(FWD_PARAMS) { attention_fwd<128, FWD_BQ>(FWD_ARGS); }
// The same on a bf16 KV cache (K and V u16 bf16 bits; q, bias and out f32).
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d16_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd<16, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d32_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd<32, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d48_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd<48, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d64_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd<64, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d80_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd<80, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d96_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd<96, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d112_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd<112, FWD_BQ>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_d128_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd<128, FWD_BQ>(FWD_ARGS); }
// A few queries (SAM's token-to-image attention: 7 prompt tokens over 4096 image keys per
// head): blocks of 8 queries, one row per thread, where a 32-query tile would be 78% padding.
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_q8_d16_f32(FWD_PARAMS) { attention_fwd<16, 8>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_q8_d32_f32(FWD_PARAMS) { attention_fwd<32, 8>(FWD_ARGS); }
extern "C" __launch_bounds__(FWD_THREADS) __global__ void attention_fwd_q8_d64_f32(FWD_PARAMS) { attention_fwd<64, 8>(FWD_ARGS); }

#define DEC_PARAMS_KV(KV) FWD_PARAMS_KV(KV), float *__restrict__ part_o, float *__restrict__ part_ml, int chunk, const int *__restrict__ step
#define DEC_PARAMS DEC_PARAMS_KV(float)
#define DEC_ARGS FWD_ARGS, part_o, part_ml, chunk, step

extern "C" __launch_bounds__(DEC_THREADS) __global__ void attention_decode_d32_f32(DEC_PARAMS) { attention_decode<32>(DEC_ARGS); }
extern "C" __launch_bounds__(DEC_THREADS) __global__ void attention_decode_d64_f32(DEC_PARAMS) { attention_decode<64>(DEC_ARGS); }
extern "C" __launch_bounds__(DEC_THREADS) __global__ void attention_decode_d96_f32(DEC_PARAMS) { attention_decode<96>(DEC_ARGS); }
extern "C" __launch_bounds__(DEC_THREADS) __global__ void attention_decode_d128_f32(DEC_PARAMS) { attention_decode<128>(DEC_ARGS); }
extern "C" __launch_bounds__(DEC_THREADS) __global__ void attention_decode_d32_bf16kv(DEC_PARAMS_KV(u16)) { attention_decode<32>(DEC_ARGS); }
extern "C" __launch_bounds__(DEC_THREADS) __global__ void attention_decode_d64_bf16kv(DEC_PARAMS_KV(u16)) { attention_decode<64>(DEC_ARGS); }
extern "C" __launch_bounds__(DEC_THREADS) __global__ void attention_decode_d96_bf16kv(DEC_PARAMS_KV(u16)) { attention_decode<96>(DEC_ARGS); }
extern "C" __launch_bounds__(DEC_THREADS) __global__ void attention_decode_d128_bf16kv(DEC_PARAMS_KV(u16)) { attention_decode<128>(DEC_ARGS); }

#define FEW_PARAMS                                                                                       \
    const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v, float *__restrict__ out, \
        AttnStrides st, int H, int Hkv, int nq, int nk, int d, float scale, int causal
#define FEW_ARGS q, k, v, out, st, H, Hkv, nq, nk, d, scale, causal

extern "C" __launch_bounds__(FEW_THREADS) __global__ void attention_fewkeys_d16_f32(FEW_PARAMS) { attention_fewkeys<16>(FEW_ARGS); }
extern "C" __launch_bounds__(FEW_THREADS) __global__ void attention_fewkeys_d32_f32(FEW_PARAMS) { attention_fewkeys<32>(FEW_ARGS); }

// Merge the nsplit partial results of each row (grid: one block per row; any block size) into
// out, placed by st.o_* as in the other kernels.
extern "C" __global__ void attention_combine_f32(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                                 float* __restrict__ out, AttnStrides st, int H, int nq, int d,
                                                 int nsplit) {
    const long long row = blockIdx.x;
    const long long bh = row / nq;
    float* orow = out + (bh / H) * st.o_b + (bh % H) * st.o_h + (row % nq) * st.o_r;
    const float* ml = part_ml + row * nsplit * 2;
    float bm = NEG_INF;
    for (int s = 0; s < nsplit; ++s) bm = fmaxf(bm, ml[2 * s]);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float bl = 0.0f, bo = 0.0f;
        for (int s = 0; s < nsplit; ++s) {
            const float wt = ml[2 * s] == NEG_INF ? 0.0f : expf(ml[2 * s] - bm);
            bl += ml[2 * s + 1] * wt;
            bo += part_o[(row * nsplit + s) * d + c] * wt;
        }
        orow[c] = bl > 0.0f ? bo / bl : 0.0f;
    }
}
