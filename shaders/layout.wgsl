// needs: common.wgsl
// layout.wgsl: data movement (twin of kernels/layout.cu): permute, strided block copies (narrow,
// concat, KV-cache writes), pad2d, embedding gather. One thread per output element, 256 per
// workgroup, 1-D grid folded to 2-D above 65535 workgroups. Pure copies: 8 bytes per element
// (6 for an f16 table), no flops.
//
// params:
//   permute     [n, ndim, out_shape[8], src_stride[8]]   (src_stride: the input's stride of each
//                                                          output dim)
//   copy_block  [n, chunk, src_stride, src_offset, dst_stride, dst_offset]
//               element e of block o = e / chunk: dst[o·dst_stride + dst_offset + e % chunk]
//               = src[o·src_stride + src_offset + e % chunk]
//   pad2d       [n_out, h, w, out_h, out_w, top, left]
//   embedding   [n = ids·d, d, table_is_f16]
// bindings: permute/copy_block/pad2d (src, dst); embedding (table as u32 words, ids, dst).

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> gathered: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn permute(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * WG + lid;
    if (i >= params[0]) {
        return;
    }
    var r = i;
    var off = 0u;
    for (var d = params[1]; d > 0u; d -= 1u) {
        let size = params[2u + d - 1u];
        off += (r % size) * params[10u + d - 1u];
        r = r / size;
    }
    dst[i] = src[off];
}

@compute @workgroup_size(256)
fn copy_block(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = flat_wg(wid, nwg) * WG + lid;
    if (e >= params[0]) {
        return;
    }
    let chunk = params[1];
    let o = e / chunk;
    let j = e % chunk;
    dst[o * params[4] + params[5] + j] = src[o * params[2] + params[3] + j];
}

@compute @workgroup_size(256)
fn pad2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * WG + lid;
    if (i >= params[0]) {
        return;
    }
    let h = params[1];
    let w = params[2];
    let oh = params[3];
    let ow = params[4];
    let c = i % ow;
    let r = (i / ow) % oh;
    let o = i / (ow * oh);
    // Unsigned wrap-around puts rows/cols above the padding out of range too.
    let sr = r - params[5];
    let sc = c - params[6];
    var v = 0.0;
    if (r >= params[5] && sr < h && c >= params[6] && sc < w) {
        v = src[(o * h + sr) * w + sc];
    }
    dst[i] = v;
}

@compute @workgroup_size(256)
fn embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_wg(wid, nwg) * WG + lid;
    if (i >= params[0]) {
        return;
    }
    let d = params[1];
    let is_f16 = params[2] != 0u;
    let e = ids[i / d] * d + i % d;
    gathered[i] = half_or_f32(table[select(e, e >> 1u, is_f16)], e, is_f16);
}
