//! The referring segmenter end to end on a random tiny model written by `init` (real geometry:
//! CLIP 336/14, SAM 1024/16, 256² masks): prompt assembly, the steered answer, mask shapes,
//! determinism, and every bad input the issue lists, as a clear error or a defined result.

mod common;

use std::path::Path;

use serde_json::Value;

use common::files::TempDir;
use common::fixtures_dir;
use visword::models::projector::ProjectorKind;
use visword::models::segmenter::random::init_random;
use visword::models::segmenter::tokenizer_json::{BOS_ID, BYTE_BASE, SEG_ID};
use visword::models::segmenter::{SegmentOptions, Segmentation, Segmenter, Stop};
use visword::preprocess::ImageProcessor;
use visword::weights::save_safetensors;
use visword::{Backend, Weights};

const SEED: u64 = 11;

fn photo() -> image::RgbImage {
    visword::image_io::load_rgb(&fixtures_dir().join("images/chelsea_120x80.png"), 1 << 24).unwrap()
}

/// A fresh tiny segmenter under `tmp/name`.
fn tiny(tmp: &TempDir, name: &str) -> std::path::PathBuf {
    let dir = tmp.join(name);
    init_random("tiny", &dir, SEED, &|_, _| {}).unwrap();
    dir
}

fn segment(dir: &Path, projector: ProjectorKind, expression: &str) -> visword::Result<Segmentation> {
    let be = Backend::cpu();
    let model = Segmenter::load(dir, &be, Some(projector))?;
    model.segment(&be, &photo(), expression, &SegmentOptions::default())
}

