// needs: common.wgsl
// two_way.wgsl: SAM's two-way attention on factored weights (twin of the fused CPU ops in
// src/backend/cpu/; spec and composed reference in src/backend/two_way.rs). Prompt b's image
// token j scores its R rows
//
//   s[b, j, r] = x[b or 0, j] · ax[b, r] + y[j, g(r)·Dy ..][..Dy] · ay[b, r],   g(r) = r / T,
//
// tiles of TJ = 32 image tokens at a time: the x·axᵀ part through workgroup memory in chunks of
// KC channels (x tile and ax rows, both zero-padded past N, R and C), the y term (Dy per row)
// straight from memory. The scores of a tile stay in workgroup memory; nothing of size N·R or
// N·C but the output reaches memory, and x is read once per tile.
//
// two_way_update: one workgroup per (prompt, tile). Softmax within each group of T rows, then
// z = x + bias + Σ_r p[r]·u[b, r] (u streamed through workgroup memory RK rows at a time, each
// invocation 8 tokens × 4 channels), then LayerNorm over C (two-pass mean and biased variance,
// reduced through workgroup memory) written to out [B, N, C].
//
// two_way_pool: the tiles of a prompt are split into NS ranges, one workgroup each; it keeps a
// running max m and sum l per row and the unnormalised Σ_j exp(s − m)·x[j] in registers (each
// invocation 16 rows × 4 channels), rescaled when the max grows (flash-style), and writes them
// to part [B, NS, R·C + 2R]. two_way_pool_combine merges the NS partials of each output element
// in split order (deterministic, no atomics) into out [B, R, C].
//
// Limits (WgpuBackend::two_way_fits): R ≤ RMAX = 64, C ≤ CMAX = 256.
// Workgroup memory: one array of 4096 f32 (16 KiB, WebGPU's default limit): the tile's scores
// [TJ × RMAX] at P, then scratch at SCR (x and ax chunks; u rows; LayerNorm partial sums) and,
// for the pool, the per-row statistics at STATS.
//
// params: [B, Bx, N, C, R, G, Dy, T, bits(eps) (update) | NS (pool), tiles per split (pool)]
// bindings: x, y, ax, ay, u, vecs (bias, LayerNorm weight, LayerNorm bias: [3, C]), out, part.

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> ax: array<f32>;
@group(0) @binding(4) var<storage, read> ay: array<f32>;
@group(0) @binding(5) var<storage, read> u: array<f32>;
@group(0) @binding(6) var<storage, read> vecs: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> part: array<f32>;

const TJ: u32 = 32u;
const RMAX: u32 = 64u;
const CMAX: u32 = 256u;
const KC: u32 = 16u;
// Row stride of the x and ax chunks (padded against bank conflicts).
const KS: u32 = 17u;
const RK: u32 = 8u;
const P: u32 = 0u;
const SCR: u32 = 2048u;
const STATS: u32 = 3712u;

var<workgroup> sm: array<f32, 4096>;

