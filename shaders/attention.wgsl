// needs: attention_q32.wgsl
// Attention, f32, with an online softmax: the Nq × Nk score matrix never exists in memory.
//
// out[b, h, i, :] = Σ_j softmax_j(scale · q[b,h,i,:]·k[b,h/G,j,:] + bias(i, j)) · v[b,h/G,j,:]
//
// Layout: q and out hold B × H rows of Nq, k and v B × Hkv rows of Nk_all (a KV cache may hold
// more rows than the kv_len valid ones), H = G·Hkv (GQA), D ≤ 128, f32. Each operand is read or
// written through its own (batch, head, row) element strides with D contiguous, so the same
// kernels run on head-major [B, H, N, D] tensors (`attention`) and on token-major [B, N, H·D]
// ones (`attention_tokens`, where batch stride 0 shares one batch entry of q or k/v across all
// B). Causal: query i sits at absolute position kv_len − Nq + i and sees keys 0..=pos. Bias
// (SAM's decomposed relative position, k_h > 0): key j = (y, x) on a k_h × k_w grid adds
// rel_h[b,h,i,y] + rel_w[b,h,i,x], both contiguous [B, H, Nq, k_h or k_w] whatever the strides.
//
// Entry points
// * attention_fwd_f32 (Nq > 1, and any call with a bias): a workgroup of 128 threads owns a tile
//   of BQ = 32 queries of one (b, h) (the module compiled with attention_q8.wgsl in front of this
//   file instead of attention_q32.wgsl: 32 threads and 8 queries, for Nq ≤ 8 such as SAM's
//   token-to-image attention, where a 32-query tile is 78% padding), four threads per query, each holding a quarter of the query
//   row and of its output accumulator in registers as vec4s (D padded to a multiple of 4). Keys
//   arrive in tiles of BK = 8 rows of K and V staged in workgroup memory; each thread forms
//   partial dot products over its quarter of D, the four partials meet in workgroup memory, and
//   every thread of the row then runs the same online-softmax update. 12.5 KiB of workgroup
//   memory (within WebGPU's 16 KiB default). Causal tiles stop at the tile's last visible key.
//   Per tile and thread at D = 128: 512 FMAs against 136 vec4 loads from workgroup memory.
//   Flops 4·Nq·Nk·D per (b, h); K and V are read once per query tile, 8·Nk·D·⌈Nq/32⌉ bytes
//   per (b, h), mostly from L2. When query tiles are few (SAM's token-to-image attention: 7
//   tokens per head over 4096 keys), the keys are also split into n_splits chunks of `chunk`
//   keys, one workgroup per (tile, chunk), each writing its rows' unnormalised partials
//   [B·H·Nq, n_splits, D + 2] for attention_combine_f32, as decode does.
// * attention_decode_f32 (Nq = 1, no bias): flash-decoding. The valid keys are cut into
//   n_splits chunks of `chunk` keys; a workgroup of 64 threads handles one (b, h, chunk): one key
//   per thread for the score (a D-long dot product), then all threads share the 64 weights and
//   each accumulates D/64 output columns (coalesced V reads). With one split it writes the final
//   output; otherwise it writes (o, m, l) per split and attention_combine_f32 (one workgroup per
//   (b, h)) merges the splits in a fixed order, so results are deterministic. The partials are
//   contiguous [B·H, n_splits, D + 2]; only the final write to out goes through its strides.
//   Bytes moved: K and V once each, 8·kv_len·D per (b, h); flops 4·kv_len·D.
//
// * attention_fewkeys_f32 (at most 32 keys, D ≤ 16, no bias): one thread per query row with
//   the head's K and V in workgroup memory; see its section below.
//
// Bindings (the backend's convention, src/backend/wgpu/mod.rs): 0 = params (u32 words, f32 as
// bits), then the buffers in the order the wrapper passes them: 1 q (the split partials for
// combine), 2 k, 3 v, 4 out (the split partials when a call is split), 5 rel_h, 6 rel_w.
//
// Params: [0] nq, [1] kv_len, [2] d, [3] heads H, [4] group G = H/Hkv, [5] causal (0/1),
// [6] scale (f32 bits), [7] k_h (0 = no bias), [8] k_w, [9] batch·heads, [10] n_splits
// (1 = none), [11] chunk (keys per split), then the element strides (batch, head, row) of
// [12..15) q, [15..18) k, [18..21) v, [21..24) out. The wrapper checks that every index they
// reach lies inside its buffer and fits u32.
//
// Grid: 1-D counts, which the backend folds into [limit, ⌈n / limit⌉, 1] above the 65535
// per-dimension limit; `flat_wg` undoes the fold and surplus workgroups return at once.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> rel_h: array<f32>;
@group(0) @binding(6) var<storage, read> rel_w: array<f32>;

