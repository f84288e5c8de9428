// Shared helpers for every kernel file (build.rs inlines this header into each file's embedded
// source, so NVRTC needs no header list). No CUDA headers are included: half-precision loads are
// done with PTX and bit shifts, so the run-time compile needs nothing but NVRTC itself. Built as
// host C++ with VISWORD_CUDA_EMU (tests/cuda_emu/), the PTX below is replaced by the emulator's
// conversions and mma.
#pragma once

typedef unsigned long long u64;
typedef unsigned short u16;

// math.h's INFINITY is not defined under NVRTC without headers.
#define NEG_INF (__int_as_float(0xff800000))
#define POS_INF (__int_as_float(0x7f800000))

// Element loops: every 1-D kernel walks its range with a grid-stride loop, so a grid capped
// at the launch limit still covers tensors of any size.
#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n); i += (u64)blockDim.x * gridDim.x)

// Row kernels launch one block per row on a 2-D grid (x ≤ 65535); this is the row index.
__device__ __forceinline__ u64 block_row() { return (u64)blockIdx.y * gridDim.x + blockIdx.x; }

__device__ __forceinline__ float f16_to_f32(u16 h) {
#ifdef VISWORD_CUDA_EMU
    return emu::half_bits_to_f32(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((unsigned)h) << 16); }
// Round to nearest even (sm_80+), NaN stays NaN.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
#ifdef VISWORD_CUDA_EMU
    return emu::f32_to_bf16_bits(f);
#else
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

// Round to nearest even f16 (the bits).
__device__ __forceinline__ u16 f32_to_f16(float f) {
#ifdef VISWORD_CUDA_EMU
    return emu::f32_to_half_bits(f);
#else
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}
// Two floats as f16x2: lo in the low half (the lower k or column index of an mma fragment).
__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi) {
#ifdef VISWORD_CUDA_EMU
    return (unsigned)emu::f32_to_half_bits(lo) | (unsigned)emu::f32_to_half_bits(hi) << 16;
#else
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// Tensor cores (sm_80+): D = A·B + D for a 16×16 f16 A (row-major) and a 16×8 f16 B (stored
// column by column, k contiguous), f32 accumulators. Fragments (g = lane / 4, t = lane % 4; each
// register two f16 at consecutive k, the lower k in the low half):
//   a0 = A[g][2t..], a1 = A[g + 8][2t..], a2 = A[g][2t + 8..], a3 = A[g + 8][2t + 8..]
//   b0 = B[2t..][g], b1 = B[2t + 8..][g]
//   c[0], c[1] = D[g][2t], D[g][2t + 1]; c[2], c[3] = D[g + 8][2t], D[g + 8][2t + 1]
__device__ __forceinline__ void mma_f16_16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
#ifdef VISWORD_CUDA_EMU
    emu::mma_16816(c, a0, a1, a2, a3, b0, b1, emu::half_bits_to_f32);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Two floats as bf16x2 (round to nearest even): lo in the low half, as pack_f16x2.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
#ifdef VISWORD_CUDA_EMU
    return (unsigned)emu::f32_to_bf16_bits(lo) | (unsigned)emu::f32_to_bf16_bits(hi) << 16;
#else
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// The same m16n8k16 tile on bf16 operands (fragments as in mma_f16_16816), f32 accumulators.
__device__ __forceinline__ void mma_bf16_16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
#ifdef VISWORD_CUDA_EMU
    emu::mma_16816(c, a0, a1, a2, a3, b0, b1, emu::bf16_bits_to_f32);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// TF32 (sm_80+): an f32 rounded to the tensor cores' 10-bit mantissa, nearest with ties away
// from zero (cvt.rna), as the bits an mma_tf32_1688 operand register takes.
__device__ __forceinline__ unsigned f32_to_tf32(float f) {
#ifdef VISWORD_CUDA_EMU
    return emu::f32_to_tf32_bits(f);
#else
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
    return r;
#endif
}

// D = A·B + D for a 16×8 TF32 A (row-major) and an 8×8 TF32 B (stored column by column), f32
// accumulators. Fragments (g = lane / 4, t = lane % 4; one element per register):
//   a0 = A[g][t], a1 = A[g + 8][t], a2 = A[g][t + 4], a3 = A[g + 8][t + 4]
//   b0 = B[t][g], b1 = B[t + 4][g]
//   c as in mma_f16_16816.
__device__ __forceinline__ void mma_tf32_1688(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
#ifdef VISWORD_CUDA_EMU
    emu::mma_1688_tf32(c, a0, a1, a2, a3, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// A captured decode step's device-side arguments (src/backend/cuda/graph.rs): int32 slots of the
// buffer that kernels read in place of their host token id, position or key count when given one.
#define STEP_ID 0
#define STEP_POS 1
#define STEP_KV_LEN 2

// Weight dtypes, as the Rust side passes them.
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2

// Activation codes, as the Rust side passes them (crate::backend::Activation).
#define ACT_NONE 0
#define ACT_GELU 1
#define ACT_GELU_TANH 2
#define ACT_QUICK_GELU 3
#define ACT_RELU 4
#define ACT_SILU 5

// Element i of a buffer of dtype `dt` (DT_F32 / DT_F16 / DT_BF16), as f32.
__device__ __forceinline__ float load_any(const void* p, int dt, u64 i) {
    if (dt == DT_F16) return f16_to_f32(((const u16*)p)[i]);
    if (dt == DT_BF16) return bf16_to_f32(((const u16*)p)[i]);
    return ((const float*)p)[i];
}

// Same formulas as the CPU backend's act_scalar (exact GELU uses erf).
__device__ __forceinline__ float act_apply(float x, int act) {
    switch (act) {
        case ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        case ACT_GELU_TANH: {
            const float c = 0.79788456080286536f;  // sqrt(2/pi)
            return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
        }
        case ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
        case ACT_RELU: return fmaxf(x, 0.0f);
        case ACT_SILU: return x / (1.0f + expf(-x));
        default: return x;
    }
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum / max; every thread gets the result. blockDim.x must be a multiple of 32
// (≤ 1024); `scratch` is 32 floats of shared memory, reusable right after the call returns.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : NEG_INF;
    return warp_max(v);
}
