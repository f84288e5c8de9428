//! `Backend::overlap`: two independent pieces of work, concurrent where the backend can run
//! them so (CUDA: the second on a stream of its own, see cuda/lane.rs), else one after the
//! other.

use std::time::Instant;

use super::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// What `Backend::overlap` returns.
#[derive(Debug)]
pub struct Overlapped<T> {
    /// The side's result, on the backend `overlap` was called on.
    pub side: Tensor,
    pub main: T,
    /// How long the side's work took on the device, from the moment it could start (everything
    /// queued before the call was done) to its last op; run concurrently with `main`'s, so it
    /// includes the time the two shared the device.
    pub side_ms: f64,
}

impl Backend {
    /// Whether `overlap` runs its two parts concurrently on this backend.
    pub fn overlaps(&self) -> bool {
        matches!(self, Backend::Cuda(_))
    }

    /// Run `side` and `main`, which must not depend on each other's results. On CUDA `side`
    /// queues its ops on a second stream (the backend it is handed), so its kernels run beside
    /// those `main` queues here; elsewhere `side` runs first, then `main`. Tensors both read
    /// (inputs, weights) are borrowed across the call; `side` returns one tensor, which comes
    /// back on this backend. Work queued here after the call runs after both parts.
    pub fn overlap<T>(&self, side: impl FnOnce(&Backend) -> Result<Tensor>, main: impl FnOnce(&Backend) -> Result<T>) -> Result<Overlapped<T>> {
        let Backend::Cuda(b) = self else {
            let start = Instant::now();
            let side = side(self)?;
            self.synchronize()?;
            let side_ms = start.elapsed().as_secs_f64() * 1e3;
            let main = main(self)?;
            return Ok(Overlapped { side, main, side_ms });
        };
        let (lane_be, lane) = super::cuda::lane::cuda_lane(b)?;
        // Rule 1 (cuda/lane.rs): the lane starts after everything queued here.
        lane.wait_for(b)?;
        let start = lane.mark()?;
        // A failed side skips the main part; either way the main stream waits for the lane
        // before returning (rule 2: the borrowed inputs may be freed right after).
        let outs = side(lane_be).and_then(|s| main(self).map(|m| (s, m)));
        let end = lane.mark();
        let joined = b.wait_for(lane);
        let (side_t, main) = outs?;
        joined?;
        // Rule 3: copy the result onto the main stream, let the lane wait for the copy, and
        // only then drop the lane's buffer.
        let adopted = b.adopt(&side_t)?;
        lane.wait_for(b)?;
        drop(side_t);
        let side_ms = super::cuda::lane::elapsed_ms(&start, &end?)?;
        Ok(Overlapped { side: adopted, main, side_ms })
    }
}
