//! Build script:
//! * records the git commit the binary was built from (benchmarks print it, so a figure in
//!   BENCHMARKS.md can be traced to its code);
//! * turns every `kernels/*.cu` into a `Kernel` constant in `$OUT_DIR/cuda_kernels.rs` (so a new
//!   kernel file needs no registry edit). Local `#include "x.cuh"` lines are inlined, so the
//!   embedded source compiles with NVRTC without a header list. When nvcc is found, each file is
//!   also compiled to PTX for `compute_80` (the driver JITs it forward to sm_90 and later) and
//!   compile-checked as an sm_90 cubin (so ptxas validates the code for both); any nvcc error
//!   fails the build. Without nvcc the sources are embedded alone and compiled by NVRTC on
//!   first use, and a warning says so.
//!
//! nvcc is looked up in `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `PATH`,
//! `/usr/local/cuda/bin`, then NVIDIA's pip wheel (`nvidia/cu13/bin`). `NVCC=none` skips it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The virtual architecture the embedded PTX targets (A100 and everything after it).
const PTX_ARCH: &str = "compute_80";
/// The real architecture every kernel is additionally compile-checked for (H100/H200).
const CHECK_ARCH: &str = "sm_90";

fn main() {
    record_commit();
    build_kernels();
}

fn record_commit() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    println!("cargo:rustc-env=VISWORD_BUILD_COMMIT={commit}{}", if dirty { "-dirty" } else { "" });
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}

fn fail(msg: String) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

fn build_kernels() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set".into())));
    let dir = Path::new("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let mut sources: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            match p.extension().and_then(|x| x.to_str()) {
                Some("cu") => {
                    println!("cargo:rerun-if-changed={}", p.display());
                    sources.push(p);
                }
                Some("cuh") => println!("cargo:rerun-if-changed={}", p.display()),
                _ => {}
            }
        }
    }
    sources.sort();

    let src_dir = out.join("kernels");
    let ptx_dir = out.join("ptx");
    for d in [&src_dir, &ptx_dir] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| fail(format!("{}: {e}", d.display())));
    }
    let mut inlined = Vec::new();
    for s in &sources {
        let stem = s.file_stem().and_then(|x| x.to_str()).unwrap_or_else(|| fail(format!("{}: bad file name", s.display())));
        if !stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || stem.starts_with(|c: char| c.is_ascii_digit()) {
            fail(format!("{}: kernel file names must be identifiers (letters, digits, _)", s.display()));
        }
        let mut seen = HashSet::new();
        let text = inline_includes(s, dir, &mut seen);
        let path = src_dir.join(format!("{stem}.cu"));
        write_if_changed(&path, &text);
        inlined.push((stem.to_string(), path));
    }

    let nvcc = find_nvcc();
    let mut ptx: Vec<Option<PathBuf>> = vec![None; inlined.len()];
    match &nvcc {
        Some(nvcc) if !inlined.is_empty() => {
            // One thread per file: nvcc is single-threaded and there are only a handful.
            let results: Vec<Result<PathBuf, String>> = std::thread::scope(|scope| {
                let handles: Vec<_> = inlined
                    .iter()
                    .map(|(stem, src)| {
                        let (nvcc, ptx_dir) = (nvcc.clone(), ptx_dir.clone());
                        scope.spawn(move || compile_with_nvcc(&nvcc, stem, src, &ptx_dir))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("nvcc thread panicked".into()))).collect()
            });
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(p) => ptx[i] = Some(p),
                    Err(msg) => fail(msg),
                }
            }
        }
        Some(_) => {}
        None => {
            if !inlined.is_empty() {
                println!(
                    "cargo:warning=nvcc not found (NVCC, CUDA_HOME, PATH, /usr/local/cuda, pip nvidia-cuda-nvcc): CUDA kernels are embedded as source and compiled with NVRTC at run time"
                );
            }
        }
    }

    let mut code = String::new();
    code.push_str("// Generated by build.rs from kernels/*.cu: one Kernel per file.\n");
    code.push_str(&format!(
        "/// The virtual architecture of the embedded PTX, or None when nvcc was absent at build time.\npub const PTX_ARCH: Option<&str> = {};\n",
        if nvcc.is_some() { format!("Some({PTX_ARCH:?})") } else { "None".into() }
    ));
    let lib_dir = nvcc.as_ref().and_then(|n| n.parent()?.parent().map(|p| p.join("lib"))).filter(|p| p.is_dir());
    code.push_str(&format!(
        "/// The CUDA library directory next to the nvcc used at build time (searched for NVRTC/cuBLAS at run time).\npub const BUILD_CUDA_LIB_DIR: Option<&str> = {};\n",
        match lib_dir.as_ref().and_then(|p| p.to_str()) {
            Some(p) => format!("Some({p:?})"),
            None => "None".into(),
        }
    ));
    let mut names = Vec::new();
    for ((stem, src), ptx) in inlined.iter().zip(&ptx) {
        let name = stem.to_ascii_uppercase();
        let src = src.to_str().unwrap_or_else(|| fail(format!("{}: path is not UTF-8", src.display())));
        let ptx = match ptx {
            Some(p) => format!("Some(include_str!({:?}))", p.to_str().unwrap_or_else(|| fail(format!("{}: path is not UTF-8", p.display())))),
            None => "None".into(),
        };
        code.push_str(&format!(
            "pub const {name}: Kernel = Kernel {{ name: {stem:?}, source: include_str!({src:?}), ptx: {ptx} }};\n"
        ));
        names.push(name);
    }
    code.push_str(&format!("/// Every kernel file.\npub const ALL: &[Kernel] = &[{}];\n", names.join(", ")));
    write_if_changed(&out.join("cuda_kernels.rs"), &code);
    println!("cargo:rustc-env=VISWORD_CUDA_PTX_ARCH={}", if nvcc.is_some() { PTX_ARCH } else { "nvrtc" });
}

