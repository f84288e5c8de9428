// Flash attention forward on the tensor cores (mma.sync m16n8k16, f16 operands, f32
// accumulators), for callers whose weights are half precision (AttnParams::low_precision): the
// same contract, strides, causal rule and SAM bias as attention_fwd_* in attention.cu (see its
// header), with q·scale, k and v rounded to f16 and the softmax weights P rounded to f16 before
// P·V. Scores, the running max / sum, the bias and the output stay in f32.
//
// Entry points: attention_fwd_mma_d{16,32,...,128}_f32 (DP = d rounded up to 16; columns d..DP
// are zero-filled), and `_bf16kv` twins reading K and V from a bf16 KV cache. Grid (B·H,
// ceil(Nq / 64)), block 128 = 4 warps; static shared memory 2·(64·(DP + 8) + DP·72) bytes
// (35.8 KB at DP = 128).
//
// A block owns 64 queries, warp w rows 16w..16w+15, as mma A fragments of q·scale held in
// registers for the whole pass (DP/16 k-steps × 4 registers). Per tile of 64 keys the block
// stages K as f16 rows [key][DP + 8] (the B operand of S = Q·Kᵀ: column n is key n, k
// contiguous) and V transposed [DP][64 + 8] (the B operand of O = P·V: column n is head-dim
// column n, keys contiguous); the padding makes every fragment load hit 32 distinct banks. Each
// warp computes its 16 × 64 scores (8 n-tiles), applies scale, bias and masks in f32, updates
// the running max / sum of its rows (a thread holds rows g and g + 8, columns 2t, 2t + 1 of
// each n-tile; the four lanes of a row meet through two xor shuffles), and feeds P straight
// from the score registers as the A fragments of P·V: the accumulator layout of n-tiles 2j and
// 2j + 1 is the A layout of k-step j, so P never touches shared memory.
//
// Napkin math (SAM-H global layer: 16 heads, 4096 queries and keys, d 80): 4·4096²·80·16 = 86
// GFLOP on the tensor cores; K and V are read once per 64 queries, 64 · 2.6 MB per head, mostly
// from L2. Staging converts and transposes in shared memory (V's f16 stores are 4-way bank
// conflicted); ldmatrix.trans would remove that.
#include "common.cuh"
#include "attention.cuh"

namespace {

constexpr int MMA_BQ = 64;      // queries per block: 16 per warp
constexpr int MMA_BK = 64;      // keys per tile
constexpr int MMA_THREADS = 128;
constexpr int MMA_VLD = MMA_BK + 8; // Vᵀ row stride in halves (36 words: 4g + t distinct)

template <int DP, typename KV>
__device__ __forceinline__ void attention_fwd_mma(const float* __restrict__ q, const KV* __restrict__ k,
                                                  const KV* __restrict__ v, const float* __restrict__ rel_h,
                                                  const float* __restrict__ rel_w, float* __restrict__ out,
                                                  AttnStrides st, int H, int Hkv, int nq, int nk, int d,
                                                  float scale, int causal, int k_h, int k_w) {
    static_assert(DP % 16 == 0 && DP <= 128, "DP must be a multiple of 16, at most 128");
    constexpr int KS = DP / 16;       // k-steps of Q·Kᵀ
    constexpr int NT = MMA_BK / 8;    // score n-tiles per warp
    constexpr int OT = DP / 8;        // output n-tiles per warp
    constexpr int KLD = DP + 8;       // K row stride in halves ((DP + 8) / 2 words: 32 distinct banks)
    __shared__ __align__(16) u16 sK[MMA_BK * KLD];
    __shared__ __align__(16) u16 sVt[DP * MMA_VLD];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const long long bh = blockIdx.x; // b·H + h
    const long long b = bh / H;
    const int h = (int)(bh % H), kvh = h / (H / Hkv);
    const int q0 = blockIdx.y * MMA_BQ;
    const int bq = min(MMA_BQ, nq - q0);
    const KV* kh = k + b * st.kv_b + kvh * st.kv_h;
    const KV* vh = v + b * st.kv_b + kvh * st.kv_h;
    // Keys any query of this block sees: causally, up to the last query's position.
    const int kend = causal ? nk - nq + q0 + bq : nk;

    // This thread's two query rows (rows past nq are zeros and never written).
    int qi[2], last[2];
    qi[0] = q0 + warp * 16 + g;
    qi[1] = qi[0] + 8;
#pragma unroll
    for (int r = 0; r < 2; ++r) last[r] = causal ? nk - nq + qi[r] : kend - 1;

    // A fragments of q·scale: rows g / g + 8, columns 16·kk + 2t (+1) and + 8 (+9).
    unsigned qa[KS][4];
    {
        const float* qrow[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) qrow[r] = q + b * st.q_b + h * st.q_h + (long long)min(qi[r], nq - 1) * st.q_r;
        auto ld = [&](int r, int c) -> float { return (qi[r] < nq && c < d) ? qrow[r][c] * scale : 0.0f; };
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            const int c = 16 * kk + 2 * t;
            qa[kk][0] = pack_f16x2(ld(0, c), ld(0, c + 1));
            qa[kk][1] = pack_f16x2(ld(1, c), ld(1, c + 1));
            qa[kk][2] = pack_f16x2(ld(0, c + 8), ld(0, c + 9));
            qa[kk][3] = pack_f16x2(ld(1, c + 8), ld(1, c + 9));
        }
    }

    float o[OT][4];
#pragma unroll
    for (int j = 0; j < OT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};

