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

// SAM's upscaler tail fused with the hypernetwork product (Backend::upscale_masks, spec in
// src/backend/cpu/masks.rs). y [P, E, E, 4·C1] holds the first transposed conv, channels-last:
// 2E-grid pixel (r, q) = (2i + a, 2j + b) is y[p, i, j, a·2 + b, :]. Per such pixel: LayerNorm
// over its C1 channels, GELU, then for each of its 2×2 output pixels (4i + 2a + c, 4j + 2b + d)
// the C2 features gelu(b2 + w2[(c·2 + d)·C2 + o, :] · g) and their dot product with each of the
// M hypernetwork rows of prompt p: out [P, M, 4E, 4E]. The [P, C2, 4E, 4E] features are never
// stored.
//
// Launch: 128 threads per block, one block per (p, UPS_ROWS consecutive 2E-grid rows), 2-D grid
// (block_row()). Threads stride over the row's 2E pixels; each keeps its pixel's C1 channels in
// registers and writes its two horizontally adjacent outputs per (mask, c) as one float2. The
// block stages w2, b2 and prompt p's hypernetwork rows in shared memory; every warp reads the
// same w2 row at a time (a broadcast). Limits (CudaBackend::upscale_masks_fits): C1 ≤ 64 and a
// multiple of 4, 4·C2·C1 ≤ UPS_W, C2 ≤ 64, M ≤ UPS_M.
#define UPS_C1 64
#define UPS_W 8192
#define UPS_M 8
#define UPS_ROWS 8

