//! Kernel modules: the PTX nvcc produced at build time, or NVRTC at run time.
//!
//! Each `kernels/<family>.cu` becomes one `Kernel` (see build.rs). `ModuleCache` loads a kernel's
//! module the first time one of its functions is asked for and keeps it (and each function) for
//! the backend's lifetime. Loading tries the build-time PTX first; when there is none (nvcc was
//! absent) or the driver rejects it (a driver older than the PTX ISA, a device older than
//! compute_80), NVRTC compiles the embedded source for the device's own architecture, and the
//! PTX is kept on disk (`$XDG_CACHE_HOME/visword/ptx/<hash>.ptx`) so later runs skip the compile.
//! `VISWORD_CUDA_NVRTC=1` forces the NVRTC path (to test it on a device).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::libs::{self, Lib};
use crate::error::{Error, Result};

/// One kernel file: its (include-inlined) CUDA source and, when nvcc ran at build time, its PTX.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// The file stem (`elementwise` for kernels/elementwise.cu).
    pub name: &'static str,
    pub source: &'static str,
    pub ptx: Option<&'static str>,
}

fn unavailable(reason: String) -> Error {
    Error::BackendUnavailable { backend: "cuda".into(), reason }
}

struct Loaded {
    module: Arc<CudaModule>,
    functions: HashMap<String, CudaFunction>,
}

/// Loaded modules and functions of one context.
#[derive(Default)]
pub(crate) struct ModuleCache {
    loaded: Mutex<HashMap<&'static str, Loaded>>,
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.loaded.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "ModuleCache({n} modules)")
    }
}

impl ModuleCache {
    /// Function `name` of `kernel`, loading the module on first use.
    pub(crate) fn function(&self, ctx: &Arc<CudaContext>, arch: &str, kernel: &Kernel, name: &str) -> Result<CudaFunction> {
        let mut loaded = self.loaded.lock().map_err(|_| unavailable("kernel cache lock poisoned".into()))?;
        if !loaded.contains_key(kernel.name) {
            let module = load_module(ctx, arch, kernel)?;
            loaded.insert(kernel.name, Loaded { module, functions: HashMap::new() });
        }
        let entry = loaded.get_mut(kernel.name).ok_or_else(|| unavailable("kernel cache lost a module".into()))?;
        if let Some(f) = entry.functions.get(name) {
            return Ok(f.clone());
        }
        let f = entry
            .module
            .load_function(name)
            .map_err(|e| unavailable(format!("kernels/{}.cu has no function `{name}` ({e})", kernel.name)))?;
        entry.functions.insert(name.to_string(), f.clone());
        Ok(f)
    }
}

fn load_module(ctx: &Arc<CudaContext>, arch: &str, kernel: &Kernel) -> Result<Arc<CudaModule>> {
    let mut prebuilt_err = None;
    // VISWORD_CUDA_NVRTC=1 skips the build-time PTX, to check the run-time path on a device.
    let force_nvrtc = std::env::var("VISWORD_CUDA_NVRTC").is_ok_and(|v| v == "1");
    if let (Some(ptx), false) = (kernel.ptx, force_nvrtc) {
        match ctx.load_module(Ptx::from_src(ptx)) {
            Ok(m) => return Ok(m),
            Err(e) => prebuilt_err = Some(e),
        }
    }
    let ptx = nvrtc_cached(kernel, arch).map_err(|e| match &prebuilt_err {
        Some(pe) => unavailable(format!("kernels/{}.cu: the driver rejected the build-time PTX ({pe}) and NVRTC failed: {e}", kernel.name)),
        None => e,
    })?;
    ctx.load_module(Ptx::from_src(ptx))
        .map_err(|e| unavailable(format!("kernels/{}.cu: the driver rejected NVRTC's PTX for {arch}: {e}", kernel.name)))
}

/// NVRTC's PTX for `kernel` on `arch` (e.g. "compute_90"), from the disk cache when present.
fn nvrtc_cached(kernel: &Kernel, arch: &str) -> Result<String> {
    let opts = nvrtc_options(arch);
    let key = fnv1a(&[kernel.source.as_bytes(), opts.join(" ").as_bytes()]);
    let path = cache_dir().map(|d| d.join(format!("{}-{key:016x}.ptx", kernel.name)));
    if let Some(p) = &path {
        if let Ok(ptx) = std::fs::read_to_string(p) {
            return Ok(ptx);
        }
    }
    let ptx = nvrtc_compile(kernel, arch)?;
    if let Some(p) = &path {
        // A cache that cannot be written only costs a recompile next time.
        let _ = crate::weights::write_atomic(p, |w| std::io::Write::write_all(w, ptx.as_bytes()));
    }
    Ok(ptx)
}

fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let dir = base.join("visword").join("ptx");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// 64-bit FNV-1a: stable across Rust versions (unlike `DefaultHasher`), so cache names persist.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn nvrtc_options(arch: &str) -> Vec<String> {
    let mut opts = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into(), "-default-device".into()];
    for root in libs::cuda_roots() {
        let inc = root.join("include");
        if inc.join("cuda_fp16.h").is_file() {
            opts.push(format!("--include-path={}", inc.display()));
        }
    }
    opts
}

/// Is NVRTC loadable here? (Err says where it was looked for.)
pub fn nvrtc_available() -> Result<()> {
    libs::ensure(Lib::Nvrtc).map_err(unavailable)
}

/// Compile `kernel` with NVRTC for `arch` ("compute_80", "sm_90", ...) and return its PTX (for
/// `sm_XY` NVRTC emits PTX for the matching virtual architecture after checking it).
pub fn nvrtc_compile(kernel: &Kernel, arch: &str) -> Result<String> {
    nvrtc_available()?;
    let opts = CompileOptions { options: nvrtc_options(arch), name: Some(format!("{}.cu", kernel.name)), ..Default::default() };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernel.source, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            unavailable(format!("NVRTC could not compile kernels/{}.cu for {arch}:\n{}", kernel.name, log.to_string_lossy()))
        }
        other => unavailable(format!("NVRTC could not compile kernels/{}.cu for {arch}: {other}", kernel.name)),
    })?;
    let bytes = ptx.as_bytes().ok_or_else(|| unavailable(format!("NVRTC returned no PTX for kernels/{}.cu", kernel.name)))?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}
