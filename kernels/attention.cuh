// Shared by the attention kernels (attention.cu, attention_mma.cu).
#pragma once

// Element strides of q, k/v and out: batch, head, row. Must match `Strides` in
// src/backend/cuda/attention.rs.
struct AttnStrides {
    long long q_b, q_h, q_r, kv_b, kv_h, kv_r, o_b, o_h, o_r;
};

// The forward kernels' argument list (attention_fwd_* and attention_fwd_mma_* take the same),
// with K and V of element type KV (float, or u16 holding bf16: a bf16 KV cache, the `_bf16kv`
// entry points), and its names for forwarding.
#define FWD_PARAMS_KV(KV)                                                                              \
    const float *__restrict__ q, const KV *__restrict__ k, const KV *__restrict__ v,                  \
        const float *__restrict__ rel_h, const float *__restrict__ rel_w, float *__restrict__ out,         \
        AttnStrides st, int H, int Hkv, int nq, int nk, int d, float scale, int causal, int k_h, int k_w
#define FWD_PARAMS FWD_PARAMS_KV(float)
#define FWD_ARGS q, k, v, rel_h, rel_w, out, st, H, Hkv, nq, nk, d, scale, causal, k_h, k_w

// Rescale factor of a running sum when its max moves from m_old to m_new (1 when it stays,
// including both still -inf; 0 when leaving -inf).
__device__ __forceinline__ float rescale(float m_old, float m_new) {
    return m_old == m_new ? 1.0f : expf(m_old - m_new);
}

// Element i of a K or V row as f32: an f32 operand as it is, a bf16 one (the bf16 KV cache)
// widened exactly, so a kernel on bf16 K/V computes what its f32 twin does on the same values.
__device__ __forceinline__ float kv_load(const float* __restrict__ p, long long i) { return p[i]; }
__device__ __forceinline__ float kv_load(const u16* __restrict__ p, long long i) { return bf16_to_f32(p[i]); }
