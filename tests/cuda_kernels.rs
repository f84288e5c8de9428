//! Every CUDA kernel file compiles with NVRTC for sm_80 and sm_90: the run-time path used when
//! the binary was built without nvcc (build.rs already compile-checks them with nvcc when one is
//! found). Needs only libnvrtc, no GPU; skips with the reason when NVRTC cannot be loaded here
//! (`VISWORD_REQUIRE=nvrtc` turns that into a failure).

use visword::backend::cuda::{kernels, nvrtc_available, nvrtc_compile};

fn required() -> bool {
    std::env::var("VISWORD_REQUIRE").map(|v| v.split(',').any(|s| s.trim() == "nvrtc")).unwrap_or(false)
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if let Err(e) = nvrtc_available() {
        assert!(!required(), "NVRTC is required here (VISWORD_REQUIRE) but unavailable: {e}");
        eprintln!("every_kernel_compiles_with_nvrtc: skipping: {e}");
        return;
    }
    assert!(!kernels::ALL.is_empty(), "no kernels/*.cu found by build.rs");
    let mut failures = Vec::new();
    for k in kernels::ALL {
        for arch in ["sm_80", "sm_90"] {
            match nvrtc_compile(k, arch) {
                Ok(ptx) => {
                    assert!(ptx.contains(".entry"), "kernels/{}.cu for {arch}: PTX without an entry point", k.name);
                    // Every extern "C" __global__ in the source must be in the PTX under its own name.
                    for name in entry_points(k.source) {
                        assert!(ptx.contains(&format!(".entry {name}(")), "kernels/{}.cu for {arch}: `{name}` missing from the PTX", k.name);
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Build-time PTX, when nvcc was found, declares every entry point too (loaded as is on a GPU).
#[test]
fn build_time_ptx_has_every_entry_point() {
    for k in kernels::ALL {
        let Some(ptx) = k.ptx else {
            eprintln!("build_time_ptx_has_every_entry_point: kernels/{}.cu: no build-time PTX (nvcc absent)", k.name);
            continue;
        };
        for name in entry_points(k.source) {
            assert!(ptx.contains(&format!(".entry {name}(")), "kernels/{}.cu: `{name}` missing from the build-time PTX", k.name);
        }
    }
}

/// Names of the `extern "C" __global__ void name(` functions of a source.
fn entry_points(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("__global__ void ") {
        rest = &rest[i + "__global__ void ".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}