fn bytes(text: &str) -> Vec<u32> {
    text.bytes().map(|b| BYTE_BASE + b as u32).collect()
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[track_caller]
fn assert_err(r: visword::Result<impl Sized>, needles: &[&str]) {
    let e = match r {
        Ok(_) => panic!("expected an error mentioning {needles:?}"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(e.contains(n), "error should mention `{n}`: {e}");
    }
}

#[test]
fn answers_seg_and_masks_the_image_with_mlp_and_pool2() {
    let tmp = TempDir::new("seg-answer");
    let dir = tiny(&tmp, "m");
    for (kind, visual) in [(ProjectorKind::Mlp, 576), (ProjectorKind::Pool(2), 144), (ProjectorKind::Pool(3), 64)] {
        let s = segment(&dir, kind, "the cat").unwrap();
        assert_eq!(s.answer, "[SEG]", "{kind:?}");
        assert_eq!((s.output_ids.as_slice(), s.stop), (&[SEG_ID][..], Stop::Eos));
        assert_eq!(s.visual_tokens, visual);
        assert_eq!(s.visual.shape(), &[visual, 64]);
        // prefix ‖ <im_start> ‖ visual ‖ <im_end> ‖ suffix
        assert_eq!(s.prompt_tokens, s.prompt.prefix.len() + 2 + visual + s.prompt.suffix.len());
        assert_eq!(s.seg_embeddings.shape(), &[1, 32]);
        assert_eq!(s.mask_logits.shape(), &[1, 256, 256]);
        assert_eq!(s.masks.len(), 1);
        assert_eq!(s.masks[0].len(), 80 * 120);
        assert!(s.masks[0].iter().all(|&v| v == 0 || v == 255));
        assert!(s.superpixels.is_none());
        let st = &s.stages;
        assert!(st.vision_encoder > 0.0 && st.sam_encoder > 0.0 && st.projector > 0.0 && st.prefill > 0.0 && st.mask_decoder > 0.0);
        // The prefill chose `[SEG]`; one decode step fed it back and chose EOS.
        assert!(st.superpixels.is_none() && st.decode_per_token.is_some_and(|t| t > 0.0));
        assert!(s.end_to_end_ms >= st.vision_encoder + st.sam_encoder + st.prefill);
    }
}

#[test]
fn svp_turns_superpixels_into_the_visual_tokens() {
    let tmp = TempDir::new("seg-svp");
    let dir = tiny(&tmp, "m");
    let be = Backend::cpu();
    let model = Segmenter::load(&dir, &be, None).unwrap();
    assert_eq!(model.projector_kind(), ProjectorKind::Svp, "init writes svp models");
    let s = model.segment(&be, &photo(), "the cat", &SegmentOptions::default()).unwrap();
    assert_eq!(s.answer, "[SEG]");
    let sp = s.superpixels.as_ref().expect("svp makes superpixels");
    // 120×80 → SAM's 1024×683 → a 171×256 low-res crop; the tiny preset caps S at 64.
    assert_eq!((sp.height, sp.width, sp.grid), (171, 256, 24));
    assert!(sp.count > 0 && sp.count <= 64, "{} superpixels", sp.count);
    assert_eq!(s.visual_tokens, sp.count);
    assert_eq!(s.visual.shape(), &[sp.count, 64]);
    assert_eq!(s.prompt_tokens, s.prompt.prefix.len() + 2 + sp.count + s.prompt.suffix.len());
    assert_eq!(sp.coverage.len(), sp.count * 576);
    assert!(s.stages.superpixels.is_some_and(|t| t > 0.0));
    assert_eq!(s.masks.len(), 1);
    // The same image twice: the same superpixels and visual tokens.
    let again = model.segment(&be, &photo(), "the cat", &SegmentOptions::default()).unwrap();
    assert_eq!(again.superpixels.as_ref(), Some(sp));
    assert_eq!(again.visual.as_f32().unwrap(), s.visual.as_f32().unwrap());
}

/// Thresholds that reject every mask and no rest regions: S = 0, and the prompt (image start and
/// end tokens next to each other) still gets its answer and mask.
#[test]
fn no_superpixels_still_answers() {
    let tmp = TempDir::new("seg-s0");
    let dir = tiny(&tmp, "m");
    edit_config(&dir, |c| {
        c["superpixels"]["pred_iou_thresh"] = 1000.0.into();
        c["superpixels"]["rest_regions"] = false.into();
    });
    let s = segment(&dir, ProjectorKind::Svp, "the cat").unwrap();
    let sp = s.superpixels.as_ref().unwrap();
    assert_eq!((sp.count, s.visual_tokens), (0, 0));
    assert!(sp.label_map.iter().all(|&l| l == -1));
    assert_eq!(s.visual.shape(), &[0, 64]);
    assert_eq!(s.prompt_tokens, s.prompt.prefix.len() + 2 + s.prompt.suffix.len());
    assert_eq!(s.answer, "[SEG]");
    assert_eq!(s.masks.len(), 1);
    assert_eq!(s.masks[0].len(), 80 * 120);
}

#[test]
fn prompt_is_llava_v1_split_at_the_image() {
    let tmp = TempDir::new("seg-prompt");
    let dir = tiny(&tmp, "m");
    let be = Backend::cpu();
    let model = Segmenter::load(&dir, &be, Some(ProjectorKind::Pool(3))).unwrap();
    let p = model.prompt("the cat").unwrap();
    let system = "A chat between a curious human and an artificial intelligence assistant. \
                  The assistant gives helpful, detailed, and polite answers to the human's questions.";
    assert_eq!(p.text, format!("{system} USER: <image>\nthe cat Please output segmentation mask. ASSISTANT:"));
    let mut prefix = vec![BOS_ID];
    prefix.extend(bytes(&format!("{system} USER: ")));
    assert_eq!(p.prefix, prefix);
    assert_eq!(p.suffix, bytes("\nthe cat Please output segmentation mask. ASSISTANT:"));
}

/// The same prompt with a template that has no image framing tokens: the visual tokens sit
/// directly between prefix and suffix.
#[test]
fn image_start_and_end_tokens_are_optional() {
    let tmp = TempDir::new("seg-noframe");
    let dir = tiny(&tmp, "m");
    edit_config(&dir, |c| {
        c["image_start_token_id"] = Value::Null;
        c["image_end_token_id"] = Value::Null;
    });
    let s = segment(&dir, ProjectorKind::Pool(3), "the cat").unwrap();
    assert_eq!(s.prompt_tokens, s.prompt.prefix.len() + 64 + s.prompt.suffix.len());
    assert_eq!(s.answer, "[SEG]");
    edit_config(&dir, |c| c["image_start_token_id"] = 260.into());
    assert_err(Segmenter::load(&dir, &Backend::cpu(), None).map(|_| ()), &["image_start_token_id", "image_end_token_id", "together"]);
}

#[test]
fn deterministic_and_preprocessed_inputs_give_the_same_run() {
    let tmp = TempDir::new("seg-determinism");
    let (a, b) = (tiny(&tmp, "a"), tiny(&tmp, "b"));
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs between two inits with one seed");
    }
    let c = tmp.join("c");
    init_random("tiny", &c, SEED + 1, &|_, _| {}).unwrap();
    assert!(std::fs::read(a.join("model.safetensors")).unwrap() != std::fs::read(c.join("model.safetensors")).unwrap());

    let be = Backend::cpu();
    let model = Segmenter::load(&a, &be, Some(ProjectorKind::Pool(2))).unwrap();
    let img = photo();
    let first = model.segment(&be, &img, "the cat", &SegmentOptions::default()).unwrap();
    let opts = SegmentOptions {
        pixel_values: Some(ImageProcessor::clip(336).preprocess(&img).unwrap()),
        sam_pixel_values: Some(visword::models::sam::preprocess::preprocess(&img, 1024).unwrap().pixel_values),
        ..Default::default()
    };
    let second = model.segment(&be, &img, "the cat", &opts).unwrap();
    assert_eq!(first.mask_logits.as_f32().unwrap(), second.mask_logits.as_f32().unwrap());
    assert_eq!(first.masks, second.masks);
    assert_eq!(first.visual.as_f32().unwrap(), second.visual.as_f32().unwrap());

    let wrong = SegmentOptions { sam_pixel_values: Some(visword::Tensor::zeros(vec![1, 3, 512, 512])), ..Default::default() };
    assert_err(model.segment(&be, &img, "the cat", &wrong), &["--sam-pixel-values", "[1, 3, 1024, 1024]"]);
    let wrong = SegmentOptions { pixel_values: Some(visword::Tensor::zeros(vec![1, 3, 224, 224])), ..Default::default() };
    assert_err(model.segment(&be, &img, "the cat", &wrong), &["--pixel-values", "[1, 3, 336, 336]"]);
}

#[test]
fn token_limit_stops_generation() {
    let tmp = TempDir::new("seg-limit");
    let dir = tiny(&tmp, "m");
    let be = Backend::cpu();
    let model = Segmenter::load(&dir, &be, Some(ProjectorKind::Pool(3))).unwrap();
    let opts = SegmentOptions { max_new_tokens: Some(1), ..Default::default() };
    let s = model.segment(&be, &photo(), "the cat", &opts).unwrap();
    assert_eq!((s.output_ids.as_slice(), s.stop), (&[SEG_ID][..], Stop::MaxNewTokens));
    assert_eq!(s.masks.len(), 1);
}

#[test]
fn bad_expressions_fail_before_the_encoders() {
    let tmp = TempDir::new("seg-expr");
    let dir = tiny(&tmp, "m");
    assert_err(segment(&dir, ProjectorKind::Mlp, ""), &["expression", "empty"]);
    assert_err(segment(&dir, ProjectorKind::Mlp, "  \n"), &["expression", "empty"]);
    assert_err(segment(&dir, ProjectorKind::Mlp, "a <image> b"), &["expression", "<image>"]);
    // The tiny LLM's context is 2048 positions and the byte tokenizer spends one per byte.
    let long = "the cat ".repeat(300);
    assert_err(segment(&dir, ProjectorKind::Pool(3), &long), &["expression", "context of 2048 tokens"]);
    // About 1700 tokens of text: fits with 64 visual tokens, not with 576.
    let medium = "x".repeat(1500);
    assert!(segment(&dir, ProjectorKind::Pool(3), &medium).is_ok());
    assert_err(segment(&dir, ProjectorKind::Mlp, &medium), &["576 visual", "context of 2048 tokens"]);
}

#[test]
fn empty_image_is_an_error() {
    let tmp = TempDir::new("seg-empty-image");
    let dir = tiny(&tmp, "m");
    let be = Backend::cpu();
    let model = Segmenter::load(&dir, &be, Some(ProjectorKind::Mlp)).unwrap();
    assert_err(model.segment(&be, &image::RgbImage::new(0, 0), "the cat", &SegmentOptions::default()), &["image", "0×0"]);
}

#[test]
fn missing_components_are_named() {
    let tmp = TempDir::new("seg-missing");
    let be = Backend::cpu();
    let load = |dir: &Path| Segmenter::load(dir, &be, None).map(|_| ());

    assert_err(load(&tmp.join("nowhere")), &["nowhere", "does not exist"]);

    for (name, edit, needles) in [
        ("no-seg", Box::new(|c: &mut Value| { c.as_object_mut().unwrap().remove("seg_token_id"); }) as Box<dyn Fn(&mut Value)>, vec!["seg_token_id"]),
        ("no-llm-width", Box::new(|c: &mut Value| { c["llm"].as_object_mut().unwrap().remove("hidden_size"); }), vec!["`llm`", "hidden_size"]),
        ("no-sam", Box::new(|c: &mut Value| { c.as_object_mut().unwrap().remove("sam"); }), vec!["missing field `sam`"]),
        ("no-sam-decoder", Box::new(|c: &mut Value| { c["sam"].as_object_mut().unwrap().remove("mask_decoder_config"); }), vec!["`sam`", "mask_decoder_config"]),
        ("bad-type", Box::new(|c: &mut Value| c["model_type"] = "llava".into()), vec!["model_type", "visword_segmenter"]),
        ("bad-vision", Box::new(|c: &mut Value| c["vision"]["model_type"] = "siglip".into()), vec!["vision.model_type", "siglip"]),
        ("bad-layer", Box::new(|c: &mut Value| c["vision_feature_layer"] = (-7).into()), vec!["vision_feature_layer", "-7"]),
        ("seg-outside", Box::new(|c: &mut Value| c["seg_token_id"] = 320.into()), vec!["seg_token_id", "320", "vocabulary of 320"]),
        ("no-image", Box::new(|c: &mut Value| c["question_template"] = "{expression}?".into()), vec!["question_template", "<image>"]),
        ("no-expr", Box::new(|c: &mut Value| c["question_template"] = "<image> segment it".into()), vec!["question_template", "{expression}"]),
        ("bad-projector", Box::new(|c: &mut Value| c["projector"] = "pool".into()), vec!["projector", "pool"]),
        ("bad-svp", Box::new(|c: &mut Value| c["svp"]["heads"] = 3.into()), vec!["svp", "heads"]),
        ("bad-superpixels", Box::new(|c: &mut Value| c["superpixels"]["points_per_side"] = 0.into()), vec!["superpixels", "points_per_side"]),
        ("zero-tokens", Box::new(|c: &mut Value| c["max_new_tokens"] = 0.into()), vec!["max_new_tokens"]),
        ("bad-template", Box::new(|c: &mut Value| c["chat_template"] = "{% for m in messages %}".into()), vec!["chat_template"]),
    ] {
        let dir = tiny(&tmp, name);
        edit_config(&dir, edit);
        assert_err(load(&dir), &needles);
    }

    // A tensor missing from the checkpoint, by its LISA name.
    let dir = tiny(&tmp, "no-tensor");
    let w = Weights::open(&dir).unwrap();
    let kept: Vec<_> = w.names().filter(|n| *n != "model.visual_model.mask_decoder.iou_token.weight").map(|n| (n.to_string(), w.get(n).unwrap())).collect();
    save_safetensors(&dir.join("model.safetensors"), &kept, None).unwrap();
    drop(w);
    assert_err(load(&dir), &["model.visual_model.mask_decoder.iou_token.weight", "not found"]);

    let dir = tiny(&tmp, "no-tokenizer");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert_err(load(&dir), &["tokenizer.json"]);

    let dir = tiny(&tmp, "no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_err(load(&dir), &["no model.safetensors"]);
}

#[test]
fn mismatched_widths_name_the_config_fields_and_the_tensor() {
    let tmp = TempDir::new("seg-widths");
    let be = Backend::cpu();
    let load = |dir: &Path| Segmenter::load(dir, &be, None).map(|_| ());

    let dir = tiny(&tmp, "vision");
    edit_config(&dir, |c| c["vision"]["hidden_size"] = 48.into());
    assert_err(load(&dir), &["vision.hidden_size", "model.mm_projector.0.weight", "[64, 48]", "[64, 32]"]);

    let dir = tiny(&tmp, "llm");
    edit_config(&dir, |c| {
        c["llm"]["hidden_size"] = 128.into();
        c["llm"]["head_dim"] = 16.into();
    });
    assert_err(load(&dir), &["llm.hidden_size", "model.embed_tokens.weight", "[320, 128]"]);

    // SAM at prompt width 64 (every section consistent) against text_hidden_fcs written for 32.
    let dir = tiny(&tmp, "sam");
    edit_config(&dir, |c| {
        let s = &mut c["sam"];
        s["vision_config"]["output_channels"] = 64.into();
        s["vision_config"]["num_pos_feats"] = 32.into();
        s["prompt_encoder_config"]["hidden_size"] = 64.into();
        s["mask_decoder_config"]["hidden_size"] = 64.into();
        s["mask_decoder_config"]["iou_head_hidden_dim"] = 64.into();
    });
    assert_err(load(&dir), &["sam.prompt_encoder_config.hidden_size", "model.text_hidden_fcs.0.2.weight", "[64, 64]", "[32, 64]"]);

    let dir = tiny(&tmp, "svp-heads");
    edit_config(&dir, |c| c["svp"]["ssa_heads"] = 3.into());
    assert_err(Segmenter::load(&dir, &be, Some(ProjectorKind::Svp)).map(|_| ()), &["svp.ssa_heads", "3"]);
    // The same model with a projector that does not use them loads.
    assert!(Segmenter::load(&dir, &be, Some(ProjectorKind::Mlp)).is_ok());
}
