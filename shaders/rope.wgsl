// needs: common.wgsl
// rope.wgsl: rotary position embedding, HF "rotate_half" layout (twin of kernels/rope.cu).
//
// x [B·H, N, D] (D even, h = D/2), cos/sin [max_pos, h]; token t uses row pos_offset + t:
//   out[i]   = x[i]·cos[i] − x[i+h]·sin[i]
//   out[i+h] = x[i+h]·cos[i] + x[i]·sin[i]          (i < h)
// One thread per (row, t, i) pair, 256 per workgroup, 1-D grid (folded above 65535 groups).
// 16 bytes read + 8 written per pair, 6 flops.
//
// rope_write_kv (the cache half of Backend::rope_qk_write_kv, a step's new keys and values):
// x = k [B·Hkv, N, D] roped as above but written into k_cache [B·Hkv, max, D] at rows
// pos_offset + t, and v [B·Hkv, N, D] copied into v_cache there: rope(k), write_kv(k) and
// write_kv(v) in one dispatch. Same threads (each also moves its two v elements).
//
// params: rope [pairs = B·H·N·h, N, h, pos_offset]; rope_write_kv [pairs, N, h, pos_offset, max]
// bindings: x, cos, sin, out (rope); x = k, cos, sin, v, k_cache, v_cache (rope_write_kv)

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> v_new: array<f32>;
@group(0) @binding(6) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<f32>;

// Pair p's indices (its (bh, t) row, i, and the element offset of its row in x) and its
// rotated values.
struct Pair {
    row: u32,
    i: u32,
    base: u32,
    lo: f32,
    hi: f32,
}

fn rotate(p: u32) -> Pair {
    let h = params[2];
    let i = p % h;
    let row = p / h;           // (bh, t) flattened
    let base = row * 2u * h;
    let tab = (params[3] + row % params[1]) * h + i;
    let c = cos_t[tab];
    let s = sin_t[tab];
    let a = x[base + i];
    let b = x[base + i + h];
    return Pair(row, i, base, a * c - b * s, b * c + a * s);
}

@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = flat_wg(wid, nwg) * 256u + lid;
    if (p >= params[0]) {
        return;
    }
    let r = rotate(p);
    out[r.base + r.i] = r.lo;
    out[r.base + r.i + params[2]] = r.hi;
}

@compute @workgroup_size(256)
fn rope_write_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = flat_wg(wid, nwg) * 256u + lid;
    if (p >= params[0]) {
        return;
    }
    let r = rotate(p);
    let n = params[1];
    let h = params[2];
    // Row (bh, t) of the new tokens goes to cache row bh·max + pos + t.
    let dst = ((r.row / n) * params[4] + params[3] + r.row % n) * 2u * h;
    k_cache[dst + r.i] = r.lo;
    k_cache[dst + r.i + h] = r.hi;
    v_cache[dst + r.i] = v_new[r.base + r.i];
    v_cache[dst + r.i + h] = v_new[r.base + r.i + h];
}
