//! End-to-end parity of `visword segment` against the PyTorch reference of the referring
//! segmenter (docs/svp.md §4, tools/reference/make_segmenter.py) on the tiny random-weight model in
//! tests/fixtures/segmenter_tiny: the release binary runs on the fixture's photo, once on the
//! reference's own pixel values (`--pixel-values` / `--sam-pixel-values`, so only the model
//! pipeline is compared) and once on the photo alone (Rust preprocessing too), with each
//! projector, and its `--dump`, `--json` and `-o` mask must reproduce the reference:
//!
//! * the label map exactly (the superpixel procedure is integer-valued; the generator checked that
//!   perturbing every SAM logit by ±2e-4 changes nothing, so float rounding cannot flip it);
//! * coverage, visual tokens, the [SEG] embedding and SAM's low-res logits within tolerance;
//! * the same answer (ids decoded with the fixture's tokenizer) and prompt length;
//! * the final mask with IoU ≥ 0.99 (pixels whose bilinear logit is within rounding of 0 may flip).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::files::TempDir;
use common::{assert_close, fixtures_dir, Tol, F32_MODEL};
use visword::preprocess::{CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD};
use visword::weights::save_safetensors;
use visword::{Tensor, Weights};

const EXPRESSION: &str = "the cat";
/// `</s>` in the fixture's tokenizer (the LLM config's eos_token_id).
const EOS: i32 = 2;

/// Coverage is exact-rectangle arithmetic in f64 rounded once to f32 on both sides (so in practice
/// equal); a few ulps allowed for a different summation order.
const COVERAGE: Tol = Tol { atol: 1e-6, rtol: 1e-5 };

/// The final mask is compared by IoU: bilinear upsampling puts a few pixels near logit 0 on
/// whichever side rounding sends them.
const MIN_MASK_IOU: f64 = 0.99;

fn model_dir() -> PathBuf {
    fixtures_dir().join("segmenter_tiny")
}

fn reference() -> Weights {
    Weights::open(model_dir().join("reference.safetensors")).expect("reference.safetensors")
}

fn tensor(w: &Weights, name: &str) -> Tensor {
    w.get(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn f32s(w: &Weights, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = tensor(w, name);
    (t.to_f32_vec().unwrap_or_else(|e| panic!("{name}: {e}")), t.shape().to_vec())
}

fn i32s(w: &Weights, name: &str) -> (Vec<i32>, Vec<usize>) {
    let t = tensor(w, name);
    (t.as_i32().unwrap_or_else(|e| panic!("{name}: {e}")).to_vec(), t.shape().to_vec())
}

/// pixel_values from a stored 8-bit image, as transformers' torchvision backend computes them:
/// `(x − 255·mean) / (255·std)` in f32 with the fused statistics rounded to f32 first. The
/// generator checked this reproduces the processors' tensors bit for bit. The image fills the
/// top-left of a zero `canvas × canvas` input (SAM's padding); `canvas` 0 means no padding.
fn pixel_values(png: &Path, mean: [f32; 3], std: [f32; 3], canvas: usize) -> Tensor {
    let img = image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display())).to_rgb8();
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (ch, cw) = if canvas == 0 { (h, w) } else { (canvas, canvas) };
    assert!(h <= ch && w <= cw);
    let mut out = vec![0f32; 3 * ch * cw];
    for c in 0..3 {
        let (m, s) = (mean[c] * 255.0, std[c] * 255.0);
        for y in 0..h {
            for x in 0..w {
                out[(c * ch + y) * cw + x] = (img.get_pixel(x as u32, y as u32)[c] as f32 - m) / s;
            }
        }
    }
    Tensor::from_f32(out, vec![1, 3, ch, cw]).unwrap()
}

/// Write the reference's two inputs where `--pixel-values` / `--sam-pixel-values` can read them.
fn write_pixel_values(dir: &Path) -> (PathBuf, PathBuf) {
    let m = model_dir();
    let clip = pixel_values(&m.join("clip_pixels.png"), CLIP_MEAN, CLIP_STD, 0);
    let sam = pixel_values(&m.join("sam_pixels.png"), IMAGENET_MEAN, IMAGENET_STD, 1024);
    let (cp, sp) = (dir.join("clip_pixel_values.safetensors"), dir.join("sam_pixel_values.safetensors"));
    save_safetensors(&cp, &[("pixel_values".to_string(), clip)], None).unwrap();
    save_safetensors(&sp, &[("pixel_values".to_string(), sam)], None).unwrap();
    (cp, sp)
}