extern "C" __global__ void __launch_bounds__(128) upscale_masks_f32(const float* __restrict__ y, const float* __restrict__ ln_w,
                                                                    const float* __restrict__ ln_b, float eps,
                                                                    const float* __restrict__ w2, const float* __restrict__ b2,
                                                                    const float* __restrict__ hyper, float* __restrict__ out,
                                                                    unsigned P, unsigned E, unsigned C1, unsigned C2, unsigned M) {
    __shared__ __align__(16) float s_w[UPS_W];
    __shared__ float s_b[64];
    __shared__ float s_h[UPS_M * 64];
    __shared__ float s_lw[UPS_C1], s_lb[UPS_C1];
    const unsigned side2 = 2 * E, blocks_per_p = (side2 + UPS_ROWS - 1) / UPS_ROWS;
    const u64 blk = block_row();
    if (blk >= (u64)P * blocks_per_p) return;
    const unsigned p = (unsigned)(blk / blocks_per_p), r0 = (unsigned)(blk % blocks_per_p) * UPS_ROWS;
    for (unsigned k = threadIdx.x; k < 4 * C2 * C1; k += blockDim.x) s_w[k] = w2[k];
    for (unsigned k = threadIdx.x; k < C2; k += blockDim.x) s_b[k] = b2[k];
    for (unsigned k = threadIdx.x; k < M * C2; k += blockDim.x) s_h[k] = hyper[(u64)p * M * C2 + k];
    for (unsigned k = threadIdx.x; k < C1; k += blockDim.x) {
        s_lw[k] = ln_w[k];
        s_lb[k] = ln_b[k];
    }
    __syncthreads();
    const unsigned L = 4 * E;
    const unsigned nc4 = C1 / 4;
    const float inv_c1 = 1.0f / (float)C1;
    for (unsigned r = r0; r < min(r0 + UPS_ROWS, side2); ++r) {
        const unsigned i = r >> 1, a = r & 1;
        for (unsigned q = threadIdx.x; q < side2; q += blockDim.x) {
            const unsigned j = q >> 1, b = q & 1;
            const float4* src = reinterpret_cast<const float4*>(y + ((((u64)p * E + i) * E + j) * 4 + a * 2 + b) * C1);
            float g[UPS_C1];
#pragma unroll
            for (unsigned c4 = 0; c4 < UPS_C1 / 4; ++c4) {
                const float4 v = c4 < nc4 ? src[c4] : make_float4(0.f, 0.f, 0.f, 0.f);
                g[4 * c4] = v.x;
                g[4 * c4 + 1] = v.y;
                g[4 * c4 + 2] = v.z;
                g[4 * c4 + 3] = v.w;
            }
            float mean = 0.f;
#pragma unroll
            for (unsigned c = 0; c < UPS_C1; ++c) mean += g[c];
            mean *= inv_c1;
            float var = 0.f;
#pragma unroll
            for (unsigned c = 0; c < UPS_C1; ++c) {
                const float d = c < C1 ? g[c] - mean : 0.f;
                var += d * d;
            }
            const float rstd = rsqrtf(var * inv_c1 + eps);
#pragma unroll
            for (unsigned c = 0; c < UPS_C1; ++c) g[c] = c < C1 ? act_apply((g[c] - mean) * rstd * s_lw[c] + s_lb[c], ACT_GELU) : 0.f;
            for (unsigned c = 0; c < 2; ++c) {
                float acc[2][UPS_M];
#pragma unroll
                for (unsigned m = 0; m < UPS_M; ++m) acc[0][m] = acc[1][m] = 0.f;
#pragma unroll
                for (unsigned d = 0; d < 2; ++d) {
                    for (unsigned o = 0; o < C2; ++o) {
                        const float4* wr = reinterpret_cast<const float4*>(s_w + ((c * 2 + d) * C2 + o) * C1);
                        float z = s_b[o];
#pragma unroll
                        for (unsigned c4 = 0; c4 < UPS_C1 / 4; ++c4) {
                            if (c4 < nc4) {
                                const float4 w = wr[c4];
                                z = fmaf(w.x, g[4 * c4], z);
                                z = fmaf(w.y, g[4 * c4 + 1], z);
                                z = fmaf(w.z, g[4 * c4 + 2], z);
                                z = fmaf(w.w, g[4 * c4 + 3], z);
                            }
                        }
                        z = act_apply(z, ACT_GELU);
#pragma unroll
                        for (unsigned m = 0; m < UPS_M; ++m)
                            if (m < M) acc[d][m] = fmaf(s_h[m * C2 + o], z, acc[d][m]);
                    }
                }
                const unsigned row = 2 * r + c;
#pragma unroll
                for (unsigned m = 0; m < UPS_M; ++m)
                    if (m < M)
                        *reinterpret_cast<float2*>(out + (((u64)p * M + m) * L + row) * L + 2 * q) = make_float2(acc[0][m], acc[1][m]);
            }
        }
    }
}

// upscale_masks_f32 on the tensor cores, for SAM's own sizes (C1 = 64, C2 = 32, M ≤ UPS_M):
// the second transposed conv is a [rows, 64] · [64, 128] GEMM per 64 rows of y (row R =
// (i·E + j)·4 + a·2 + b, column n = (c·2 + d)·32 + o), run as mma.sync m16n8k16 with f16
// operands and f32 accumulators; everything around it (LayerNorm + GELU before, bias + GELU and
// the hypernetwork dots after) stays in f32. Same output as upscale_masks_f32, with the GEMM's
// operands rounded to f16 (the features after LayerNorm + GELU are O(1), the weights small: both
// far inside f16's range).
//
// Launch: 128 threads (4 warps) per block, one block per (p, UPT_ROWS consecutive rows of y),
// 2-D grid (block_row()). The block stages w2 once as f16 ([128][UPT_LD], k contiguous: the
// col-major B operand) with b2, prompt p's hypernetwork rows and the norm weights; then per tile
// of 64 rows, warp w normalises rows 16w..16w+15 itself, four rows at a time so that their
// shuffle reductions overlap (lane l: channels 2l, 2l+1), into its f16 A rows, loads its A
// fragments for all four k-steps into registers, and multiplies them by the 128 columns in two
// halves of 64 (8 n-fragments of 8 each: 32 mma and 32 f32 accumulators per thread per half,
// 127 registers, 4 blocks per SM, where 64 accumulators took 142 and 3 blocks).
// Epilogue from registers: in fragment f a thread holds rows g and g + 8 (g = lane / 4) at
// columns 8f + 2t, 8f + 2t + 1 (t = lane % 4), so for sub-position cd (fragments 4cd..4cd+3) it
// holds 8 of the 32 features of each of its two rows; it applies bias and GELU, takes their dot
// products with the M hypernetwork rows, the quad's four lanes add theirs with two shuffles, and
// lane t writes the masks m ≡ t (mod 4). Row stride UPT_LD = 72 halves (36 words) makes every
// fragment load hit 32 distinct banks.
#define UPT_ROWS 256
#define UPT_LD 72
#define UPT_LN_ROWS 4

