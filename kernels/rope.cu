// Rotary position embedding, HF "rotate_half" layout (the CPU backend's rope):
//   x [rows = B·H·N, D] with h = D/2, token t = row mod N at table row pos_offset + t:
//   out[i]     = x[i]·cos[i] − x[i+h]·sin[i]
//   out[i + h] = x[i+h]·cos[i] + x[i]·sin[i]           (i < h; cos, sin [max_pos, h] f32)
//
// Launch: 1-D grid-stride loop over rows·h rotation pairs (each thread reads two x and one
// cos/sin pair, writes two outputs: 24 bytes per pair).
//
// rope_qk_write_kv_f32 (Backend::rope_qk_write_kv: a decode or prefill step's q, k and v in one
// launch where two ropes and two cache writes were four): q [B·H, n, D] roped into q_out; k and
// v [B·Hkv, n, D], k roped, both written into k_cache / v_cache [B·Hkv, max, D] at rows pos + t.
// One grid-stride loop over the q pairs, then the k pairs (which also move their two v values).
// With `step` set (a captured decode step), pos is step[STEP_POS], read on the device.
// rope_qk_write_kv_bf16kv: the same into bf16 caches (u16 bits), each value rotated in f32 and
// rounded to nearest even as it is stored.
#include "common.cuh"

// An element stored into an f32 row, or rounded into a bf16 one (the bf16 KV cache).
__device__ __forceinline__ void store_elem(float* p, u64 i, float x) { p[i] = x; }
__device__ __forceinline__ void store_elem(u16* p, u64 i, float x) { p[i] = f32_to_bf16(x); }

// Rotation pair i of row xr (D = 2h) with table values c, s, written to row yr.
template <typename T>
__device__ __forceinline__ void rotate_pair(const float* xr, T* yr, unsigned i, unsigned h, float c, float s) {
    const float a = xr[i], b = xr[i + h];
    store_elem(yr, i, a * c - b * s);
    store_elem(yr, i + h, b * c + a * s);
}

extern "C" __global__ void rope_f32(const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ cos_t,
                                    const float* __restrict__ sin_t, u64 pairs, unsigned n, unsigned h, u64 pos_offset) {
    GRID_STRIDE(k, pairs) {
        const u64 row = k / h;
        const unsigned i = (unsigned)(k % h);
        const u64 t = pos_offset + row % n;
        const float c = cos_t[t * h + i], s = sin_t[t * h + i];
        rotate_pair(x + row * 2 * h, y + row * 2 * h, i, h, c, s);
    }
}

template <typename KV>
__device__ __forceinline__ void rope_qk_write_kv(const float* __restrict__ q, float* __restrict__ q_out, const float* __restrict__ k,
                                                 const float* __restrict__ v, KV* __restrict__ k_cache, KV* __restrict__ v_cache,
                                                 const float* __restrict__ cos_t, const float* __restrict__ sin_t, u64 q_pairs,
                                                 u64 kv_pairs, unsigned n, unsigned h, u64 pos, u64 max,
                                                 const int* __restrict__ step) {
    if (step) pos = (u64)step[STEP_POS];
    GRID_STRIDE(p, q_pairs + kv_pairs) {
        const u64 pair = p < q_pairs ? p : p - q_pairs;
        const u64 row = pair / h;
        const unsigned i = (unsigned)(pair % h);
        const u64 t = row % n;
        const float c = cos_t[(pos + t) * h + i], s = sin_t[(pos + t) * h + i];
        if (p < q_pairs) {
            rotate_pair(q + row * 2 * h, q_out + row * 2 * h, i, h, c, s);
        } else {
            const u64 at = ((row / n) * max + pos + t) * 2 * h;
            const float* vr = v + row * 2 * h;
            store_elem(v_cache, at + i, vr[i]);
            store_elem(v_cache, at + i + h, vr[i + h]);
            rotate_pair(k + row * 2 * h, k_cache + at, i, h, c, s);
        }
    }
}

#define ROPE_KV_PARAMS(KV)                                                                                               \
    const float *__restrict__ q, float *__restrict__ q_out, const float *__restrict__ k, const float *__restrict__ v, \
        KV *__restrict__ k_cache, KV *__restrict__ v_cache, const float *__restrict__ cos_t,                         \
        const float *__restrict__ sin_t, u64 q_pairs, u64 kv_pairs, unsigned n, unsigned h, u64 pos, u64 max,        \
        const int *__restrict__ step
#define ROPE_KV_ARGS q, q_out, k, v, k_cache, v_cache, cos_t, sin_t, q_pairs, kv_pairs, n, h, pos, max, step

extern "C" __global__ void rope_qk_write_kv_f32(ROPE_KV_PARAMS(float)) { rope_qk_write_kv(ROPE_KV_ARGS); }
extern "C" __global__ void rope_qk_write_kv_bf16kv(ROPE_KV_PARAMS(u16)) { rope_qk_write_kv(ROPE_KV_ARGS); }