struct Run {
    json: serde_json::Value,
    dump: Weights,
    mask: image::GrayImage,
}

fn segment(dir: &Path, projector: &str, pixel_values: Option<&(PathBuf, PathBuf)>) -> Run {
    let tag = format!("{projector}{}", if pixel_values.is_some() { "_px" } else { "" });
    let dump = dir.join(format!("{tag}.safetensors"));
    let mask = dir.join(format!("{tag}.png"));
    let photo = model_dir().join("photo.png");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_visword"));
    cmd.arg("segment").arg("--model").arg(model_dir()).arg(&photo).arg(EXPRESSION);
    cmd.args(["--projector", projector, "--backend", "cpu", "--json"]);
    cmd.arg("--dump").arg(&dump).arg("-o").arg(&mask);
    if let Some((clip, sam)) = pixel_values {
        cmd.arg("--pixel-values").arg(clip).arg("--sam-pixel-values").arg(sam);
    }
    let out = cmd.output().expect("run visword segment");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "visword segment ({tag}) failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("--json output is not one JSON object ({e}): {stdout}"));
    let dump = Weights::open(&dump).unwrap_or_else(|e| panic!("--dump: {e}"));
    let mask = image::open(&mask).unwrap_or_else(|e| panic!("-o mask: {e}")).to_luma8();
    Run { json, dump, mask }
}

/// The answer text the reference's ids decode to, with special tokens kept (docs/svp.md §4).
fn reference_answer(ids: &[i32]) -> String {
    let tok = visword::models::tokenizer::Tokenizer::from_dir(&model_dir()).expect("fixture tokenizer");
    let ids: Vec<u32> = ids.iter().take_while(|&&t| t != EOS).map(|&t| t as u32).collect();
    tok.decode(&ids, false).expect("decode")
}