fn flat_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Where each operand's (batch, head, row) strides start in params.
const Q_STRIDES: u32 = 12u;
const K_STRIDES: u32 = 15u;
const V_STRIDES: u32 = 18u;
const O_STRIDES: u32 = 21u;

// Element offset of row `row` of head `head` in batch entry `batch` of the operand whose strides
// start at params[st].
fn at(st: u32, batch: u32, head: u32, row: u32) -> u32 {
    return batch * params[st] + head * params[st + 1u] + row * params[st + 2u];
}

// Below any finite score: the running max starts here, so exp(m − m_new) is 1 (nothing seen
// yet, o and l still 0) or underflows to 0, never NaN as −inf − (−inf) would be.
const NEG_BIG: f32 = -3.0e38;

// ---- flash forward -------------------------------------------------------------------------

const LANES: u32 = 4u;         // threads per query row
const BK: u32 = 8u;            // keys per staged tile
const FWD_THREADS: u32 = BQ * LANES; // 128 (32 with 8-query tiles)
const MAX_DV: u32 = 32u;       // vec4s per row at D = 128
const DV_PER_LANE: u32 = 8u;   // MAX_DV / LANES
const SP_STRIDE: u32 = 9u;     // BK + 1: the padding puts the 8 rows of a 32-thread warp in distinct banks

var<workgroup> k_tile: array<vec4<f32>, 256>;   // BK × MAX_DV
var<workgroup> v_tile: array<vec4<f32>, 256>;   // BK × MAX_DV
var<workgroup> partials: array<vec4<f32>, BQ * SP_STRIDE>; // one component per lane

