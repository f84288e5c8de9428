// Linear layers on bf16 weights in one launch: y [m, n] = act(x [m, k] · w [n, k]ᵀ + bias) +
// residual on the tensor cores (mma.sync m16n8k16, bf16 operands, f32 accumulators). x is f32
// and is rounded to bf16 (nearest even) as it is staged: the operand that matmul.rs's bf16 path
// makes in its rounding pass, so the result is that path's up to the order of the f32 sums. The
// bias (dtype code bdt; may be null), the activation and the residual (may be null) are applied
// as y is written, in the order of elementwise.cu's epilogue: y = act(x·wᵀ + bias) + residual.
// Where the bf16 path takes three launches (round x, cuBLAS GEMM, epilogue), this takes one: for
// the stack's many small linears (SAM's mask decoder runs ~30 a batch of prompts on a few
// hundred token rows), whose time those launches set, not their arithmetic.
//
// Entry point gemm_bf16_f32. Contract: k % 8 == 0 (k ≥ 8); x and w 16-byte aligned; m, n ≥ 1.
// The residual has res_rows rows of n: res_rows == m, or a divisor of m when one batch entry's
// rows repeat (row r adds residual row r % res_rows).
//
// Grid (ceil(m / 64), ceil(n / 64)): the m-tiles over one slice of the weight are neighbours
// in launch order and find it in L2. Block 128 threads = 4 warps, each a 32 × 32 tile of the
// block's 64 × 64 (2 m16 × 4 n8 mma tiles, 32 accumulators a thread). Static shared memory:
// 2 stages × (64 rows of x + 64 rows of w) × 40 halves = 20 KB.
//
// Per k-step of 32, every thread loads the next step's 4 float4 of x and 2 × 8 bf16 of w into
// registers before the tensor cores work on the current step, then writes them to the other
// shared-memory stage: one barrier a step. Rows are padded to 40 halves (20 words), so the
// fragment loads (word 20g + t of a row block) hit 32 distinct banks.
//
// Napkin math (the mask decoder's MLP, 448 × 256 → 2048): 235 M multiply-adds in 224 blocks of
// 8 k-steps; 0.5 MB of x and 1 MB of w, read from L2 after the first touch.
#include "common.cuh"

namespace {

constexpr int GB_M = 64, GB_N = 64, GB_K = 32, GB_THREADS = 128;
constexpr int GB_LD = GB_K + 8; // row stride in halves

// One thread's share of a k-step's operands, in flight in registers.
struct Staged {
    float4 a[4];
    uint4 b[2];
};

// Loads the k-step at k0: x rows m0.., w rows n0.. (zeros past m, n and k; k % 8 == 0, so a
// float4 of x or 8 bf16 of w is wholly inside or wholly past k).
__device__ __forceinline__ void gemm_load(Staged& s, const float* __restrict__ x, const u16* __restrict__ w, int m,
                                          int n, int k, int m0, int n0, int k0, int tid) {
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int idx = tid + i * GB_THREADS, row = m0 + (idx >> 3), kc = k0 + (idx & 7) * 4;
        s.a[i] = row < m && kc < k ? *reinterpret_cast<const float4*>(x + (u64)row * k + kc) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int idx = tid + i * GB_THREADS, row = n0 + (idx >> 2), kc = k0 + (idx & 3) * 8;
        s.b[i] = row < n && kc < k ? *reinterpret_cast<const uint4*>(w + (u64)row * k + kc) : make_uint4(0, 0, 0, 0);
    }
}

// Writes a thread's staged operands to one shared-memory stage, x rounded to bf16.
__device__ __forceinline__ void gemm_store(const Staged& s, u16* sa, u16* sb, int tid) {
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int idx = tid + i * GB_THREADS;
        const float4 v = s.a[i];
        *reinterpret_cast<uint2*>(sa + (idx >> 3) * GB_LD + (idx & 7) * 4) = make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w));
    }
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int idx = tid + i * GB_THREADS;
        *reinterpret_cast<uint4*>(sb + (idx >> 2) * GB_LD + (idx & 3) * 8) = s.b[i];
    }
}

} // namespace

extern "C" __global__ void __launch_bounds__(GB_THREADS)
    gemm_bf16_f32(const float* __restrict__ x, const u16* __restrict__ w, float* __restrict__ y, int m, int n, int k,
                  const void* bias, int bdt, int act, const float* __restrict__ residual, int res_rows) {
    __shared__ __align__(16) u16 sa[2][GB_M * GB_LD];
    __shared__ __align__(16) u16 sb[2][GB_N * GB_LD];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.x * GB_M, n0 = blockIdx.y * GB_N;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;

    float acc[2][4][4];
    #pragma unroll
    for (int mt = 0; mt < 2; ++mt)
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt)
            #pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;

    const int steps = (k + GB_K - 1) / GB_K;
    Staged s;
    gemm_load(s, x, w, m, n, k, m0, n0, 0, tid);
    gemm_store(s, sa[0], sb[0], tid);
    __syncthreads();
    #pragma unroll
    for (int step = 0; step < steps; ++step) {
        const int cur = step & 1;
        const bool more = step + 1 < steps;
        if (more) gemm_load(s, x, w, m, n, k, m0, n0, (step + 1) * GB_K, tid);
        const u16* A = sa[cur];
        const u16* B = sb[cur];
        #pragma unroll
        for (int kk = 0; kk < GB_K; kk += 16) {
            unsigned af[2][4], bfr[4][2];
            #pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const u16* p = A + (wm + 16 * mt + g) * GB_LD + kk + 2 * t;
                af[mt][0] = *reinterpret_cast<const unsigned*>(p);
                af[mt][1] = *reinterpret_cast<const unsigned*>(p + 8 * GB_LD);
                af[mt][2] = *reinterpret_cast<const unsigned*>(p + 8);
                af[mt][3] = *reinterpret_cast<const unsigned*>(p + 8 * GB_LD + 8);
            }
            #pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const u16* p = B + (wn + 8 * nt + g) * GB_LD + kk + 2 * t;
                bfr[nt][0] = *reinterpret_cast<const unsigned*>(p);
                bfr[nt][1] = *reinterpret_cast<const unsigned*>(p + 8);
            }
            #pragma unroll
            for (int mt = 0; mt < 2; ++mt)
                #pragma unroll
                for (int nt = 0; nt < 4; ++nt)
                    mma_bf16_16816(acc[mt][nt], af[mt][0], af[mt][1], af[mt][2], af[mt][3], bfr[nt][0], bfr[nt][1]);
        }
        // The other stage was last read in the previous step, before its closing barrier.
        if (more) gemm_store(s, sa[cur ^ 1], sb[cur ^ 1], tid);
        __syncthreads();
    }

    // A thread holds rows g and g + 8 of each m-tile, columns 2t and 2t + 1 of each n-tile.
    #pragma unroll
    for (int mt = 0; mt < 2; ++mt)
        #pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = m0 + wm + 16 * mt + g + 8 * h;
            if (row >= m) continue;
            const float* res = residual ? residual + (u64)(row % res_rows) * n : nullptr;
            float* out = y + (u64)row * n;
            #pragma unroll
            for (int nt = 0; nt < 4; ++nt)
                #pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int col = n0 + wn + 8 * nt + 2 * t + e;
                    if (col >= n) continue;
                    float v = acc[mt][nt][2 * h + e];
                    if (bias) v += load_any(bias, bdt, col);
                    v = act_apply(v, act);
                    if (res) v += res[col];
                    out[col] = v;
                }
        }
}
