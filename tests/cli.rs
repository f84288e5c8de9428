//! The `visword` binary on bad input: a non-zero exit, one `error:` line naming what is wrong,
//! no panic or backtrace, and no output file left behind.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::fixtures_dir;

fn visword(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_visword")).args(args).env("RUST_BACKTRACE", "1").output().expect("run visword");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("visword-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Assert a user error: exit 1, an `error:` line mentioning every `needles`, no panic.
#[track_caller]
fn assert_user_error(args: &[&str], needles: &[&str]) {
    let (code, _out, err) = visword(args);
    assert_eq!(code, 1, "visword {args:?} should fail with exit 1; stderr: {err}");
    let err = common::without_notices(&err);
    assert!(err.starts_with("error: "), "stderr should be one error line: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "no panic expected: {err}");
    for n in needles {
        assert!(err.contains(n), "error for {args:?} should mention `{n}`: {err}");
    }
}

#[test]
fn inspect_lists_a_checkpoint_and_rejects_bad_files() {
    let (code, out, _) = visword(&["inspect", fixtures_dir().join("sam_tiny").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("vision_encoder.patch_embed.projection.weight"), "{out}");
    assert!(out.contains("parameters"));
    let d = tmp("inspect");
    let bad = d.join("bad.safetensors");
    std::fs::write(&bad, b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").unwrap();
    assert_user_error(&["inspect", bad.to_str().unwrap()], &["bad.safetensors", "runs past the end"]);
    assert_user_error(&["inspect", d.join("missing").to_str().unwrap()], &["missing"]);
}

#[test]
fn sam_bad_inputs() {
    let d = tmp("sam");
    let model = fixtures_dir().join("sam_tiny");
    let image = model.join("image.png");
    let out = d.join("mask.png");
    let (m, i, o) = (model.to_str().unwrap(), image.to_str().unwrap(), out.to_str().unwrap());
    assert_user_error(&["sam", "--model", d.join("nope").to_str().unwrap(), i, "--point", "1,1", "-o", o], &["nope"]);
    assert_user_error(&["sam", "--model", m, i, "--point", "100000,1", "-o", o], &["point"]);
    assert_user_error(&["sam", "--model", m, i, "--box", "1,1,100000,5", "-o", o], &["box"]);
    let empty = d.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert_user_error(&["sam", "--model", m, empty.to_str().unwrap(), "--point", "1,1", "-o", o], &["empty.png"]);
    let corrupt = d.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    assert_user_error(&["sam", "--model", m, corrupt.to_str().unwrap(), "--point", "1,1", "-o", o], &["corrupt.png"]);
    assert!(!out.exists(), "a failed run must not leave a mask behind");
}

#[test]
fn png_header_claiming_a_huge_image_is_refused_before_decoding() {
    let d = tmp("huge");
    // A valid PNG signature and IHDR claiming 100000×100000, with no pixel data.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(100000u32.to_be_bytes());
    ihdr.extend(100000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
        png.extend(0u32.to_be_bytes());
        png.extend(chunk);
        png.extend(crc32(chunk).to_be_bytes());
    }
    let p = d.join("huge.png");
    std::fs::write(&p, &png).unwrap();
    let model = fixtures_dir().join("sam_tiny");
    let out = d.join("m.png");
    assert_user_error(&["sam", "--model", model.to_str().unwrap(), p.to_str().unwrap(), "--point", "1,1", "-o", out.to_str().unwrap()], &["huge.png", "over the limit"]);
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn unknown_backend_and_unavailable_backend_are_clear() {
    let model = fixtures_dir().join("sam_tiny");
    let image = model.join("image.png");
    let out = std::env::temp_dir().join(format!("visword-cli-be-{}.png", std::process::id()));
    let args = |be: &'static str| vec!["sam".to_string(), "--model".into(), model.display().to_string(), image.display().to_string(), "--point".into(), "1,1".into(), "-o".into(), out.display().to_string(), "--backend".into(), be.into()];
    let a: Vec<String> = args("tpu");
    let (code, _, err) = visword(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_ne!(code, 0);
    assert!(err.contains("tpu"), "{err}");
    // A named backend runs when this machine has it, and is a clear error naming it otherwise.
    for (name, kind) in [("cuda", visword::BackendKind::Cuda), ("wgpu", visword::BackendKind::Wgpu)] {
        let available = visword::Backend::new(kind).is_ok();
        let a: Vec<String> = args(name);
        let (code, _, err) = visword(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        if available {
            assert_eq!(code, 0, "{name} is available here, so the command should run: {err}");
            assert!(out.exists(), "{name}: no mask written");
            let _ = std::fs::remove_file(&out);
        } else {
            assert_eq!(code, 1, "{err}");
            assert!(err.contains(name) && err.contains("not available"), "{err}");
        }
    }
}

#[test]
fn generate_and_embed_bad_inputs() {
    let d = tmp("gen");
    let llama = fixtures_dir().join("llama_tied");
    let m = llama.to_str().unwrap();
    let dump = d.join("dump.safetensors");
    let dp = dump.to_str().unwrap();
    // Token ids past the 300-token vocabulary, and 200 ids past the 128-token context.
    assert_user_error(&["generate", "--model", m, "--input-ids", "1,2,300", "--max-new-tokens", "2", "--dump", dp], &["300", "vocabulary"]);
    let long: Vec<String> = (0..200).map(|i| (i % 250).to_string()).collect();
    assert_user_error(&["generate", "--model", m, "--input-ids", &long.join(","), "--max-new-tokens", "1"], &["200", "context"]);
    assert_user_error(&["generate", "--model", d.join("none").to_str().unwrap(), "--input-ids", "1"], &["none"]);
    assert!(!dump.exists(), "a failed generate must not leave its dump behind");
    // embed: a missing image and a corrupt one.
    let clip = fixtures_dir().join("clip_quick");
    let out = d.join("feats.safetensors");
    let (c, o) = (clip.to_str().unwrap(), out.to_str().unwrap());
    assert_user_error(&["embed", "--model", c, d.join("missing.png").to_str().unwrap(), "-o", o], &["missing.png"]);
    let bad = d.join("bad.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    assert_user_error(&["embed", "--model", c, bad.to_str().unwrap(), "-o", o], &["bad.jpg"]);
    assert!(!out.exists());
}

#[test]
fn profile_on_the_cpu_counts_each_op_once_in_wall_time() {
    let llama = fixtures_dir().join("llama_tied");
    let out = Command::new(env!("CARGO_BIN_EXE_visword"))
        .args(["generate", "--model", llama.to_str().unwrap(), "--input-ids", "1,2,3", "--max-new-tokens", "3", "--backend", "cpu"])
        .env("VISWORD_PROFILE", "1")
        .output()
        .expect("run visword");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let heading = err.lines().find(|l| l.starts_with("op ")).unwrap_or_else(|| panic!("no profile report in:\n{err}"));
    assert!(heading.ends_with("(device time, synced)"), "the CPU has no device stamps: {heading}");
    // One embedding lookup per forward pass: the prompt and two decode steps (the last token is
    // sampled from the third pass's logits without another step).
    let calls = |op: &str| {
        err.lines().find(|l| l.split_whitespace().next() == Some(op)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    };
    assert_eq!(calls("embedding"), Some(3), "{err}");
}
