//! CLIP vision tower and image preprocessing against transformers 5.24 (fixtures made by
//! tools/reference/make_vision.py), the `embed` command, and bad inputs.

mod common;

use std::path::{Path, PathBuf};

use common::files::TempDir;
use common::vision::{check_run, edited_copy, get, PIXELS_EXACT};
use common::{assert_close, assert_tensor_close, fixture, fixtures_dir, F32_MODEL};
use visword::cli::embed;
use visword::models::clip::{ClipVisionConfig, ClipVisionModel};
use visword::models::vit::{self, VisionTower};
use visword::preprocess::{Flavor, ImageProcessor};
use visword::weights::save_safetensors;
use visword::{Backend, Error, Tensor, Weights};

fn image_path() -> PathBuf {
    fixtures_dir().join("images").join("chelsea_120x80.png")
}

#[test]
fn clip_quick_gelu_matches_transformers() {
    let be = Backend::cpu();
    let dir = fixtures_dir().join("clip_quick");
    let model = ClipVisionModel::load(&dir, &be).unwrap();
    assert_eq!(model.config.hidden_act, visword::Activation::QuickGelu);
    check_run(&model, &fixture("clip_quick/reference.safetensors"), "native");
}

#[test]
fn clip_with_q_k_v_packed_matches_transformers() {
    // The one-projection form the CUDA backend loads (vit::Projections::Packed), here on the CPU
    // through the composed `attention_packed`.
    let be = Backend::cpu();
    let dir = fixtures_dir().join("clip_gelu");
    let (path, json) = vit::read_config(&dir).unwrap();
    let cfg = ClipVisionConfig::from_model_config(&path, &json).unwrap();
    let mut model = vit::with_weights(&dir, &be, "vision_model", "embeddings.class_embedding", |vv| ClipVisionModel::with_qkv_packing(cfg, vv, true)).unwrap();
    let reference = fixture("clip_gelu/reference.safetensors");
    check_run(&model, &reference, "native");
    model.interpolate_pos_encoding = true;
    check_run(&model, &reference, "interp");
}

#[test]
fn clip_full_checkpoint_gelu_and_interpolation_match_transformers() {
    let be = Backend::cpu();
    let dir = fixtures_dir().join("clip_gelu");
    let mut model = ClipVisionModel::load(&dir, &be).unwrap();
    assert_eq!(model.config.hidden_act, visword::Activation::Gelu);
    let reference = fixture("clip_gelu/reference.safetensors");
    check_run(&model, &reference, "native");
    // A 35×42 input is refused unless position interpolation is on, as in transformers.
    let px = get(&reference, "interp.pixel_values");
    assert!(matches!(model.forward(&be, &px, false), Err(Error::InvalidArgument { .. })));
    model.interpolate_pos_encoding = true;
    check_run(&model, &reference, "interp");
}

#[test]
fn vision_tower_dispatches_on_model_type() {
    let be = Backend::cpu();
    for name in ["clip_quick", "clip_gelu"] {
        let t = VisionTower::load(&fixtures_dir().join(name), &be).unwrap();
        assert!(matches!(t, VisionTower::Clip(_)), "{name}");
    }
}

/// Each model directory's own preprocessor_config.json, on the photo, against both backends.
#[test]
fn clip_processor_matches_transformers_on_a_photo() {
    for name in ["clip_quick", "clip_gelu"] {
        let dir = fixtures_dir().join(name);
        let reference = fixture(&format!("{name}/reference.safetensors"));
        let mut p = ImageProcessor::for_model_dir(&dir).unwrap();
        let px = p.preprocess_file(&image_path(), 1 << 20).unwrap();
        assert_tensor_close(&format!("{name} pixel_values (torchvision)"), &px, &get(&reference, "image.torchvision"), PIXELS_EXACT);
        p.flavor = Flavor::Pil;
        let px = p.preprocess_file(&image_path(), 1 << 20).unwrap();
        assert_tensor_close(&format!("{name} pixel_values (PIL)"), &px, &get(&reference, "image.pil"), PIXELS_EXACT);
    }
}

