//! `visword bench` through the binary: the JSON report's shape and token counts at the real
//! geometry (576 patch tokens, 2×2 and 3×3 pooling, svp's superpixels of a real photo), and user
//! errors for bad options. Uses the `tiny` preset (real geometry, tiny widths) with a small
//! superpixel point grid: a few seconds per run.

use std::process::Command;

use serde_json::Value;

fn visword(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_visword")).args(args).output().expect("run visword");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Run with `--json` and parse stdout, which must be exactly one JSON object.
fn bench_json(extra: &[&str]) -> Value {
    let mut args = vec!["bench", "--preset", "tiny", "--json", "--runs", "1", "--points-per-side", "8"];
    args.extend_from_slice(extra);
    let (code, out, err) = visword(&args);
    assert_eq!(code, 0, "visword {args:?} failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {out}"));
    assert!(v.is_object());
    v
}

#[test]
fn tiny_json_report_has_every_stage_and_the_real_token_counts() {
    let v = bench_json(&[]);
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["preset"], "tiny");
    let text = v["text_tokens"].as_u64().unwrap();
    assert!(text > 0);
    let runs = v["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["projector"].as_str().unwrap()).collect();
    assert_eq!(names, ["mlp", "pool2", "pool3", "svp"]);
    for r in runs {
        let name = r["projector"].as_str().unwrap();
        let visual = r["visual_tokens"].as_u64().unwrap();
        match name {
            "mlp" => assert_eq!(visual, 576),
            "pool2" => assert_eq!(visual, 144),
            "pool3" => assert_eq!(visual, 64),
            // The random-weight cap on superpixels (40); at least the one region a photo always has.
            _ => assert!((1..=40).contains(&visual), "svp: {visual} visual tokens"),
        }
        assert_eq!(r["prompt_tokens"].as_u64(), Some(visual + text), "{name}");
        let stages = r["stages_ms"].as_object().unwrap();
        for stage in ["vision_encoder", "sam_encoder", "projector", "prefill", "decode_per_token", "mask_decoder"] {
            let ms = stages[stage].as_f64().unwrap_or_else(|| panic!("{name}: stage {stage} missing: {r}"));
            assert!(ms > 0.0, "{name}: stage {stage} took {ms} ms");
        }
        let superpixels = stages["superpixels"].as_f64();
        assert_eq!(superpixels.is_some(), name == "svp", "only svp generates superpixels: {r}");
        let split = ["superpixels_decoder", "superpixels_postprocess"].map(|s| stages[s].as_f64());
        assert!(split.iter().all(|x| x.is_some() == (name == "svp")), "{name}: the superpixel split goes with the stage: {r}");
        if let (Some(total), [Some(decoder), Some(post)]) = (superpixels, split) {
            assert!(decoder > 0.0 && post > 0.0 && decoder + post <= total * 1.01, "svp: decoder {decoder} + post-processing {post} within {total} ms");
        }
        let sum: f64 = ["vision_encoder", "sam_encoder", "projector", "prefill", "mask_decoder"]
            .iter()
            .map(|s| stages[*s].as_f64().unwrap())
            .sum::<f64>()
            + superpixels.unwrap_or(0.0)
            + 16.0 * stages["decode_per_token"].as_f64().unwrap();
        let e2e = r["end_to_end_ms"].as_f64().unwrap();
        assert!((e2e - sum).abs() < 0.01, "{name}: end_to_end {e2e} vs sum of stages {sum}");
        assert!(r["speedup_vs_mlp"].as_f64().unwrap() > 0.0);
        // Linux always has VmHWM; elsewhere the field is null.
        if cfg!(target_os = "linux") {
            assert!(r["peak_memory_bytes"].as_u64().unwrap() > 0);
        }
    }
    assert_eq!(runs[0]["speedup_vs_mlp"].as_f64(), Some(1.0));
}