@compute @workgroup_size(FWD_THREADS)
fn attention_fwd_f32(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let nq = params[0];
    let kv_len = params[1];
    let d = params[2];
    let heads = params[3];
    let group = params[4];
    let causal = params[5] != 0u;
    let scale = bitcast<f32>(params[6]);
    let k_h = params[7];
    let k_w = params[8];
    let bh_total = params[9];
    let n_splits = params[10];
    let chunk = params[11];

    let n_qtiles = (nq + BQ - 1u) / BQ;
    let flat = flat_wg(wid, nwg);
    if flat >= n_qtiles * bh_total * n_splits {
        return;
    }
    let split = flat % n_splits;
    let tile = flat / n_splits;
    let bh = tile / n_qtiles;
    let q0 = (tile % n_qtiles) * BQ;
    let batch = bh / heads;
    let head = bh % heads;
    let kv_head = head / group;

    let row = tid / LANES;
    let lane = tid % LANES;
    let qi = q0 + row;
    let in_range = qi < nq;
    let qi_c = min(qi, nq - 1u);
    let dv = (d + 3u) / 4u;

    // This thread's quarter of the query row: vec4 slots lane, lane + 4, ...
    var qr: array<vec4<f32>, 8>;
    var acc: array<vec4<f32>, 8>;
    let q_base = at(Q_STRIDES, batch, head, qi_c);
    for (var j = 0u; j < DV_PER_LANE; j++) {
        let slot = lane + j * LANES;
        var x = vec4<f32>(0.0);
        for (var c = 0u; c < 4u; c++) {
            let e = slot * 4u + c;
            if e < d {
                x[c] = q[q_base + e];
            }
        }
        qr[j] = x;
        acc[j] = vec4<f32>(0.0);
    }

    // Keys this tile of queries can see: all kv_len, or up to its last query's position; of
    // those, this workgroup's chunk [k_lo, k_hi).
    let n_scan = select(kv_len, kv_len - nq + min(q0 + BQ, nq), causal);
    let pos = kv_len - nq + qi_c;
    let k_lo = min(split * chunk, n_scan);
    let k_hi = select(n_scan, min(k_lo + chunk, n_scan), n_splits > 1u);
    let n_tiles = (k_hi - k_lo + BK - 1u) / BK;
    let k_base = at(K_STRIDES, batch, kv_head, 0u);
    let v_base = at(V_STRIDES, batch, kv_head, 0u);
    let k_stride = params[K_STRIDES + 2u];
    let v_stride = params[V_STRIDES + 2u];
    let has_bias = k_h > 0u;
    let bias_row = bh * nq + qi_c;

    var m = NEG_BIG;
    var l = 0.0;
    for (var t = 0u; t < n_tiles; t++) {
        let c0 = k_lo + t * BK;
        workgroupBarrier(); // the previous tile's K, V and partials are no longer read
        // The tile's BK · dv vec4 slots are spread over every thread (slot e: row e / dv,
        // column e % dv), so a small D keeps all threads loading (at D = 16 the 32 threads of an
        // 8-query tile each stage one slot, where 4 of them staged eight); keys past the
        // visible range and columns past D are zeros.
        for (var e = tid; e < BK * dv; e += FWD_THREADS) {
            let r = e / dv;
            let slot = e - r * dv;
            var kx = vec4<f32>(0.0);
            var vx = vec4<f32>(0.0);
            if c0 + r < k_hi {
                let gk = k_base + (c0 + r) * k_stride + slot * 4u;
                let gv = v_base + (c0 + r) * v_stride + slot * 4u;
                for (var c = 0u; c < 4u; c++) {
                    if slot * 4u + c < d {
                        kx[c] = k[gk + c];
                        vx[c] = v[gv + c];
                    }
                }
            }
            k_tile[e] = kx;
            v_tile[e] = vx;
        }
        workgroupBarrier();

        for (var c = 0u; c < BK; c++) {
            var s4 = vec4<f32>(0.0);
            for (var j = 0u; j < DV_PER_LANE; j++) {
                let slot = lane + j * LANES;
                if slot < dv {
                    s4 = fma(qr[j], k_tile[c * dv + slot], s4);
                }
            }
            partials[row * SP_STRIDE + c][lane] = (s4.x + s4.y) + (s4.z + s4.w);
        }
        workgroupBarrier();

        // Every thread of the row finishes the same 8 scores in the same order, so the four
        // copies of (m, l) agree bit for bit.
        var s: array<f32, 8>;
        var valid: array<bool, 8>;
        var tile_max = NEG_BIG;
        // The tile's first key on the bias grid, then stepped along it (one division per tile).
        var gy = 0u;
        var gx = 0u;
        if has_bias {
            gy = c0 / k_w;
            gx = c0 % k_w;
        }
        for (var c = 0u; c < BK; c++) {
            let p4 = partials[row * SP_STRIDE + c];
            let kc = c0 + c;
            var sc = ((p4.x + p4.y) + (p4.z + p4.w)) * scale;
            let ok = kc < k_hi && (!causal || kc <= pos);
            if has_bias {
                if ok {
                    sc += rel_h[bias_row * k_h + gy] + rel_w[bias_row * k_w + gx];
                }
                gx += 1u;
                if gx == k_w {
                    gx = 0u;
                    gy += 1u;
                }
            }
            s[c] = sc;
            valid[c] = ok;
            if ok {
                tile_max = max(tile_max, sc);
            }
        }
        let m_new = max(m, tile_max);
        let alpha = exp(m - m_new);
        l *= alpha;
        for (var j = 0u; j < DV_PER_LANE; j++) {
            acc[j] *= alpha;
        }
        for (var c = 0u; c < BK; c++) {
            if valid[c] {
                let p = exp(s[c] - m_new);
                l += p;
                for (var j = 0u; j < DV_PER_LANE; j++) {
                    let slot = lane + j * LANES;
                    if slot < dv {
                        acc[j] = fma(vec4<f32>(p), v_tile[c * dv + slot], acc[j]);
                    }
                }
            }
        }
        m = m_new;
    }

    if in_range && n_splits == 1u {
        // No visible key (kv_len = 0): zeros, as the CPU's softmax of an empty row gives.
        let inv = select(1.0 / l, 0.0, l == 0.0);
        let o_base = at(O_STRIDES, batch, head, qi);
        for (var j = 0u; j < DV_PER_LANE; j++) {
            let slot = lane + j * LANES;
            for (var c = 0u; c < 4u; c++) {
                let e = slot * 4u + c;
                if e < d {
                    out[o_base + e] = acc[j][c] * inv;
                }
            }
        }
    } else if in_range {
        // This chunk's unnormalised partial of row (bh, qi): o[0..d], then m and l (every lane of
        // the row holds the same m and l).
        let base = ((bh * nq + qi) * n_splits + split) * (d + 2u);
        for (var j = 0u; j < DV_PER_LANE; j++) {
            let slot = lane + j * LANES;
            for (var c = 0u; c < 4u; c++) {
                let e = slot * 4u + c;
                if e < d {
                    out[base + e] = acc[j][c];
                }
            }
        }
        if lane == 0u {
            out[base + d] = m;
            out[base + d + 1u] = l;
        }
    }
}

