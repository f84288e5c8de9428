//! `visword init` and `visword segment` as a user runs them: a tiny random model, a committed
//! photo, the outputs' sizes and the JSON's fields; on bad input exit 1, one `error:` line, and
//! no output file left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::files::TempDir;
use common::fixtures_dir;
use visword::Weights;

fn visword(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_visword")).args(args).env("RUST_BACKTRACE", "1").output().expect("run visword");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn photo() -> PathBuf {
    fixtures_dir().join("images/chelsea_120x80.png")
}

/// `visword init --preset tiny --random DIR`.
fn init_tiny(tmp: &TempDir, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    let (code, out, err) = visword(&["init", "--preset", "tiny", "--random", s(&dir)]);
    assert_eq!(code, 0, "init failed: {err}");
    assert!(out.contains("wrote") && out.contains("tiny"), "{out}");
    dir
}

#[track_caller]
fn assert_user_error(args: &[&str], needles: &[&str]) {
    let (code, _out, err) = visword(args);
    assert_eq!(code, 1, "visword {args:?} should fail with exit 1; stderr: {err}");
    let err = common::without_notices(&err);
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "stderr should be one error line: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "no panic expected: {err}");
    for n in needles {
        assert!(err.contains(n), "error for {args:?} should mention `{n}`: {err}");
    }
}

