//! DINOv2 (layer scale, GELU MLP and SwiGLU FFN, position interpolation) and its image
//! processor against transformers 5.24 (fixtures made by tools/reference/make_vision.py), the
//! `embed` command's DINOv2 defaults, and bad inputs.

mod common;

use common::files::TempDir;
use common::vision::{check_run, edited_copy, get, PIXELS_EXACT};
use common::{assert_close, assert_tensor_close, fixture, fixtures_dir, F32_MODEL};
use visword::cli::embed;
use visword::models::dinov2::{Dinov2Config, Dinov2Model};
use visword::models::vit::{self, VisionTower};
use visword::preprocess::{Flavor, ImageProcessor};
use visword::weights::save_safetensors;
use visword::{Backend, Error, Tensor, Weights};

/// Load fixture `name` and compare it with its reference at the native size ("native") and at
/// a size that needs the position table interpolated ("interp").
fn check_native_and_interpolated(name: &str) -> Dinov2Model {
    let model = Dinov2Model::load(&fixtures_dir().join(name), &Backend::cpu()).unwrap();
    let reference = fixture(&format!("{name}/reference.safetensors"));
    check_run(&model, &reference, "native");
    check_run(&model, &reference, "interp");
    model
}

#[test]
fn dinov2_with_q_k_v_packed_matches_transformers() {
    // The one-projection form the CUDA backend loads (vit::Projections::Packed), here on the CPU
    // through the composed `attention_packed`.
    let dir = fixtures_dir().join("dinov2_small");
    let (path, json) = vit::read_config(&dir).unwrap();
    let cfg = Dinov2Config::from_json(&path, &json).unwrap();
    let model = vit::with_weights(&dir, &Backend::cpu(), "dinov2", "embeddings.cls_token", |vv| Dinov2Model::with_qkv_packing(cfg, vv, true)).unwrap();
    let reference = fixture("dinov2_small/reference.safetensors");
    check_run(&model, &reference, "native");
    check_run(&model, &reference, "interp");
}

#[test]
fn dinov2_with_layer_scale_matches_transformers_native_and_interpolated() {
    // 35×42 → a 5×6 grid from the 4×4 table: bicubic position interpolation.
    let model = check_native_and_interpolated("dinov2_small");
    assert!(!model.config.use_swiglu_ffn);
}

#[test]
fn dinov2_swiglu_matches_transformers_native_and_interpolated() {
    // 28×21 → a 4×3 grid: a non-square, smaller grid.
    let model = check_native_and_interpolated("dinov2_swiglu");
    assert!(model.config.use_swiglu_ffn);
    assert_eq!(model.config.swiglu_hidden(), 56);
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
    let d = TempDir::new("dinov2-renamed");
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
    let d = TempDir::new("dinov2-nopp");
    std::fs::copy(fixtures_dir().join("dinov2_small/config.json"), d.join("config.json")).unwrap();
    assert_eq!(ImageProcessor::for_model_dir(&d).unwrap(), ImageProcessor::dinov2());
}

#[test]
fn embed_defaults_to_the_normed_last_hidden_state_for_dinov2() {
    let d = TempDir::new("dinov2-embed");
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

#[test]
fn bad_inputs_give_typed_errors() {
    let be = Backend::cpu();
    let d = edited_copy("dinov2_small", "dinov2-missing", |t| t.retain(|(n, _)| n != "encoder.layer.2.layer_scale2.lambda1"));
    match Dinov2Model::load(&d, &be) {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "encoder.layer.2.layer_scale2.lambda1"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    let d = edited_copy("dinov2_small", "dinov2-shape", |t| {
        for (n, x) in t.iter_mut() {
            if n == "embeddings.position_embeddings" {
                *x = Tensor::zeros(vec![1, 10, 36]);
            }
        }
    });
    assert!(matches!(Dinov2Model::load(&d, &be), Err(Error::TensorShape { name, .. }) if name == "embeddings.position_embeddings"));

    let d = TempDir::new("dinov2-cfg");
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
