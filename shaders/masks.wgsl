// needs: common.wgsl
// masks.wgsl: SAM mask filtering on the device (twin of kernels/masks.cu; spec in
// src/backend/cpu/masks.rs). Per mask plane, over the cell rectangle [y0, y0+h) × [x0, x0+w):
// the counts of logit > 0, > offset and > −offset, the box of the logit > 0 cells, and the binary
// mask as u32 words (bit b of word j of row r is cell (y0 + r, x0 + 32j + b)).
//
// Output row per plane: [area, stable, loose, bx0, by0, bx1, by1, 0] (box inclusive and
// rectangle-relative, all −1 for an empty mask; i32 bits in a u32 array), then the h·⌈w/32⌉
// words. One workgroup of 64 threads per plane (folded to 2-D above 65535 planes); thread t
// builds words t, t+64, ... from 32 consecutive logits each. Counts and box are integers
// combined with workgroup atomics: exact, and independent of scheduling.
//
// params: [planes, ph, pw, y0, x0, h, w, bits(offset)]
// bindings: logits, out.
//
// upscale_masks: SAM's upscaler tail fused with the hypernetwork product (twin of
// upscale_masks_f32; spec in src/backend/cpu/masks.rs). One invocation per pixel (r, q) of the
// 2E × 2E map, r = 2i + a, q = 2j + b: LayerNorm + GELU over its C1 channels y[p, i, j, a·2 + b]
// (kept in a private array), then for each of its 2×2 output pixels (2r + c, 2q + d) the C2
// features gelu(b2 + w2[(c·2 + d)·C2 + o] · g) and their dot products with the M hypernetwork
// rows of prompt p, written to out [P, M, 4E, 4E] (f32 bits). Workgroups of 64, folded to 2-D.
// Limits (WgpuBackend::upscale_masks_fits): C1 ≤ 64, M ≤ 8.
// params: [P, E, C1, C2, M, bits(eps)]
// bindings: y (as logits), out, ln_w, ln_b, w2, b2, hyper.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@group(0) @binding(3) var<storage, read> ln_w: array<f32>;
@group(0) @binding(4) var<storage, read> ln_b: array<f32>;
@group(0) @binding(5) var<storage, read> w2: array<f32>;
@group(0) @binding(6) var<storage, read> b2: array<f32>;
@group(0) @binding(7) var<storage, read> hyper: array<f32>;

const HEADER: u32 = 8u;

var<workgroup> s_area: atomic<u32>;
var<workgroup> s_stable: atomic<u32>;
var<workgroup> s_loose: atomic<u32>;
var<workgroup> s_box: array<atomic<i32>, 4>;

@compute @workgroup_size(64)
fn mask_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let planes = params[0];
    let ph = params[1];
    let pw = params[2];
    let y0 = params[3];
    let x0 = params[4];
    let h = params[5];
    let w = params[6];
    let offset = bitcast<f32>(params[7]);
    let plane = flat_wg(wid, nwg);
    if (lid == 0u) {
        atomicStore(&s_area, 0u);
        atomicStore(&s_stable, 0u);
        atomicStore(&s_loose, 0u);
        atomicStore(&s_box[0], 0x7fffffff);
        atomicStore(&s_box[1], 0x7fffffff);
        atomicStore(&s_box[2], -1);
        atomicStore(&s_box[3], -1);
    }
    workgroupBarrier();
    // Uniform: every thread of the workgroup takes the same branch, so the barriers below are
    // reached by all of them.
    let live = plane < planes;
    let words = (w + 31u) / 32u;
    let base = plane * ph * pw;
    let o = plane * (HEADER + h * words);
    var area = 0u;
    var stable = 0u;
    var loose = 0u;
    var bx0 = 0x7fffffff;
    var by0 = 0x7fffffff;
    var bx1 = -1;
    var by1 = -1;
    if (live) {
        for (var item = lid; item < h * words; item += 64u) {
            let r = item / words;
            let j = item % words;
            let row = base + (y0 + r) * pw + x0;
            let n = min(32u, w - j * 32u);
            var word = 0u;
            for (var b = 0u; b < n; b++) {
                let v = logits[row + j * 32u + b];
                word |= select(0u, 1u << b, v > 0.0);
                stable += select(0u, 1u, v > offset);
                loose += select(0u, 1u, v > -offset);
            }
            out[o + HEADER + item] = word;
            if (word != 0u) {
                area += countOneBits(word);
                bx0 = min(bx0, i32(j * 32u + firstTrailingBit(word)));
                bx1 = max(bx1, i32(j * 32u + firstLeadingBit(word)));
                by0 = min(by0, i32(r));
                by1 = max(by1, i32(r));
            }
        }
        atomicAdd(&s_area, area);
        atomicAdd(&s_stable, stable);
        atomicAdd(&s_loose, loose);
        atomicMin(&s_box[0], bx0);
        atomicMin(&s_box[1], by0);
        atomicMax(&s_box[2], bx1);
        atomicMax(&s_box[3], by1);
    }
    workgroupBarrier();
    if (live && lid == 0u) {
        let a = atomicLoad(&s_area);
        out[o] = a;
        out[o + 1u] = atomicLoad(&s_stable);
        out[o + 2u] = atomicLoad(&s_loose);
        for (var i = 0u; i < 4u; i++) {
            out[o + 3u + i] = select(bitcast<u32>(atomicLoad(&s_box[i])), 0xffffffffu, a == 0u);
        }
        out[o + 7u] = 0u;
    }
}

@compute @workgroup_size(64)
fn upscale_masks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let P = params[0];
    let E = params[1];
    let C1 = params[2];
    let C2 = params[3];
    let M = params[4];
    let eps = bitcast<f32>(params[5]);
    let side2 = 2u * E;
    let idx = flat_wg(wid, nwg) * 64u + lid;
    if (idx >= P * side2 * side2) {
        return;
    }
    let p = idx / (side2 * side2);
    let r = (idx / side2) % side2;
    let q = idx % side2;
    let base = (((p * E + r / 2u) * E + q / 2u) * 4u + (r % 2u) * 2u + q % 2u) * C1;
    var g: array<f32, 64>;
    var mean = 0.0;
    for (var c = 0u; c < C1; c++) {
        g[c] = logits[base + c];
        mean += g[c];
    }
    mean /= f32(C1);
    var var_ = 0.0;
    for (var c = 0u; c < C1; c++) {
        let d = g[c] - mean;
        var_ += d * d;
    }
    let rstd = inverseSqrt(var_ / f32(C1) + eps);
    for (var c = 0u; c < C1; c++) {
        g[c] = act_apply((g[c] - mean) * rstd * ln_w[c] + ln_b[c], ACT_GELU);
    }
    let L = 4u * E;
    for (var cd = 0u; cd < 4u; cd++) {
        var acc: array<f32, 8>;
        for (var m = 0u; m < M; m++) {
            acc[m] = 0.0;
        }
        for (var o = 0u; o < C2; o++) {
            let row = (cd * C2 + o) * C1;
            var z = b2[o];
            for (var c = 0u; c < C1; c++) {
                z = fma(w2[row + c], g[c], z);
            }
            z = act_apply(z, ACT_GELU);
            for (var m = 0u; m < M; m++) {
                acc[m] = fma(hyper[(p * M + m) * C2 + o], z, acc[m]);
            }
        }
        let oy = 2u * r + cd / 2u;
        let ox = 2u * q + cd % 2u;
        for (var m = 0u; m < M; m++) {
            out[((p * M + m) * L + oy) * L + ox] = bitcast<u32>(acc[m]);
        }
    }
}