fn check(run: &Run, r: &Weights, projector: &str) {
    let p = |name: &str| format!("{projector}.{name}");

    // Answer and prompt.
    let (answer_ids, _) = i32s(r, &p("answer_ids"));
    let want_answer = reference_answer(&answer_ids);
    assert_eq!(want_answer, "[SEG]", "the steered fixture answers [SEG]");
    assert_eq!(run.json["answer"].as_str(), Some(want_answer.as_str()), "answer; json: {}", run.json);
    let (visual, vshape) = f32s(r, &p("visual_tokens"));
    assert_eq!(run.json["visual_tokens"].as_u64(), Some(vshape[0] as u64), "visual_tokens; json: {}", run.json);
    let prompt_len = i32s(r, "prefix_ids").0.len() + 1 + vshape[0] + 1 + i32s(r, "suffix_ids").0.len();
    assert_eq!(run.json["prompt_tokens"].as_u64(), Some(prompt_len as u64), "prompt_tokens; json: {}", run.json);

    // The token ids, when the dump carries them (the generated ids before EOS).
    for (dumped, reference) in [("output_ids", p("answer_ids")), ("prompt_prefix_ids", "prefix_ids".into()), ("prompt_suffix_ids", "suffix_ids".into())] {
        if run.dump.contains(dumped) {
            let got: Vec<i64> = tensor(&run.dump, dumped).to_f32_vec().unwrap().iter().map(|&v| v as i64).collect();
            let want: Vec<i64> = i32s(r, &reference).0.iter().take_while(|&&t| t != EOS).map(|&v| v as i64).collect();
            assert_eq!(got, want, "{projector}: {dumped}");
        }
    }

    // Superpixels: the svp run must dump them; the mlp run may (same image, same SAM).
    if projector == "svp" || run.dump.contains("label_map") {
        let (got, gshape) = i32s(&run.dump, "label_map");
        let (want, wshape) = i32s(r, "label_map");
        assert_eq!(gshape, wshape, "label_map shape");
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "label_map: {diff} of {} cells differ", want.len());
        let (got, gshape) = f32s(&run.dump, "coverage");
        let (want, wshape) = f32s(r, "coverage");
        assert_eq!(gshape, wshape, "coverage shape");
        assert_close(&format!("{projector} coverage"), &got, &want, COVERAGE);
    }

    // Visual tokens: CLIP (2 layers) and the projector, f32 against f32.
    let (got, gshape) = f32s(&run.dump, "visual_tokens");
    assert_eq!(gshape, vshape, "visual_tokens shape");
    assert_close(&format!("{projector} visual_tokens"), &got, &visual, F32_MODEL);

    // [SEG] embedding: the LLM over the whole prompt, then text_hidden_fcs.
    let (got, gshape) = f32s(&run.dump, "seg_embedding");
    let (want, wshape) = f32s(r, &p("seg_embedding"));
    assert_eq!(gshape, wshape, "seg_embedding shape");
    assert_close(&format!("{projector} seg_embedding"), &got, &want, F32_MODEL);

    // SAM's low-res logits: the reference keeps the rows that reach the image.
    let (got, gshape) = f32s(&run.dump, "mask_logits");
    let (want, wshape) = f32s(r, &p("mask_logits"));
    assert_eq!(gshape.len(), 3, "mask_logits shape {gshape:?}");
    assert_eq!([gshape[0], gshape[2]], [wshape[0], wshape[2]], "mask_logits shape {gshape:?} vs reference {wshape:?}");
    let (rows, cols) = (wshape[1], wshape[2]);
    let got: Vec<f32> = (0..gshape[0]).flat_map(|n| got[n * gshape[1] * cols..][..rows * cols].to_vec()).collect();
    // The whole-model default: the 1024² SAM encoder (global attention over 4096 tokens), the
    // LLM and the two-way decoder stay within ~6e-5 of transformers on logits of order 1.
    assert_close(&format!("{projector} mask_logits"), &got, &want, F32_MODEL);

    // The final mask: the union over [SEG]s, thresholded at 0, at the photo's size.
    let (want, wshape) = f32s(r, &p("mask"));
    assert_eq!([run.mask.height() as usize, run.mask.width() as usize], [wshape[0], wshape[1]], "mask size");
    let got: Vec<bool> = run.mask.as_raw().iter().map(|&v| v > 127).collect();
    let want: Vec<bool> = want.iter().map(|&v| v > 0.5).collect();
    let inter = got.iter().zip(&want).filter(|(a, b)| **a && **b).count();
    let union = got.iter().zip(&want).filter(|(a, b)| **a || **b).count();
    assert!(want.iter().any(|&v| v) && want.iter().any(|&v| !v), "the reference mask is neither empty nor full");
    let iou = inter as f64 / union as f64;
    eprintln!("{projector} mask: IoU {iou:.5} ({inter} / {union} px)");
    assert!(iou >= MIN_MASK_IOU, "{projector} mask IoU {iou:.5} < {MIN_MASK_IOU}");
}

fn parity(projector: &str, with_pixel_values: bool) {
    let dir = TempDir::new(&format!("segmenter-parity-{projector}-{with_pixel_values}"));
    let px = with_pixel_values.then(|| write_pixel_values(&dir));
    let run = segment(&dir, projector, px.as_ref());
    check(&run, &reference(), projector);
}

#[test]
fn svp_on_reference_pixel_values() {
    parity("svp", true);
}

#[test]
fn mlp_on_reference_pixel_values() {
    parity("mlp", true);
}

#[test]
fn svp_from_the_photo() {
    parity("svp", false);
}

#[test]
fn mlp_from_the_photo() {
    parity("mlp", false);
}

/// The stored inputs are what the reference fed its models: the PNG route rebuilds exactly the
/// pixel values Rust's own preprocessing makes from the photo (both reproduce transformers').
#[test]
fn stored_inputs_match_rust_preprocessing() {
    let m = model_dir();
    let img = image::open(m.join("photo.png")).unwrap().to_rgb8();
    let clip = visword::preprocess::ImageProcessor::clip(336).preprocess(&img).unwrap();
    let want = pixel_values(&m.join("clip_pixels.png"), CLIP_MEAN, CLIP_STD, 0);
    assert_close("clip pixel_values", &clip.to_f32_vec().unwrap(), &want.to_f32_vec().unwrap(), common::vision::PIXELS_EXACT);
    let sam = visword::models::sam::preprocess::preprocess(&img, 1024).unwrap();
    let want = pixel_values(&m.join("sam_pixels.png"), IMAGENET_MEAN, IMAGENET_STD, 1024);
    assert_close("sam pixel_values", &sam.pixel_values.to_f32_vec().unwrap(), &want.to_f32_vec().unwrap(), common::vision::PIXELS_EXACT);
}
