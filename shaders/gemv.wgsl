// needs: common.wgsl gemv_batch1.wgsl
// gemv.wgsl: y = act(W·x + bias) + residual for one input row (M = 1 linear: LLM decode), with
// the same epilogue as matmul.wgsl (twin of kernels/gemv.cu). gemv_subgroup.wgsl adds the
// subgroup variant on top of this file.
//
// W [N, K] is f32 or f16 (packed pairs). Each row is a dot product striped over `lanes` threads:
// 16-byte loads (8 halves or 4 floats per load) when K keeps rows 16-byte aligned (K % 8 == 0
// for f16, K % 4 == 0 for f32), element loads otherwise. Adjacent lanes read adjacent 16-byte
// words: coalesced. Bandwidth-bound: W is streamed once (2 or 4 bytes and 2 flops per weight);
// x (K floats) is re-read from cache by every row. The vector loads come in batches of
// GEMV_BATCH per lane, all issued before any is used: 1 in the default build (gemv_batch1.wgsl),
// 8 in the batched one (gemv_batch8.wgsl, VISWORD_WGPU_GEMV=batched), where a compiler that keeps
// one load in flight per loop step still has eight.
//
// gemv (plain): 256 threads per workgroup = 8 rows × 32 lanes, then a tree reduction in
// workgroup memory. Grid: ⌈N/8⌉ workgroups, folded to 2-D above 65535.
//
// params: [N, K, w_f16, has_bias, act, has_residual, rows_per_workgroup]
// bindings: x (f32 [K], read as vec4), w (words, read as vec4), bias (f32 [N]),
// residual (f32 [N]), y (f32 [N]). Buffers are allocated in 16-byte multiples, so the vec4
// views cover every element.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

// This thread's share of row `row`'s dot product: lanes `lane`, `lane + lanes`, ...
fn row_partial(row: u32, lane: u32, lanes: u32) -> f32 {
    let k_all = params[1];
    let w_f16 = params[2] != 0u;
    var s = 0.0;
    if ((w_f16 && k_all % 8u == 0u) || (!w_f16 && k_all % 4u == 0u)) {
        let per_row = select(k_all / 4u, k_all / 8u, w_f16);
        let base = row * per_row;
        for (var j0 = lane; j0 < per_row; j0 += lanes * GEMV_BATCH) {
            var q: array<vec4<u32>, GEMV_BATCH>;
            for (var u = 0u; u < GEMV_BATCH; u++) {
                let j = j0 + u * lanes;
                if (j < per_row) {
                    q[u] = w[base + j];
                }
            }
            for (var u = 0u; u < GEMV_BATCH; u++) {
                let j = j0 + u * lanes;
                if (j < per_row) {
                    if (w_f16) {
                        let lo = vec4<f32>(unpack2x16float(q[u].x), unpack2x16float(q[u].y));
                        let hi = vec4<f32>(unpack2x16float(q[u].z), unpack2x16float(q[u].w));
                        s += dot(lo, x[2u * j]) + dot(hi, x[2u * j + 1u]);
                    } else {
                        s += dot(bitcast<vec4<f32>>(q[u]), x[j]);
                    }
                }
            }
        }
    } else {
        let base = row * k_all;
        for (var k = lane; k < k_all; k += lanes) {
            let e = base + k;
            let i = select(e, e >> 1u, w_f16);
            s = fma(half_or_f32(w[i >> 2u][i & 3u], e, w_f16), x[k >> 2u][k & 3u], s);
        }
    }
    return s;
}

// Bias, activation and residual for output `row`.
fn finish(row: u32, v_in: f32) -> f32 {
    var v = v_in;
    if (params[3] != 0u) {
        v += bias[row];
    }
    v = act_apply(v, params[4]);
    if (params[5] != 0u) {
        v += residual[row];
    }
    return v;
}

const ROWS: u32 = 8u;
const LANES: u32 = 32u;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n_all = params[0];
    let lane = lid % LANES;
    let row = flat_wg(wid, nwg) * ROWS + lid / LANES;
    var s = 0.0;
    if (row < n_all) {
        s = row_partial(row, lane, LANES);
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var st = LANES / 2u; st > 0u; st >>= 1u) {
        if (lane < st) {
            partial[lid] = partial[lid] + partial[lid + st];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < n_all) {
        y[row] = finish(row, partial[lid]);
    }
}
