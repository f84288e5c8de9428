//! SAM parity with transformers' `SamModel` on the tiny seeded checkpoint made by
//! tools/reference/make_sam.py (tests/fixtures/sam_tiny), plus the error paths and the CLI.
//!
//! The fixture's 8×8 grid with window 3 makes every windowed layer pad to 9×9; layers 1 and 3
//! attend globally. Cases a–e cover point prompts (with negative and padding labels), a box with
//! a point, boxes alone, a mask with a point, and a mask alone; `img_*` covers the image
//! processor, coordinate scaling and mask postprocessing.

mod common;

use std::path::{Path, PathBuf};

use common::files::TempDir;
use common::{assert_close, fixtures_dir, ref_f32, Tol, F32_MODEL};
use visword::cli::sam::{run, Args};
use visword::models::sam::image_encoder::get_rel_pos;
use visword::models::sam::postprocess::upscale_masks;
use visword::models::sam::preprocess::{preprocess, transform_point};
use visword::models::sam::{PointPrompt, Prompts, Sam};
use visword::weights::save_safetensors;
use visword::{Backend, Error, Tensor, Weights};

fn model_dir() -> PathBuf {
    fixtures_dir().join("sam_tiny")
}

fn reference() -> Weights {
    Weights::open(model_dir().join("reference.safetensors")).expect("reference.safetensors")
}

fn load() -> (Backend, Sam) {
    let be = Backend::cpu();
    let sam = Sam::load(&model_dir(), &be).expect("load sam_tiny");
    (be, sam)
}

fn ref_tensor(r: &Weights, name: &str) -> Tensor {
    r.get(name).unwrap_or_else(|e| panic!("{name}: {e}")).to_f32().unwrap()
}

/// Points `[1, P, N, 2]` and labels `[1, P, N]` (`{prefix}input_points`, `{prefix}input_labels`)
/// from the reference as prompts.
fn points_from(r: &Weights, prefix: &str) -> Vec<Vec<PointPrompt>> {
    let (pts, ps) = ref_f32(r, &format!("{prefix}input_points"));
    let (labels, _) = ref_f32(r, &format!("{prefix}input_labels"));
    let (p, n) = (ps[1], ps[2]);
    (0..p)
        .map(|i| (0..n).map(|j| PointPrompt { x: pts[(i * n + j) * 2], y: pts[(i * n + j) * 2 + 1], label: labels[i * n + j] as i32 }).collect())
        .collect()
}

