// needs: common.wgsl
// norm.wgsl: LayerNorm and RMSNorm over the last dim, LayerNorm over the channels of NCHW
// (SAM's LayerNorm2d). Twin of kernels/norm.cu; semantics of src/backend/cpu/norm.rs: two-pass
// mean then variance (no Welford), biased variance, y = (x − mean)·rsqrt(var + eps)·w + b.
//
// * layer_norm, rms_norm: one workgroup (256 threads) per row, the row read 2-3 times (it stays
//   in cache for the widths here, ≤ 8K); tree reductions in workgroup memory. 8 bytes/element
//   moved, ~8 flops.
// * layer_norm_channels: one thread per (batch, pixel), looping over C with stride H·W: adjacent
//   threads read adjacent pixels, so every pass is coalesced.
//
// params: layer_norm / rms_norm [rows, d, eps]; layer_norm_channels [B·H·W, C, H·W, eps]
// bindings: x, weight, bias (layer norms only), out.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

var<workgroup> red: array<f32, 256>;

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
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_wg(wid, nwg);
    let d = params[1];
    if (row >= params[0]) {
        return;
    }
    let base = row * d;
    var s = 0.0;
    for (var j = lid; j < d; j += WG) {
        s += x[base + j];
    }
    let mean = reduce_sum(lid, s) / f32(d);
    var v = 0.0;
    for (var j = lid; j < d; j += WG) {
        let c = x[base + j] - mean;
        v += c * c;
    }
    let r = 1.0 / sqrt(reduce_sum(lid, v) / f32(d) + bitcast<f32>(params[2]));
    for (var j = lid; j < d; j += WG) {
        out[base + j] = (x[base + j] - mean) * r * weight[j] + bias[j];
    }
}

@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_wg(wid, nwg);
    let d = params[1];
    if (row >= params[0]) {
        return;
    }
    let base = row * d;
    var s = 0.0;
    for (var j = lid; j < d; j += WG) {
        let v = x[base + j];
        s += v * v;
    }
    let r = 1.0 / sqrt(reduce_sum(lid, s) / f32(d) + bitcast<f32>(params[2]));
    for (var j = lid; j < d; j += WG) {
        out[base + j] = weight[j] * (x[base + j] * r);
    }
}

@compute @workgroup_size(256)
fn layer_norm_channels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat_wg(wid, nwg) * WG + lid;
    if (t >= params[0]) {
        return;
    }
    let c = params[1];
    let hw = params[2];
    let base = (t / hw) * c * hw + t % hw;
    var s = 0.0;
    for (var ch = 0u; ch < c; ch++) {
        s += x[base + ch * hw];
    }
    let mean = s / f32(c);
    var v = 0.0;
    for (var ch = 0u; ch < c; ch++) {
        let d = x[base + ch * hw] - mean;
        v += d * d;
    }
    let r = 1.0 / sqrt(v / f32(c) + bitcast<f32>(params[3]));
    for (var ch = 0u; ch < c; ch++) {
        out[base + ch * hw] = (x[base + ch * hw] - mean) * r * weight[ch] + bias[ch];
    }
}
