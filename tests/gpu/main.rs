//! Every GPU backend against the CPU reference: the ops (`ops`), attention (`attention`) and
//! the whole models and segmenter (`models`). One test binary, so a GPU machine without a Rust
//! toolchain needs to be sent only this one (with the `visword` binary) to check everything.
//!
//! Each test runs on every backend `common::backends::gpus` finds and skips with a printed reason
//! where there is none; `VISWORD_REQUIRE=wgpu` (set in CI, which installs a software Vulkan
//! driver) makes a missing backend a failure.

#[path = "../common/mod.rs"]
mod common;

mod attention;
mod models;
mod ops;
mod profile;
