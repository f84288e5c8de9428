// attention_q32.wgsl: the query tile of attention.wgsl's forward kernel (queries per workgroup),
// prepended to it for the module most calls use; attention_q8.wgsl is the small-tile one.
const BQ: u32 = 32u;
