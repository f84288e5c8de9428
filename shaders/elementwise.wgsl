// needs: common.wgsl
// elementwise.wgsl: pointwise ops and the row softmax (twin of kernels/elementwise.cu).
//
// * activate, silu_mul, affine, binary_same: one thread per element, 256 per workgroup,
//   1-D grid (folded to 2-D above 65535 workgroups). 8-12 bytes moved per element, ~1-30 flops.
// * binary_bcast: numpy broadcasting over up to 8 dims; each thread decomposes its output index
//   with the output shape and gathers through 0-strided broadcast dims.
// * softmax: one workgroup (256 threads) per row of the last dim; three passes over the row
//   (max, sum of exp, write), tree reductions in workgroup memory. A row of all −∞ gives zeros
//   (as the CPU backend does).
//
// params (u32; f32 as bits):
//   activate [n, act]   silu_mul [n]   affine [n, s, t]   binary_same [n, op]
//   binary_bcast [n, op, ndim, shape[8], a_stride[8], b_stride[8]]   softmax [rows, d]
// op: 0 add, 1 sub, 2 mul. `erf` [n] exposes common.wgsl's erf_f32 for its accuracy test.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> src_a: array<f32>;
@group(0) @binding(2) var<storage, read> src_b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out_1: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_2: array<f32>;

const WG: u32 = 256u;

fn binop(x: f32, y: f32, op: u32) -> f32 {
    switch op {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        default: { return x * y; }
    }
}

@compute @workgroup_size(256)
fn activate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * WG + lid;
    if (i < params[0]) {
        out_1[i] = act_apply(src_a[i], params[1]);
    }
}

@compute @workgroup_size(256)
fn erf(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * WG + lid;
    if (i < params[0]) {
        out_1[i] = erf_f32(src_a[i]);
    }
}

@compute @workgroup_size(256)
fn silu_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * WG + lid;
    if (i < params[0]) {
        out_2[i] = act_apply(src_a[i], ACT_SILU) * src_b[i];
    }
}

@compute @workgroup_size(256)
fn affine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * WG + lid;
    if (i < params[0]) {
        out_1[i] = src_a[i] * bitcast<f32>(params[1]) + bitcast<f32>(params[2]);
    }
}

@compute @workgroup_size(256)
fn binary_same(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * WG + lid;
    if (i < params[0]) {
        out_2[i] = binop(src_a[i], src_b[i], params[1]);
    }
}

@compute @workgroup_size(256)
fn binary_bcast(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * WG + lid;
    if (i >= params[0]) {
        return;
    }
    let ndim = params[2];
    var r = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = ndim; d > 0u; d -= 1u) {
        let size = params[3u + d - 1u];
        let idx = r % size;
        r = r / size;
        ia += idx * params[11u + d - 1u];
        ib += idx * params[19u + d - 1u];
    }
    out_2[i] = binop(src_a[ia], src_b[ib], params[1]);
}

var<workgroup> red: array<f32, 256>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_wg(wid, nwg);
    let rows = params[0];
    let d = params[1];
    if (row >= rows) {
        return;
    }
    let base = row * d;
    var m = neg_inf();
    for (var j = lid; j < d; j += WG) {
        m = max(m, src_a[base + j]);
    }
    m = reduce_max(lid, m);
    let dead = m == neg_inf();
    var s = 0.0;
    for (var j = lid; j < d; j += WG) {
        s += exp(src_a[base + j] - m);
    }
    s = reduce_sum(lid, s);
    let inv = 1.0 / s;
    for (var j = lid; j < d; j += WG) {
        out_1[base + j] = select(exp(src_a[base + j] - m) * inv, 0.0, dead);
    }
}