fn boxes_from(r: &Weights, name: &str) -> Vec<[f32; 4]> {
    let (b, _) = ref_f32(r, name);
    b.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

fn image_embeddings(be: &Backend, sam: &Sam, r: &Weights) -> Tensor {
    sam.image_embeddings(be, &ref_tensor(r, "pixel_values")).expect("image encoder")
}

/// Run a prompt case and compare its outputs with the reference.
fn check_case(prefix: &str, prompts: Prompts, multimask: bool) {
    let (be, sam) = load();
    let r = reference();
    let emb = image_embeddings(&be, &sam, &r);
    let out = sam.predict(&be, &emb, &prompts, multimask).expect("predict");
    let (want_m, shape_m) = ref_f32(&r, &format!("{prefix}_pred_masks"));
    let (want_i, shape_i) = ref_f32(&r, &format!("{prefix}_iou_scores"));
    assert_eq!(out.pred_masks.shape(), shape_m, "{prefix}: pred_masks shape");
    assert_eq!(out.iou_scores.shape(), shape_i, "{prefix}: iou_scores shape");
    assert_close(&format!("{prefix} pred_masks"), &be.to_vec_f32(&out.pred_masks).unwrap(), &want_m, F32_MODEL);
    assert_close(&format!("{prefix} iou_scores"), &be.to_vec_f32(&out.iou_scores).unwrap(), &want_i, F32_MODEL);
    // The image side prepared once serves any number of prompt batches (automatic mask
    // generation); a mask prompt needs `predict`.
    let image = sam.prepare(&be, &emb).expect("prepare");
    if prompts.mask.is_some() {
        assert!(sam.predict_prepared(&be, &image, &prompts, multimask).is_err(), "{prefix}: a mask prompt on prepared keys");
        return;
    }
    for run in 0..2 {
        let out = sam.predict_prepared(&be, &image, &prompts, multimask).expect("predict_prepared");
        assert_close(&format!("{prefix} pred_masks, prepared, run {run}"), &be.to_vec_f32(&out.pred_masks).unwrap(), &want_m, F32_MODEL);
        assert_close(&format!("{prefix} iou_scores, prepared, run {run}"), &be.to_vec_f32(&out.iou_scores).unwrap(), &want_i, F32_MODEL);
    }
}

#[test]
fn image_embeddings_match_transformers() {
    let (be, sam) = load();
    let r = reference();
    let emb = image_embeddings(&be, &sam, &r);
    let (want, shape) = ref_f32(&r, "image_embeddings");
    assert_eq!(emb.shape(), shape);
    assert_close("image_embeddings", &be.to_vec_f32(&emb).unwrap(), &want, F32_MODEL);
}

#[test]
fn multi_point_prompts_multimask() {
    let r = reference();
    check_case("a", Prompts { points: points_from(&r, "a_"), ..Default::default() }, true);
}

#[test]
fn box_and_point_single_mask() {
    let r = reference();
    let prompts = Prompts { points: points_from(&r, "b_"), boxes: boxes_from(&r, "b_input_boxes"), mask: None };
    check_case("b", prompts, false);
}

#[test]
fn mask_and_point_prompt() {
    let r = reference();
    let prompts = Prompts { points: points_from(&r, "c_"), boxes: vec![], mask: Some(ref_tensor(&r, "c_input_masks")) };
    check_case("c", prompts, true);
}

#[test]
fn two_boxes_without_points() {
    let r = reference();
    check_case("d", Prompts { points: vec![], boxes: boxes_from(&r, "d_input_boxes"), mask: None }, true);
}

#[test]
fn mask_prompt_alone() {
    let r = reference();
    check_case("e", Prompts { points: vec![], boxes: vec![], mask: Some(ref_tensor(&r, "e_input_masks")) }, false);
}

#[test]
fn padding_shorter_point_lists_matches_explicit_padding() {
    // Case a's second prompt is [(64, 64, fg), padding]; giving it as a one-point list must be
    // padded to the same tokens.
    let r = reference();
    let mut points = points_from(&r, "a_");
    points[1].truncate(1);
    check_case("a", Prompts { points, ..Default::default() }, true);
}

#[test]
fn preprocessing_matches_the_image_processor() {
    let r = reference();
    let img = visword::image_io::load_rgb(&model_dir().join("image.png"), 1 << 20).unwrap();
    let pre = preprocess(&img, 128).unwrap();
    assert_eq!(pre.original_size, (120, 160));
    assert_eq!(pre.resized_size, (96, 128));
    let (want, shape) = ref_f32(&r, "pixel_values");
    assert_eq!(pre.pixel_values.shape(), shape);
    // Exact up to f32 rounding of the normalisation: the resize is bit-exact in 8 bits.
    assert_close("pixel_values", pre.pixel_values.to_f32_vec().unwrap().as_slice(), &want, common::F32_OP);
}

#[test]
fn image_path_coordinates_and_postprocessing() {
    let (be, sam) = load();
    let r = reference();
    let (orig, _) = ref_f32(&r, "img_points_original");
    let (labels, _) = ref_f32(&r, "img_labels");
    let (bx, _) = ref_f32(&r, "img_box_original");
    let (original, resized) = ((120, 160), (96, 128));
    let points: Vec<PointPrompt> = orig
        .chunks(2)
        .zip(&labels)
        .map(|(p, &l)| {
            let (x, y) = transform_point(p[0], p[1], original, resized);
            PointPrompt { x, y, label: l as i32 }
        })
        .collect();
    let (x0, y0) = transform_point(bx[0], bx[1], original, resized);
    let (x1, y1) = transform_point(bx[2], bx[3], original, resized);
    let got: Vec<f32> = points.iter().flat_map(|p| [p.x, p.y]).collect();
    assert_close("img_input_points", &got, &ref_f32(&r, "img_input_points").0, common::F32_OP);
    assert_close("img_input_boxes", &[x0, y0, x1, y1], &ref_f32(&r, "img_input_boxes").0, common::F32_OP);

    let emb = image_embeddings(&be, &sam, &r);
    let prompts = Prompts { points: vec![points], boxes: vec![[x0, y0, x1, y1]], mask: None };
    let out = sam.predict(&be, &emb, &prompts, true).unwrap();
    let masks = be.to_vec_f32(&out.pred_masks).unwrap();
    assert_close("img pred_masks", &masks, &ref_f32(&r, "img_pred_masks").0, F32_MODEL);
    assert_close("img iou_scores", &be.to_vec_f32(&out.iou_scores).unwrap(), &ref_f32(&r, "img_iou_scores").0, F32_MODEL);

    // Postprocessing on the reference logits isolates it from model error.
    let (low, _) = ref_f32(&r, "img_pred_masks");
    let full = upscale_masks(&low, 3, (32, 32), 128, resized, original).unwrap();
    let (want, shape) = ref_f32(&r, "img_masks_full");
    assert_eq!(shape, [1, 3, 120, 160]);
    assert_close("img_masks_full", &full, &want, Tol { atol: 1e-5, rtol: 1e-5 });
}

#[test]
fn rel_pos_interpolation_matches_get_rel_pos() {
    let r = reference();
    let (table, ts) = ref_f32(&r, "relpos_table");
    for (q, k, name) in [(5, 5, "relpos_q5_k5"), (3, 5, "relpos_q3_k5")] {
        let got = get_rel_pos(&table, ts[0], ts[1], q, k).unwrap();
        let (want, shape) = ref_f32(&r, name);
        assert_eq!(shape, [q, k, ts[1]]);
        assert_close(name, &got, &want, common::F32_OP);
    }
}

/// Every `step`-th row and column of `[.., H, W]` planes.
fn strided(v: &[f32], planes: usize, h: usize, w: usize, step: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for p in 0..planes {
        for y in (0..h).step_by(step) {
            for x in (0..w).step_by(step) {
                out.push(v[(p * h + y) * w + x]);
            }
        }
    }
    out
}

#[test]
fn released_geometry_1024_input() {
    // 1024 input: 64×64 grid, windows of 14 padded to 70, a 64×64 global layer, 256×256 masks.
    let dir = fixtures_dir().join("sam_1024");
    let be = Backend::cpu();
    let sam = Sam::load(&dir, &be).expect("load sam_1024");
    let r = Weights::open(dir.join("reference.safetensors")).unwrap();
    let s = 1024;
    let pixels: Vec<f32> = (0..3 * s * s)
        .map(|i| {
            let (c, y, x) = (i / (s * s), (i / s) % s, i % s);
            (((7 * x + 13 * y + 29 * c) % 256) as f32 - 128.0) / 64.0
        })
        .collect();
    let pv = Tensor::from_f32(pixels, vec![1, 3, s, s]).unwrap();
    let t0 = std::time::Instant::now();
    let emb = sam.image_embeddings(&be, &pv).unwrap();
    eprintln!("1024 image encoder (16 wide, 2 layers): {:.2?}", t0.elapsed());
    assert_eq!(emb.shape(), [1, 16, 64, 64]);
    let got = strided(&be.to_vec_f32(&emb).unwrap(), 16, 64, 64, 4);
    assert_close("1024 image_embeddings (every 4th)", &got, &ref_f32(&r, "image_embeddings_stride4").0, F32_MODEL);

    let prompts = Prompts { points: points_from(&r, ""), boxes: boxes_from(&r, "input_boxes"), mask: None };
    let out = sam.predict(&be, &emb, &prompts, true).unwrap();
    assert_eq!(out.pred_masks.shape(), [1, 1, 3, 256, 256]);
    let got = strided(&be.to_vec_f32(&out.pred_masks).unwrap(), 3, 256, 256, 8);
    assert_close("1024 pred_masks (every 8th)", &got, &ref_f32(&r, "pred_masks_stride8").0, F32_MODEL);
    assert_close("1024 iou_scores", &be.to_vec_f32(&out.iou_scores).unwrap(), &ref_f32(&r, "iou_scores").0, F32_MODEL);
}

// ---- error paths -------------------------------------------------------------------------

/// Copy the fixture checkpoint with `edit` applied to its tensor list.
fn edited_checkpoint(name: &str, edit: impl Fn(&mut Vec<(String, Tensor)>)) -> TempDir {
    let dir = TempDir::new(&format!("sam-{name}"));
    std::fs::copy(model_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    let w = Weights::open(model_dir().join("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Tensor)> = w.names().map(|n| (n.to_string(), w.get(n).unwrap())).collect();
    edit(&mut tensors);
    save_safetensors(&dir.path().join("model.safetensors"), &tensors, None).unwrap();
    dir
}

#[test]
fn missing_tensor_is_a_typed_error() {
    let dir = edited_checkpoint("missing", |t| t.retain(|(n, _)| n != "mask_decoder.iou_prediction_head.proj_out.bias"));
    match Sam::load(dir.path(), &Backend::cpu()) {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "mask_decoder.iou_prediction_head.proj_out.bias"),
        other => panic!("expected MissingTensor, got {:?}", other.err()),
    }
}

#[test]
fn wrong_shape_is_a_typed_error() {
    let dir = edited_checkpoint("shape", |t| {
        for (n, v) in t.iter_mut() {
            if n == "vision_encoder.layers.2.attn.qkv.weight" {
                *v = Tensor::zeros(vec![144, 47]);
            }
        }
    });
    match Sam::load(dir.path(), &Backend::cpu()) {
        Err(Error::TensorShape { name, expected, got }) => {
            assert_eq!(name, "vision_encoder.layers.2.attn.qkv.weight");
            assert_eq!((expected, got), (vec![144, 48], vec![144, 47]));
        }
        other => panic!("expected TensorShape, got {:?}", other.err()),
    }
}

#[test]
fn rel_pos_table_of_another_length_is_interpolated() {
    // A checkpoint whose windowed rel-pos tables have 7 rows instead of 2·3 − 1 loads, with the
    // tables resampled as transformers' get_rel_pos would.
    let dir = edited_checkpoint("relpos", |t| {
        for (n, v) in t.iter_mut() {
            if n.starts_with("vision_encoder.layers.0.attn.rel_pos_") {
                *v = Tensor::from_f32((0..7 * 16).map(|i| (i as f32 * 0.37).sin()).collect(), vec![7, 16]).unwrap();
            }
        }
    });
    let be = Backend::cpu();
    let sam = Sam::load(dir.path(), &be).expect("load with a 7-row rel-pos table");
    let pv = Tensor::from_f32(vec![0.1; 3 * 128 * 128], vec![1, 3, 128, 128]).unwrap();
    let emb = sam.image_embeddings(&be, &pv).unwrap();
    assert!(be.to_vec_f32(&emb).unwrap().iter().all(|v| v.is_finite()));
    // A table with the wrong column count is still a shape error.
    let dir = edited_checkpoint("relpos_bad", |t| {
        for (n, v) in t.iter_mut() {
            if n == "vision_encoder.layers.0.attn.rel_pos_w" {
                *v = Tensor::zeros(vec![5, 15]);
            }
        }
    });
    assert!(matches!(Sam::load(dir.path(), &be), Err(Error::TensorShape { .. })));
}

#[test]
fn missing_model_dir_and_bad_config_are_typed_errors() {
    let be = Backend::cpu();
    assert!(matches!(Sam::load(Path::new("/nonexistent/sam"), &be), Err(Error::Config { .. })));
    let dir = TempDir::new("sam-badcfg");
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "sam", "vision_config": {}}"#).unwrap();
    std::fs::copy(model_dir().join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    match Sam::load(dir.path(), &be) {
        Err(Error::Config { msg, .. }) => assert!(msg.contains("prompt_encoder_config"), "{msg}"),
        other => panic!("expected Config, got {:?}", other.err()),
    }
}

#[test]
fn bad_prompts_are_typed_errors() {
    let (be, sam) = load();
    let emb = Tensor::zeros(vec![1, 32, 8, 8]);
    let pt = |label| PointPrompt { x: 1.0, y: 2.0, label };
    let cases = [
        Prompts::default(),
        Prompts { points: vec![vec![pt(1)]; 2], boxes: vec![[0.0, 0.0, 5.0, 5.0]], mask: None },
        Prompts { points: vec![vec![pt(7)]], ..Default::default() },
        Prompts { points: vec![vec![PointPrompt { x: f32::NAN, y: 0.0, label: 1 }]], ..Default::default() },
        Prompts { points: vec![], boxes: vec![], mask: Some(Tensor::zeros(vec![1, 1, 16, 16])) },
    ];
    for (i, p) in cases.iter().enumerate() {
        match sam.predict(&be, &emb, p, true) {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("case {i}: expected InvalidArgument, got {:?}", other.map(|_| ())),
        }
    }
    let wrong = Tensor::zeros(vec![1, 3, 64, 64]);
    assert!(matches!(sam.image_embeddings(&be, &wrong), Err(Error::InvalidArgument { .. })));
}

// ---- the CLI --------------------------------------------------------------------------------

fn cli_args(image: Option<PathBuf>, out: PathBuf) -> Args {
    Args {
        model: model_dir(),
        image,
        points: vec![],
        bbox: None,
        multimask: false,
        output: out,
        pixel_values: None,
        dump: None,
        backend: "cpu".into(),
        max_pixels: visword::image_io::DEFAULT_MAX_PIXELS,
    }
}

#[test]
fn cli_writes_a_mask_of_the_image_size() {
    let dir = TempDir::new("sam-cli");
    let img_path = dir.path().join("in.png");
    let (w, h) = (93u32, 61u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 2) as u8, (y * 4) as u8, ((x + y) % 256) as u8]));
    img.save(&img_path).unwrap();
    let out = dir.path().join("mask.png");
    let dump = dir.path().join("dump.safetensors");
    let mut args = cli_args(Some(img_path), out.clone());
    args.points = vec!["40,30".into(), "10.5, 50".into()];
    args.bbox = Some("5,5,90,60".into());
    args.multimask = true;
    args.dump = Some(dump.clone());
    run(&args).expect("visword sam");
    let mask = image::open(&out).unwrap().to_luma8();
    assert_eq!(mask.dimensions(), (w, h));
    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    let d = Weights::open(&dump).unwrap();
    assert_eq!(d.get("image_embeddings").unwrap().shape(), [1, 32, 8, 8]);
    assert_eq!(d.get("pred_masks").unwrap().shape(), [1, 1, 3, 32, 32]);
    assert_eq!(d.get("iou_scores").unwrap().shape(), [1, 1, 3]);
}