// Scores of image tokens j0 .. j0 + TJ of prompt b against its rows into sm[P + jl·RMAX + r]:
// −inf for tokens past N, 0 for rows past R. Invocation (tj, tr) = (lid / 16, lid % 16) computes
// tokens 2tj, 2tj + 1 against rows tr + 16i. Ends with a barrier.
fn score_tile(lid: u32, b: u32, j0: u32) {
    let n = params[2];
    let c = params[3];
    let rows = params[4];
    let groups = params[5];
    let dy = params[6];
    let t = params[7];
    let xb = select(0u, b, params[1] > 1u);
    let tj = lid / 16u;
    let tr = lid % 16u;
    var acc: array<f32, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < c; k0 += KC) {
        for (var e = lid; e < TJ * KC; e += 256u) {
            let jl = e / KC;
            let k = e % KC;
            var v = 0.0;
            if (j0 + jl < n && k0 + k < c) {
                v = x[(xb * n + j0 + jl) * c + k0 + k];
            }
            sm[SCR + jl * KS + k] = v;
        }
        for (var e = lid; e < RMAX * KC; e += 256u) {
            let r = e / KC;
            let k = e % KC;
            var v = 0.0;
            if (r < rows && k0 + k < c) {
                v = ax[(b * rows + r) * c + k0 + k];
            }
            sm[SCR + TJ * KS + r * KS + k] = v;
        }
        workgroupBarrier();
        for (var k = 0u; k < KC; k++) {
            let x0 = sm[SCR + (2u * tj) * KS + k];
            let x1 = sm[SCR + (2u * tj + 1u) * KS + k];
            for (var i = 0u; i < 4u; i++) {
                let a = sm[SCR + TJ * KS + (tr + 16u * i) * KS + k];
                acc[i] += x0 * a;
                acc[4u + i] += x1 * a;
            }
        }
        workgroupBarrier();
    }
    for (var h = 0u; h < 2u; h++) {
        let jl = 2u * tj + h;
        let j = j0 + jl;
        for (var i = 0u; i < 4u; i++) {
            let r = tr + 16u * i;
            var s = 0.0;
            if (r < rows) {
                if (j < n) {
                    s = acc[4u * h + i];
                    let yo = j * groups * dy + (r / t) * dy;
                    let ao = (b * rows + r) * dy;
                    for (var d = 0u; d < dy; d++) {
                        s += y[yo + d] * ay[ao + d];
                    }
                } else {
                    s = neg_inf();
                }
            }
            sm[P + jl * RMAX + r] = s;
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn two_way_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let batch = params[0];
    let n = params[2];
    let c = params[3];
    let rows = params[4];
    let groups = params[5];
    let t = params[7];
    let eps = bitcast<f32>(params[8]);
    let tiles = (n + TJ - 1u) / TJ;
    let wg = flat_wg(wid, nwg);
    // Uniform: the whole workgroup leaves together.
    if (wg >= batch * tiles) {
        return;
    }
    let b = wg / tiles;
    let j0 = (wg % tiles) * TJ;
    let xb = select(0u, b, params[1] > 1u);
    score_tile(lid, b, j0);

    // Softmax within each group of T rows, one (token, group) per invocation.
    for (var e = lid; e < TJ * groups; e += 256u) {
        let jl = e / groups;
        let base = P + jl * RMAX + (e % groups) * t;
        if (j0 + jl < n) {
            var m = neg_inf();
            for (var i = 0u; i < t; i++) {
                m = max(m, sm[base + i]);
            }
            var sum = 0.0;
            for (var i = 0u; i < t; i++) {
                let p = exp(sm[base + i] - m);
                sm[base + i] = p;
                sum += p;
            }
            let inv = 1.0 / sum;
            for (var i = 0u; i < t; i++) {
                sm[base + i] *= inv;
            }
        } else {
            for (var i = 0u; i < t; i++) {
                sm[base + i] = 0.0;
            }
        }
    }
    workgroupBarrier();

    // z = Σ_r p[r]·u[b, r]: invocation (jg, cl) = (lid / 64, lid % 64) owns tokens 8jg .. 8jg + 8
    // and channels cl + 64q.
    let jg = lid / 64u;
    let cl = lid % 64u;
    var z: array<f32, 32>;
    for (var i = 0u; i < 32u; i++) {
        z[i] = 0.0;
    }
    for (var r0 = 0u; r0 < rows; r0 += RK) {
        for (var e = lid; e < RK * CMAX; e += 256u) {
            let r = r0 + e / CMAX;
            let col = e % CMAX;
            var v = 0.0;
            if (r < rows && col < c) {
                v = u[(b * rows + r) * c + col];
            }
            sm[SCR + e] = v;
        }
        workgroupBarrier();
        let rn = min(RK, rows - r0);
        for (var rr = 0u; rr < rn; rr++) {
            var uv: array<f32, 4>;
            for (var q = 0u; q < 4u; q++) {
                uv[q] = sm[SCR + rr * CMAX + cl + 64u * q];
            }
            for (var jj = 0u; jj < 8u; jj++) {
                let p = sm[P + (8u * jg + jj) * RMAX + r0 + rr];
                for (var q = 0u; q < 4u; q++) {
                    z[4u * jj + q] += p * uv[q];
                }
            }
        }
        workgroupBarrier();
    }

    // Residual and bias, then LayerNorm over C: partial sums of 4 channels per invocation, 64
    // per token, summed by one invocation per token.
    for (var jj = 0u; jj < 8u; jj++) {
        let j = j0 + 8u * jg + jj;
        var part_sum = 0.0;
        for (var q = 0u; q < 4u; q++) {
            let col = cl + 64u * q;
            var v = 0.0;
            if (col < c) {
                v = z[4u * jj + q] + vecs[col];
                if (j < n) {
                    v += x[(xb * n + j) * c + col];
                }
            }
            z[4u * jj + q] = v;
            part_sum += v;
        }
        sm[SCR + (8u * jg + jj) * 64u + cl] = part_sum;
    }
    workgroupBarrier();
    if (lid < TJ) {
        var s = 0.0;
        for (var i = 0u; i < 64u; i++) {
            s += sm[SCR + lid * 64u + i];
        }
        sm[P + lid] = s / f32(c);
    }
    workgroupBarrier();
    for (var jj = 0u; jj < 8u; jj++) {
        let mean = sm[P + 8u * jg + jj];
        var part_sum = 0.0;
        for (var q = 0u; q < 4u; q++) {
            if (cl + 64u * q < c) {
                let d = z[4u * jj + q] - mean;
                part_sum += d * d;
            }
        }
        sm[SCR + (8u * jg + jj) * 64u + cl] = part_sum;
    }
    workgroupBarrier();
    if (lid < TJ) {
        var s = 0.0;
        for (var i = 0u; i < 64u; i++) {
            s += sm[SCR + lid * 64u + i];
        }
        sm[P + TJ + lid] = 1.0 / sqrt(s / f32(c) + eps);
    }
    workgroupBarrier();
    for (var jj = 0u; jj < 8u; jj++) {
        let jl = 8u * jg + jj;
        let j = j0 + jl;
        if (j < n) {
            let mean = sm[P + jl];
            let rstd = sm[P + TJ + jl];
            for (var q = 0u; q < 4u; q++) {
                let col = cl + 64u * q;
                if (col < c) {
                    out[(b * n + j) * c + col] = (z[4u * jj + q] - mean) * rstd * vecs[c + col] + vecs[2u * c + col];
                }
            }
        }
    }
}

@compute @workgroup_size(256)
fn two_way_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let batch = params[0];
    let n = params[2];
    let c = params[3];
    let rows = params[4];
    let splits = params[8];
    let per_split = params[9];
    let tiles = (n + TJ - 1u) / TJ;
    let wg = flat_wg(wid, nwg);
    // Uniform: the whole workgroup leaves together.
    if (wg >= batch * splits) {
        return;
    }
    let b = wg / splits;
    let split = wg % splits;
    let xb = select(0u, b, params[1] > 1u);
    let t_end = min(tiles, (split + 1u) * per_split);
    // Running max, sum and rescale factor per row.
    let m_at = STATS;
    let l_at = STATS + RMAX;
    let scale_at = STATS + 2u * RMAX;
    if (lid < RMAX) {
        sm[m_at + lid] = neg_inf();
        sm[l_at + lid] = 0.0;
        sm[scale_at + lid] = 0.0;
    }
    // Invocation (rg, cl) = (lid / 64, lid % 64) owns rows 16rg .. 16rg + 16, channels cl + 64q.
    let rg = lid / 64u;
    let cl = lid % 64u;
    var acc: array<f32, 64>;
    for (var i = 0u; i < 64u; i++) {
        acc[i] = 0.0;
    }
    for (var tile = split * per_split; tile < t_end; tile++) {
        let j0 = tile * TJ;
        score_tile(lid, b, j0);
        if (lid < rows) {
            let m_old = sm[m_at + lid];
            var m = m_old;
            for (var jl = 0u; jl < TJ; jl++) {
                m = max(m, sm[P + jl * RMAX + lid]);
            }
            var sum = 0.0;
            for (var jl = 0u; jl < TJ; jl++) {
                let p = exp(sm[P + jl * RMAX + lid] - m);
                sm[P + jl * RMAX + lid] = p;
                sum += p;
            }
            let scale = exp(m_old - m);
            sm[scale_at + lid] = scale;
            sm[l_at + lid] = sm[l_at + lid] * scale + sum;
            sm[m_at + lid] = m;
        }
        workgroupBarrier();
        for (var i = 0u; i < 16u; i++) {
            let scale = sm[scale_at + 16u * rg + i];
            for (var q = 0u; q < 4u; q++) {
                acc[4u * i + q] *= scale;
            }
        }
        let jn = min(TJ, n - j0);
        for (var jl = 0u; jl < jn; jl++) {
            var xv: array<f32, 4>;
            for (var q = 0u; q < 4u; q++) {
                let col = cl + 64u * q;
                xv[q] = select(0.0, x[(xb * n + j0 + jl) * c + min(col, c - 1u)], col < c);
            }
            for (var i = 0u; i < 16u; i++) {
                let p = sm[P + jl * RMAX + 16u * rg + i];
                for (var q = 0u; q < 4u; q++) {
                    acc[4u * i + q] += p * xv[q];
                }
            }
        }
        workgroupBarrier();
    }
    let stride = rows * c + 2u * rows;
    let base = (b * splits + split) * stride;
    for (var i = 0u; i < 16u; i++) {
        let r = 16u * rg + i;
        for (var q = 0u; q < 4u; q++) {
            let col = cl + 64u * q;
            if (r < rows && col < c) {
                part[base + r * c + col] = acc[4u * i + q];
            }
        }
    }
    if (lid < rows) {
        part[base + rows * c + lid] = sm[m_at + lid];
        part[base + rows * c + rows + lid] = sm[l_at + lid];
    }
}

// out[b, r, col] from the NS partials of prompt b, in split order.
@compute @workgroup_size(256)
fn two_way_pool_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let batch = params[0];
    let c = params[3];
    let rows = params[4];
    let splits = params[8];
    let idx = flat_wg(wid, nwg) * 256u + lid;
    if (idx >= batch * rows * c) {
        return;
    }
    let b = idx / (rows * c);
    let rc = idx % (rows * c);
    let r = rc / c;
    let stride = rows * c + 2u * rows;
    var m = neg_inf();
    for (var s = 0u; s < splits; s++) {
        m = max(m, part[(b * splits + s) * stride + rows * c + r]);
    }
    var num = 0.0;
    var den = 0.0;
    for (var s = 0u; s < splits; s++) {
        let base = (b * splits + s) * stride;
        let w = exp(part[base + rows * c + r] - m);
        num += w * part[base + rc];
        den += w * part[base + rows * c + rows + r];
    }
    out[idx] = num / den;
}
