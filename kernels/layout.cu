// Data movement (f32 unless noted): permute, strided row copies (narrow, concat, write_kv),
// pad2d, embedding gather.
//
// * permute_f32:    out[i] = x[src(i)], src from the output index and the permuted input
//                   strides (≤ 8 dims). Writes are coalesced, reads strided. permute_f32x4:
//                   the same in float4 units when whole rows of 4k floats move.
// * copy_rows_f32:  n elements in rows of `chunk`: dst[r·dst_pitch + dst_off + j] =
//                   src[r·src_pitch + src_off + j]. narrow is one call, concat one per input,
//                   write_kv one per new block. copy_rows_f32x4: the same in float4 units,
//                   when every size and offset is a multiple of 4 and both bases are aligned.
// * pad2d_f32:      [outer, h, w] → [outer, h+top+bottom, w+left+right], zeros outside.
// * windows_f32 / windows_f32x4: SAM's window partition and its inverse, one pass each: a
//                   grid [G, G, D] zero-padded bottom/right to n·w and cut into windows
//                   [n², w·w, D] (window (wy, wx) row (iy, ix) is grid row (wy·w + iy, wx·w + ix),
//                   zeros past G), or back (the padding dropped). In float4 units when D % 4 == 0.
// * embedding:      out[t, :] = table[ids[t], :] widened to f32 (table f32, f16 or bf16; ids
//                   already checked on the host to be < V).
//
// Launch: 1-D grid-stride loops over output elements; 8 bytes moved per f32 element.
#include "common.cuh"

// Must match `Permute` in src/backend/cuda/layout.rs.
struct Permute {
    unsigned ndim;
    unsigned pad_;
    u64 shape[8];
    u64 src_stride[8];
};

// Every source offset is < n (a permutation moves n elements), so below 2^32 elements the index
// math runs in 32 bits: a 64-bit div/mod costs several times a 32-bit one, once per dim.
template <typename T>
__device__ __forceinline__ void permute_impl(const T* __restrict__ x, T* __restrict__ y, u64 n, const Permute& p) {
    if (n <= 0xffffffffull) {
        GRID_STRIDE(i, n) {
            unsigned r = (unsigned)i, off = 0;
            for (int d = (int)p.ndim - 1; d >= 0; --d) {
                const unsigned len = (unsigned)p.shape[d], q = r / len;
                off += (r - q * len) * (unsigned)p.src_stride[d];
                r = q;
            }
            y[i] = x[off];
        }
    } else {
        GRID_STRIDE(i, n) {
            u64 r = i, off = 0;
            for (int d = (int)p.ndim - 1; d >= 0; --d) {
                off += (r % p.shape[d]) * p.src_stride[d];
                r /= p.shape[d];
            }
            y[i] = x[off];
        }
    }
}

extern "C" __global__ void permute_f32(const float* __restrict__ x, float* __restrict__ y, u64 n, Permute p) {
    permute_impl(x, y, n, p);
}
// The same in float4 units, when the innermost source run is contiguous and a multiple of 4
// (head splits, window partitions: whole rows of D floats move), every other stride is a
// multiple of 4 and both bases are 16-byte aligned (the host checks).
extern "C" __global__ void permute_f32x4(const float4* __restrict__ x, float4* __restrict__ y, u64 n, Permute p) {
    permute_impl(x, y, n, p);
}

extern "C" __global__ void copy_rows_f32(const float* __restrict__ src, float* __restrict__ dst, u64 n, u64 chunk,
                                         u64 src_pitch, u64 src_off, u64 dst_pitch, u64 dst_off) {
    GRID_STRIDE(i, n) {
        const u64 r = i / chunk, j = i % chunk;
        dst[r * dst_pitch + dst_off + j] = src[r * src_pitch + src_off + j];
    }
}

// copy_rows_f32 in float4 units (the host checks sizes, offsets and alignment).
extern "C" __global__ void copy_rows_f32x4(const float4* __restrict__ src, float4* __restrict__ dst, u64 n, u64 chunk,
                                           u64 src_pitch, u64 src_off, u64 dst_pitch, u64 dst_off) {
    GRID_STRIDE(i, n) {
        const u64 r = i / chunk, j = i - r * chunk;
        dst[r * dst_pitch + dst_off + j] = src[r * src_pitch + src_off + j];
    }
}

extern "C" __global__ void pad2d_f32(const float* __restrict__ x, float* __restrict__ y, u64 n, u64 h, u64 w,
                                     u64 top, u64 left, u64 oh, u64 ow) {
    GRID_STRIDE(i, n) {
        const u64 ox = i % ow, oy = (i / ow) % oh, o = i / (ow * oh);
        float v = 0.0f;
        if (oy >= top && oy < top + h && ox >= left && ox < left + w) v = x[(o * h + (oy - top)) * w + (ox - left)];
        y[i] = v;
    }
}

// One element (or float4) of the window layout: `y` has `n` of them in rows of `d` (D or D / 4),
// `g` the grid side, `w` the window side, `nw` windows per side. to_windows: y is the windowed
// [nw², w·w, d] and x the grid; else y is the grid [g, g, d] and x the windowed layout.
template <typename T>
__device__ __forceinline__ void windows_impl(const T* __restrict__ x, T* __restrict__ y, u64 n, unsigned d, unsigned g,
                                             unsigned w, unsigned nw, int to_windows, T zero) {
    GRID_STRIDE(i, n) {
        const u64 row = i / d, c = i - row * d;
        if (to_windows) {
            const u64 win = row / (w * w), r = row - win * (w * w);
            const u64 gy = (win / nw) * w + r / w, gx = (win % nw) * w + r % w;
            y[i] = gy < g && gx < g ? x[(gy * g + gx) * d + c] : zero;
        } else {
            const u64 gy = row / g, gx = row - gy * g;
            const u64 win = (gy / w) * nw + gx / w, r = (gy % w) * w + gx % w;
            y[i] = x[(win * (w * w) + r) * d + c];
        }
    }
}

extern "C" __global__ void windows_f32(const float* __restrict__ x, float* __restrict__ y, u64 n, unsigned d, unsigned g,
                                       unsigned w, unsigned nw, int to_windows) {
    windows_impl(x, y, n, d, g, w, nw, to_windows, 0.0f);
}
extern "C" __global__ void windows_f32x4(const float4* __restrict__ x, float4* __restrict__ y, u64 n, unsigned d4,
                                         unsigned g, unsigned w, unsigned nw, int to_windows) {
    windows_impl(x, y, n, d4, g, w, nw, to_windows, make_float4(0.f, 0.f, 0.f, 0.f));
}

extern "C" __global__ void embedding(const void* __restrict__ table, int dt, const unsigned* __restrict__ ids,
                                     float* __restrict__ y, u64 n, u64 d) {
    GRID_STRIDE(i, n) {
        const u64 t = i / d, j = i % d;
        const u64 src = (u64)ids[t] * d + j;
        float v;
        if (dt == DT_F16) v = f16_to_f32(((const u16*)table)[src]);
        else if (dt == DT_BF16) v = bf16_to_f32(((const u16*)table)[src]);
        else v = ((const float*)table)[src];
        y[i] = v;
    }
}
