// needs: common.wgsl gemv_batch1.wgsl
// gemv_many.wgsl: one or two GEMVs that share one input row x (M = 1: LLM decode) in one
// dispatch, with the RMSNorm of x and the SwiGLU product fused in (twin of gemv_many_impl in
// kernels/gemv.cu, which takes three weights: here a third would need nine storage bindings, one
// more than WebGPU's default limit of eight, so the wrapper gives it a second dispatch).
// Modes (params[4]):
//
// * MANY (Backend::linear_many): y_s = x · w_sᵀ for s < 2 weights; their rows are numbered one
//   after another (n0, then n1; an unused weight has n = 0). No epilogue.
// * NORM_MANY (Backend::rms_norm_linear_many): y_s = rstd · (x ⊙ g) · w_sᵀ, rstd =
//   1 / sqrt(mean(x²) + eps). The norm never exists as a tensor: each row's lanes sum x² in the
//   same loop that streams its weights (x is K floats, cache resident), as the CUDA kernel does.
// * NORM_SWIGLU (Backend::rms_norm_swiglu): w0 = gate, w1 = up with n0 = n1 rows; row r streams
//   both weight rows in one loop and writes y0[r] = silu(rstd · gate) · (rstd · up).
//
// Per output row, a dot product striped over `lanes` threads with 16-byte weight loads, issued in
// batches of GEMV_BATCH (gemv_batch1.wgsl or gemv_batch8.wgsl, as in gemv.wgsl), where K keeps
// rows 16-byte aligned (K % 8 == 0 for f16, K % 4 == 0 for f32), element loads otherwise.
// Bandwidth-bound: the weights are read once. A decode layer's Q/K/V become two dispatches and
// its gate/up one, where they were a norm, two or three GEMVs and a product.
//
// gemv_many (plain): 256 threads = 8 rows × 32 lanes, tree reductions in workgroup memory.
// gemv_many_subgroup.wgsl adds the subgroup variant (one subgroup per row).
//
// params: [n0, n1, K, w_f16, mode, eps (f32 bits), rows_per_workgroup]
// bindings: x (f32 [K], read as vec4), g (f32 [K], the norm weight; x stands in without a norm),
// w0, w1 (words, read as vec4; w0 stands in for an unused w1), y0, y1 (f32 [n_s]; y0 stands in
// for an unused y1, which the kernel then never writes): seven storage bindings with params.
// Buffers are allocated in 16-byte multiples, so the vec4 views cover every element.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> y0: array<f32>;
@group(0) @binding(6) var<storage, read_write> y1: array<f32>;

const MODE_MANY: u32 = 0u;
const MODE_NORM_MANY: u32 = 1u;
const MODE_NORM_SWIGLU: u32 = 2u;

// One output row: which weight (0 or 1) and its row there.
struct Row {
    which: u32,
    r: u32,
}

// A lane's share of a row: the dot product with the first weight row, with the second (SwiGLU's
// up row), and Σ x² over the same elements.
struct Partial {
    a: f32,
    b: f32,
    ss: f32,
}

fn rows_total() -> u32 {
    if (params[4] == MODE_NORM_SWIGLU) {
        return params[0];
    }
    return params[0] + params[1];
}

fn row_of(i: u32) -> Row {
    let n0 = params[0];
    if (params[4] == MODE_NORM_SWIGLU || i < n0) {
        return Row(0u, i);
    }
    return Row(1u, i - n0);
}

// Word vector i of weight `which` (uniform across a row's lanes).
fn wvec(which: u32, i: u32) -> vec4<u32> {
    if (which == 0u) {
        return w0[i];
    }
    return w1[i];
}

// x ⊙ g for the vec4 at index i (plain x without a norm).
fn xin(i: u32, norm: bool) -> vec4<f32> {
    if (norm) {
        return x[i] * g[i];
    }
    return x[i];
}

fn dot8(q: vec4<u32>, lo: vec4<f32>, hi: vec4<f32>) -> f32 {
    return dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), lo) + dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), hi);
}

// Element e of weight `which`'s flat storage.
fn welem(which: u32, e: u32, w_f16: bool) -> f32 {
    let i = select(e, e >> 1u, w_f16);
    return half_or_f32(wvec(which, i >> 2u)[i & 3u], e, w_f16);
}