/// The file's text with every `#include "local.cuh"` replaced by that header's text (each header
/// once, like `#pragma once`). Angle-bracket includes are left to the compiler.
fn inline_includes(path: &Path, dir: &Path, seen: &mut HashSet<PathBuf>) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("#include") {
            let rest = rest.trim();
            if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                let header = dir.join(name);
                if !header.is_file() {
                    fail(format!("{}: included file {} not found", path.display(), header.display()));
                }
                if seen.insert(header.clone()) {
                    out.push_str(&format!("// ---- begin {name} ----\n"));
                    out.push_str(&inline_includes(&header, dir, seen));
                    out.push_str(&format!("// ---- end {name} ----\n"));
                }
                continue;
            }
        }
        if t.starts_with("#pragma once") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return;
    }
    std::fs::write(path, text).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
}

fn compile_with_nvcc(nvcc: &Path, stem: &str, src: &Path, ptx_dir: &Path) -> Result<PathBuf, String> {
    let ptx = ptx_dir.join(format!("{stem}.ptx"));
    let cubin = ptx_dir.join(format!("{stem}.{CHECK_ARCH}.cubin"));
    let common = ["-std=c++17", "-O3", "-lineinfo"];
    let runs: [(Vec<String>, &Path); 2] = [
        (vec!["-ptx".into(), format!("-arch={PTX_ARCH}")], &ptx),
        (vec!["-cubin".into(), format!("-arch={CHECK_ARCH}")], &cubin),
    ];
    for (flags, dst) in runs {
        let output = Command::new(nvcc)
            .args(common)
            .args(&flags)
            .arg("-o")
            .arg(dst)
            .arg(src)
            .output()
            .map_err(|e| format!("{}: could not run nvcc: {e}", nvcc.display()))?;
        if !output.status.success() {
            return Err(format!(
                "nvcc {} failed for kernels/{stem}.cu (inlined copy {}):\n{}{}",
                flags.join(" "),
                src.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    Ok(ptx)
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("NVCC") {
        if v == "none" || v.is_empty() {
            return None;
        }
        return Some(PathBuf::from(v));
    }
    let mut candidates = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            candidates.push(PathBuf::from(v).join("bin/nvcc"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|p| p.join("nvcc")));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/bin/nvcc"));
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Some(found);
    }
    // NVIDIA's pip wheel (nvidia-cuda-nvcc): nvidia is a namespace package.
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, nvidia\nfor p in nvidia.__path__:\n  n = os.path.join(p, 'cu13', 'bin', 'nvcc')\n  if os.path.isfile(n): print(n); break",
        ])
        .output()
        .ok()?;
    let p = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!p.is_empty()).then(|| PathBuf::from(p)).filter(|p| p.is_file())
}