// ---- decode: one query over a KV cache, split along the sequence ---------------------------

const DEC_THREADS: u32 = 64u; // keys per step, and output columns per pass

var<workgroup> q_dec: array<f32, 128>;
var<workgroup> s_dec: array<f32, 64>;
var<workgroup> p_dec: array<f32, 64>;

@compute @workgroup_size(64)
fn attention_decode_f32(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let kv_len = params[1];
    let d = params[2];
    let heads = params[3];
    let group = params[4];
    let scale = bitcast<f32>(params[6]);
    let bh_total = params[9];
    let n_splits = params[10];
    let chunk = params[11];

    let flat = flat_wg(wid, nwg);
    if flat >= bh_total * n_splits {
        return;
    }
    let bh = flat / n_splits;
    let split = flat % n_splits;
    let batch = bh / heads;
    let head = bh % heads;
    let c_start = min(split * chunk, kv_len);
    let c_end = min(c_start + chunk, kv_len);
    let k_base = at(K_STRIDES, batch, head / group, 0u);
    let v_base = at(V_STRIDES, batch, head / group, 0u);
    let k_stride = params[K_STRIDES + 2u];
    let v_stride = params[V_STRIDES + 2u];

    let q_base = at(Q_STRIDES, batch, head, 0u);
    for (var e = tid; e < d; e += DEC_THREADS) {
        q_dec[e] = q[q_base + e];
    }
    workgroupBarrier();

    var m = NEG_BIG;
    var l = 0.0;
    var o0 = 0.0; // column tid
    var o1 = 0.0; // column tid + 64
    let n_tiles = (c_end - c_start + DEC_THREADS - 1u) / DEC_THREADS;
    for (var t = 0u; t < n_tiles; t++) {
        let tile0 = c_start + t * DEC_THREADS;
        let key = tile0 + tid;
        let ok = key < c_end;
        var sc = NEG_BIG;
        if ok {
            let k_row = k_base + key * k_stride;
            var dot = 0.0;
            for (var e = 0u; e < d; e++) {
                dot = fma(q_dec[e], k[k_row + e], dot);
            }
            sc = dot * scale;
        }
        s_dec[tid] = sc;
        workgroupBarrier();
        var tile_max = NEG_BIG;
        for (var c = 0u; c < DEC_THREADS; c++) {
            tile_max = max(tile_max, s_dec[c]);
        }
        let m_new = max(m, tile_max);
        p_dec[tid] = select(0.0, exp(sc - m_new), ok);
        workgroupBarrier();

        let alpha = exp(m - m_new);
        l *= alpha;
        o0 *= alpha;
        o1 *= alpha;
        let n_valid = min(DEC_THREADS, c_end - tile0);
        for (var c = 0u; c < n_valid; c++) {
            let p = p_dec[c];
            l += p;
            let v_row = v_base + (tile0 + c) * v_stride;
            if tid < d {
                o0 = fma(p, v[v_row + tid], o0);
            }
            if tid + DEC_THREADS < d {
                o1 = fma(p, v[v_row + tid + DEC_THREADS], o1);
            }
        }
        m = m_new;
    }

    if n_splits == 1u {
        let inv = select(1.0 / l, 0.0, l == 0.0);
        let o_base = at(O_STRIDES, batch, head, 0u);
        if tid < d {
            out[o_base + tid] = o0 * inv;
        }
        if tid + DEC_THREADS < d {
            out[o_base + tid + DEC_THREADS] = o1 * inv;
        }
    } else {
        // Unnormalised partial: o[0..d], then m and l.
        let base = (bh * n_splits + split) * (d + 2u);
        if tid < d {
            out[base + tid] = o0;
        }
        if tid + DEC_THREADS < d {
            out[base + tid + DEC_THREADS] = o1;
        }
        if tid == 0u {
            out[base + d] = m;
            out[base + d + 1u] = l;
        }
    }
}

