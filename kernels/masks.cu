// SAM mask filtering on the device (Backend::mask_stats, spec in src/backend/cpu/masks.rs):
// per mask plane, over the cell rectangle [y0, y0+h) × [x0, x0+w), the counts of logit > 0,
// > offset and > −offset, the box of the logit > 0 cells and the binary mask as u32 words, so
// only ~h·w/8 bytes per plane come back to the host instead of 4·H·W.
//
// Output row per plane: [area, stable, loose, bx0, by0, bx1, by1, 0] (box inclusive and
// rectangle-relative, all −1 for an empty mask), then h rows of ⌈w/32⌉ words; bit b of word j
// of row r is cell (y0 + r, x0 + 32j + b).
//
// Launch: one block of 256 threads per plane (2-D grid, block_row()). Warps stride over the
// rows; a warp reads 32 consecutive logits (128 bytes, coalesced) and one __ballot_sync per
// predicate turns them into a word. Counts and the box are integers combined with shared-memory
// atomics, so the result is exact and independent of scheduling. Bytes: one read of the
// rectangle (4·h·w per plane), h·w/8 written.
#include "common.cuh"

#define MASK_HEADER 8

extern "C" __global__ void __launch_bounds__(256) mask_stats_f32(const float* __restrict__ x, int* __restrict__ out, u64 planes,
                                                                 unsigned ph, unsigned pw, unsigned y0, unsigned x0, unsigned h,
                                                                 unsigned w, float offset) {
    const u64 plane = block_row();
    if (plane >= planes) return;
    __shared__ unsigned s_area, s_stable, s_loose;
    __shared__ int s_box[4];
    if (threadIdx.x == 0) {
        s_area = s_stable = s_loose = 0;
        s_box[0] = s_box[1] = 0x7fffffff;
        s_box[2] = s_box[3] = -1;
    }
    __syncthreads();
    const unsigned words = (w + 31) / 32;
    const float* p = x + plane * ph * pw;
    int* o = out + plane * (MASK_HEADER + (u64)h * words);
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    unsigned area = 0, stable = 0, loose = 0;
    int bx0 = 0x7fffffff, by0 = 0x7fffffff, bx1 = -1, by1 = -1;
    for (unsigned r = warp; r < h; r += nwarps) {
        const float* row = p + (u64)(y0 + r) * pw + x0;
        for (unsigned j = 0; j < words; ++j) {
            const unsigned c = j * 32 + lane;
            const float v = c < w ? row[c] : NEG_INF;
            const unsigned pos = __ballot_sync(0xffffffffu, v > 0.0f);
            const unsigned st = __ballot_sync(0xffffffffu, v > offset);
            const unsigned lo = __ballot_sync(0xffffffffu, v > -offset);
            if (lane == 0) {
                o[MASK_HEADER + (u64)r * words + j] = (int)pos;
                area += __popc(pos);
                stable += __popc(st);
                loose += __popc(lo);
                if (pos) {
                    bx0 = min(bx0, (int)(j * 32 + __ffs(pos) - 1));
                    bx1 = max(bx1, (int)(j * 32 + 31 - __clz(pos)));
                    by0 = min(by0, (int)r);
                    by1 = max(by1, (int)r);
                }
            }
        }
    }
    if (lane == 0) {
        atomicAdd(&s_area, area);
        atomicAdd(&s_stable, stable);
        atomicAdd(&s_loose, loose);
        atomicMin(&s_box[0], bx0);
        atomicMin(&s_box[1], by0);
        atomicMax(&s_box[2], bx1);
        atomicMax(&s_box[3], by1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const bool empty = s_area == 0;
        o[0] = (int)s_area;
        o[1] = (int)s_stable;
        o[2] = (int)s_loose;
        for (int i = 0; i < 4; ++i) o[3 + i] = empty ? -1 : s_box[i];
        o[7] = 0;
    }
}
