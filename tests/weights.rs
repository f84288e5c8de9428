//! safetensors loading: round trips (single file and sharded), zero-copy mapping, and every
//! malformed-file case giving a typed error that names the file and tensor.

mod common;

use std::path::{Path, PathBuf};

use common::Rng;
use visword::tensor::CpuData;
use visword::weights::save_safetensors;
use visword::{Backend, DType, Error, Tensor, VarView, Weights};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("visword-weights-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A raw safetensors file from a header JSON and data bytes.
fn raw(path: &Path, header: &str, data: &[u8]) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

fn err_of(path: &Path) -> String {
    match Weights::open(path) {
        Ok(_) => panic!("{} opened but is malformed", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn round_trip_every_dtype_zero_copy() {
    let d = tmpdir("rt");
    let mut rng = Rng::new(7);
    let a = rng.tensor(&[3, 5]);
    let tensors = vec![
        ("a.f32".to_string(), a.clone()),
        ("a.f16".to_string(), a.to_dtype(DType::F16).unwrap()),
        ("a.bf16".to_string(), a.to_dtype(DType::BF16).unwrap()),
        ("ids".to_string(), Tensor::from_i64(vec![1, -2, 3], vec![3]).unwrap()),
    ];
    let p = d.join("model.safetensors");
    save_safetensors(&p, &tensors, None).unwrap();
    let w = Weights::open(&d).unwrap();
    assert_eq!(w.names().count(), 4);
    let got = w.get("a.f32").unwrap();
    assert_eq!(got.shape(), &[3, 5]);
    // The header is padded so the data (and with it the first tensor) starts on a cache line.
    let bytes = std::fs::read(&p).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + header_len) % 64, 0, "tensor data must start 64-byte aligned");
    assert_eq!(got.as_f32().unwrap().as_ptr() as usize % 64, 0, "the first tensor, mapped, sits on a cache line");
    assert_eq!(got.as_f32().unwrap(), a.as_f32().unwrap());
    assert!(matches!(got.cpu_data(), Some(CpuData::Mapped { .. })), "f32 tensors must be mapped, not copied");
    let h = w.get("a.bf16").unwrap().to_f32_vec().unwrap();
    for (x, y) in h.iter().zip(a.as_f32().unwrap()) {
        assert!((x - y).abs() <= 1e-2 * y.abs().max(1e-3));
    }
    assert_eq!(w.get("ids").unwrap().as_i64().unwrap(), &[1, -2, 3]);
    // Scoped views and shape checks.
    let be = Backend::cpu();
    let vv = VarView::new(&w, &be).pp("a");
    assert_eq!(vv.get("f16", &[3, 5]).unwrap().dtype(), DType::F16);
    assert_eq!(vv.get_f32("f16", &[3, 5]).unwrap().dtype(), DType::F32);
    match vv.get("f32", &[5, 3]) {
        Err(Error::TensorShape { name, expected, got }) => {
            assert_eq!(name, "a.f32");
            assert_eq!(expected, vec![5, 3]);
            assert_eq!(got, vec![3, 5]);
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    assert_eq!(vv.stored_shape("f32", &[1]).unwrap(), vec![3, 5], "stored shape, whatever was expected");
    assert!(matches!(vv.stored_shape("missing", &[1]), Err(Error::MissingTensor { .. })));
    match vv.get("missing", &[1]) {
        Err(e @ Error::MissingTensor { .. }) => assert!(e.to_string().contains("a.missing")),
        other => panic!("expected a missing-tensor error, got {other:?}"),
    }
}

#[test]
fn sharded_index() {
    let d = tmpdir("shard");
    let mut rng = Rng::new(8);
    save_safetensors(&d.join("model-00001-of-00002.safetensors"), &[("x".into(), rng.tensor(&[4]))], None).unwrap();
    save_safetensors(&d.join("model-00002-of-00002.safetensors"), &[("y".into(), rng.tensor(&[2, 2]))], None).unwrap();
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let w = Weights::open(&d).unwrap();
    assert_eq!(w.get("y").unwrap().shape(), &[2, 2]);
    assert!(w.file_of("x").unwrap().ends_with("model-00001-of-00002.safetensors"));
    // An index naming a tensor its shard lacks.
    std::fs::write(d.join("model.safetensors.index.json"), r#"{"weight_map": {"x": "model-00002-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#).unwrap();
    let e = err_of(&d);
    assert!(e.contains("`x`"), "{e}");
    // An index escaping the directory.
    std::fs::write(d.join("model.safetensors.index.json"), r#"{"weight_map": {"x": "../evil.safetensors"}}"#).unwrap();
    assert!(err_of(&d).contains("leaves the model directory"));
}

#[test]
fn malformed_files_are_typed_errors() {
    let d = tmpdir("bad");
    let ok_header = r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    type Case = (&'static str, Box<dyn Fn(&Path)>, &'static str);
    let cases: Vec<Case> = vec![
        ("short", Box::new(|p: &Path| std::fs::write(p, [1u8, 2, 3]).unwrap()), "shorter than the 8-byte header"),
        ("header_past_end", Box::new(|p: &Path| {
            let mut b = 1_000_000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            std::fs::write(p, b).unwrap()
        }), "runs past the end"),
        ("truncated_data", Box::new(move |p: &Path| raw(p, ok_header, &[0u8; 4])), "past the 4-byte data section"),
        ("not_json", Box::new(|p: &Path| raw(p, "{not json", &[])), "not valid JSON"),
        ("unknown_dtype", Box::new(|p: &Path| raw(p, r#"{"t":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}}"#, &[0; 2])), "unknown or unsupported dtype F8_E9"),
        ("size_mismatch", Box::new(|p: &Path| raw(p, r#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8])), "is not its 8 bytes"),
        ("overlap", Box::new(|p: &Path| raw(p, r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, &[0; 12])), "overlap"),
        ("reversed_offsets", Box::new(|p: &Path| raw(p, r#"{"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, &[0; 8])), "invalid data_offsets"),
        ("huge_shape", Box::new(|p: &Path| raw(p, r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#, &[0; 8])), "is not its 8 bytes"),
        ("no_offsets", Box::new(|p: &Path| raw(p, r#"{"t":{"dtype":"F32","shape":[2]}}"#, &[0; 8])), "data_offsets"),
    ];
    for (name, make, want) in cases {
        let p = d.join(format!("{name}.safetensors"));
        make(&p);
        let e = err_of(&p);
        assert!(e.contains(want), "{name}: error `{e}` should mention `{want}`");
        assert!(e.contains(&p.display().to_string()), "{name}: error `{e}` should name the file");
    }
    let missing = d.join("nope");
    assert!(err_of(&missing).contains("no such file"));
    let empty_dir = d.join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    assert!(err_of(&empty_dir).contains("no model.safetensors"));
}

#[test]
fn atomic_write_leaves_nothing_on_failure() {
    let d = tmpdir("atomic");
    let bad = d.join("no_such_dir").join("out.safetensors");
    let e = save_safetensors(&bad, &[("x".into(), Tensor::zeros(vec![2]))], None).unwrap_err();
    assert!(matches!(e, Error::Output { .. }), "{e:?}");
    assert!(!bad.exists());
    let good = d.join("out.safetensors");
    save_safetensors(&good, &[("x".into(), Tensor::zeros(vec![2]))], None).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[test]
fn synthetic_weights_are_deterministic_and_shaped_as_asked() {
    let w = Weights::synthetic(42, DType::BF16);
    let be = Backend::cpu();
    let vv = VarView::new(&w, &be).pp("layers.0");
    let a = vv.get("fc.weight", &[8, 16]).unwrap();
    assert_eq!((a.shape(), a.dtype()), (&[8usize, 16][..], DType::BF16));
    let b = vv.get("fc.weight", &[8, 16]).unwrap();
    assert_eq!(a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
    let c = vv.get("other.weight", &[8, 16]).unwrap().to_f32_vec().unwrap();
    assert_ne!(a.to_f32_vec().unwrap(), c, "different names give different values");
    let norm = vv.get_f32("norm.weight", &[16]).unwrap().to_f32_vec().unwrap();
    assert!(norm.iter().all(|v| (0.85..=1.15).contains(v)), "norm weights sit near 1");
    assert_eq!(vv.stored_shape("anything", &[7, 3]).unwrap(), vec![7, 3], "synthetic weights report the asked shape");
    let other_seed = Weights::synthetic(43, DType::BF16);
    let d = VarView::new(&other_seed, &be).pp("layers.0").get("fc.weight", &[8, 16]).unwrap();
    assert_ne!(a.to_f32_vec().unwrap(), d.to_f32_vec().unwrap());
}