// Merge the splits of attention_decode_f32 or attention_fwd_f32: binding 1 holds the partials
// [B·H·Nq, n_splits, D + 2]; one workgroup per query row (b, h, i) writes row i of (b, h) in
// out, through out's strides.
@compute @workgroup_size(64)
fn attention_combine_f32(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let nq = params[0];
    let d = params[2];
    let heads = params[3];
    let bh_total = params[9];
    let n_splits = params[10];
    let row = flat_wg(wid, nwg);
    if row >= bh_total * nq {
        return;
    }
    let bh = row / nq;
    let stride = d + 2u;
    let base = row * n_splits * stride;
    var m = NEG_BIG;
    for (var s = 0u; s < n_splits; s++) {
        m = max(m, q[base + s * stride + d]);
    }
    var l = 0.0;
    for (var s = 0u; s < n_splits; s++) {
        l += q[base + s * stride + d + 1u] * exp(q[base + s * stride + d] - m);
    }
    let inv = select(1.0 / l, 0.0, l == 0.0);
    let o_base = at(O_STRIDES, bh / heads, bh % heads, row % nq);
    for (var e = tid; e < d; e += DEC_THREADS) {
        var o = 0.0;
        for (var s = 0u; s < n_splits; s++) {
            o = fma(q[base + s * stride + e], exp(q[base + s * stride + d] - m), o);
        }
        out[o_base + e] = o * inv;
    }
}

// ---- a handful of keys ---------------------------------------------------------------------
//
// attention_fewkeys_f32 (at most FEW_KEYS keys, D ≤ 16, no bias: SAM's image-to-token attention,
// 4096 image queries per head over 7 prompt tokens, where the forward kernel's rounds of
// 4-lane partial dot products and online-softmax updates cost more than the 7 keys' work): a
// workgroup of 128 threads owns 128 queries of one (b, h), one query row per thread. The head's
// K and V (D padded to 16 with zeros) are staged in workgroup memory, and so are the block's q
// rows and outputs, so global reads and writes run along each row's D contiguous floats. Scores
// in two passes over the keys (the max, then the exp-sum and P·V). Twin of CUDA's
// attention_fewkeys. Grid: ⌈Nq / 128⌉ · B·H workgroups. 12.8 KiB of workgroup memory.

const FEW_THREADS: u32 = 128u;
const FEW_KEYS: u32 = 32u;
const FEW_QS: u32 = 17u; // q row stride in few_q: odd, so each thread's own row is conflict-free

