//! Projector parity with the PyTorch reference (tools/reference/make_projector.py, docs/svp.md §3):
//! `mlp`, `pool{k}` (including grids k does not divide) and `svp` on the hand-made superpixel
//! cases of the fixture; S = 0; bad configs and inputs; bf16 weights. Their cost is measured by
//! `visword bench` (the projector stage), not here.

mod common;

use common::files::TempDir;
use common::{assert_close, fixture, ref_f32, Tol};
use visword::models::projector::svp::sincos_table;
use visword::models::projector::{Projector, ProjectorDims, ProjectorKind, SvpConfig};
use visword::superpixels::Superpixels;
use visword::{Backend, DType, Tensor, VarView, Weights};

const C: usize = 32;
const D: usize = 48;
const GRID: usize = 6;
const CASES: [&str; 4] = ["single", "blobs", "offset", "voronoi"];

fn dims(grid: usize) -> ProjectorDims {
    ProjectorDims { vision_width: C, llm_width: D, grid }
}

fn svp_config() -> SvpConfig {
    SvpConfig { ssa_heads: 4, ..SvpConfig::default() }
}

fn load(be: &Backend, w: &Weights, kind: ProjectorKind, grid: usize) -> visword::Result<Projector> {
    Projector::load(be, &VarView::new(w, be).pp("model"), kind, dims(grid), &svp_config())
}

fn tensor(r: &Weights, name: &str) -> Tensor {
    let (v, shape) = ref_f32(r, name);
    Tensor::from_f32(v, shape).unwrap()
}

/// The fixture case as the superpixel stage hands it over (the label map plays no part here).
fn superpixels(r: &Weights, case: &str) -> Superpixels {
    let (coverage, shape) = ref_f32(r, &format!("{case}.coverage"));
    let (geo, _) = ref_f32(r, &format!("{case}.geometry"));
    Superpixels {
        label_map: Vec::new(),
        height: 0,
        width: 0,
        count: shape[0],
        grid: GRID,
        coverage,
        geometry: geo.chunks_exact(7).map(|g| g.try_into().unwrap()).collect(),
    }
}

fn run(be: &Backend, proj: &Projector, feats: &Tensor, sp: Option<&Superpixels>) -> (Vec<f32>, Vec<usize>) {
    let y = proj.forward(be, feats, sp).unwrap();
    (be.to_vec_f32(&y).unwrap(), y.shape().to_vec())
}

/// Whole f32 projectors: a few layers of width ≤ 128 and one softmax over 36 patches, outputs of
/// magnitude ≲ 1. The error against torch is summation order only (measured max 1.8e-7), so this
/// is tighter than `F32_MODEL` (sized for deep stacks) with ~50× headroom, and still far below any
/// formula change (zeroing γ moves the svp outputs by ~1e-1).
const TOL: Tol = Tol { atol: 1e-5, rtol: 1e-4 };

#[test]
fn sincos_table_matches_reference() {
    let r = fixture("svp_projector/reference.safetensors");
    let (want, _) = ref_f32(&r, "sincos_table");
    // Both sides compute in f64 and round once: equal to within an f32 ulp.
    assert_close("sincos_table", &sincos_table(GRID, C, 10000.0), &want, Tol { atol: 1e-7, rtol: 1e-6 });
}

#[test]
fn mlp_and_pool_match_torch() {
    let be = Backend::cpu();
    let w = fixture("svp_projector/model.safetensors");
    let r = fixture("svp_projector/reference.safetensors");
    let runs = [
        (ProjectorKind::Mlp, GRID, "feats", "mlp"),
        (ProjectorKind::Pool(2), GRID, "feats", "pool2"),
        (ProjectorKind::Pool(3), GRID, "feats", "pool3"),
        (ProjectorKind::Pool(4), GRID, "feats", "pool4"),
        (ProjectorKind::Pool(2), 5, "feats_g5", "pool2_g5"),
        (ProjectorKind::Pool(3), 5, "feats_g5", "pool3_g5"),
    ];
    for (kind, grid, input, output) in runs {
        let proj = load(&be, &w, kind, grid).unwrap();
        let (got, shape) = run(&be, &proj, &tensor(&r, input), None);
        let (want, want_shape) = ref_f32(&r, output);
        assert_eq!(shape, want_shape, "{output}");
        assert_eq!(Some(shape[0]), kind.fixed_visual_tokens(grid), "{output}");
        assert_close(output, &got, &want, TOL);
    }
}

#[test]
fn svp_matches_torch() {
    let be = Backend::cpu();
    let w = fixture("svp_projector/model.safetensors");
    let r = fixture("svp_projector/reference.safetensors");
    let proj = load(&be, &w, ProjectorKind::Svp, GRID).unwrap();
    let feats = tensor(&r, "feats");
    for case in CASES {
        let sp = superpixels(&r, case);
        let (got, shape) = run(&be, &proj, &feats, Some(&sp));
        let (want, want_shape) = ref_f32(&r, &format!("{case}.svp"));
        assert_eq!(shape, want_shape, "{case}");
        assert_close(&format!("svp {case} (S = {})", sp.count), &got, &want, TOL);
    }
}

