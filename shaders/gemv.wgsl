// needs: common.wgsl
// gemv.wgsl: y = act(W·x + bias) + residual for one input row (M = 1 linear: LLM decode), with
// the same epilogue as matmul.wgsl (twin of kernels/gemv.cu).
//
// W [N, K] is f32 or f16 (packed pairs, read two at a time when K is even). Geometry: a
// workgroup of 256 threads handles 8 output rows, 32 threads per row striding along K (adjacent
// threads read adjacent words: coalesced), then a tree reduction in workgroup memory. Grid:
// ⌈N/8⌉ workgroups, folded to 2-D above 65535. Bandwidth-bound: W is streamed once (2 or 4
// bytes per weight, 2 flops per weight); x (K floats) is re-read from cache by every row.
//
// params: [N, K, w_f16, has_bias, act, has_residual]
// bindings: x (f32 [K]), w (u32 words), bias (f32 [N]), residual (f32 [N]), y (f32 [N]).

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const ROWS: u32 = 8u;
const LANES: u32 = 32u;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n_all = params[0];
    let k_all = params[1];
    let w_f16 = params[2] != 0u;
    let lane = lid % LANES;
    let row = flat_wg(wid, nwg) * ROWS + lid / LANES;
    var s = 0.0;
    if (row < n_all) {
        if (w_f16 && k_all % 2u == 0u) {
            let half_k = k_all / 2u;
            let base = row * half_k;
            for (var j = lane; j < half_k; j += LANES) {
                let pair = unpack2x16float(w[base + j]);
                s = fma(pair.x, x[2u * j], s);
                s = fma(pair.y, x[2u * j + 1u], s);
            }
        } else {
            let base = row * k_all;
            for (var k = lane; k < k_all; k += LANES) {
                let e = base + k;
                s = fma(half_or_f32(w[select(e, e >> 1u, w_f16)], e, w_f16), x[k], s);
            }
        }
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
        var v = partial[lid];
        if (params[3] != 0u) {
            v += bias[row];
        }
        v = act_apply(v, params[4]);
        if (params[5] != 0u) {
            v += residual[row];
        }
        y[row] = v;
    }
}
