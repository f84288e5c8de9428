// Convolutions, NCHW f32, as data rearrangements around a cuBLAS GEMM (src/backend/cuda/conv.rs).
//
// * im2col_f32: one image x [cin, h, w] → cols [cin·kh·kw, oh·ow] with zero padding; row
//   (ci, ky, kx), column (oy, ox) = x[ci, oy·stride + ky − pad, ox·stride + kx − pad].
//   conv2d = w [cout, cin·kh·kw] · cols, then the per-channel bias.
//
// Launch: 1-D grid-stride loops over output elements.
#include "common.cuh"

extern "C" __global__ void im2col_f32(const float* __restrict__ x, float* __restrict__ cols, u64 n, unsigned h, unsigned w,
                                      unsigned kh, unsigned kw, unsigned stride, unsigned pad, unsigned oh, unsigned ow) {
    GRID_STRIDE(i, n) {
        const u64 np = (u64)oh * ow;
        const u64 row = i / np, col = i % np;
        const unsigned ci = (unsigned)(row / ((u64)kh * kw));
        const unsigned ky = (unsigned)((row / kw) % kh), kx = (unsigned)(row % kw);
        const unsigned oy = (unsigned)(col / ow), ox = (unsigned)(col % ow);
        const long long iy = (long long)oy * stride + ky - pad, ix = (long long)ox * stride + kx - pad;
        float v = 0.0f;
        if (iy >= 0 && ix >= 0 && iy < h && ix < w) v = x[((u64)ci * h + (u64)iy) * w + (u64)ix];
        cols[i] = v;
    }
}
