//! The lane: a second stream, with its own cuBLAS and cuBLASLt handles, over the same context,
//! kernels and switches, on which `Backend::overlap` queues work that is independent of the
//! main stream's (the vision tower beside SAM's image encoder), so the two run concurrently.
//!
//! Buffers come from the stream-ordered allocator: each is freed on the stream that allocated
//! it, and its memory may be handed out again as soon as that free is reached in stream order.
//! A buffer used on one stream and freed on the other is therefore safe only when the free is
//! ordered after the use. `Backend::overlap` keeps three rules:
//! 1. the lane waits for everything queued on the main stream before its work, so its inputs
//!    are ready;
//! 2. the main stream waits for the lane's work before anything queued after the overlap, so
//!    the inputs (which the caller's closures borrow, so they outlive the call) are freed on the
//!    main stream only after the lane has read them;
//! 3. the lane's result is copied into a buffer of the main stream, the lane then waits for
//!    that copy, and only then is the lane's buffer dropped: nothing the lane allocated is used
//!    on the main stream afterwards. (Anything a model caches while on the lane is freed on the
//!    lane, which by rule 1 of a later overlap and this rule never runs ahead of the main
//!    stream's uses.)

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};

use super::{dev_err, unavailable, CudaBackend, CudaData};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

const OP: &str = "overlap";

/// An event that can time (events made with no flags cannot).
fn timing_event(stream: &CudaStream) -> Result<CudaEvent> {
    stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(dev_err(OP))
}

impl CudaBackend {
    /// The lane, made on first use: a new stream with its own BLAS handles over this
    /// backend's context, kernels and switches.
    pub(crate) fn lane(&self) -> Result<&Backend> {
        if let Some(l) = self.lane.get() {
            return Ok(l);
        }
        let stream = self.core.ctx.new_stream().map_err(|e| unavailable(format!("cannot create the lane's stream ({e})")))?;
        let blas = cudarc::cublas::CudaBlas::new(stream.clone()).map_err(|e| unavailable(format!("cuBLAS did not initialise on the lane ({e})")))?;
        // Another thread may have set it meanwhile: either lane serves.
        let _ = self.lane.set(Box::new(Backend::Cuda(CudaBackend::with_stream(self.core.clone(), stream, blas))));
        self.lane.get().map(|b| &**b).ok_or_else(|| unavailable("the lane was not kept"))
    }

    /// Make this backend's stream wait for everything queued on `other`'s so far.
    pub(crate) fn wait_for(&self, other: &CudaBackend) -> Result<()> {
        self.stream.join(&other.stream).map_err(dev_err(OP))
    }

    /// A timing event recorded on this backend's stream now.
    pub(crate) fn mark(&self) -> Result<CudaEvent> {
        timing_event(&self.stream)
    }

    /// A copy of `t` (a tensor of another stream) in a buffer of this backend's stream, queued
    /// here.
    pub(crate) fn adopt(&self, t: &Tensor) -> Result<Tensor> {
        let s = &self.stream;
        let e = dev_err(OP);
        let data = match self.data(t, OP)? {
            CudaData::F32(d) => CudaData::F32(s.clone_dtod(d).map_err(e)?),
            CudaData::F16(d) => CudaData::F16(s.clone_dtod(d).map_err(e)?),
            CudaData::BF16(d) => CudaData::BF16(s.clone_dtod(d).map_err(e)?),
            CudaData::I32(d) => CudaData::I32(s.clone_dtod(d).map_err(e)?),
            CudaData::U8(d) => CudaData::U8(s.clone_dtod(d).map_err(e)?),
        };
        Ok(Tensor::from_storage(Storage::Cuda(std::sync::Arc::new(data)), t.dtype(), t.shape().to_vec()))
    }
}

/// Milliseconds between two timing events (waits for `end`).
pub(crate) fn elapsed_ms(start: &CudaEvent, end: &CudaEvent) -> Result<f64> {
    end.synchronize().map_err(dev_err(OP))?;
    start.elapsed_ms(end).map(f64::from).map_err(dev_err(OP))
}

/// The lane of `b` as a CUDA backend.
pub(crate) fn cuda_lane(b: &CudaBackend) -> Result<(&Backend, &CudaBackend)> {
    let lane = b.lane()?;
    match lane {
        Backend::Cuda(l) => Ok((lane, l)),
        _ => Err(Error::shape(OP, "the CUDA backend's lane is not a CUDA backend")),
    }
}
