// needs: common.wgsl
// scatter_pool.wgsl: superpixel scatter-mean pooling with the SSPE inputs in one pass (twin of
// kernels/scatter_pool.cu):
//
//   out[s, c] = Σ_p weights[s, p] · (feats[p, c] + pos[p, c])
//
// weights [S, P] are the row-normalised coverage, feats and pos [P, C]. Deterministic: each
// output is one thread's ordered sum over p (no atomics). One thread per (s, c), 256 per
// workgroup along c, so a workgroup's reads of feats/pos rows are coalesced and weights[s, p] is
// a broadcast. Napkin math for 576×1024 → 40: 2·576·1024·4 B of features and positions read (once
// per s from cache), 40·576·1024·3 flops.
//
// params: [S, P, C]
// bindings: weights, feats, pos, out.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> feats: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn scatter_mean_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * 256u + lid;
    let s_all = params[0];
    let p_all = params[1];
    let c_all = params[2];
    if (i >= s_all * c_all) {
        return;
    }
    let s = i / c_all;
    let c = i % c_all;
    var acc = 0.0;
    for (var p = 0u; p < p_all; p++) {
        acc = fma(weights[s * p_all + p], feats[p * c_all + c] + pos[p * c_all + c], acc);
    }
    out[i] = acc;
}
