// needs: common.wgsl
// norm.wgsl: LayerNorm and RMSNorm over the last dim, LayerNorm over the channels of NCHW
// (SAM's LayerNorm2d). Twin of kernels/norm.cu; semantics of src/backend/cpu/norm.rs: two-pass
// mean then variance (no Welford), biased variance, y = (x − mean)·rsqrt(var + eps)·w + b.
//
// * layer_norm, rms_norm: one workgroup (256 threads) per row, the row read 2-3 times (it stays
//   in cache for the widths here, ≤ 8K); tree reductions in workgroup memory. 8 bytes/element
//   moved, ~8 flops. For rows wider than 2048 (few of them: a Llama prefill's hidden states).
// * norm_rows (LayerNorm or RMSNorm by params[4]): 8 rows per workgroup, 32 threads per row,
//   each group's sums reduced in its own 32 slots of workgroup memory (5 steps, where a row per
//   workgroup takes 8 and leaves most threads idle on rows of 256: the SAM mask decoder's 262144
//   rows per batch). norm_subgroup.wgsl has the same with a subgroup per row and subgroupAdd.
// * layer_norm_channels: one thread per (batch, pixel), looping over C with stride H·W: adjacent
//   threads read adjacent pixels, so every pass is coalesced.
//
// params: layer_norm / rms_norm [rows, d, eps]; norm_rows / norm_sg [rows, d, eps, rows per
// workgroup (read by norm_sg only), 0 LayerNorm / 1 RMSNorm]; layer_norm_channels
// [B·H·W, C, H·W, eps]
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

// The grouped variants: GROUP threads per row, GROUP_ROWS rows per workgroup. row_sum, norm_row
// and the write_* helpers serve them and norm_subgroup.wgsl (any number of lanes per row).
const GROUP: u32 = 32u;
const GROUP_ROWS: u32 = 8u;

// Sum of v over the 32 threads of lid's group (all 256 threads call it: it has barriers).
fn group_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    let lane = lid % GROUP;
    for (var s = GROUP / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[lid - lane];
    workgroupBarrier();
    return r;
}

// One row's pass: 0 = Σx, 1 = Σ(x − mean)², 2 = Σx²; lane `lane` of `lanes` takes every
// lanes-th element.
fn row_sum(base: u32, d: u32, lane: u32, lanes: u32, kind: u32, mean: f32) -> f32 {
    var s = 0.0;
    for (var j = lane; j < d; j += lanes) {
        let v = x[base + j];
        if (kind == 0u) {
            s += v;
        } else if (kind == 1u) {
            let c = v - mean;
            s += c * c;
        } else {
            s += v * v;
        }
    }
    return s;
}

fn write_layer_norm(base: u32, d: u32, lane: u32, lanes: u32, mean: f32, r: f32) {
    for (var j = lane; j < d; j += lanes) {
        out[base + j] = (x[base + j] - mean) * r * weight[j] + bias[j];
    }
}

fn write_rms_norm(base: u32, d: u32, lane: u32, lanes: u32, r: f32) {
    for (var j = lane; j < d; j += lanes) {
        out[base + j] = weight[j] * (x[base + j] * r);
    }
}

// One row of a grouped variant, `lane` of `lanes` sharing it, given its sums over them:
// LayerNorm (params[4] = 0: Σx, then Σ(x − mean)²) or RMSNorm (1: Σx²).
fn norm_row(base: u32, d: u32, lane: u32, lanes: u32, live: bool, mean: f32, sq: f32) {
    if live {
        let r = 1.0 / sqrt(sq / f32(d) + bitcast<f32>(params[2]));
        if params[4] != 0u {
            write_rms_norm(base, d, lane, lanes, r);
        } else {
            write_layer_norm(base, d, lane, lanes, mean, r);
        }
    }
}

@compute @workgroup_size(256)
fn norm_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_wg(wid, nwg) * GROUP_ROWS + lid / GROUP;
    let lane = lid % GROUP;
    let d = params[1];
    let live = row < params[0];
    let base = select(0u, row * d, live);
    let rms = params[4] != 0u;
    var mean = 0.0;
    if !rms {
        mean = group_sum(lid, select(0.0, row_sum(base, d, lane, GROUP, 0u, 0.0), live)) / f32(d);
    }
    let sq = group_sum(lid, select(0.0, row_sum(base, d, lane, GROUP, select(1u, 2u, rms), mean), live));
    norm_row(base, d, lane, GROUP, live, mean, sq);
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
