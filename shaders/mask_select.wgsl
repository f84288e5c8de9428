// needs: common.wgsl
// mask_select.wgsl: superpixel selection on the mask bitmaps of mask_stats (twin of
// kernels/mask_select.cu; spec in src/backend/cpu/mask_select.rs), so the bitmaps never leave
// the device. stats: mask_stats rows of `row` words each: an 8-word header, then h rows of
// `words` u32 bitmap words (bit b of word j of row r is rectangle cell (r, 32j + b)).
//
// mask_select: box NMS then level selection in one workgroup of 256, candidate by candidate in
// visiting order. cands [n, 7]: plane, whole, area, x0, y0, x1, y1 (checked by the caller).
// out [n]: 0 suppressed, 1 kept by NMS but rejected, 2 accepted. kept [n]: the surviving boxes,
// entry k written and read only by invocation k % 256, so it needs no barrier. NMS: each
// invocation tests its share of the survivors and ORs a clash into a workgroup flag; the flags
// rotate over three slots so one barrier per candidate suffices (the slot reset at step i was
// last read at step i − 2, before the barrier every invocation has passed). Level selection:
// the union of accepted masks is a workgroup bitmap; overlap counts are summed with an atomic
// on a double-buffered counter, then the accepted mask's words are OR-ed in (two barriers per
// candidate). Integer arithmetic only: the verdicts equal the CPU's.
// params: [n, row, words, h, nms, overlap]
// bindings: stats, cands, out, kept.
//
// mask_paint: one invocation per rectangle cell (y, x) of an h × w region map: the region of
// the last (plane, region) entry of masks [m, 2] whose bitmap holds the cell, −1 where none
// does. Workgroups of 64, folded to 2-D.
// params: [m, row, words, h, w]
// bindings: stats, masks (as cands), out.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> stats: array<u32>;
@group(0) @binding(2) var<storage, read> cands: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<i32>;
@group(0) @binding(4) var<storage, read_write> kept: array<vec4<i32>>;

const HEADER: u32 = 8u;
const THREADS: u32 = 256u;
const COVERED_WORDS: u32 = 2048u; // GPU_COVERED_WORDS in src/backend/mask_select.rs

var<workgroup> covered: array<u32, 2048>;
var<workgroup> s_clash: array<atomic<u32>, 3>;
var<workgroup> s_shared: array<atomic<u32>, 2>;

// 1000 · intersection > nms · union for inclusive boxes (x0, y0, x1, y1); every product fits
// u32 because the rectangle has at most 4 000 000 cells (checked by the caller).
fn boxes_clash(a: vec4<i32>, b: vec4<i32>, nms: u32) -> bool {
    let iw = max(min(a.z, b.z) + 1 - max(a.x, b.x), 0);
    let ih = max(min(a.w, b.w) + 1 - max(a.y, b.y), 0);
    let inter = u32(iw * ih);
    let area_a = u32((a.z - a.x + 1) * (a.w - a.y + 1));
    let area_b = u32((b.z - b.x + 1) * (b.w - b.y + 1));
    return 1000u * inter > nms * (area_a + area_b - inter);
}

@compute @workgroup_size(256)
fn mask_select(@builtin(local_invocation_index) lid: u32) {
    let n = params[0];
    let row = params[1];
    let words = params[2];
    let h = params[3];
    let nms = params[4];
    let overlap = params[5];
    if (lid < 3u) {
        atomicStore(&s_clash[lid], 0u);
    }
    if (lid < 2u) {
        atomicStore(&s_shared[lid], 0u);
    }
    for (var k = lid; k < COVERED_WORDS; k += THREADS) {
        covered[k] = 0u;
    }
    workgroupBarrier();
    var nk = 0u;
    for (var i = 0u; i < n; i++) {
        let c = 7u * i;
        let b = vec4<i32>(cands[c + 3u], cands[c + 4u], cands[c + 5u], cands[c + 6u]);
        var clash = false;
        for (var k = lid; k < nk && !clash; k += THREADS) {
            clash = boxes_clash(b, kept[k], nms);
        }
        if (clash) {
            atomicOr(&s_clash[i % 3u], 1u);
        }
        if (lid == 0u) {
            atomicStore(&s_clash[(i + 1u) % 3u], 0u);
        }
        workgroupBarrier();
        let suppressed = atomicLoad(&s_clash[i % 3u]) != 0u;
        if (!suppressed) {
            if (nk % THREADS == lid) {
                kept[nk] = b;
            }
            nk += 1u;
        }
        if (lid == 0u) {
            out[i] = select(1, 0, suppressed);
        }
    }
    storageBarrier();
    workgroupBarrier();
    for (var i = 0u; i < n; i++) {
        let c = 7u * i;
        let live = out[i] == 1;
        let whole = cands[c + 1u] != 0;
        let area = u32(cands[c + 2u]);
        let base = u32(cands[c]) * row + HEADER;
        let w0 = u32(cands[c + 3u]) / 32u;
        let y0 = u32(cands[c + 4u]);
        let nw = u32(cands[c + 5u]) / 32u - w0 + 1u;
        let items = (u32(cands[c + 6u]) - y0 + 1u) * nw;
        if (live && !whole) {
            var part = 0u;
            for (var t = lid; t < items; t += THREADS) {
                let idx = (y0 + t / nw) * words + w0 + t % nw;
                part += countOneBits(stats[base + idx] & covered[idx]);
            }
            if (part != 0u) {
                atomicAdd(&s_shared[i & 1u], part);
            }
        }
        if (lid == 0u) {
            atomicStore(&s_shared[(i + 1u) & 1u], 0u);
        }
        workgroupBarrier();
        if (live && (whole || 1000u * atomicLoad(&s_shared[i & 1u]) < overlap * area)) {
            for (var t = lid; t < items; t += THREADS) {
                let idx = (y0 + t / nw) * words + w0 + t % nw;
                covered[idx] |= stats[base + idx];
            }
            if (lid == 0u) {
                out[i] = 2;
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn mask_paint(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m = params[0];
    let row = params[1];
    let words = params[2];
    let h = params[3];
    let w = params[4];
    let cell = flat_wg(wid, nwg) * 64u + lid;
    if (cell >= h * w) {
        return;
    }
    let y = cell / w;
    let x = cell % w;
    let at = HEADER + y * words + x / 32u;
    var label = -1;
    for (var a = m; a > 0u; a--) {
        let plane = u32(cands[2u * (a - 1u)]);
        if (((stats[plane * row + at] >> (x % 32u)) & 1u) != 0u) {
            label = cands[2u * (a - 1u) + 1u];
            break;
        }
    }
    out[cell] = label;
}