/// Upscaling, bilinear to an exact size, and a crop that needs padding; each flavor against its
/// backend exactly, and the default flavor against the other backend within the stated
/// tolerance (mean |err| < 1e-2 of normalised values) where the two backends agree on layout.
#[test]
fn processor_cases_match_both_backends() {
    let reference = fixture("images/preprocess_reference.safetensors");
    for case in ["clip_upscale", "bilinear_exact", "pad_crop"] {
        let cfg = fixtures_dir().join("images").join("processors").join(format!("{case}.json"));
        let mut p = ImageProcessor::from_file(&cfg, &ImageProcessor::clip(224)).unwrap();
        let tv = p.preprocess_file(&image_path(), 1 << 20).unwrap();
        assert_tensor_close(&format!("{case} (torchvision)"), &tv, &get(&reference, &format!("{case}.torchvision")), PIXELS_EXACT);
        p.flavor = Flavor::Pil;
        let pil = p.preprocess_file(&image_path(), 1 << 20).unwrap();
        let want_pil = get(&reference, &format!("{case}.pil"));
        assert_tensor_close(&format!("{case} (PIL)"), &pil, &want_pil, PIXELS_EXACT);
        if case != "pad_crop" {
            // The backends place odd padding differently; elsewhere they differ by rounding only.
            let r = common::compare(&tv.to_f32_vec().unwrap(), &want_pil.to_f32_vec().unwrap(), PIXELS_EXACT);
            eprintln!("{case}: torchvision flavor vs PIL backend: max {:.4}, mean {:.6}", r.max_abs, r.mean_abs);
            assert!(r.mean_abs < 1e-2 && r.max_abs < 0.05, "{case}: mean {} max {}", r.mean_abs, r.max_abs);
        }
    }
}

#[test]
fn processor_config_errors_are_typed() {
    let d = TempDir::new("clip-ppcfg");
    let base = ImageProcessor::clip(224);
    for (i, bad) in [
        r#"{"resample": 1}"#,
        r#"{"size": {"longest_edge": 3}}"#,
        r#"{"size": "big"}"#,
        r#"{"image_mean": [0.5, 0.5]}"#,
        r#"{"image_std": [0.5, 0.0, 0.5]}"#,
        r#"{"do_resize": "yes"}"#,
        "not json",
    ]
    .iter()
    .enumerate()
    {
        let p = d.join(format!("{i}.json"));
        std::fs::write(&p, bad).unwrap();
        match ImageProcessor::from_file(&p, &base) {
            Err(Error::Config { path, .. }) => assert_eq!(path, p),
            other => panic!("{bad}: expected a config error, got {other:?}"),
        }
    }
    assert!(matches!(ImageProcessor::from_file(&d.join("missing.json"), &base), Err(Error::Io { .. })));
}

#[test]
fn image_errors_are_typed() {
    let d = TempDir::new("clip-images");
    let p = ImageProcessor::clip(30);
    assert!(matches!(p.preprocess_file(&d.join("missing.png"), 1 << 20), Err(Error::Io { .. })));
    let empty = d.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(p.preprocess_file(&empty, 1 << 20), Err(Error::Image { .. })));
    let corrupt = d.join("corrupt.png");
    let mut bytes = std::fs::read(image_path()).unwrap();
    bytes.truncate(200);
    std::fs::write(&corrupt, &bytes).unwrap();
    assert!(matches!(p.preprocess_file(&corrupt, 1 << 20), Err(Error::Image { .. })));
    // The photo is 120×80 = 9600 pixels.
    match p.preprocess_file(&image_path(), 9599) {
        Err(Error::Image { msg, .. }) => assert!(msg.contains("over the limit"), "{msg}"),
        other => panic!("expected a pixel-limit error, got {other:?}"),
    }
    assert!(p.preprocess_file(&image_path(), 9600).is_ok());
}

