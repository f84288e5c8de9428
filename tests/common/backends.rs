//! One test body, every backend: the GPU backends this machine has, each to be checked against
//! the CPU reference.
//!
//! A backend without a device is skipped with a printed reason, never unwrapped. Where a backend
//! must be present (CI installs Mesa's software Vulkan driver, so wgpu must find an adapter
//! there), set `VISWORD_REQUIRE=wgpu` (or `cuda`, or `wgpu,cuda`) and its absence fails the test.
//! `VISWORD_BACKENDS=cuda` (or `wgpu`) tries only the listed backends, so one run's pass/fail
//! counts belong to one backend (scripts/gpu-check.sh runs the binary once per backend).

use std::sync::Mutex;

use visword::{Backend, BackendKind};

use super::Tol;

/// A GPU backend under test and the tolerance its ops are held to against the CPU reference.
pub struct Gpu {
    pub backend: Backend,
    /// f32 ops: the GPUs sum in another order and use fused multiply-adds.
    pub op_tol: Tol,
    /// Whole f32 models against transformers.
    pub model_tol: Tol,
}

/// wgpu backends of finished tests, reused by later ones: NVIDIA's Vulkan driver stopped
/// reporting an adapter after about 30 devices had been created in one process (on an H100,
/// driver 580), so a test binary makes at most one per concurrently running test.
static WGPU_POOL: Mutex<Vec<Backend>> = Mutex::new(Vec::new());

impl Drop for Gpu {
    fn drop(&mut self) {
        let backend = std::mem::replace(&mut self.backend, Backend::cpu());
        if let Backend::Wgpu(w) = &backend {
            // Undo what tests switch (their defaults: subgroups where the adapter has them, the
            // adapter's own workgroup limit).
            w.set_use_subgroups(true);
            w.set_max_workgroups_per_dim(u32::MAX);
            WGPU_POOL.lock().unwrap_or_else(|p| p.into_inner()).push(backend);
        }
    }
}

/// Whether `VISWORD_BACKENDS` (a comma-separated list; unset = all) lets `name` be tried.
fn selected(name: &str) -> bool {
    std::env::var("VISWORD_BACKENDS").map(|v| v.split(',').any(|s| s.trim() == name)).unwrap_or(true)
}

/// Whether `VISWORD_REQUIRE` (comma-separated) names `name`: its absence then fails the tests.
pub fn required(name: &str) -> bool {
    std::env::var("VISWORD_REQUIRE").map(|v| v.split(',').any(|s| s.trim() == name)).unwrap_or(false)
}

/// Every GPU backend available here (possibly none), printing why each missing one is skipped.
pub fn gpus(test: &str) -> Vec<Gpu> {
    let mut out = Vec::new();
    for (name, kind) in [("cuda", BackendKind::Cuda), ("wgpu", BackendKind::Wgpu)] {
        if !selected(name) {
            eprintln!("{test}: skipping {name}: not in VISWORD_BACKENDS");
            continue;
        }
        let pooled = if kind == BackendKind::Wgpu { WGPU_POOL.lock().unwrap_or_else(|p| p.into_inner()).pop() } else { None };
        match pooled.map_or_else(|| Backend::new(kind), Ok) {
            Ok(backend) => out.push(Gpu {
                backend,
                op_tol: Tol { atol: 1e-4, rtol: 1e-4 },
                model_tol: Tol { atol: 5e-4, rtol: 5e-3 },
            }),
            Err(e) if required(name) => panic!("{test}: {name} is required here (VISWORD_REQUIRE) but unavailable: {e}"),
            Err(e) => eprintln!("{test}: skipping {name}: {e}"),
        }
    }
    out
}