#[test]
fn svp_with_no_superpixels_gives_no_tokens() {
    let be = Backend::cpu();
    let w = fixture("svp_projector/model.safetensors");
    let r = fixture("svp_projector/reference.safetensors");
    let proj = load(&be, &w, ProjectorKind::Svp, GRID).unwrap();
    let sp = Superpixels { label_map: Vec::new(), height: 0, width: 0, count: 0, grid: GRID, coverage: Vec::new(), geometry: Vec::new() };
    let (got, shape) = run(&be, &proj, &tensor(&r, "feats"), Some(&sp));
    assert_eq!(shape, vec![0, D]);
    assert!(got.is_empty());
}

#[track_caller]
fn assert_err_mentions<T>(what: &str, res: visword::Result<T>, needle: &str) {
    match res {
        Ok(_) => panic!("{what}: expected an error mentioning `{needle}`"),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{what}: {msg}");
            assert!(msg.contains(needle), "{what}: error `{msg}` does not mention `{needle}`");
        }
    }
}

#[test]
fn svp_rejects_bad_configs_and_inputs() {
    let be = Backend::cpu();
    let w = fixture("svp_projector/model.safetensors");
    let r = fixture("svp_projector/reference.safetensors");
    let vv = VarView::new(&w, &be);
    let vv = vv.pp("model");

    let heads = SvpConfig { ssa_heads: 5, ..svp_config() };
    assert_err_mentions("heads", Projector::load(&be, &vv, ProjectorKind::Svp, dims(GRID), &heads), "svp.ssa_heads");
    // The checkpoint has 4 coverage-bias heads; 8 divide C but do not match it.
    let eight = SvpConfig { ssa_heads: 8, ..svp_config() };
    assert_err_mentions("bias heads", Projector::load(&be, &vv, ProjectorKind::Svp, dims(GRID), &eight), "coverage_bias");

    let proj = load(&be, &w, ProjectorKind::Svp, GRID).unwrap();
    let feats = tensor(&r, "feats");
    let good = superpixels(&r, "blobs");

    let mut short = good.clone();
    short.coverage.pop();
    assert_err_mentions("coverage length", proj.forward(&be, &feats, Some(&short)), "coverage has");
    let mut other_grid = good.clone();
    other_grid.grid = 5;
    assert_err_mentions("grid", proj.forward(&be, &feats, Some(&other_grid)), "patch grid");
    let mut geo = good.clone();
    geo.geometry.pop();
    assert_err_mentions("geometry rows", proj.forward(&be, &feats, Some(&geo)), "geometry rows");
    let mut empty_row = good.clone();
    empty_row.coverage[..GRID * GRID].iter_mut().for_each(|a| *a = 0.0);
    assert_err_mentions("empty row", proj.forward(&be, &feats, Some(&empty_row)), "covers no patch");
    let mut nan = good.clone();
    nan.coverage[3] = f32::NAN;
    assert_err_mentions("nan", proj.forward(&be, &feats, Some(&nan)), "non-finite");
    assert_err_mentions("no superpixels", proj.forward(&be, &feats, None), "superpixels");
    let wide = Tensor::zeros(vec![GRID * GRID, C + 4]);
    assert_err_mentions("feature width", proj.forward(&be, &wide, Some(&good)), "expected [36, 32]");

    // A checkpoint without one svp tensor: the error names it.
    let dir = TempDir::new("svp-missing");
    let path = dir.join("model.safetensors");
    let kept: Vec<(String, Tensor)> =
        w.names().filter(|n| *n != "model.svp.ssa.norm_kv.weight").map(|n| (n.to_string(), w.get(n).unwrap())).collect();
    visword::weights::save_safetensors(&path, &kept, None).unwrap();
    let partial = Weights::open(&path).unwrap();
    assert_err_mentions("missing", load(&be, &partial, ProjectorKind::Svp, GRID), "model.svp.ssa.norm_kv.weight");
    // The MLP-only projectors do not need it.
    assert!(load(&be, &partial, ProjectorKind::Mlp, GRID).is_ok());
}

/// bf16 weight matrices (norms, biases and γ stay f32 as loaded): ~3 significant digits per
/// weight through the geo MLP, SSA and MLP, outputs of magnitude ≲ 1: the policy's ~1e-2
/// (measured max 1.9e-3).
#[test]
fn svp_with_bf16_weights_stays_close() {
    let be = Backend::cpu();
    let w = fixture("svp_projector/model.safetensors");
    let r = fixture("svp_projector/reference.safetensors");
    let dir = TempDir::new("svp-bf16");
    let path = dir.join("model.safetensors");
    let bf16: Vec<(String, Tensor)> = w.names().map(|n| (n.to_string(), w.get(n).unwrap().to_dtype(DType::BF16).unwrap())).collect();
    visword::weights::save_safetensors(&path, &bf16, None).unwrap();
    let wb = Weights::open(&path).unwrap();
    let proj = load(&be, &wb, ProjectorKind::Svp, GRID).unwrap();
    let feats = tensor(&r, "feats");
    for case in CASES {
        let (got, _) = run(&be, &proj, &feats, Some(&superpixels(&r, case)));
        let (want, _) = ref_f32(&r, &format!("{case}.svp"));
        assert_close(&format!("svp bf16 {case}"), &got, &want, Tol { atol: 1e-2, rtol: 1e-2 });
    }
}
