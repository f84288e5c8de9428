// Rotary position embedding, HF "rotate_half" layout (the CPU backend's rope):
//   x [rows = B·H·N, D] with h = D/2, token t = row mod N at table row pos_offset + t:
//   out[i]     = x[i]·cos[i] − x[i+h]·sin[i]
//   out[i + h] = x[i+h]·cos[i] + x[i]·sin[i]           (i < h; cos, sin [max_pos, h] f32)
//
// Launch: 1-D grid-stride loop over rows·h rotation pairs (each thread reads two x and one
// cos/sin pair, writes two outputs: 24 bytes per pair).
#include "common.cuh"

extern "C" __global__ void rope_f32(const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ cos_t,
                                    const float* __restrict__ sin_t, u64 pairs, unsigned n, unsigned h, u64 pos_offset) {
    GRID_STRIDE(k, pairs) {
        const u64 row = k / h;
        const unsigned i = (unsigned)(k % h);
        const u64 t = pos_offset + row % n;
        const float c = cos_t[t * h + i], s = sin_t[t * h + i];
        const float* xr = x + row * 2 * h;
        float* yr = y + row * 2 * h;
        const float a = xr[i], b = xr[i + h];
        yr[i] = a * c - b * s;
        yr[i + h] = b * c + a * s;
    }
}
