// needs: common.wgsl gemv_batch1.wgsl gemv_many.wgsl
// gemv_many_subgroup.wgsl: the fused GEMVs of gemv_many.wgsl with one subgroup per output row
// and subgroupAdd instead of the workgroup-memory trees (no barriers). Compiled only where the
// adapter offers subgroups (a separate module: subgroup operations anywhere in a module need the
// feature).
//
// Geometry as gemv_subgroup.wgsl: 256 threads per workgroup cover `rows_per_workgroup` rows
// (params[6], 256 / the adapter's smallest subgroup size); subgroup s takes rows s,
// s + subgroups, ..., so the result is right whatever subgroup size the driver picks.

@compute @workgroup_size(256)
fn gemv_many_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    let rows = params[6];
    let base = flat_wg(wid, nwg) * rows;
    let total = rows_total();
    let two = params[4] == MODE_NORM_SWIGLU;
    let rounds = (rows + sg_count - 1u) / sg_count;
    for (var t = 0u; t < rounds; t++) {
        let r = sg + t * sg_count;
        let i = base + r;
        let live = r < rows && i < total;
        let row = row_of(i);
        var p = Partial(0.0, 0.0, 0.0);
        if (live) {
            p = row_partial(row, two, lane, lanes);
        }
        let sum = Partial(subgroupAdd(p.a), subgroupAdd(p.b), subgroupAdd(p.ss));
        if (live && lane == 0u) {
            finish_row(row, sum);
        }
    }
}
