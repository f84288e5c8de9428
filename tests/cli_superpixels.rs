//! `visword superpixels` end to end on a committed photograph with the superpixel fixture's SAM:
//! the PNGs have the promised sizes, the dump holds the label map, coverage and geometry, and
//! bad input fails with one `error:` line and no output file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::files::TempDir;
use common::fixtures_dir;
use visword::Weights;

fn visword(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_visword")).args(args).output().expect("run visword");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn sam() -> String {
    fixtures_dir().join("superpixels").to_string_lossy().into_owned()
}

fn photo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets").join("photos").join("rocket.jpg")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The fixture's thresholds, so the random model's masks take part (see make_superpixels.py).
const TUNED: [&str; 8] = ["--pred-iou-thresh", "-0.5", "--stability-thresh", "0.3", "--box-nms-thresh", "0.95", "--max-superpixels", "12"];

#[test]
fn writes_label_map_overlay_and_dump() {
    let d = TempDir::new("cli-superpixels");
    let (labels, overlay, dump) = (d.join("labels.png"), d.join("sp.png"), d.join("sp.safetensors"));
    let (sam, photo) = (sam(), photo());
    let mut args = vec!["superpixels", "--sam", &sam, s(&photo), "-o", s(&labels), "--overlay", s(&overlay), "--dump", s(&dump)];
    args.extend(["--points-per-side", "6", "--patch-grid", "12"]);
    args.extend(TUNED);
    let (code, out, err) = visword(&args);
    assert_eq!(code, 0, "stderr: {err}");
    // rocket.jpg is 240×360: SAM resizes it to 683×1024, a 171×256 low-res crop.
    assert_eq!(image::image_dimensions(&labels).unwrap(), (171, 256));
    assert_eq!(image::image_dimensions(&overlay).unwrap(), (240, 360));
    let count: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("superpixels: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count line in {out}"));
    assert!((1..=12).contains(&count), "{out}");
    assert!(out.contains("label map: 171×256 cells, patch grid 12×12") && out.contains("time: embedding"), "{out}");

    let w = Weights::open(&dump).unwrap();
    let label_map = w.get("label_map").unwrap();
    assert_eq!(label_map.shape(), [256, 171]);
    let labels = label_map.as_i32().unwrap();
    assert!(labels.iter().all(|&l| l >= -1 && l < count as i32) && labels.contains(&(count as i32 - 1)));
    assert_eq!(w.get("coverage").unwrap().shape(), [count, 144]);
    assert_eq!(w.get("geometry").unwrap().shape(), [count, 7]);
    let cfg: visword::superpixels::SuperpixelConfig = serde_json::from_str(&w.metadata["config"]).unwrap();
    assert_eq!((cfg.points_per_side, cfg.max_superpixels), (6, 12));
}

#[test]
fn json_output_is_one_object() {
    let (code, out, err) = visword(&["superpixels", "--sam", &sam(), s(&photo()), "--points-per-side", "3", "--json"]);
    assert_eq!(code, 0, "stderr: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["masks"], 27);
    assert_eq!(v["label_map"], serde_json::json!([256, 171]));
    // Nothing passes the default thresholds on random weights: one rest region.
    assert_eq!(v["superpixels"], 1);
    assert!(v["decoder_ms"].as_f64().unwrap() > 0.0 && v["embedding_ms"].as_f64().unwrap() > 0.0);
}

/// Assert a user error: exit 1, one `error:` line naming `needle`, and no file in `dir`.
#[track_caller]
fn assert_fails(args: &[&str], needle: &str, dir: &Path) {
    let (code, _, err) = visword(args);
    assert_eq!(code, 1, "{args:?} should fail; stderr: {err}");
    let err = common::without_notices(&err);
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "one error line expected: {err}");
    assert!(err.contains(needle), "error should mention `{needle}`: {err}");
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "bad.png").collect();
    assert!(left.is_empty(), "{args:?} left {left:?}");
}

#[test]
fn bad_input_fails_cleanly() {
    let d = TempDir::new("cli-superpixels-bad");
    let (labels, overlay, dump) = (d.join("labels.png"), d.join("sp.png"), d.join("sp.safetensors"));
    let outputs = ["-o", s(&labels), "--overlay", s(&overlay), "--dump", s(&dump)];
    let corrupt = d.join("bad.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let run = |image: &str, sam: &str, extra: &[&str]| {
        let mut a = vec!["superpixels", "--sam", sam, image];
        a.extend(outputs);
        a.extend(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let missing = d.join("no-such-model");
    for (args, needle) in [
        (run(s(&corrupt), &sam(), &[]), "bad.png"),
        (run(s(&photo()), s(&missing), &[]), "no-such-model"),
        (run(s(&photo()), &sam(), &["--points-per-side", "0"]), "points-per-side"),
        (run(s(&photo()), &sam(), &["--patch-grid", "0"]), "patch-grid"),
        (run(s(&photo()), &sam(), &["--stability-thresh", "nan"]), "stability-thresh"),
    ] {
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        assert_fails(&args, needle, &d);
    }
    // An output directory that does not exist fails before any work.
    let nowhere = d.join("missing-dir").join("labels.png");
    let (code, _, err) = visword(&["superpixels", "--sam", &sam(), s(&photo()), "-o", s(&nowhere)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing-dir"), "{err}");
}