extern "C" __global__ void __launch_bounds__(128) upscale_masks_mma_f32(const float* __restrict__ y, const float* __restrict__ ln_w,
                                                                           const float* __restrict__ ln_b, float eps,
                                                                           const float* __restrict__ w2, const float* __restrict__ b2,
                                                                           const float* __restrict__ hyper, float* __restrict__ out,
                                                                           unsigned P, unsigned E, unsigned M) {
    __shared__ __align__(16) unsigned short s_w[128 * UPT_LD];
    __shared__ __align__(16) unsigned short s_a[64 * UPT_LD];
    __shared__ float s_b[32];
    __shared__ float s_h[UPS_M * 32];
    __shared__ float s_lw[64], s_lb[64];
    const unsigned rows = 4 * E * E, blocks_per_p = (rows + UPT_ROWS - 1) / UPT_ROWS;
    const u64 blk = block_row();
    if (blk >= (u64)P * blocks_per_p) return;
    const unsigned p = (unsigned)(blk / blocks_per_p), r0 = (unsigned)(blk % blocks_per_p) * UPT_ROWS;
    for (unsigned k = threadIdx.x; k < 128 * 32; k += blockDim.x) {
        const unsigned n = k / 32, c = (k % 32) * 2;
        *reinterpret_cast<unsigned*>(s_w + n * UPT_LD + c) = pack_f16x2(w2[n * 64 + c], w2[n * 64 + c + 1]);
    }
    if (threadIdx.x < 32) s_b[threadIdx.x] = b2[threadIdx.x];
    for (unsigned k = threadIdx.x; k < M * 32; k += blockDim.x) s_h[k] = hyper[(u64)p * M * 32 + k];
    if (threadIdx.x < 64) {
        s_lw[threadIdx.x] = ln_w[threadIdx.x];
        s_lb[threadIdx.x] = ln_b[threadIdx.x];
    }
    __syncthreads();
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const unsigned L = 4 * E;
    const float lw0 = s_lw[2 * lane], lw1 = s_lw[2 * lane + 1], lb0 = s_lb[2 * lane], lb1 = s_lb[2 * lane + 1];
    for (unsigned tile = r0; tile < min(r0 + UPT_ROWS, rows); tile += 64) {
        // LayerNorm + GELU of the warp's 16 rows into its A rows (zeros past the last row).
        for (unsigned r = 0; r < 16; r += UPT_LN_ROWS) {
            float2 v[UPT_LN_ROWS];
            float s[UPT_LN_ROWS], q[UPT_LN_ROWS];
#pragma unroll
            for (int u = 0; u < UPT_LN_ROWS; ++u) {
                const unsigned R = tile + warp * 16 + r + u;
                v[u] = R < rows ? *reinterpret_cast<const float2*>(y + ((u64)p * rows + R) * 64 + 2 * lane) : make_float2(0.f, 0.f);
                s[u] = v[u].x + v[u].y;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
#pragma unroll
                for (int u = 0; u < UPT_LN_ROWS; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], o);
#pragma unroll
            for (int u = 0; u < UPT_LN_ROWS; ++u) {
                const float mean = s[u] * (1.0f / 64.0f);
                v[u].x -= mean;
                v[u].y -= mean;
                q[u] = v[u].x * v[u].x + v[u].y * v[u].y;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
#pragma unroll
                for (int u = 0; u < UPT_LN_ROWS; ++u) q[u] += __shfl_xor_sync(0xffffffffu, q[u], o);
#pragma unroll
            for (int u = 0; u < UPT_LN_ROWS; ++u) {
                const float rstd = rsqrtf(q[u] * (1.0f / 64.0f) + eps);
                float g0 = act_apply(v[u].x * rstd * lw0 + lb0, ACT_GELU);
                float g1 = act_apply(v[u].y * rstd * lw1 + lb1, ACT_GELU);
                if (tile + warp * 16 + r + u >= rows) g0 = g1 = 0.f;
                *reinterpret_cast<unsigned*>(s_a + (warp * 16 + r + u) * UPT_LD + 2 * lane) = pack_f16x2(g0, g1);
            }
        }
        __syncwarp();
        // The warp's A fragments for the four k-steps.
        unsigned a[4][4];
        const unsigned short* arow = s_a + (warp * 16 + g) * UPT_LD + 2 * t;
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
            a[ks][0] = *reinterpret_cast<const unsigned*>(arow + 16 * ks);
            a[ks][1] = *reinterpret_cast<const unsigned*>(arow + 8 * UPT_LD + 16 * ks);
            a[ks][2] = *reinterpret_cast<const unsigned*>(arow + 16 * ks + 8);
            a[ks][3] = *reinterpret_cast<const unsigned*>(arow + 8 * UPT_LD + 16 * ks + 8);
        }
        __syncwarp();  // the next tile's norm rewrites this warp's A rows
#pragma unroll 1
        for (int half = 0; half < 2; ++half) {
            // Columns 64·half .. 64·half + 63: sub-positions cd = 2·half and 2·half + 1.
            float acc[8][4];
#pragma unroll
            for (int f = 0; f < 8; ++f) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
                for (int f = 0; f < 8; ++f) {
                    const unsigned short* bcol = s_w + ((half * 8 + f) * 8 + g) * UPT_LD + 2 * t + 16 * ks;
                    mma_f16_16816(acc[f], a[ks][0], a[ks][1], a[ks][2], a[ks][3], *reinterpret_cast<const unsigned*>(bcol),
                                  *reinterpret_cast<const unsigned*>(bcol + 8));
                }
            }
            // Epilogue: rows g and g + 8 of the warp's 16.
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const unsigned R = tile + warp * 16 + g + 8 * h;
                const unsigned i = R / (4 * E), j = (R / 4) % E, a_ = (R / 2) % 2, b = R % 2;
#pragma unroll
                for (int c2 = 0; c2 < 2; ++c2) {
                    const int cd = 2 * half + c2;
                    float dots[UPS_M];
#pragma unroll
                    for (int m = 0; m < UPS_M; ++m) dots[m] = 0.f;
#pragma unroll
                    for (int jf = 0; jf < 4; ++jf) {
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const unsigned o = jf * 8 + 2 * t + e;
                            const float z = act_apply(acc[c2 * 4 + jf][2 * h + e] + s_b[o], ACT_GELU);
#pragma unroll
                            for (int m = 0; m < UPS_M; ++m)
                                if (m < (int)M) dots[m] = fmaf(s_h[m * 32 + o], z, dots[m]);
                        }
                    }
#pragma unroll
                    for (int m = 0; m < UPS_M; ++m) {
                        dots[m] += __shfl_xor_sync(0xffffffffu, dots[m], 1);
                        dots[m] += __shfl_xor_sync(0xffffffffu, dots[m], 2);
                    }
                    const unsigned py = 4 * i + 2 * a_ + cd / 2, px = 4 * j + 2 * b + cd % 2;
#pragma unroll
                    for (int m = 0; m < UPS_M; ++m)
                        if (m < (int)M && (unsigned)m % 4 == t && R < rows) out[(((u64)p * M + m) * L + py) * L + px] = dots[m];
                }
            }
        }
    }
}