#[test]
fn cli_with_pixel_values_matches_the_reference() {
    // Case b (one foreground point and a box, single mask) through the CLI, coordinates in the
    // model input frame.
    let r = reference();
    let dir = TempDir::new("sam-cli_pv");
    let pv = dir.path().join("pv.safetensors");
    save_safetensors(&pv, &[("pixel_values".into(), ref_tensor(&r, "pixel_values"))], None).unwrap();
    let dump = dir.path().join("dump.safetensors");
    let mut args = cli_args(None, dir.path().join("mask.png"));
    args.pixel_values = Some(pv);
    args.points = vec!["50,40".into()];
    args.bbox = Some("10,12.5,90,110".into());
    args.dump = Some(dump.clone());
    run(&args).expect("visword sam --pixel-values");
    let d = Weights::open(&dump).unwrap();
    assert_close("cli b pred_masks", &ref_f32(&d, "pred_masks").0, &ref_f32(&r, "b_pred_masks").0, F32_MODEL);
    assert_close("cli b iou_scores", &ref_f32(&d, "iou_scores").0, &ref_f32(&r, "b_iou_scores").0, F32_MODEL);
    let mask = image::open(dir.path().join("mask.png")).unwrap().to_luma8();
    assert_eq!(mask.dimensions(), (128, 128));
}

#[test]
fn cli_rejects_points_outside_the_image_and_bad_arguments() {
    let dir = TempDir::new("sam-cli_bad");
    let img_path = dir.path().join("in.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([10, 200, 30])).save(&img_path).unwrap();
    let out = dir.path().join("mask.png");
    let bad: [(&[&str], Option<&str>); 6] = [
        (&["41,10"], None),
        (&["10,-1"], None),
        (&["10,5"], Some("0,0,50,20")),
        (&["1,2,3"], None),
        (&["a,b"], None),
        (&[], None),
    ];
    for (points, bbox) in bad {
        let mut args = cli_args(Some(img_path.clone()), out.clone());
        args.points = points.iter().map(|s| s.to_string()).collect();
        args.bbox = bbox.map(|s| s.to_string());
        match run(&args) {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("{points:?} {bbox:?}: expected InvalidArgument, got {other:?}"),
        }
        assert!(!out.exists(), "no mask is written on error");
    }
    let mut args = cli_args(Some(img_path), out);
    args.points = vec!["5,5".into()];
    args.model = dir.path().join("no_model");
    assert!(matches!(run(&args), Err(Error::Config { .. })));
}
