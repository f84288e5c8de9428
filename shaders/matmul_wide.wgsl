// needs: common.wgsl matmul_store.wgsl
// matmul_wide.wgsl: matmul.wgsl's GEMM with a 128×128 register-tiled output block, for the
// linear case on grids of many tiles (the wrapper, src/backend/wgpu/matmul_wide.rs, checks that
// the operands qualify and picks it).
//
//   C[z, m, n] = act(Σ_k A[z, m, k]·B[z, k, n] + bias[n]) + residual[z, m, n]
//
// Operands: A f32 and contiguous along k (a_ks = 1); B read along k as well (b_ks = 1: a
// [N, K] weight, x·Wᵀ), f32 or f16 (packed pairs, `b_f16`); K, A's row and batch strides, and
// B's column and batch strides multiples of 4, so every operand is read in aligned quads of k:
// one vec4 of A, one vec2<u32> of f16 B (4 halves) or two of f32 B. C has any strides.
//
// Geometry: a workgroup of 256 invocations computes a 128×128 tile of C. K advances 16 at a
// time: the A tile (128 rows × 16 k) and the B tile (128 columns × 16 k) are staged k-major in
// workgroup memory (rows of 128 values padded to 132), zero outside the matrices (K % 4 = 0, so
// a quad of k is wholly inside or outside). Invocation t stages the quads q = t % 4 of rows
// t / 4 and t / 4 + 64 of each tile; the next K step's quads are loaded into registers before
// the current step's products, so the global loads overlap them (one barrier pair per step).
// Invocation (tx, ty) = (t % 16, t / 16) owns rows 4ty..4ty+3 and 64+4ty..64+4ty+3, columns
// 4tx..4tx+3 and 64+4tx..64+4tx+3: 8×8 outputs in sixteen vec4 accumulators; per k it reads
// four vec4s of workgroup memory for 64 FMAs. Loops have constant trip counts, so the driver
// unrolls them and every accumulator stays in a register. Grid: [⌈N/128⌉, ⌈M/128⌉, batch].
//
// params: matmul.wgsl's (a_ks and b_ks are 1 here and not read).
// bindings: matmul.wgsl's, A read as vec4<f32> and B as vec2<u32> (buffers are sized in
// 16-byte multiples, so the last quad is inside them).

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b2: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

const WK: u32 = 16u;
// vec4s per k row of a staged tile: 128 values and 4 of padding (spreads the transposing
// stores of one warp over more banks; the vec4 reads stay aligned).
const ROW4: u32 = 33u;

var<workgroup> a_s: array<vec4<f32>, 528>;
var<workgroup> b_s: array<vec4<f32>, 528>;

// Sizes and strides for batch entry z (read from params once).
struct WideSrc {
    m_all: u32,
    n_all: u32,
    k_all: u32,
    a_base: u32,
    a_ms: u32,
    b_base: u32,
    b_ns: u32,
    b_f16: bool,
}

fn wide_src(z: u32) -> WideSrc {
    return WideSrc(params[0], params[1], params[2], z * params[3], params[4], z * params[6], params[8], params[12] != 0u);
}

// A[z, m, k..k+4], zero outside the matrix.
fn quad_a(s: WideSrc, m: u32, k: u32) -> vec4<f32> {
    if (m >= s.m_all || k >= s.k_all) {
        return vec4<f32>(0.0);
    }
    return a4[(s.a_base + m * s.a_ms + k) >> 2u];
}

// The raw words of B[z, k..k+4, n]: f16, the 4 halves in x and y; f32, the 4 values' bits.
// Zero words (outside the matrix) are zeros in either format.
fn quad_b(s: WideSrc, n: u32, k: u32) -> vec4<u32> {
    if (n >= s.n_all || k >= s.k_all) {
        return vec4<u32>(0u);
    }
    let i = s.b_base + n * s.b_ns + k;
    if (s.b_f16) {
        return vec4<u32>(b2[i >> 2u], 0u, 0u);
    }
    let h = i >> 1u;
    return vec4<u32>(b2[h], b2[h + 1u]);
}

