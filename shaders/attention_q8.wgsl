// attention_q8.wgsl: attention.wgsl's forward kernel with 8-query tiles (32 threads), for a few
// queries per head (SAM's token-to-image attention: 7 prompt tokens over 4096 image keys);
// the wrapper compiles this file in front of attention.wgsl as a module of its own.
const BQ: u32 = 8u;
