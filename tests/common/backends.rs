//! One test body, every backend: the GPU backends this machine has, each to be checked against
//! the CPU reference.
//!
//! A backend without a device is skipped with a printed reason, never unwrapped. Where a backend
//! must be present (CI installs Mesa's software Vulkan driver, so wgpu must find an adapter
//! there), set `VISWORD_REQUIRE=wgpu` (or `cuda`, or `wgpu,cuda`) and its absence fails the test.

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

fn required(name: &str) -> bool {
    std::env::var("VISWORD_REQUIRE").map(|v| v.split(',').any(|s| s.trim() == name)).unwrap_or(false)
}

/// Every GPU backend available here (possibly none), printing why each missing one is skipped.
pub fn gpus(test: &str) -> Vec<Gpu> {
    let mut out = Vec::new();
    for (name, kind) in [("cuda", BackendKind::Cuda), ("wgpu", BackendKind::Wgpu)] {
        match Backend::new(kind) {
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