    for (int k0 = 0; k0 < kend; k0 += MMA_BK) {
        __syncthreads(); // the previous tile's K and V are no longer read
        // Stage the tile: pairs of columns (c, c + 1) of one key per thread step, coalesced
        // along the row; zeros past the visible keys and past d.
        for (int idx = tid; idx < MMA_BK * DP / 2; idx += MMA_THREADS) {
            const int r = idx / (DP / 2), c = 2 * (idx % (DP / 2));
            float k0v = 0.0f, k1v = 0.0f, v0 = 0.0f, v1 = 0.0f;
            if (k0 + r < kend) {
                const KV* kr = kh + (long long)(k0 + r) * st.kv_r;
                const KV* vr = vh + (long long)(k0 + r) * st.kv_r;
                if (c < d) {
                    k0v = kv_load(kr, c);
                    v0 = kv_load(vr, c);
                }
                if (c + 1 < d) {
                    k1v = kv_load(kr, c + 1);
                    v1 = kv_load(vr, c + 1);
                }
            }
            *reinterpret_cast<unsigned*>(sK + r * KLD + c) = pack_f16x2(k0v, k1v);
            sVt[c * MMA_VLD + r] = f32_to_f16(v0);
            sVt[(c + 1) * MMA_VLD + r] = f32_to_f16(v1);
        }
        __syncthreads();

        // S = (Q·scale)·Kᵀ for the warp's 16 rows and the tile's 64 keys.
        float s[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                const u16* kc = sK + (n * 8 + g) * KLD + 16 * kk + 2 * t;
                mma_f16_16816(s[n], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], *reinterpret_cast<const unsigned*>(kc),
                              *reinterpret_cast<const unsigned*>(kc + 8));
            }
        }

        // Bias and masks (element e of n-tile n: row e / 2, key k0 + 8n + 2t + e % 2), then the
        // online softmax update of both rows.
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int n = 0; n < NT; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1, key = k0 + 8 * n + 2 * t + (e & 1);
                float x = NEG_INF;
                if (qi[r] < nq && key < kend && key <= last[r]) {
                    x = s[n][e];
                    if (k_w > 0) {
                        const long long qrow = bh * nq + qi[r];
                        x += rel_h[qrow * k_h + key / k_w] + rel_w[qrow * k_w + key % k_w];
                    }
                }
                s[n][e] = x;
                mx[r] = fmaxf(mx[r], x);
            }
        }
        float alpha[2], m_new[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            m_new[r] = fmaxf(m[r], mx[r]);
            alpha[r] = rescale(m[r], m_new[r]);
        }
#pragma unroll
        for (int n = 0; n < NT; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const float p = s[n][e] == NEG_INF ? 0.0f : expf(s[n][e] - m_new[r]);
                s[n][e] = p;
                sum[r] += p;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
            sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
            l[r] = l[r] * alpha[r] + sum[r];
            m[r] = m_new[r];
        }
#pragma unroll
        for (int j = 0; j < OT; ++j) {
            o[j][0] *= alpha[0];
            o[j][1] *= alpha[0];
            o[j][2] *= alpha[1];
            o[j][3] *= alpha[1];
        }

        // O += P·V: k-step j covers keys 16j..16j + 15, whose A fragment is score n-tiles 2j
        // (keys 16j + 2t, + 1) and 2j + 1 (keys 16j + 8 + 2t, + 1).
#pragma unroll
        for (int j = 0; j < MMA_BK / 16; ++j) {
            const unsigned a0 = pack_f16x2(s[2 * j][0], s[2 * j][1]);
            const unsigned a1 = pack_f16x2(s[2 * j][2], s[2 * j][3]);
            const unsigned a2 = pack_f16x2(s[2 * j + 1][0], s[2 * j + 1][1]);
            const unsigned a3 = pack_f16x2(s[2 * j + 1][2], s[2 * j + 1][3]);
#pragma unroll
            for (int n = 0; n < OT; ++n) {
                const u16* vc = sVt + (n * 8 + g) * MMA_VLD + 16 * j + 2 * t;
                mma_f16_16816(o[n], a0, a1, a2, a3, *reinterpret_cast<const unsigned*>(vc), *reinterpret_cast<const unsigned*>(vc + 8));
            }
        }
    }

    // Rows g and g + 8, columns 8n + 2t and 8n + 2t + 1. No visible key: zeros, like the CPU.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (qi[r] >= nq) continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        float* orow = out + b * st.o_b + h * st.o_h + (long long)qi[r] * st.o_r;
#pragma unroll
        for (int n = 0; n < OT; ++n) {
            const int c = 8 * n + 2 * t;
            if (c < d) orow[c] = o[n][2 * r] * inv;
            if (c + 1 < d) orow[c + 1] = o[n][2 * r + 1] * inv;
        }
    }
}

} // namespace


extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d16_f32(FWD_PARAMS) { attention_fwd_mma<16>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d32_f32(FWD_PARAMS) { attention_fwd_mma<32>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d48_f32(FWD_PARAMS) { attention_fwd_mma<48>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d64_f32(FWD_PARAMS) { attention_fwd_mma<64>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d80_f32(FWD_PARAMS) { attention_fwd_mma<80>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d96_f32(FWD_PARAMS) { attention_fwd_mma<96>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d112_f32(FWD_PARAMS) { attention_fwd_mma<112>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d128_f32(FWD_PARAMS) { attention_fwd_mma<128>(FWD_ARGS); }
// The same on a bf16 KV cache (K and V u16 bf16 bits, widened and rounded to f16 as staged).
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d16_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd_mma<16>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d32_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd_mma<32>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d48_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd_mma<48>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d64_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd_mma<64>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d80_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd_mma<80>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d96_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd_mma<96>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d112_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd_mma<112>(FWD_ARGS); }
extern "C" __launch_bounds__(MMA_THREADS) __global__ void attention_fwd_mma_d128_bf16kv(FWD_PARAMS_KV(u16)) { attention_fwd_mma<128>(FWD_ARGS); }
