// needs: common.wgsl matmul_store.wgsl matmul.wgsl
// enables: f16 wgpu_cooperative_matrix
// matmul_coop.wgsl: matmul.wgsl's GEMM on cooperative matrices (the tensor cores, where the
// Vulkan driver maps them there). Compiled only on adapters that report a subgroup-scoped
// 16×16×16 f16 × f16 → f32 configuration and subgroups of exactly 32 invocations; the wrapper
// (src/backend/wgpu/matmul.rs) takes it, when switched on, for GEMMs whose B is f16.
//
//   C[z, m, n] = act(Σ_k A[z, m, k]·B[z, k, n] + bias[n]) + residual[z, m, n]
//
// Operands, params and bindings are matmul.wgsl's (its tile_src, tile_elements and store4 are
// reused). A is rounded to f16 as it is staged (B is f16 already); products accumulate in f32.
//
// Geometry: a workgroup of 128 invocations (four subgroups of 32) computes a 64×64 tile of C;
// subgroup s owns the 32×32 quarter at rows 32·(s / 2), columns 32·(s % 2), as four 16×16 f32
// accumulators. K advances 32 at a time: the A tile (64 rows × 32 k) and the B tile (64 columns
// × 32 k, so both are stored along k) are staged as f16 in workgroup memory, zero outside the
// matrices, with rows padded to 40 halves (80 bytes: 16-byte aligned). Per staged tile each
// subgroup does 2 k-steps of 2×2 fragment products. The epilogue takes one fragment at a time
// through a 16×16 f32 staging area per subgroup; each lane applies bias, activation and residual
// to 8 of its elements (two store4 calls).

const CK: u32 = 32u;
const CS: u32 = 40u;

var<workgroup> a_h: array<f16, 2560>;
var<workgroup> b_h: array<f16, 2560>;
var<workgroup> c_st: array<f32, 1024>;

// Element e (< 2048) of the f16 tiles at k0: the k half e / 1024 of matmul.wgsl's 16-wide
// tile_elements.
fn stage_h(s: TileSrc, m0: u32, n0: u32, k0: u32, e: u32) {
    let h = e / 1024u;
    let i = e % 1024u;
    let v = tile_elements(s, m0, n0, k0 + 16u * h, i);
    let at = (i / 16u) * CS + 16u * h + i % 16u;
    a_h[at] = f16(v.x);
    b_h[at] = f16(v.y);
}

// One accumulator fragment (rows m.., columns n.. of C) through subgroup sg's staging area.
// Every invocation of the workgroup calls this the same number of times (the barriers).
fn emit(acc: coop_mat16x16<f32, C>, z: u32, m: u32, n: u32, sg: u32, lane: u32) {
    let st = sg * 256u;
    coopStoreT(acc, &c_st[st], 16u);
    workgroupBarrier();
    let r = lane / 2u;
    let c = (lane % 2u) * 8u;
    let i = st + r * 16u + c;
    store4(z, m + r, n + c, vec4<f32>(c_st[i], c_st[i + 1u], c_st[i + 2u], c_st[i + 3u]));
    store4(z, m + r, n + c + 4u, vec4<f32>(c_st[i + 4u], c_st[i + 5u], c_st[i + 6u], c_st[i + 7u]));
    workgroupBarrier();
}

@compute @workgroup_size(128)
fn matmul_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let z = wid.z;
    let src = tile_src(z);
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let sm = (sg / 2u) * 32u;
    let sn = (sg % 2u) * 32u;

    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var k0 = 0u; k0 < src.k_all; k0 += CK) {
        for (var t = 0u; t < 16u; t++) {
            stage_h(src, m0, n0, k0, tid + t * 128u);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < CK; kk += 16u) {
            // A row-major (row m at m·CS), B column-major (column n at n·CS): both along k.
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&a_h[sm * CS + kk], CS);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&a_h[(sm + 16u) * CS + kk], CS);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&b_h[sn * CS + kk], CS);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&b_h[(sn + 16u) * CS + kk], CS);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }

    let m = m0 + sm;
    let n = n0 + sn;
    emit(c00, z, m, n, sg, lane);
    emit(c01, z, m, n + 16u, sg, lane);
    emit(c10, z, m + 16u, n, sg, lane);
    emit(c11, z, m + 16u, n + 16u, sg, lane);
}
