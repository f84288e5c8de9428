// needs: common.wgsl matmul.wgsl
// matmul_store.wgsl: the GEMMs' fused epilogue (matmul.wgsl, matmul_wide.wgsl), over their
// shared `params`, `bias`, `residual` and `c` bindings.

// Bias, activation and residual for the 4 outputs C[z, m, n..n+4], and the stores.
fn store4(z: u32, m: u32, n: u32, v: vec4<f32>) {
    if (m >= params[0]) {
        return;
    }
    let has_bias = params[13] != 0u;
    let act = params[14];
    let has_res = params[15] != 0u;
    for (var j = 0u; j < 4u; j++) {
        let nj = n + j;
        if (nj < params[1]) {
            var o = v[j];
            if (has_bias) {
                o += bias[nj];
            }
            o = act_apply(o, act);
            let ci = z * params[9] + m * params[10] + nj * params[11];
            if (has_res) {
                o += residual[select(ci, ci % params[16], params[16] != 0u)];
            }
            c[ci] = o;
        }
    }
}
