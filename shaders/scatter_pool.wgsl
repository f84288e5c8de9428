// needs: common.wgsl
// scatter_pool.wgsl: superpixel scatter-mean pooling with the SSPE inputs in one pass (twin of
// kernels/scatter_pool.cu):
//
//   out[s, c] = Σ_p weights[s, p] · (feats[p, c] + pos[p, c])
//
// weights [S, P] are the row-normalised coverage, feats and pos [P, C]. Deterministic, no atomics:
// a workgroup of 256 threads covers one s and 32 columns, as 8 slices of P; slice j sums the
// p = j, j + 8, ... with a nonzero weight, in order, and the 8 partials are then added in slice
// order, so the result never depends on scheduling (the CUDA kernel's order). The
// workgroup stages s's weights in workgroup memory, CHUNK at a time, so a slice scans its
// candidates there and reads only the rows of the patches the superpixel covers (~P/S of them)
// from memory: a slice's 32 threads read 128 contiguous bytes of a feats/pos row each.
// Grid: S · ⌈C/32⌉ workgroups (folded to 2-D above 65535).
// Napkin math for 576×1024 → 40: 40·4·576 B of weights; of the 2·576·1024·4 B of features and
// positions, each superpixel's workgroups read only its ~14 rows.
//
// params: [S, P, C]
// bindings: weights, feats, pos, out.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> feats: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const COLS: u32 = 32u;
const SLICES: u32 = 8u;
// Weights staged per pass: a multiple of SLICES, so a chunk's index i is ≡ p (mod SLICES).
const CHUNK: u32 = 1024u;

var<workgroup> partial: array<f32, 256>;
var<workgroup> wrow: array<f32, CHUNK>;

@compute @workgroup_size(256)
fn scatter_mean_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s_all = params[0];
    let p_all = params[1];
    let c_all = params[2];
    let blocks = (c_all + COLS - 1u) / COLS;
    let g = flat_wg(wid, nwg);
    if (g >= s_all * blocks) {
        return;
    }
    let s = g / blocks;
    let c = (g % blocks) * COLS + lid % COLS;
    let slice = lid / COLS;
    var acc = 0.0;
    for (var base = 0u; base < p_all; base += CHUNK) {
        let n = min(CHUNK, p_all - base);
        for (var i = lid; i < n; i += 256u) {
            wrow[i] = weights[s * p_all + base + i];
        }
        workgroupBarrier();
        if (c < c_all) {
            for (var i = slice; i < n; i += SLICES) {
                let wv = wrow[i];
                if (wv != 0.0) {
                    let p = base + i;
                    acc = fma(wv, feats[p * c_all + c] + pos[p * c_all + c], acc);
                }
            }
        }
        workgroupBarrier();
    }
    partial[lid] = acc;
    workgroupBarrier();
    if (slice == 0u && c < c_all) {
        var total = 0.0;
        for (var j = 0u; j < SLICES; j++) {
            total += partial[j * COLS + lid];
        }
        out[s * c_all + c] = total;
    }
}
