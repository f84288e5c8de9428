//! DINOv2 (layer scale, GELU MLP and SwiGLU FFN, position interpolation) and its image
//! processor against transformers 5.24 (fixtures made by tools/reference/make_vision.py), the
//! `embed` command's DINOv2 defaults, and bad inputs.

mod common;

use std::path::PathBuf;

use common::{assert_close, assert_tensor_close, fixture, fixtures_dir, F32_MODEL};
use visword::cli::embed;
use visword::models::dinov2::Dinov2Model;
use visword::models::vit::{self, VisionTower};
use visword::preprocess::{Flavor, ImageProcessor};
use visword::weights::save_safetensors;
use visword::{Backend, Error, Tensor, Weights};

/// See tests/model_clip.rs: preprocessing is exact against the backend it targets.
const PIXELS_EXACT: common::Tol = common::Tol { atol: 1e-5, rtol: 1e-6 };

fn get(w: &Weights, name: &str) -> Tensor {
    w.get(name).unwrap_or_else(|e| panic!("{e}"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("visword-dinov2-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn check_run(model: &Dinov2Model, reference: &Weights, run: &str) {
    let be = Backend::cpu();
    let px = get(reference, &format!("{run}.pixel_values"));
    let out = model.forward(&be, &px, true).unwrap();
    let n = model.num_layers();
    assert_eq!(out.hidden_states.len(), n + 1);
    for (i, h) in out.hidden_states.iter().enumerate() {
        assert_tensor_close(&format!("{run}.hidden_states.{i}"), h, &get(reference, &format!("{run}.hidden_states.{i}")), F32_MODEL);
    }
    assert_tensor_close(&format!("{run}.last_hidden_state"), &out.last_hidden_state, &get(reference, &format!("{run}.last_hidden_state")), F32_MODEL);
    assert_tensor_close(&format!("{run}.pooler_output"), &out.pooler_output, &get(reference, &format!("{run}.pooler_output")), F32_MODEL);
    let s = px.shape();
    assert_eq!(out.grid, (s[2] / model.config.patch_size, s[3] / model.config.patch_size));

    for k in [-(n as i64) - 1, -2, -1, 0, 1] {
        let f = model.feature_layer(&be, &px, k).unwrap();
        let idx = vit::resolve_layer(k, n).unwrap();
        assert_eq!(f.to_f32_vec().unwrap(), out.hidden_states[idx].to_f32_vec().unwrap(), "feature_layer({k})");
    }
}

#[test]
fn dinov2_with_layer_scale_matches_transformers_native_and_interpolated() {
    let be = Backend::cpu();
    let model = Dinov2Model::load(&fixtures_dir().join("dinov2_small"), &be).unwrap();
    assert!(!model.config.use_swiglu_ffn);
    let reference = fixture("dinov2_small/reference.safetensors");
    check_run(&model, &reference, "native");
    // 35×42 → a 5×6 grid from the 4×4 table: bicubic position interpolation.
    check_run(&model, &reference, "interp");
}

#[test]
fn dinov2_swiglu_matches_transformers_native_and_interpolated() {
    let be = Backend::cpu();
    let model = Dinov2Model::load(&fixtures_dir().join("dinov2_swiglu"), &be).unwrap();
    assert!(model.config.use_swiglu_ffn);
    assert_eq!(model.config.swiglu_hidden(), 56);
    let reference = fixture("dinov2_swiglu/reference.safetensors");
    check_run(&model, &reference, "native");
    // 28×21 → a 4×3 grid: a non-square, smaller grid.
    check_run(&model, &reference, "interp");
}

/// transformers 5 names the projections q/k/v/o_proj and gate/up/down_proj in memory; a
/// checkpoint written with those names loads to the same model.
#[test]
fn dinov2_accepts_transformers5_tensor_names() {
    let be = Backend::cpu();
    let src = fixtures_dir().join("dinov2_swiglu");
    let w = Weights::open(src.join("model.safetensors")).unwrap();
    let mut tensors = Vec::new();
    for n in w.names() {
        let t = get(&w, n);
        let t = Tensor::from_f32(t.to_f32_vec().unwrap(), t.shape().to_vec()).unwrap();
        let renamed = n
            .replace("attention.attention.query", "attention.q_proj")
            .replace("attention.attention.key", "attention.k_proj")
            .replace("attention.attention.value", "attention.v_proj")
            .replace("attention.output.dense", "attention.o_proj")
            .replace("mlp.weights_out", "mlp.down_proj");
        if n.contains("mlp.weights_in") {
            let v = t.to_f32_vec().unwrap();
            let half = v.len() / 2;
            let rows = t.dim(0) / 2;
            let shape: Vec<usize> = std::iter::once(rows).chain(t.shape()[1..].iter().copied()).collect();
            let (g, u) = (n.replace("weights_in", "gate_proj"), n.replace("weights_in", "up_proj"));
            tensors.push((g, Tensor::from_f32(v[..half].to_vec(), shape.clone()).unwrap()));
            tensors.push((u, Tensor::from_f32(v[half..].to_vec(), shape).unwrap()));
        } else {
            tensors.push((renamed, t));
        }
    }
    let d = scratch("renamed");
    std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
    save_safetensors(&d.join("model.safetensors"), &tensors, None).unwrap();
    let model = Dinov2Model::load(&d, &be).unwrap();
    check_run(&model, &fixture("dinov2_swiglu/reference.safetensors"), "native");
}

#[test]
fn dinov2_processor_matches_transformers_on_a_photo() {
    for name in ["dinov2_small", "dinov2_swiglu"] {
        let dir = fixtures_dir().join(name);
        let reference = fixture(&format!("{name}/reference.safetensors"));
        let mut p = ImageProcessor::for_model_dir(&dir).unwrap();
        assert_eq!(p.image_mean, visword::preprocess::IMAGENET_MEAN);
        let img = fixtures_dir().join("images").join("chelsea_120x80.png");
        let px = p.preprocess_file(&img, 1 << 20).unwrap();
        assert_tensor_close(&format!("{name} pixel_values (torchvision)"), &px, &get(&reference, "image.torchvision"), PIXELS_EXACT);
        p.flavor = Flavor::Pil;
        let px = p.preprocess_file(&img, 1 << 20).unwrap();
        assert_tensor_close(&format!("{name} pixel_values (PIL)"), &px, &get(&reference, "image.pil"), PIXELS_EXACT);
    }
    // Without a preprocessor_config.json a DINOv2 directory gets the published processor.
    let d = scratch("nopp");
    std::fs::copy(fixtures_dir().join("dinov2_small/config.json"), d.join("config.json")).unwrap();
    assert_eq!(ImageProcessor::for_model_dir(&d).unwrap(), ImageProcessor::dinov2());
}

#[test]
fn embed_defaults_to_the_normed_last_hidden_state_for_dinov2() {
    let d = scratch("embed");
    let reference = fixture("dinov2_small/reference.safetensors");
    let pv = d.join("px.safetensors");
    save_safetensors(&pv, &[("pixel_values".into(), get(&reference, "interp.pixel_values"))], None).unwrap();
    let a = embed::Args {
        model: fixtures_dir().join("dinov2_small"),
        image: None,
        output: Some(d.join("feats.safetensors")),
        pixel_values: Some(pv),
        layer: None,
        keep_cls: false,
        interpolate_pos_encoding: false,
        dump: Some(d.join("dump.safetensors")),
        backend: "auto".into(),
        max_pixels: 1 << 20,
    };
    embed::run(&a).unwrap();
    let dump = Weights::open(d.join("dump.safetensors")).unwrap();
    for n in ["last_hidden_state", "pooler_output", "hidden_states.0", "hidden_states.3"] {
        assert_tensor_close(n, &get(&dump, n), &get(&reference, &format!("interp.{n}")), F32_MODEL);
    }
    assert!(!dump.contains("hidden_states.4"));
    let feats = Weights::open(d.join("feats.safetensors")).unwrap();
    let f = get(&feats, "features");
    assert_eq!(f.shape(), [1, 30, 36]);
    let (want, _) = common::ref_f32(&reference, "interp.last_hidden_state");
    assert_close("features", &f.to_f32_vec().unwrap(), &want[36..], F32_MODEL);
    assert_eq!(feats.metadata.get("grid").map(String::as_str), Some("5,6"));
    assert_eq!(feats.metadata.get("layer").map(String::as_str), Some("last_hidden_state"));
}

fn edited_copy(tag: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let src = fixtures_dir().join("dinov2_small");
    let d = scratch(tag);
    std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
    let w = Weights::open(src.join("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        w.names().map(|n| (n.to_string(), Tensor::from_f32(get(&w, n).to_f32_vec().unwrap(), get(&w, n).shape().to_vec()).unwrap())).collect();
    edit(&mut tensors);
    save_safetensors(&d.join("model.safetensors"), &tensors, None).unwrap();
    d
}

#[test]
fn bad_inputs_give_typed_errors() {
    let be = Backend::cpu();
    let d = edited_copy("missing", |t| t.retain(|(n, _)| n != "encoder.layer.2.layer_scale2.lambda1"));
    match Dinov2Model::load(&d, &be) {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "encoder.layer.2.layer_scale2.lambda1"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    let d = edited_copy("shape", |t| {
        for (n, x) in t.iter_mut() {
            if n == "embeddings.position_embeddings" {
                *x = Tensor::zeros(vec![1, 10, 36]);
            }
        }
    });
    assert!(matches!(Dinov2Model::load(&d, &be), Err(Error::TensorShape { name, .. }) if name == "embeddings.position_embeddings"));

    let d = scratch("cfg");
    for (i, cfg) in [
        r#"{"model_type": "dinov2", "hidden_size": 36, "num_attention_heads": 5}"#,
        r#"{"model_type": "dinov2", "image_size": [28, 21]}"#,
        r#"{"model_type": "dinov2", "mlp_ratio": -1}"#,
        r#"{"model_type": "dinov2", "patch_size": 0}"#,
        r#"{"model_type": "dinov2", "hidden_act": "tanh"}"#,
    ]
    .iter()
    .enumerate()
    {
        let sub = d.join(i.to_string());
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("config.json"), cfg).unwrap();
        assert!(matches!(Dinov2Model::load(&sub, &be), Err(Error::Config { .. })), "{cfg}");
    }
    // A DINOv2 config on a CLIP checkpoint: the tensors are missing, not mis-read.
    let sub = d.join("mixed");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(fixtures_dir().join("dinov2_small/config.json"), sub.join("config.json")).unwrap();
    std::fs::copy(fixtures_dir().join("clip_quick/model.safetensors"), sub.join("model.safetensors")).unwrap();
    assert!(matches!(VisionTower::load(&sub, &be), Err(Error::MissingTensor { .. })));

    let model = Dinov2Model::load(&fixtures_dir().join("dinov2_small"), &be).unwrap();
    for shape in [vec![1, 3, 28], vec![1, 2, 28, 28], vec![1, 3, 6, 28]] {
        match model.forward(&be, &Tensor::zeros(shape.clone()), false) {
            Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "pixel_values"),
            other => panic!("{shape:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    // Any size with at least one patch works (positions are interpolated), including batches.
    let out = model.forward(&be, &Tensor::zeros(vec![2, 3, 7, 50]), false).unwrap();
    assert_eq!(out.last_hidden_state.shape(), [2, 1 + 7, 36]);
}
