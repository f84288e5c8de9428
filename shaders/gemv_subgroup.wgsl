// needs: common.wgsl gemv_batch1.wgsl gemv.wgsl
// gemv_subgroup.wgsl: the GEMV of gemv.wgsl with one subgroup per output row and a subgroupAdd
// instead of the workgroup-memory tree (no barriers). Compiled only where the adapter offers
// subgroups (a separate module: subgroup operations anywhere in a module need the feature).
//
// Geometry: 256 threads per workgroup cover `rows_per_workgroup` rows (params[6], chosen by the
// host as 256 / the adapter's smallest subgroup size): subgroup s takes rows s, s + subgroups,
// ..., so the result is right whatever subgroup size the driver picks. Grid: ⌈N / rows⌉
// workgroups, folded to 2-D above 65535.

@compute @workgroup_size(256)
fn gemv_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    let n_all = params[0];
    let rows = params[6];
    let base = flat_wg(wid, nwg) * rows;
    let rounds = (rows + sg_count - 1u) / sg_count;
    for (var t = 0u; t < rounds; t++) {
        let r = sg + t * sg_count;
        let row = base + r;
        let live = r < rows && row < n_all;
        var s = 0.0;
        if (live) {
            s = row_partial(row, lane, lanes);
        }
        let total = subgroupAdd(s);
        if (live && lane == 0u) {
            y[row] = finish(row, total);
        }
    }
}
