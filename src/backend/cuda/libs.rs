//! Finding NVIDIA's user-space libraries (NVRTC, cuBLAS) where the dynamic loader would not.
//!
//! cudarc opens them by name (`libnvrtc.so.13`, ...), which only works when they are on the
//! loader's path. A CUDA toolkit under `CUDA_HOME` or `/usr/local/cuda`, or NVIDIA's pip wheels,
//! usually are not. Opening such a file once by its full path with `RTLD_GLOBAL` makes the later
//! by-name open find it (the loader matches already loaded libraries by soname). The driver
//! (`libcuda.so`) is never searched for: it comes with the kernel module, and the toolkit's
//! `stubs/libcuda.so` must not be picked up.

use std::path::PathBuf;
use std::sync::OnceLock;

/// A library cudarc loads by name, and the files (dependencies first) to open to provide it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lib {
    Nvrtc,
    Cublas,
}

impl Lib {
    fn files(self) -> &'static [&'static str] {
        match self {
            Lib::Nvrtc => &["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"],
            Lib::Cublas => &["libcublasLt.so.13", "libcublas.so.13"],
        }
    }

    fn present(self) -> bool {
        // SAFETY: these only try to open the library by name and drop it again.
        unsafe {
            match self {
                Lib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                Lib::Cublas => cudarc::cublas::sys::is_culib_present(),
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lib::Nvrtc => "NVRTC (libnvrtc.so.13)",
            Lib::Cublas => "cuBLAS (libcublas.so.13)",
        }
    }
}

/// Make `lib` loadable by name, or say where it was looked for.
pub(crate) fn ensure(lib: Lib) -> Result<(), String> {
    if lib.present() {
        return Ok(());
    }
    let dirs = lib_dirs();
    for dir in dirs {
        let mut opened = false;
        for f in lib.files() {
            let p = dir.join(f);
            if p.is_file() {
                opened |= dlopen_global(&p);
            }
        }
        if opened && lib.present() {
            return Ok(());
        }
    }
    Err(format!(
        "{} not found on the loader path nor in {} (set LD_LIBRARY_PATH or CUDA_HOME, or pip install the nvidia-cuda-nvrtc / nvidia-cublas wheels)",
        lib.name(),
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

fn dlopen_global(path: &std::path::Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: a plain dlopen of an NVIDIA library; the handle is kept for the process lifetime.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !h.is_null()
}

/// Directories that may hold the CUDA user-space libraries, most specific first.
fn lib_dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let mut dirs = Vec::new();
        for root in cuda_roots() {
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
        }
        dirs.retain(|d| d.is_dir());
        dirs.dedup();
        dirs
    })
}

/// CUDA installation roots: `CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda`, the toolkit nvcc came
/// from at build time, and NVIDIA's pip wheels (`site-packages/nvidia/cu13`).
pub(crate) fn cuda_roots() -> &'static [PathBuf] {
    static ROOTS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots: Vec<PathBuf> = Vec::new();
        for var in ["CUDA_HOME", "CUDA_PATH"] {
            if let Some(v) = std::env::var_os(var) {
                roots.push(PathBuf::from(v));
            }
        }
        roots.push(PathBuf::from("/usr/local/cuda"));
        if let Some(lib) = super::kernels::BUILD_CUDA_LIB_DIR {
            if let Some(root) = std::path::Path::new(lib).parent() {
                roots.push(root.to_path_buf());
            }
        }
        roots.extend(pip_wheel_root());
        roots.retain(|r| r.is_dir());
        roots.dedup();
        roots
    })
}

/// `site-packages/nvidia/cu13` of the `python3` on PATH, if NVIDIA's wheels are installed there.
fn pip_wheel_root() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import os, nvidia\nfor p in nvidia.__path__:\n  r = os.path.join(p, 'cu13')\n  if os.path.isdir(r): print(r); break"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let p = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!p.is_empty()).then(|| PathBuf::from(p))
}