fn b_values(w: vec4<u32>, f16: bool) -> vec4<f32> {
    if (f16) {
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    return bitcast<vec4<f32>>(w);
}

// Row (or column) r of a tile, k = 4q..4q+3, into its k-major staging area.
fn stage_a(r: u32, q: u32, v: vec4<f32>) {
    let at = 4u * q * ROW4 + r / 4u;
    let j = r % 4u;
    a_s[at][j] = v.x;
    a_s[at + ROW4][j] = v.y;
    a_s[at + 2u * ROW4][j] = v.z;
    a_s[at + 3u * ROW4][j] = v.w;
}

fn stage_b(r: u32, q: u32, v: vec4<f32>) {
    let at = 4u * q * ROW4 + r / 4u;
    let j = r % 4u;
    b_s[at][j] = v.x;
    b_s[at + ROW4][j] = v.y;
    b_s[at + 2u * ROW4][j] = v.z;
    b_s[at + 3u * ROW4][j] = v.w;
}

@compute @workgroup_size(256)
fn matmul_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let z = wid.z;
    let s = wide_src(z);
    let m0 = wid.y * 128u;
    let n0 = wid.x * 128u;
    let tx = t % 16u;
    let ty = t / 16u;
    // Staging: rows (columns) r0 and r0 + 64 of the tiles, k-quad q.
    let r0 = t / 4u;
    let q = t % 4u;

    var acc0a = vec4<f32>(0.0);
    var acc0b = vec4<f32>(0.0);
    var acc1a = vec4<f32>(0.0);
    var acc1b = vec4<f32>(0.0);
    var acc2a = vec4<f32>(0.0);
    var acc2b = vec4<f32>(0.0);
    var acc3a = vec4<f32>(0.0);
    var acc3b = vec4<f32>(0.0);
    var acc4a = vec4<f32>(0.0);
    var acc4b = vec4<f32>(0.0);
    var acc5a = vec4<f32>(0.0);
    var acc5b = vec4<f32>(0.0);
    var acc6a = vec4<f32>(0.0);
    var acc6b = vec4<f32>(0.0);
    var acc7a = vec4<f32>(0.0);
    var acc7b = vec4<f32>(0.0);

    // The first K step's quads.
    var pa0 = quad_a(s, m0 + r0, 4u * q);
    var pa1 = quad_a(s, m0 + r0 + 64u, 4u * q);
    var pb0 = quad_b(s, n0 + r0, 4u * q);
    var pb1 = quad_b(s, n0 + r0 + 64u, 4u * q);
    for (var k0 = 0u; k0 < s.k_all; k0 += WK) {
        stage_a(r0, q, pa0);
        stage_a(r0 + 64u, q, pa1);
        stage_b(r0, q, b_values(pb0, s.b_f16));
        stage_b(r0 + 64u, q, b_values(pb1, s.b_f16));
        workgroupBarrier();
        // The next step's quads (zeros past K), in flight during this step's products.
        let kn = k0 + WK + 4u * q;
        pa0 = quad_a(s, m0 + r0, kn);
        pa1 = quad_a(s, m0 + r0 + 64u, kn);
        pb0 = quad_b(s, n0 + r0, kn);
        pb1 = quad_b(s, n0 + r0 + 64u, kn);
        for (var kk = 0u; kk < WK; kk++) {
            let row = kk * ROW4;
            let al = a_s[row + ty];
            let ah = a_s[row + 16u + ty];
            let bl = b_s[row + tx];
            let bh = b_s[row + 16u + tx];
            acc0a = fma(vec4<f32>(al.x), bl, acc0a);
            acc0b = fma(vec4<f32>(al.x), bh, acc0b);
            acc1a = fma(vec4<f32>(al.y), bl, acc1a);
            acc1b = fma(vec4<f32>(al.y), bh, acc1b);
            acc2a = fma(vec4<f32>(al.z), bl, acc2a);
            acc2b = fma(vec4<f32>(al.z), bh, acc2b);
            acc3a = fma(vec4<f32>(al.w), bl, acc3a);
            acc3b = fma(vec4<f32>(al.w), bh, acc3b);
            acc4a = fma(vec4<f32>(ah.x), bl, acc4a);
            acc4b = fma(vec4<f32>(ah.x), bh, acc4b);
            acc5a = fma(vec4<f32>(ah.y), bl, acc5a);
            acc5b = fma(vec4<f32>(ah.y), bh, acc5b);
            acc6a = fma(vec4<f32>(ah.z), bl, acc6a);
            acc6b = fma(vec4<f32>(ah.z), bh, acc6b);
            acc7a = fma(vec4<f32>(ah.w), bl, acc7a);
            acc7b = fma(vec4<f32>(ah.w), bh, acc7b);
        }
        workgroupBarrier();
    }

    let m = m0 + 4u * ty;
    let na = n0 + 4u * tx;
    let nb = na + 64u;
    store4(z, m, na, acc0a);
    store4(z, m, nb, acc0b);
    store4(z, m + 1u, na, acc1a);
    store4(z, m + 1u, nb, acc1b);
    store4(z, m + 2u, na, acc2a);
    store4(z, m + 2u, nb, acc2b);
    store4(z, m + 3u, na, acc3a);
    store4(z, m + 3u, nb, acc3b);
    store4(z, m + 64u, na, acc4a);
    store4(z, m + 64u, nb, acc4b);
    store4(z, m + 65u, na, acc5a);
    store4(z, m + 65u, nb, acc5b);
    store4(z, m + 66u, na, acc6a);
    store4(z, m + 66u, nb, acc6b);
    store4(z, m + 67u, na, acc7a);
    store4(z, m + 67u, nb, acc7b);
}
