// needs: common.wgsl
// conv.wgsl: the data-movement half of conv2d (twin of kernels/conv.cu); the multiply-adds
// run in matmul.wgsl.
//
// * im2col: x [B, Cin, H, W] → cols [B, OH·OW, Cin·kh·kw] (row per output pixel, zero padding
//   applied here), so conv2d is one batched GEMM cols · Wᵀ whose output is stored transposed
//   into [B, Cout, OH·OW]. One thread per cols element; 8 bytes moved per element.
//
// params: [n, kk, np, cin, h, w, kh, kw, ow, stride, pad]
// bindings: x, cols.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> cols: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn im2col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = flat_wg(wid, nwg) * WG + lid;
    if (e >= params[0]) {
        return;
    }
    let kk = params[1];
    let np = params[2];
    let cin = params[3];
    let h = params[4];
    let w = params[5];
    let kh = params[6];
    let kw = params[7];
    let ow = params[8];
    let stride = params[9];
    let pad = params[10];
    let r = e % kk;
    let p = (e / kk) % np;
    let b = e / (kk * np);
    let ci = r / (kh * kw);
    let ky = (r / kw) % kh;
    let kx = r % kw;
    // Unsigned: a coordinate left of / above the padding wraps to a huge value and fails < h.
    let iy = (p / ow) * stride + ky - pad;
    let ix = (p % ow) * stride + kx - pad;
    var v = 0.0;
    if ((p / ow) * stride + ky >= pad && iy < h && (p % ow) * stride + kx >= pad && ix < w) {
        v = src[((b * cin + ci) * h + iy) * w + ix];
    }
    cols[e] = v;
}