fn png_size(p: &Path) -> (u32, u32) {
    image::image_dimensions(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn segment_writes_mask_overlay_dump_and_json() {
    let tmp = TempDir::new("cli-seg");
    let model = init_tiny(&tmp, "tiny");
    for projector in ["mlp", "pool2"] {
        let (mask, overlay, dump) = (tmp.join(format!("{projector}-mask.png")), tmp.join(format!("{projector}-overlay.png")), tmp.join(format!("{projector}.safetensors")));
        let (code, out, err) = visword(&[
            "segment", "--model", s(&model), s(&photo()), "the cat", "--projector", projector, "-o", s(&mask), "--overlay", s(&overlay), "--dump", s(&dump),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("answer: [SEG]"), "{out}");
        assert!(out.contains(&format!("visual tokens: {}", if projector == "mlp" { 576 } else { 144 })), "{out}");
        assert!(out.contains("vision_encoder") && out.contains("mask_decoder") && out.contains("end to end"), "{out}");
        assert_eq!(png_size(&mask), (120, 80));
        assert_eq!(png_size(&overlay), (120, 80));
        let m = image::open(&mask).unwrap().to_luma8();
        assert!(m.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        let d = Weights::open(&dump).unwrap();
        let shape = |n: &str| d.info(n).unwrap_or_else(|| panic!("dump lacks {n}")).shape.clone();
        assert_eq!(shape("seg_embedding"), vec![1, 32]);
        assert_eq!(shape("mask_logits"), vec![1, 256, 256]);
        assert_eq!(shape("visual_tokens")[1], 64);
        assert!(d.info("label_map").is_none(), "no superpixels without svp");
        assert_eq!(d.metadata.get("answer").map(String::as_str), Some("[SEG]"));
    }

    let (code, out, err) = visword(&["segment", "--model", s(&model), s(&photo()), "the cat", "--projector", "pool3", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec!["answer", "visual_tokens", "prompt_tokens", "stages_ms", "end_to_end_ms"];
    want.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, want);
    let mut stages: Vec<&str> = v["stages_ms"].as_object().unwrap().keys().map(String::as_str).collect();
    stages.sort();
    assert_eq!(
        stages,
        ["decode_per_token", "encoders_overlapped", "mask_decoder", "prefill", "projector", "sam_encoder", "superpixels", "superpixels_decoder", "superpixels_postprocess", "vision_encoder"]
    );
    assert_eq!(v["answer"], "[SEG]");
    assert_eq!(v["visual_tokens"], 64);
    // `segment` overlaps the encoders with the superpixels too: only end_to_end_ms says so.
    assert!(v["stages_ms"]["encoders_overlapped"].is_null());
    for stage in ["superpixels", "superpixels_decoder", "superpixels_postprocess"] {
        assert!(v["stages_ms"][stage].is_null(), "{stage} without svp");
    }
    assert!(v["end_to_end_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn segment_with_svp_dumps_the_superpixels() {
    let tmp = TempDir::new("cli-seg-svp");
    let model = init_tiny(&tmp, "tiny");
    let (mask, dump) = (tmp.join("mask.png"), tmp.join("dump.safetensors"));
    let (code, out, err) = visword(&[
        "segment", "--model", s(&model), s(&photo()), "the cat", "-o", s(&mask), "--dump", s(&dump), "--json", "--points-per-side", "4", "--max-superpixels", "10",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["answer"], "[SEG]");
    let n = v["visual_tokens"].as_u64().unwrap() as usize;
    assert!((1..=10).contains(&n), "{n} visual tokens with --max-superpixels 10");
    let total = v["stages_ms"]["superpixels"].as_f64().unwrap();
    let (decoder, post) = (v["stages_ms"]["superpixels_decoder"].as_f64().unwrap(), v["stages_ms"]["superpixels_postprocess"].as_f64().unwrap());
    assert!(decoder > 0.0 && post > 0.0 && decoder + post <= total * 1.01, "decoder {decoder} + post-processing {post} within {total} ms");
    assert_eq!(png_size(&mask), (120, 80));
    let d = Weights::open(&dump).unwrap();
    let shape = |name: &str| d.info(name).unwrap_or_else(|| panic!("dump lacks {name}")).shape.clone();
    assert_eq!(shape("label_map"), vec![171, 256]);
    assert_eq!(shape("coverage"), vec![n, 576]);
    assert_eq!(shape("geometry"), vec![n, 7]);
    assert_eq!(shape("visual_tokens"), vec![n, 64]);
    assert_eq!(d.get("label_map").unwrap().dtype(), visword::DType::I32);

    assert_user_error(&["segment", "--model", s(&model), s(&photo()), "the cat", "--points-per-side", "0"], &["points-per-side"]);

    // A committed JPEG photo (portrait: the CLIP view is its central square).
    let rocket = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/photos/rocket.jpg");
    let (code, out, err) = visword(&["segment", "--model", s(&model), s(&rocket), "the rocket", "-o", s(&mask), "--points-per-side", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("answer: [SEG]") && out.contains("(svp)"), "{out}");
    assert_eq!(png_size(&mask), (240, 360));

    // `superpixels` takes the segmenter directory too: the same SAM, settings and patch grid, so
    // the same superpixels as the segment run above.
    let sp_dump = tmp.join("sp.safetensors");
    let (code, out, err) = visword(&[
        "superpixels", "--sam", s(&model), s(&photo()), "--dump", s(&sp_dump), "--points-per-side", "4", "--max-superpixels", "10",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("superpixels: {n}")), "{out}");
    let e = Weights::open(&sp_dump).unwrap();
    for name in ["label_map", "coverage", "geometry"] {
        assert_eq!(e.get(name).unwrap().to_f32_vec().unwrap(), d.get(name).unwrap().to_f32_vec().unwrap(), "{name}");
    }
}

#[test]
fn init_is_reproducible_and_refuses_to_overwrite() {
    let tmp = TempDir::new("cli-init");
    let a = init_tiny(&tmp, "a");
    let b = init_tiny(&tmp, "b");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f}");
    }
    let c = tmp.join("c");
    let (code, _, err) = visword(&["init", "--preset", "tiny", "--random", s(&c), "--seed", "5"]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(a.join("model.safetensors")).unwrap() != std::fs::read(c.join("model.safetensors")).unwrap());

    assert_user_error(&["init", "--preset", "tiny", "--random", s(&a)], &["already exists"]);
    assert_user_error(&["init", "--preset", "huge", "--random", s(&tmp.join("h"))], &["huge", "tiny", "lisa-7b", "glamm-7b"]);
    assert!(!tmp.join("h").exists());
    assert_user_error(&["init", "--preset", "tiny", "--random", s(&tmp.join("no/such/dir"))], &["does not exist"]);
    // Only the three finished models (no temporary directory left behind).
    let mut left: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["a", "b", "c"]);
}

#[test]
fn segment_bad_inputs() {
    let tmp = TempDir::new("cli-seg-bad");
    let model = init_tiny(&tmp, "tiny");
    let out = tmp.join("mask.png");
    let (m, i, o) = (s(&model), photo(), s(&out));
    let i = s(&i);

    let empty = tmp.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let corrupt = tmp.join("corrupt.png");
    let mut bytes = std::fs::read(photo()).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, bytes).unwrap();
    let text = tmp.join("notes.png");
    std::fs::write(&text, b"not an image at all").unwrap();

    assert_user_error(&["segment", "--model", m, s(&empty), "the cat", "-o", o], &["empty.png", "empty"]);
    assert_user_error(&["segment", "--model", m, s(&corrupt), "the cat", "-o", o], &["corrupt.png"]);
    assert_user_error(&["segment", "--model", m, s(&text), "the cat", "-o", o], &["notes.png"]);
    assert_user_error(&["segment", "--model", m, i, "the cat", "-o", o, "--max-pixels", "1000"], &["chelsea_120x80.png", "over the limit"]);
    assert_user_error(&["segment", "--model", m, i, "", "-o", o], &["expression", "empty"]);
    let long = "the cat ".repeat(300);
    assert_user_error(&["segment", "--model", m, i, &long, "-o", o, "--projector", "pool3"], &["expression", "context"]);
    assert_user_error(&["segment", "--model", s(&tmp.join("nope")), i, "the cat", "-o", o], &["nope"]);
    assert_user_error(&["segment", "--model", m, i, "the cat", "-o", o, "--projector", "pool"], &["--projector", "pool"]);
    assert_user_error(&["segment", "--model", m, i, "the cat", "-o", o, "--max-new-tokens", "0"], &["--max-new-tokens"]);
    assert_user_error(&["segment", "--model", m, i, "the cat", "-o", s(&tmp.join("no/dir/mask.png"))], &["-o", "does not exist"]);
    assert_user_error(&["segment", "--model", m, i, "the cat", "-o", o, "--backend", "tpu"], &["--backend", "tpu"]);
    assert_user_error(&["segment", "--model", m, i, "the cat", "-o", o, "--pixel-values", s(&tmp.join("px.safetensors"))], &["px.safetensors"]);

    // A model directory missing a component, or with a config that does not match its weights.
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    assert_user_error(&["segment", "--model", m, i, "the cat", "-o", o], &["tokenizer.json"]);
    let model = init_tiny(&tmp, "narrow");
    let cfg_path = model.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["vision"]["hidden_size"] = 48.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_user_error(&["segment", "--model", s(&model), i, "the cat", "-o", o], &["config.json", "mm_projector.0.weight"]);

    assert!(!out.exists(), "no mask may be written by a failed run");
    let stray: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().contains(".tmp")).collect();
    assert!(stray.is_empty(), "temporary files left behind: {stray:?}");
}