#[test]
fn bad_pixel_values_are_refused() {
    let be = Backend::cpu();
    let model = ClipVisionModel::load(&fixtures_dir().join("clip_quick"), &be).unwrap();
    for shape in [vec![1, 3, 30], vec![1, 4, 30, 30], vec![1, 1, 30, 30], vec![1, 3, 29, 30], vec![0, 3, 30, 30], vec![1, 3, 4, 4]] {
        let px = Tensor::zeros(shape.clone());
        match model.forward(&be, &px, false) {
            Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "pixel_values"),
            other => panic!("{shape:?}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn bad_model_directories_give_typed_errors() {
    let be = Backend::cpu();
    assert!(matches!(ClipVisionModel::load(Path::new("/nonexistent/model"), &be), Err(Error::Config { .. })));

    let d = TempDir::new("clip-noconfig");
    assert!(matches!(ClipVisionModel::load(&d, &be), Err(Error::Io { path, .. }) if path.ends_with("config.json")));

    let d = edited_copy("clip_quick", "clip-missing", |t| t.retain(|(n, _)| n != "encoder.layers.1.mlp.fc2.bias"));
    match ClipVisionModel::load(&d, &be) {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "encoder.layers.1.mlp.fc2.bias"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }

    let d = edited_copy("clip_quick", "clip-shape", |t| {
        for (n, x) in t.iter_mut() {
            if n == "encoder.layers.0.mlp.fc1.weight" {
                *x = x.reshape(&[36, 70]).unwrap();
            }
        }
    });
    match ClipVisionModel::load(&d, &be) {
        Err(Error::TensorShape { name, expected, got }) => {
            assert_eq!(name, "encoder.layers.0.mlp.fc1.weight");
            assert_eq!((expected, got), (vec![70, 36], vec![36, 70]));
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }

    let d = TempDir::new("clip-badcfg");
    for (i, cfg) in [
        r#"{"model_type": "clip_vision_model", "hidden_size": 36, "num_attention_heads": 5}"#,
        r#"{"model_type": "clip_vision_model", "hidden_act": "swish_gelu"}"#,
        r#"{"model_type": "clip_vision_model", "image_size": 4, "patch_size": 6}"#,
        r#"{"model_type": "llama"}"#,
        r#"{"model_type": "clip_vision_model", "hidden_size": "big"}"#,
        "[1, 2",
    ]
    .iter()
    .enumerate()
    {
        let sub = d.join(i.to_string());
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("config.json"), cfg).unwrap();
        assert!(matches!(ClipVisionModel::load(&sub, &be), Err(Error::Config { .. })), "{cfg}");
        assert!(matches!(VisionTower::load(&sub, &be), Err(Error::Config { .. })), "{cfg}");
    }
}

fn args(model: &str) -> embed::Args {
    embed::Args {
        model: fixtures_dir().join(model),
        image: None,
        output: None,
        pixel_values: None,
        layer: None,
        keep_cls: false,
        interpolate_pos_encoding: false,
        dump: None,
        backend: "cpu".into(),
        max_pixels: 1 << 20,
    }
}

#[test]
fn embed_command_dumps_hf_fields_and_features() {
    let d = TempDir::new("clip-embed");
    let reference = fixture("clip_quick/reference.safetensors");
    let pv = d.join("px.safetensors");
    save_safetensors(&pv, &[("pixel_values".into(), get(&reference, "native.pixel_values"))], None).unwrap();

    let mut a = args("clip_quick");
    a.pixel_values = Some(pv.clone());
    a.dump = Some(d.join("dump.safetensors"));
    a.output = Some(d.join("feats.safetensors"));
    embed::run(&a).unwrap();
    let dump = Weights::open(d.join("dump.safetensors")).unwrap();
    let mut names: Vec<&str> = dump.names().collect();
    names.sort();
    assert_eq!(names, ["hidden_states.0", "hidden_states.1", "hidden_states.2", "hidden_states.3", "last_hidden_state", "pooler_output"]);
    for n in names {
        assert_tensor_close(n, &get(&dump, n), &get(&reference, &format!("native.{n}")), F32_MODEL);
    }
    // Default features: the penultimate layer's patch tokens (LLaVA's choice).
    let feats = Weights::open(d.join("feats.safetensors")).unwrap();
    let f = get(&feats, "features");
    let (want, shape) = common::ref_f32(&reference, "native.hidden_states.2");
    assert_eq!(f.shape(), [1, 25, 36]);
    assert_eq!(shape, [1, 26, 36]);
    assert_close("features", &f.to_f32_vec().unwrap(), &want[36..], F32_MODEL);
    assert_eq!(feats.metadata.get("grid").map(String::as_str), Some("5,5"));

    // From the photo, without --dump: preprocessing is exact, so the same features result.
    let mut a = args("clip_quick");
    a.image = Some(image_path());
    a.output = Some(d.join("feats_image.safetensors"));
    a.layer = Some(-1);
    a.keep_cls = true;
    embed::run(&a).unwrap();
    let f = get(&Weights::open(d.join("feats_image.safetensors")).unwrap(), "features");
    assert_tensor_close("features from the photo", &f, &get(&reference, "native.hidden_states.3"), F32_MODEL);
}

#[test]
fn embed_command_errors_are_typed() {
    let d = TempDir::new("clip-embed_err");
    let mut a = args("clip_quick");
    a.output = Some(d.join("o.safetensors"));
    assert!(matches!(embed::run(&a), Err(Error::InvalidArgument { .. })), "no input");
    a.image = Some(image_path());
    a.pixel_values = Some(d.join("px.safetensors"));
    assert!(matches!(embed::run(&a), Err(Error::InvalidArgument { .. })), "two inputs");
    a.image = None;
    assert!(matches!(embed::run(&a), Err(Error::Io { .. })), "missing pixel file");

    save_safetensors(&d.join("px.safetensors"), &[("pixels".into(), Tensor::zeros(vec![1, 3, 30, 30]))], None).unwrap();
    assert!(matches!(embed::run(&a), Err(Error::MissingTensor { .. })), "no pixel_values tensor");
    save_safetensors(&d.join("px.safetensors"), &[("pixel_values".into(), Tensor::zeros(vec![3, 30, 30]))], None).unwrap();
    assert!(matches!(embed::run(&a), Err(Error::InvalidArgument { .. })), "3-d pixel_values");
    save_safetensors(&d.join("px.safetensors"), &[("pixel_values".into(), Tensor::zeros(vec![1, 4, 30, 30]))], None).unwrap();
    assert!(matches!(embed::run(&a), Err(Error::InvalidArgument { .. })), "4 channels");
    save_safetensors(&d.join("px.safetensors"), &[("pixel_values".into(), Tensor::zeros(vec![1, 3, 30, 30]))], None).unwrap();
    a.max_pixels = 899;
    assert!(matches!(embed::run(&a), Err(Error::InvalidArgument { arg, .. }) if arg == "--pixel-values"), "over the pixel limit");
    a.max_pixels = 900;
    embed::run(&a).unwrap();
    std::fs::remove_file(d.join("o.safetensors")).unwrap();

    let mut a = args("clip_quick");
    a.image = Some(image_path());
    assert!(matches!(embed::run(&a), Err(Error::InvalidArgument { .. })), "no output");
    a.output = Some(d.join("o.safetensors"));
    a.layer = Some(7);
    assert!(matches!(embed::run(&a), Err(Error::InvalidArgument { .. })), "layer out of range");
    a.layer = None;
    a.backend = "tpu".into();
    assert!(matches!(embed::run(&a), Err(Error::InvalidArgument { .. })), "unknown backend");
    a.backend = "cpu".into();
    a.output = Some(d.join("no_such_dir").join("o.safetensors"));
    assert!(matches!(embed::run(&a), Err(Error::Output { .. })), "unwritable output");
    // None of the failed runs left an output behind.
    assert!(!d.join("o.safetensors").exists());
}

/// bf16 and f16 checkpoints load (norms, biases and positions widened to f32; matmul weights
/// kept in their dtype) and stay close to the f32 reference: the weights' rounding (2^-9 relative
/// for bf16) is the only new error.
#[test]
fn half_precision_checkpoints_run() {
    let be = Backend::cpu();
    let reference = fixture("clip_quick/reference.safetensors");
    for dtype in [visword::DType::BF16, visword::DType::F16] {
        let d = edited_copy("clip_quick", &format!("clip-{dtype}"), |t| {
            for (_, x) in t.iter_mut() {
                *x = x.to_dtype(dtype).unwrap();
            }
        });
        let model = ClipVisionModel::load(&d, &be).unwrap();
        let out = model.forward(&be, &get(&reference, "native.pixel_values"), false).unwrap();
        let tol = if dtype == visword::DType::BF16 { common::Tol { atol: 5e-2, rtol: 2e-2 } } else { common::Tol { atol: 5e-3, rtol: 2e-3 } };
        assert_tensor_close(&format!("{dtype} last_hidden_state"), &out.last_hidden_state, &get(&reference, "native.last_hidden_state"), tol);
    }
}