// This lane's share of output row `row`: lanes `lane`, `lane + lanes`, ... With `two`, the same
// row of w1 is streamed alongside w0's (SwiGLU).
fn row_partial(row: Row, two: bool, lane: u32, lanes: u32) -> Partial {
    let k_all = params[2];
    let w_f16 = params[3] != 0u;
    let norm = params[4] != MODE_MANY;
    var p = Partial(0.0, 0.0, 0.0);
    if ((w_f16 && k_all % 8u == 0u) || (!w_f16 && k_all % 4u == 0u)) {
        // Batches of GEMV_BATCH vectors per weight row, loaded before any is used (as gemv.wgsl).
        let per_row = select(k_all / 4u, k_all / 8u, w_f16);
        let base = row.r * per_row;
        for (var j0 = lane; j0 < per_row; j0 += lanes * GEMV_BATCH) {
            var qa: array<vec4<u32>, GEMV_BATCH>;
            var qb: array<vec4<u32>, GEMV_BATCH>;
            for (var u = 0u; u < GEMV_BATCH; u++) {
                let j = j0 + u * lanes;
                if (j < per_row) {
                    qa[u] = wvec(row.which, base + j);
                    if (two) {
                        qb[u] = w1[base + j];
                    }
                }
            }
            for (var u = 0u; u < GEMV_BATCH; u++) {
                let j = j0 + u * lanes;
                if (j >= per_row) {
                    break;
                }
                if (w_f16) {
                    let lo = xin(2u * j, norm);
                    let hi = xin(2u * j + 1u, norm);
                    p.a += dot8(qa[u], lo, hi);
                    if (two) {
                        p.b += dot8(qb[u], lo, hi);
                    }
                    if (norm) {
                        let xl = x[2u * j];
                        let xh = x[2u * j + 1u];
                        p.ss += dot(xl, xl) + dot(xh, xh);
                    }
                } else {
                    let v = xin(j, norm);
                    p.a += dot(bitcast<vec4<f32>>(qa[u]), v);
                    if (two) {
                        p.b += dot(bitcast<vec4<f32>>(qb[u]), v);
                    }
                    if (norm) {
                        p.ss += dot(x[j], x[j]);
                    }
                }
            }
        }
    } else {
        let base = row.r * k_all;
        for (var k = lane; k < k_all; k += lanes) {
            let xk = x[k >> 2u][k & 3u];
            let v = select(xk, xk * g[k >> 2u][k & 3u], norm);
            p.a = fma(welem(row.which, base + k, w_f16), v, p.a);
            if (two) {
                p.b = fma(welem(1u, base + k, w_f16), v, p.b);
            }
            p.ss = fma(xk, xk, p.ss);
        }
    }
    return p;
}

// The row's reduced sums → its output.
fn finish_row(row: Row, p: Partial) {
    let mode = params[4];
    var rstd = 1.0;
    if (mode != MODE_MANY) {
        rstd = 1.0 / sqrt(p.ss / f32(params[2]) + bitcast<f32>(params[5]));
    }
    if (mode == MODE_NORM_SWIGLU) {
        y0[row.r] = act_apply(p.a * rstd, ACT_SILU) * (p.b * rstd);
    } else if (row.which == 0u) {
        y0[row.r] = p.a * rstd;
    } else {
        y1[row.r] = p.a * rstd;
    }
}

const ROWS: u32 = 8u;
const LANES: u32 = 32u;

var<workgroup> part_a: array<f32, 256>;
var<workgroup> part_b: array<f32, 256>;
var<workgroup> part_ss: array<f32, 256>;

@compute @workgroup_size(256)
fn gemv_many(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lane = lid % LANES;
    let i = flat_wg(wid, nwg) * ROWS + lid / LANES;
    let live = i < rows_total();
    let row = row_of(i);
    var p = Partial(0.0, 0.0, 0.0);
    if (live) {
        p = row_partial(row, params[4] == MODE_NORM_SWIGLU, lane, LANES);
    }
    part_a[lid] = p.a;
    part_b[lid] = p.b;
    part_ss[lid] = p.ss;
    workgroupBarrier();
    for (var st = LANES / 2u; st > 0u; st >>= 1u) {
        if (lane < st) {
            part_a[lid] = part_a[lid] + part_a[lid + st];
            part_b[lid] = part_b[lid] + part_b[lid + st];
            part_ss[lid] = part_ss[lid] + part_ss[lid + st];
        }
        workgroupBarrier();
    }
    if (lane == 0u && live) {
        finish_row(row, Partial(part_a[lid], part_b[lid], part_ss[lid]));
    }
}
