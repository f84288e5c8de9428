//! Builds one kernels/*.cu file as host C++ against cuda_emu.h (g++) and launches its kernels
//! on the CPU. Launches are serialised: the emulator's state is global to each built library,
//! and the test harness runs tests on several threads.

use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use libloading::Library;

use visword::Tensor;

use crate::common::backends;
use crate::common::Tol;

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".into())
}

pub struct Emu {
    lib: Library,
    file: String,
}

type LaunchFn = unsafe extern "C" fn(u32, u32, u32, u32, u32, u32, extern "C" fn(*mut c_void), *mut c_void, *mut c_char, usize) -> i32;

static LAUNCH: Mutex<()> = Mutex::new(());
static BUILT: OnceLock<Mutex<Vec<(String, &'static Emu)>>> = OnceLock::new();

/// kernels/`file`.cu built for the emulator (once per test process), or None with the reason
/// printed when there is no C++ compiler here.
pub fn kernels(file: &str) -> Option<&'static Emu> {
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, e)) = built.iter().find(|(f, _)| f == file) {
        return Some(e);
    }
    if Command::new(cxx()).arg("--version").output().is_err() {
        assert!(!backends::required("cuda-emu"), "a C++ compiler ({}) is required here (VISWORD_REQUIRE=cuda-emu) but was not found", cxx());
        eprintln!("cuda_emu: skipping kernels/{file}.cu: no C++ compiler ({}) found", cxx());
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda_emu_{file}_{}.so", std::process::id()));
    let status = Command::new(cxx())
        .args(["-std=c++17", "-O2", "-g0", "-fPIC", "-shared", "-w", "-DVISWORD_CUDA_EMU", "-include"])
        .arg(root.join("tests/cuda_emu/cuda_emu.h"))
        .arg("-I")
        .arg(root.join("kernels"))
        .args(["-x", "c++"])
        .arg(root.join(format!("kernels/{file}.cu")))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", cxx()));
    assert!(status.status.success(), "kernels/{file}.cu does not build for the emulator:\n{}", String::from_utf8_lossy(&status.stderr));
    // SAFETY: a library built just now from the project's own sources; its initialisers only
    // set up plain globals.
    let lib = unsafe { Library::new(&out) }.unwrap_or_else(|e| panic!("loading {}: {e}", out.display()));
    let _ = std::fs::remove_file(&out);
    let emu: &'static Emu = Box::leak(Box::new(Emu { lib, file: file.to_string() }));
    built.push((file.to_string(), emu));
    Some(emu)
}

extern "C" fn trampoline<F: Fn()>(ctx: *mut c_void) {
    // SAFETY: ctx is the &F that `launch` passed and keeps alive for the whole launch.
    unsafe { (*(ctx as *const F))() }
}

impl Emu {
    /// The entry point `name` as the function type `T` (an `unsafe extern "C" fn(...)` matching
    /// the kernel's parameter list).
    ///
    /// # Safety
    /// `T` must be the kernel's exact C signature.
    pub unsafe fn kernel<T: Copy>(&self, name: &str) -> T {
        let sym = unsafe { self.lib.get::<T>(name.as_bytes()) }.unwrap_or_else(|e| panic!("kernels/{}.cu has no entry point {name}: {e}", self.file));
        *sym
    }

    /// Run `body` (which calls one kernel) as every thread of a (grid, block) launch. Panics on
    /// a deadlock (threads of a block waiting at barriers the others never reach).
    pub fn launch<F: Fn()>(&self, grid: (u32, u32, u32), block: (u32, u32, u32), body: F) {
        let _guard = LAUNCH.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: emu_launch's C signature is LaunchFn (cuda_emu.h).
        let launch: LaunchFn = unsafe { self.kernel("emu_launch") };
        let mut err = [0 as c_char; 256];
        // SAFETY: body outlives the call; err is writable for its length.
        let rc = unsafe { launch(grid.0, grid.1, grid.2, block.0, block.1, block.2, trampoline::<F>, &body as *const F as *mut c_void, err.as_mut_ptr(), err.len()) };
        // SAFETY: emu_launch writes a NUL-terminated message on failure.
        assert_eq!(rc, 0, "kernels/{}.cu: {}", self.file, unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy());
    }
}

/// A tensor's bytes in a 16-byte aligned buffer, as device allocations are (the kernels load
/// 16 bytes at a time).
pub struct Dev(Vec<u128>);

impl Dev {
    pub fn new(t: &Tensor) -> Dev {
        let bytes = t.raw_bytes().unwrap();
        let mut v = vec![0u128; bytes.len().div_ceil(16).max(1)];
        // SAFETY: v holds at least bytes.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len()) };
        Dev(v)
    }
    pub fn ptr(&self) -> *const u8 {
        self.0.as_ptr() as *const u8
    }
    pub fn f32(&self) -> *const f32 {
        self.0.as_ptr() as *const f32
    }
}

/// f32 sums of up to k products in another order: tests/gpu's bound for CUDA's f32 kernels.
pub fn tol(k: usize) -> Tol {
    Tol { atol: 1e-4f32.max(4e-6 * (k as f32).sqrt()), rtol: 1e-4 }
}

/// The grid of a row kernel (`grid_rows` in src/backend/cuda/mod.rs): x ≤ 65535 blocks, the rest
/// along y.
pub fn grid_rows(rows: usize) -> (u32, u32, u32) {
    let x = rows.clamp(1, 65_535);
    (x as u32, rows.div_ceil(x).max(1) as u32, 1)
}
