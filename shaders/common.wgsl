// common.wgsl: helpers shared by the op shaders. A shader whose first line is
// `// needs: common.wgsl` is compiled with this file prepended (the Rust wrapper's `Shader` const
// concatenates the two; the naga unit test does the same), so nothing here declares bindings.
//
// * Dispatch geometry: wrappers ask for a 1-D count of workgroups; the backend folds counts above
//   the per-dimension limit (65535) into a 2-D grid, so kernels compute their flat workgroup
//   index with `flat_wg` and bounds-check (the fold rounds up).
// * Activations: codes match `Activation` in src/backend/wgpu/mod.rs (`act_code`).
// * erf: WGSL has none. `erf_f32` follows fdlibm's s_erff.c rational forms (coefficients from
//   there; Copyright (C) 1993 Sun Microsystems, freely distributable with this notice): absolute
//   error ~1e-7 over the f32 range, the same as the CPU backend's libm.
// * Half weights are stored packed, two per u32, and read with unpack2x16float (core WGSL: no
//   `enable f16` needed).

fn flat_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// Element i of a weight stored as f32 (is_f16 == false) or packed f16 pairs.
fn half_or_f32(word: u32, i: u32, is_f16: bool) -> f32 {
    if (is_f16) {
        return unpack2x16float(word)[i & 1u];
    }
    return bitcast<f32>(word);
}

fn erfc_tail(ax: f32) -> f32 {
    // 1.25 <= |x| < 6: erfc(x) = exp(-x² - 0.5625 + R/S) / x, with x² split for exactness.
    let s = 1.0 / (ax * ax);
    var r: f32;
    var q: f32;
    if (ax < 2.857142857) {
        r = -9.8649440333e-03 + s * (-6.9385856390e-01 + s * (-1.0558626175e+01 + s * (-6.2375331879e+01
            + s * (-1.6239666748e+02 + s * (-1.8460508728e+02 + s * (-8.1287437439e+01 + s * -9.8143291473e+00))))));
        q = 1.0 + s * (1.9651271820e+01 + s * (1.3765776062e+02 + s * (4.3456588745e+02 + s * (6.4538726807e+02
            + s * (4.2900814819e+02 + s * (1.0863500214e+02 + s * (6.5702495575e+00 + s * -6.0424413532e-02)))))));
    } else {
        r = -9.8649431020e-03 + s * (-7.9928326607e-01 + s * (-1.7757955551e+01 + s * (-1.6063638306e+02
            + s * (-6.3756646729e+02 + s * (-1.0250950928e+03 + s * -4.8351919556e+02)))));
        q = 1.0 + s * (3.0338060379e+01 + s * (3.2579251099e+02 + s * (1.5367296143e+03 + s * (3.1998581543e+03
            + s * (2.5530502930e+03 + s * (4.7452853394e+02 + s * -2.2440952301e+01))))));
    }
    let z = bitcast<f32>(bitcast<u32>(ax) & 0xffffe000u);
    return exp(-z * z - 0.5625) * exp((z - ax) * (z + ax) + r / q) / ax;
}

fn erf_f32(x: f32) -> f32 {
    let ax = abs(x);
    if (ax < 0.84375) {
        let z = x * x;
        let r = 1.2837916613e-01 + z * (-3.2504209876e-01 + z * (-2.8481749818e-02 + z * (-5.7702702470e-03 + z * -2.3763017452e-05)));
        let s = 1.0 + z * (3.9791721106e-01 + z * (6.5022252500e-02 + z * (5.0813062117e-03 + z * (1.3249473704e-04 + z * -3.9602282413e-06))));
        return x + x * (r / s);
    }
    var y: f32;
    if (ax < 1.25) {
        let s = ax - 1.0;
        let p = -2.3621185683e-03 + s * (4.1485610604e-01 + s * (-3.7220788002e-01 + s * (3.1834661961e-01
            + s * (-1.1089469492e-01 + s * (3.5478305072e-02 + s * -2.1663755178e-03)))));
        let q = 1.0 + s * (1.0642088205e-01 + s * (5.4039794207e-01 + s * (7.1828655899e-02 + s * (1.2617121637e-01
            + s * (1.3637083583e-02 + s * 1.1984500103e-02)))));
        y = 8.4506291151e-01 + p / q;
    } else if (ax < 6.0) {
        y = 1.0 - erfc_tail(ax);
    } else {
        y = 1.0;
    }
    return select(y, -y, x < 0.0);
}

const ACT_NONE: u32 = 0u;
const ACT_GELU: u32 = 1u;
const ACT_GELU_TANH: u32 = 2u;
const ACT_QUICK_GELU: u32 = 3u;
const ACT_RELU: u32 = 4u;
const ACT_SILU: u32 = 5u;

fn act_apply(x: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return 0.5 * x * (1.0 + erf_f32(x * 0.70710678118654752)); }
        case 2u: {
            // tanh of a clamped argument: some drivers build tanh from exp and overflow to NaN.
            let u = 0.79788456080286536 * (x + 0.044715 * x * x * x);
            return 0.5 * x * (1.0 + tanh(clamp(u, -15.0, 15.0)));
        }
        case 3u: { return x / (1.0 + exp(-1.702 * x)); }
        case 4u: { return max(x, 0.0); }
        case 5u: { return x / (1.0 + exp(-x)); }
        default: { return x; }
    }
}
