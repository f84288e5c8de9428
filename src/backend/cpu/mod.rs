//! The CPU backend: plain, obviously-correct implementations that are the spec for the GPU
//! backends, multi-threaded with rayon and fast where it matters (GEMM/GEMV, attention).