/// The performance table (issue 4's stages): every stage keyed as tools/bench_torch.py keys it,
/// timed, with its work counted; no device peaks, rooflines or 7B targets on the CPU's tiny preset.
#[test]
fn json_performance_table_has_every_stage() {
    let v = bench_json(&["--decode-tokens", "3"]);
    assert_eq!(v["device"], "cpu");
    assert!(v["device_peaks"].is_null(), "peaks are measured on GPU backends only: {}", v["device_peaks"]);
    let rows = v["performance"].as_array().unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r["stage"].as_str().unwrap()).collect();
    assert_eq!(keys, ["decode", "prefill_616", "prefill_80", "vision", "sam", "superpixels", "scatter_pool", "end_to_end"]);
    for r in rows {
        let ms = r["ms"].as_f64().unwrap_or_else(|| panic!("no time: {r}"));
        assert!(ms > 0.0, "{r}");
        assert!(r["roofline_ms"].is_null() && r["target"].is_null(), "{r}");
    }
    let decode = &rows[0];
    let tps = decode["tokens_per_s"].as_f64().unwrap();
    assert!((tps * decode["ms"].as_f64().unwrap() - 1e3).abs() < 1e-6, "{decode}");
    // Prefill of 616 tokens does more work than of 80; both read the same weights.
    assert!(rows[1]["flops"].as_f64().unwrap() > 5.0 * rows[2]["flops"].as_f64().unwrap());
    assert_eq!(rows[1]["bytes"], rows[2]["bytes"]);
    // The svp row's end to end is the table's.
    let svp = v["runs"].as_array().unwrap().iter().find(|r| r["projector"] == "svp").unwrap();
    assert_eq!(rows[7]["ms"], svp["end_to_end_ms"]);
    assert_eq!(rows[5]["ms"], svp["stages_ms"]["superpixels"]);
}

#[test]
fn weight_dtype_and_prefill_only() {
    let v = bench_json(&["--weight-dtype", "bf16", "--decode-tokens", "0", "--threads", "1"]);
    assert_eq!(v["weight_dtype"], "bf16");
    assert_eq!(v["threads"], 1);
    for r in v["runs"].as_array().unwrap() {
        assert!(r["stages_ms"]["decode_per_token"].is_null(), "no decode steps were asked for: {r}");
        assert!(r["stages_ms"]["prefill"].as_f64().unwrap() > 0.0);
    }
    let decode = &v["performance"][0];
    assert!(decode["ms"].is_null() && decode["tokens_per_s"].is_null(), "{decode}");
}

#[test]
fn table_marks_absent_stages() {
    let (code, out, err) = visword(&["bench", "--preset", "tiny", "--runs", "1", "--decode-tokens", "2", "--points-per-side", "4"]);
    assert_eq!(code, 0, "{err}");
    for needle in ["backend:", "device:   cpu", "of roofline", "LLM prefill 576 + 40 tokens", "preset:   tiny", "threads:", "cpu:", "weights:  f32 (KV cache f32)", "superpixels", "pool3"] {
        assert!(out.contains(needle), "table lacks `{needle}`:\n{out}");
    }
    let mlp = out.lines().find(|l| l.starts_with("mlp ")).expect("an mlp row");
    assert!(mlp.contains('—') && mlp.contains("1.00×"), "{mlp}");
}

#[track_caller]
fn assert_user_error(args: &[&str], needles: &[&str]) {
    let (code, out, err) = visword(args);
    assert_eq!(code, 1, "visword {args:?} should fail with exit 1; stderr: {err}");
    let err: String = err.lines().filter(|l| !l.starts_with("notice: ")).map(|l| format!("{l}\n")).collect();
    assert!(out.is_empty(), "nothing on stdout for a failed run: {out}");
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "one error line expected: {err}");
    for n in needles {
        assert!(err.contains(n), "error for {args:?} should mention `{n}`: {err}");
    }
}

#[test]
fn bad_options_are_user_errors() {
    assert_user_error(&["bench", "--preset", "huge", "--json"], &["huge", "tiny", "cpu", "lisa-7b", "dinov2-lisa-7b"]);
    assert_user_error(&["bench", "--preset", "tiny", "--weight-dtype", "int4"], &["--weight-dtype", "int4"]);
    assert_user_error(&["bench", "--preset", "tiny", "--runs", "0"], &["--runs"]);
    assert_user_error(&["bench", "--preset", "tiny", "--threads", "0"], &["--threads"]);
    assert_user_error(&["bench", "--preset", "tiny", "--backend", "tpu"], &["--backend", "tpu"]);
    assert_user_error(&["bench", "--preset", "tiny", "--points-per-side", "0"], &["points-per-side"]);
}
