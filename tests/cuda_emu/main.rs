//! The CUDA kernels' own source (kernels/*.cu) run on the CPU through a host emulation of the
//! CUDA features they use (cuda_emu.h: threads as fibers, barriers, warp shuffles and votes,
//! mma.sync from the PTX ISA's fragment layout), against the CPU backend on seeded inputs. This
//! checks indexing, staging, masking, barriers and tensor-core fragment use on any machine with
//! a C++ compiler, before (and between) runs on a GPU; tests/gpu checks the kernels on a real
//! device. Sizes are small: an emulated block runs its threads one after another.
//!
//! Skips with a printed reason when no C++ compiler is found (`$CXX`, else `g++`);
//! `VISWORD_REQUIRE=cuda-emu` (set in CI) makes that a failure.

#[path = "../common/mod.rs"]
mod common;

mod attention;
mod conv;
mod elementwise;
mod emu;
mod gemm;
mod gemv;
mod layout;
mod mask_select;
mod masks;
mod norm;
mod rel_pos;
mod rope;
mod scatter_pool;
mod two_way;
