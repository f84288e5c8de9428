// A captured decode step's arguments (src/backend/cuda/graph.rs): the graph is recorded once
// and replayed per token, so what changes between tokens lives in a small device buffer that
// its kernels read (embedding: the token id; rope_qk_write_kv: the position; the decode
// attention: the key count). This kernel writes it, queued on the stream just before each
// replay, so no host-to-device copy (and no host wait) is needed.
//
// Launch: one thread.
#include "common.cuh"

extern "C" __global__ void decode_step_args(int* __restrict__ step, int id, int pos, int kv_len) {
    step[STEP_ID] = id;
    step[STEP_POS] = pos;
    step[STEP_KV_LEN] = kv_len;
}
