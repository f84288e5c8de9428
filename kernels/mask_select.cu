// Superpixel selection on the mask bitmaps of mask_stats (Backend::mask_select / mask_paint,
// spec in src/backend/cpu/mask_select.rs), so the bitmaps never leave the device.
//
// stats: mask_stats rows, `row` ints each: an 8-int header, then h rows of `words` u32 bitmap
// words (bit b of word j of row r is rectangle cell (r, 32j + b)).
#include "common.cuh"

#define MASK_HEADER 8
#define SELECT_THREADS 512
#define COVERED_WORDS 2048  // GPU_COVERED_WORDS in src/backend/mask_select.rs

// 1000 · intersection > nms · union for inclusive boxes (x0, y0, x1, y1); every product fits
// u32 because the rectangle has at most 4 000 000 cells (checked by the caller).
__device__ __forceinline__ bool boxes_clash(int4 a, int4 b, unsigned nms) {
    const int iw = max(min(a.z, b.z) + 1 - max(a.x, b.x), 0);
    const int ih = max(min(a.w, b.w) + 1 - max(a.y, b.y), 0);
    const unsigned inter = (unsigned)(iw * ih);
    const unsigned area_a = (unsigned)((a.z - a.x + 1) * (a.w - a.y + 1));
    const unsigned area_b = (unsigned)((b.z - b.x + 1) * (b.w - b.y + 1));
    return 1000u * inter > nms * (area_a + area_b - inter);
}

// Box NMS then level selection in one block, candidate by candidate in visiting order.
// cands [n, 7]: plane, whole, area, x0, y0, x1, y1 (checked by the caller). out [n]: 0
// suppressed, 1 kept by NMS but rejected, 2 accepted. kept [n] int4: the surviving boxes,
// entry k written and read only by thread k % SELECT_THREADS, so it needs no barrier.
//
// NMS: each thread tests its share of the survivors, __syncthreads_or combines them (one barrier
// per candidate). Level selection: the union of accepted masks is a bitmap in shared memory;
// each thread counts the overlap of its share of the candidate's box words, an atomicAdd on a
// double-buffered counter sums them, and the accepted mask's words are OR-ed in (two barriers
// per NMS survivor; the suppressed are skipped). Integer arithmetic only: the verdicts equal the CPU's.
extern "C" __global__ void __launch_bounds__(SELECT_THREADS) mask_select(const int* __restrict__ stats, const int* __restrict__ cands,
                                                                        int* __restrict__ out, int4* __restrict__ kept, unsigned n, u64 row,
                                                                        unsigned words, unsigned h, unsigned nms, unsigned overlap) {
    __shared__ unsigned covered[COVERED_WORDS];
    __shared__ unsigned s_shared[2];
    const unsigned tid = threadIdx.x;
    unsigned nk = 0;
    for (unsigned i = 0; i < n; ++i) {
        const int* c = cands + 7 * (u64)i;
        const int4 b = make_int4(c[3], c[4], c[5], c[6]);
        bool clash = false;
        for (unsigned k = tid; k < nk && !clash; k += SELECT_THREADS) clash = boxes_clash(b, kept[k], nms);
        if (!__syncthreads_or(clash)) {
            if (nk % SELECT_THREADS == tid) kept[nk] = b;
            ++nk;
            if (tid == 0) out[i] = 1;
        } else if (tid == 0) {
            out[i] = 0;
        }
    }
    for (unsigned k = tid; k < h * words; k += SELECT_THREADS) covered[k] = 0;
    if (tid == 0) s_shared[0] = s_shared[1] = 0;
    __syncthreads();
    // Suppressed candidates are skipped by every thread alike (out[] was written before the
    // barrier above), so only the survivors cost barriers; the overlap counter's two buffers
    // alternate over the survivors (j).
    unsigned j = 0;
    for (unsigned i = 0; i < n; ++i) {
        if (out[i] != 1) continue;
        const int* c = cands + 7 * (u64)i;
        const bool whole = c[1] != 0;
        const unsigned area = (unsigned)c[2], y0 = (unsigned)c[4], w0 = (unsigned)c[3] / 32;
        const unsigned nw = (unsigned)c[5] / 32 - w0 + 1, items = ((unsigned)c[6] - y0 + 1) * nw;
        const unsigned* bits = (const unsigned*)(stats + (u64)c[0] * row + MASK_HEADER);
        if (!whole) {
            unsigned part = 0;
            for (unsigned t = tid; t < items; t += SELECT_THREADS) {
                const unsigned idx = (y0 + t / nw) * words + w0 + t % nw;
                part += __popc(bits[idx] & covered[idx]);
            }
            if (part) atomicAdd(&s_shared[j & 1], part);
        }
        if (tid == 0) s_shared[(j + 1) & 1] = 0;
        __syncthreads();
        if (whole || 1000u * s_shared[j & 1] < overlap * area) {
            for (unsigned t = tid; t < items; t += SELECT_THREADS) {
                const unsigned idx = (y0 + t / nw) * words + w0 + t % nw;
                covered[idx] |= bits[idx];
            }
            if (tid == 0) out[i] = 2;
        }
        __syncthreads();
        ++j;
    }
}

// One thread per rectangle cell (y, x) of an h × w region map: the region of the last
// (plane, region) entry of masks [m, 2] whose bitmap holds the cell, −1 where none does.
extern "C" __global__ void __launch_bounds__(256) mask_paint(const int* __restrict__ stats, const int* __restrict__ masks, int* __restrict__ out,
                                                            unsigned m, u64 row, unsigned words, unsigned h, unsigned w) {
    GRID_STRIDE(cell, (u64)h * w) {
        const unsigned y = (unsigned)(cell / w), x = (unsigned)(cell % w);
        const u64 at = MASK_HEADER + (u64)y * words + x / 32;
        int label = -1;
        for (unsigned a = m; a-- > 0;) {
            if (((unsigned)stats[(u64)masks[2 * a] * row + at] >> (x % 32)) & 1u) {
                label = masks[2 * a + 1];
                break;
            }
        }
        out[cell] = label;
    }
}
