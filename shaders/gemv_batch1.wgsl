// gemv_batch1.wgsl: GEMV_BATCH for gemv.wgsl and gemv_many.wgsl in their default build: each
// lane loads one 16-byte weight vector per loop step. gemv_batch8.wgsl takes its place in the
// batched build (VISWORD_WGPU_GEMV=batched).
const GEMV_BATCH: u32 = 1u;
