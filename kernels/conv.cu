// Convolutions, NCHW f32, as data rearrangements around a cuBLAS GEMM (src/backend/cuda/conv.rs).
//
// * im2col_f32: one image x [cin, h, w] → cols [cin·kh·kw, oh·ow] with zero padding; row
//   (ci, ky, kx), column (oy, ox) = x[ci, oy·stride + ky − pad, ox·stride + kx − pad].
//   conv2d = w [cout, cin·kh·kw] · cols, then the per-channel bias.
// * conv_t_scatter_f32: conv_transpose2d with kernel == stride k (no overlap): one batched GEMM
//   gives y [b, cout·k·k, h·w] = wᵀ · x per image; out[img, co, iy·k + ky, ix·k + kx] =
//   y[img, (co·k + ky)·k + kx, iy·w + ix] + bias[co]. One thread per output element
//   (coalesced writes), all images in one launch.
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

extern "C" __global__ void conv_t_scatter_f32(const float* __restrict__ y, float* __restrict__ out, u64 n, unsigned cout,
                                              unsigned k, unsigned h, unsigned w, const void* bias, int bdt) {
    GRID_STRIDE(i, n) {
        const u64 ow = (u64)w * k, oh = (u64)h * k;
        const u64 ox = i % ow, oy = (i / ow) % oh, plane = i / (ow * oh);
        const u64 co = plane % cout, img = plane / cout;
        const u64 iy = oy / k, ky = oy % k, ix = ox / k, kx = ox % k;
        const u64 hw = (u64)h * w;
        float v = y[(img * cout * k * k + (co * k + ky) * k + kx) * hw + iy * w + ix];
        if (bias) {
            if (bdt == DT_F16) v += f16_to_f32(((const u16*)bias)[co]);
            else if (bdt == DT_BF16) v += bf16_to_f32(((const u16*)bias)[co]);
            else v += ((const float*)bias)[co];
        }
        out[i] = v;
    }
}
