// needs: common.wgsl norm.wgsl
// norm_subgroup.wgsl: norm.wgsl's norm_rows (LayerNorm or RMSNorm by params[4]) with one
// subgroup per row and subgroupAdd for the sums (no barriers). Compiled only where the adapter
// offers subgroups (a separate module: subgroup operations anywhere in a module need the
// feature).
//
// Geometry: 256 threads per workgroup cover params[3] rows (chosen by the host as 256 / the
// adapter's smallest subgroup size): subgroup s takes rows s, s + subgroups, ..., so the result
// is right whatever subgroup size the driver picks. Grid: ⌈rows / params[3]⌉ workgroups, folded
// to 2-D above 65535.

@compute @workgroup_size(256)
fn norm_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    let d = params[1];
    let per = params[3];
    let rms = params[4] != 0u;
    let first = flat_wg(wid, nwg) * per;
    let rounds = (per + sg_count - 1u) / sg_count;
    for (var t = 0u; t < rounds; t++) {
        let r = sg + t * sg_count;
        let row = first + r;
        let live = r < per && row < params[0];
        let base = select(0u, row * d, live);
        var mean = 0.0;
        if !rms {
            mean = subgroupAdd(select(0.0, row_sum(base, d, lane, lanes, 0u, 0.0), live)) / f32(d);
        }
        let sq = subgroupAdd(select(0.0, row_sum(base, d, lane, lanes, select(1u, 2u, rms), mean), live));
        norm_row(base, d, lane, lanes, live, mean, sq);
    }
}
