// needs: common.wgsl matmul_store.wgsl
// matmul.wgsl: tiled GEMM with a fused epilogue (twin of kernels/matmul.cu), for linear (M > 1),
// batched matmul, and the GEMM half of conv2d.
//
//   C[z, m, n] = act(Σ_k A[z, m, k]·B[z, k, n] + bias[n]) + residual[z, m, n]
//
// Every operand is addressed through (batch, row, column) element strides, so one kernel covers
// x·Wᵀ (B(k, n) = W[n·K + k]), A·B, A·Bᵀ, a B shared by every batch (batch stride 0) and the
// transposed outputs of the convolutions. A is f32; B is f32 or f16 (packed pairs, `b_f16`).
// The residual is read at the output's own index (modulo the residual period, when set).
//
// Geometry: a workgroup computes a 64×64 tile of C; K advances 16 at a time through
// workgroup-memory tiles of A (64×16) and B (16×64), zero-filled outside the matrix. Grid:
// [⌈N/64⌉, ⌈M/64⌉, batch]. 16×16 threads, 4×4 outputs each (rows ty + 16i, columns 4tx..4tx+3,
// in four vec4 registers): per k each thread does 16 FMAs for 5 workgroup loads (one vec4).
// (An 8×8-outputs-per-thread variant with a quarter of the threads ran 1.3–2.1× slower than
// this at every stack shape on an H200 through NVIDIA's Vulkan driver, and was removed.)
//
// params: [M, N, K, a_bs, a_ms, a_ks, b_bs, b_ks, b_ns, c_bs, c_ms, c_ns, b_f16, has_bias, act, has_residual,
// residual period (0: the residual has C's layout; else it repeats every that many elements of
// C's index, a residual shared by the batch entries of a contiguous output)]
// bindings: a (f32), b (u32 words), bias (f32 [N]), residual (f32), c (f32, written).
// Unused bias/residual bindings take any buffer (they are never read).

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
// a_tile is [BK][BM + 1] (the padding column spreads the transposing stores over banks);
// b_tile is [BK][BN / 4] vec4s, so each thread reads its 4 columns in one load.
const A_STRIDE: u32 = 65u;

var<workgroup> a_tile: array<f32, 1040>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

// The operands' sizes and strides for one batch entry z, read from params once per kernel
// (the tile loads then index from registers).
struct TileSrc {
    m_all: u32,
    n_all: u32,
    k_all: u32,
    a_base: u32,
    a_ms: u32,
    a_ks: u32,
    b_base: u32,
    b_ks: u32,
    b_ns: u32,
    b_f16: bool,
}

fn tile_src(z: u32) -> TileSrc {
    return TileSrc(params[0], params[1], params[2], z * params[3], params[4], params[5], z * params[6], params[7], params[8], params[12] != 0u);
}

// Element e (< 1024) of the A and B tiles at k0, as (A, B): row / column e / 16, k = e % 16 (k
// fastest: a row-major A and a [N, K] weight are both read along k); 0 outside the matrices.
fn tile_elements(s: TileSrc, m0: u32, n0: u32, k0: u32, e: u32) -> vec2<f32> {
    let r = e / BK;
    let gk = k0 + e % BK;
    var out = vec2<f32>(0.0);
    if (gk >= s.k_all) {
        return out;
    }
    if (m0 + r < s.m_all) {
        out.x = a[s.a_base + (m0 + r) * s.a_ms + gk * s.a_ks];
    }
    if (n0 + r < s.n_all) {
        let idx = s.b_base + gk * s.b_ks + (n0 + r) * s.b_ns;
        out.y = half_or_f32(b[select(idx, idx >> 1u, s.b_f16)], idx, s.b_f16);
    }
    return out;
}

// Element e of the tiles into workgroup memory: B as [BK][BN / 4] vec4s, A transposed into
// a_tile.
fn stage(s: TileSrc, m0: u32, n0: u32, k0: u32, e: u32) {
    let v = tile_elements(s, m0, n0, k0, e);
    let r = e / BK;
    let kk = e % BK;
    b_tile[kk * 16u + r / 4u][r % 4u] = v.y;
    a_tile[kk * A_STRIDE + r] = v.x;
}

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    let z = wid.z;
    let src = tile_src(z);
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let tid = l.y * 16u + l.x;

    // Thread (tx, ty) owns rows ty + 16i (i < 4) and columns 4tx .. 4tx + 3 of the tile, held
    // in four vec4 accumulators: no indexed arrays, so everything stays in registers.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < src.k_all; k0 += BK) {
        for (var t = 0u; t < 4u; t++) {
            stage(src, m0, n0, k0, tid + t * 256u);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let bv = b_tile[kk * 16u + l.x];
            let ar = kk * A_STRIDE + l.y;
            acc0 = fma(vec4<f32>(a_tile[ar]), bv, acc0);
            acc1 = fma(vec4<f32>(a_tile[ar + 16u]), bv, acc1);
            acc2 = fma(vec4<f32>(a_tile[ar + 32u]), bv, acc2);
            acc3 = fma(vec4<f32>(a_tile[ar + 48u]), bv, acc3);
        }
        workgroupBarrier();
    }

    let n = n0 + 4u * l.x;
    store4(z, m0 + l.y, n, acc0);
    store4(z, m0 + l.y + 16u, n, acc1);
    store4(z, m0 + l.y + 32u, n, acc2);
    store4(z, m0 + l.y + 48u, n, acc3);
}
