//! A decode step recorded once as a CUDA graph and replayed per token.
//!
//! Eager decoding launches ~7 kernels per layer (225 for a 7B step), each a host call and a gap
//! on the device; a graph is one launch. The step's ops are recorded by running them on the
//! stream under capture, with the few values that change between tokens (token id, position,
//! key count) read on the device from a small argument buffer (`STEP_*` slots,
//! kernels/common.cuh) instead of being baked into launch parameters:
//!
//! * `embedding` gathers the row of `step[STEP_ID]`;
//! * `rope_qk_write_kv` rotates at and writes the cache at `step[STEP_POS]`;
//! * the decode attention reads `step[STEP_KV_LEN]` keys and spreads them over its splits,
//!   whose count the cache's capacity fixes (splits past the keys write empty partials), so
//!   one graph serves every length.
//!
//! While a capture runs, `CudaBackend::step_args` holds the buffer's address and those three
//! ops take it; every other op is recorded as it is. Buffers the step allocates and drops are
//! allocation and free nodes of the graph (stream-ordered allocation), so each replay starts
//! from the same memory; the step's outputs (logits, and hidden states where asked for) are
//! copied into buffers allocated before the capture, and each replay hands out fresh copies.
//! Replaying: `decode_step_args` writes the arguments (a one-thread kernel queued before the
//! launch: no host-to-device copy), then the graph runs. On an H200 a 7B step went from 5.51
//! to 5.07 ms, the host's part from 1.37 to 0.02 ms (BENCHMARKS.md).

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, LaunchConfig};

use super::{dev_err, kernels, launch, CudaBackend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const OP: &str = "decode graph";

/// A recorded decode step: the graph, its argument buffer and its output buffers.
pub struct DecodeGraph {
    graph: CudaGraph,
    args: CudaSlice<i32>,
    outs: Vec<(CudaSlice<f32>, Vec<usize>)>,
}

// SAFETY: CUDA graph handles may be used from any thread as long as no two threads use one at
// the same time (the driver API's graph thread-safety rules); moving a DecodeGraph moves sole
// ownership, and it is not Sync, so a KV cache holding one can be sent to another thread but
// never replayed from two at once. cudarc binds the context to the calling thread on launch.
unsafe impl Send for DecodeGraph {}

impl std::fmt::Debug for DecodeGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeGraph").field("outputs", &self.outs.iter().map(|o| &o.1).collect::<Vec<_>>()).finish()
    }
}

/// Token id, position and key count as the kernels' int32 slots.
fn step_values(id: u32, pos: usize) -> Result<[i32; 3]> {
    let fits = |x: usize| i32::try_from(x).map_err(|_| Error::arg("position", format!("{x} is too large for a CUDA decode graph")));
    let id = i32::try_from(id).map_err(|_| Error::arg("token id", format!("{id} is too large for a CUDA decode graph")))?;
    Ok([id, fits(pos)?, fits(pos + 1)?])
}

impl CudaBackend {
    /// Whether decode steps are recorded and replayed (on unless `VISWORD_CUDA_GRAPH=0` at
    /// start-up or `set_step_graphs(false)`; off while profiling, whose per-op waits cannot be
    /// recorded).
    pub fn step_graphs(&self) -> bool {
        self.core.step_graphs.load(std::sync::atomic::Ordering::Relaxed) && !crate::backend::profile::enabled()
    }

    pub fn set_step_graphs(&self, on: bool) {
        self.core.step_graphs.store(on, std::sync::atomic::Ordering::Relaxed)
    }

    /// The argument buffer's address while a decode step is being recorded.
    pub(crate) fn step_args(&self) -> Option<u64> {
        *self.capturing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record `step` (one decode step for token `id` at position `pos`, returning f32 outputs
    /// of `shapes`) and run it once; returns the graph and this step's outputs. On an error
    /// nothing has run: the stream is out of capture and the caller may run the step eagerly.
    pub fn capture_decode(&self, id: u32, pos: usize, shapes: &[Vec<usize>], step: impl FnOnce() -> Result<Vec<Tensor>>) -> Result<(DecodeGraph, Vec<Tensor>)> {
        let values = step_values(id, pos)?;
        let args = self.htod(&values, OP)?;
        let mut outs = Vec::with_capacity(shapes.len());
        for shape in shapes {
            outs.push((self.alloc::<f32>(shape.iter().product(), OP)?, shape.clone()));
        }
        let stream = self.stream();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).map_err(dev_err(OP))?;
        *self.capturing.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.ptr(&args));
        let recorded = step().and_then(|got| {
            let got_shapes: Vec<&[usize]> = got.iter().map(|t| t.shape()).collect();
            if got_shapes != shapes.iter().map(|s| s.as_slice()).collect::<Vec<_>>() {
                return Err(Error::shape(OP, format!("the step returned {got_shapes:?}, expected {shapes:?}")));
            }
            for (t, (buf, _)) in got.iter().zip(outs.iter_mut()) {
                stream.memcpy_dtod(self.f32_slice(t, OP)?, buf).map_err(dev_err(OP))?;
            }
            Ok(())
            // `got` and every other buffer of the step drop here, inside the capture.
        });
        *self.capturing.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        let graph = ended.map_err(dev_err(OP))?.ok_or_else(|| Error::shape(OP, "the capture recorded nothing"))?;
        graph.launch().map_err(dev_err(OP))?;
        let g = DecodeGraph { graph, args, outs };
        let out = self.graph_outputs(&g)?;
        Ok((g, out))
    }

    /// Run a recorded step for token `id` at position `pos` (the caller checked both against
    /// the model and its cache); returns its outputs.
    pub fn replay_decode(&self, g: &DecodeGraph, id: u32, pos: usize) -> Result<Vec<Tensor>> {
        let [id, pos, kv_len] = step_values(id, pos)?;
        let ap = self.ptr(&g.args);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
        launch!(self, OP, self.function(&kernels::STEP, "decode_step_args")?, cfg, ap, id, pos, kv_len)?;
        g.graph.launch().map_err(dev_err(OP))?;
        self.graph_outputs(g)
    }

    /// Copies of the graph's outputs (the next replay overwrites its buffers).
    fn graph_outputs(&self, g: &DecodeGraph) -> Result<Vec<Tensor>> {
        g.outs.iter().map(|(buf, shape)| Ok(self.wrap_f32(self.dtod_copy(buf, OP)?, shape.clone()))).collect()
    }
}
