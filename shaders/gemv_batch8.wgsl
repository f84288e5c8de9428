// gemv_batch8.wgsl: GEMV_BATCH for the batched build of gemv.wgsl and gemv_many.wgsl
// (VISWORD_WGPU_GEMV=batched): each lane issues eight 16-byte weight loads before it uses any.
// On lavapipe this halved the decode rate; on GPUs whose compilers keep one load in flight per
// loop step (kernels/gemv.cu found that in CUDA's machine code) it should raise it.
const GEMV_BATCH: u32 = 8u;
