//! `VISWORD_PROFILE=1` on each GPU backend: the `visword` binary generates a few tokens with the
//! tiny Llama fixture, and its per-op report must come from device stamps (CUDA events; wgpu
//! timestamp queries where the adapter offers them inside passes), name the decoder's ops, and
//! add up to a positive time no longer than the whole command took.

use std::process::Command;
use std::time::Instant;

use visword::Backend;

use crate::common::backends::gpus;
use crate::common::fixtures_dir;

/// The report's "all ops" total (ms) and its op rows (name, calls, total ms).
fn parse_report(stderr: &str) -> (f64, Vec<(String, u64, f64)>) {
    let mut rows = Vec::new();
    let mut all = None;
    for line in stderr.lines().skip_while(|l| !l.starts_with("op ")).skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("all ops") {
            all = f.last().and_then(|v| v.parse::<f64>().ok());
            break;
        }
        // name (one word or more), calls, total ms, mean µs, share.
        if f.len() >= 5 {
            let n = f.len();
            if let (Ok(calls), Ok(ms)) = (f[n - 4].parse::<u64>(), f[n - 3].parse::<f64>()) {
                rows.push((f[..n - 4].join(" "), calls, ms));
            }
        }
    }
    (all.unwrap_or_else(|| panic!("no `all ops` line in:\n{stderr}")), rows)
}

#[test]
fn profile_stamps_time_the_ops_of_a_generation() {
    for g in gpus("profile_stamps_time_the_ops_of_a_generation") {
        let (name, stamps) = match &g.backend {
            Backend::Cuda(_) => ("cuda", true),
            Backend::Wgpu(w) => ("wgpu", w.offers_profile_stamps()),
            Backend::Cpu(_) => continue,
        };
        let model = fixtures_dir().join("llama_tied");
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_visword"))
            .args(["generate", "--model", model.to_str().unwrap(), "--input-ids", "1,2,3,4,5", "--max-new-tokens", "4", "--backend", name])
            .env("VISWORD_PROFILE", "1")
            .env("NODEVICE_SELECT", "1")
            .output()
            .expect("run visword");
        let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: visword generate failed:\n{err}");
        let heading = err.lines().find(|l| l.starts_with("op ")).unwrap_or_else(|| panic!("{name}: no profile report in:\n{err}"));
        let how = if stamps { "(device time, stamps)" } else { "(device time, synced)" };
        assert!(heading.ends_with(how), "{name}: expected the ops timed {how}: {heading}");
        let (all_ms, rows) = parse_report(&err);
        for op in ["rms_norm", "embedding"] {
            assert!(rows.iter().any(|(n, calls, _)| n.starts_with(op) && *calls > 0), "{name}: no `{op}` row in:\n{err}");
        }
        let sum: f64 = rows.iter().map(|r| r.2).sum();
        assert!((sum - all_ms).abs() <= 0.01 * rows.len() as f64 + 1e-9, "{name}: the rows add up to {sum} ms, the report says {all_ms}");
        assert!(all_ms > 0.0 && all_ms < wall_ms, "{name}: ops took {all_ms} ms in a command of {wall_ms:.1} ms:\n{err}");
        eprintln!("{name}: ops {all_ms:.2} ms of a {wall_ms:.0} ms command, {how}");
    }
}
