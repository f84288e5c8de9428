// Shared by the attention kernels (attention.cu, attention_mma.cu).
#pragma once

// Element strides of q, k/v and out: batch, head, row. Must match `Strides` in
// src/backend/cuda/attention.rs.
struct AttnStrides {
    long long q_b, q_h, q_r, kv_b, kv_h, kv_r, o_b, o_h, o_r;
};

// Rescale factor of a running sum when its max moves from m_old to m_new (1 when it stays,
// including both still -inf; 0 when leaving -inf).
__device__ __forceinline__ float rescale(float m_old, float m_new) {
    return m_old == m_new ? 1.0f : expf(m_old - m_new);
}