var<workgroup> few_k: array<vec4<f32>, 128>; // FEW_KEYS × 4 vec4s
var<workgroup> few_v: array<vec4<f32>, 128>;
var<workgroup> few_q: array<f32, 2176>;      // FEW_THREADS × FEW_QS

@compute @workgroup_size(128)
fn attention_fewkeys_f32(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let nq = params[0];
    let nk = params[1];
    let d = params[2];
    let heads = params[3];
    let group = params[4];
    let causal = params[5] != 0u;
    let scale = bitcast<f32>(params[6]);
    let chunks = (nq + FEW_THREADS - 1u) / FEW_THREADS;
    let flat = flat_wg(wid, nwg);
    if flat >= chunks * params[9] {
        return;
    }
    let bh = flat / chunks;
    let q0 = (flat % chunks) * FEW_THREADS;
    let batch = bh / heads;
    let head = bh % heads;
    let kv_head = head / group;
    let rows = min(FEW_THREADS, nq - q0);

    // K and V: element (j, c) of the padded 16-wide rows; columns past d are zero.
    for (var idx = tid; idx < FEW_KEYS * 16u; idx += FEW_THREADS) {
        let j = idx / 16u;
        let c = idx % 16u;
        var kx = 0.0;
        var vx = 0.0;
        if j < nk && c < d {
            kx = k[at(K_STRIDES, batch, kv_head, j) + c];
            vx = v[at(V_STRIDES, batch, kv_head, j) + c];
        }
        few_k[j * 4u + c / 4u][c % 4u] = kx;
        few_v[j * 4u + c / 4u][c % 4u] = vx;
    }
    for (var idx = tid; idx < rows * d; idx += FEW_THREADS) {
        let r = idx / d;
        let c = idx % d;
        few_q[r * FEW_QS + c] = q[at(Q_STRIDES, batch, head, q0 + r) + c];
    }
    workgroupBarrier();

    let r = tid;
    if r < rows {
        var qr: array<vec4<f32>, 4>;
        for (var s = 0u; s < 4u; s++) {
            for (var c = 0u; c < 4u; c++) {
                let e = s * 4u + c;
                qr[s][c] = select(0.0, few_q[r * FEW_QS + min(e, FEW_QS - 1u)], e < d);
            }
        }
        // Causal: query q0 + r sits at absolute position nk − nq + q0 + r.
        var kend = nk;
        if causal {
            kend = nk - nq + q0 + r + 1u;
        }
        var m = NEG_BIG;
        for (var j = 0u; j < kend; j++) {
            let sc = dot(qr[0], few_k[j * 4u]) + dot(qr[1], few_k[j * 4u + 1u]) + dot(qr[2], few_k[j * 4u + 2u]) + dot(qr[3], few_k[j * 4u + 3u]);
            m = max(m, sc * scale);
        }
        var l = 0.0;
        var acc: array<vec4<f32>, 4>;
        for (var j = 0u; j < kend; j++) {
            let sc = dot(qr[0], few_k[j * 4u]) + dot(qr[1], few_k[j * 4u + 1u]) + dot(qr[2], few_k[j * 4u + 2u]) + dot(qr[3], few_k[j * 4u + 3u]);
            let p = exp(sc * scale - m);
            l += p;
            for (var s = 0u; s < 4u; s++) {
                acc[s] = fma(vec4<f32>(p), few_v[j * 4u + s], acc[s]);
            }
        }
        let inv = select(0.0, 1.0 / l, l > 0.0);
        // Each thread overwrites only its own row of few_q, which only it has read.
        for (var e = 0u; e < d; e++) {
            few_q[r * FEW_QS + e] = acc[e / 4u][e % 4u] * inv;
        }
    }
    workgroupBarrier();
    for (var idx = tid; idx < rows * d; idx += FEW_THREADS) {
        let rr = idx / d;
        let c = idx % d;
        out[at(O_STRIDES, batch, head, q0 + rr) + c] = few_q[rr * FEW_QS + c];
    }
}
