// A host emulation of the CUDA features kernels/*.cu use, so the kernels' own source runs on a
// CPU (g++ -include cuda_emu.h -DVISWORD_CUDA_EMU): every thread of a block is a fiber
// (ucontext) in one OS thread, blocks run one after another, __syncthreads and the warp-level
// *_sync functions are barriers between fibers (each warp runs ahead to a block barrier before
// the next warp starts, so a missing block barrier shows), and mma.sync is computed from the
// operands the 32 lanes of a warp hand in, laid out as the PTX ISA places fragments. What it checks: the
// kernels' indexing, staging, masks, barriers and fragment use, against the CPU backend
// (tests/cuda_emu/). What it cannot: timing, races that a barrier-at-every-sync schedule hides,
// the hardware's exact rounding inside an mma (emulated in f64, rounded once).
//
// Shared memory is poisoned (all bits set: f32 and f16 NaN) before every block, so a read of
// shared memory that the kernel never wrote shows up as NaN in the output.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <ucontext.h>
#include <vector>

struct uint3 {
    unsigned x = 0, y = 0, z = 0;
};
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline int2 make_int2(int x, int y) { return {x, y}; }

namespace emu {

struct Warp {
    unsigned arrived = 0, mask = 0, live = 0, gen = 0;
    unsigned long long slot[32];
    unsigned mma_a[32][4], mma_b[32][2];
};

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    int warp = 0, lane = 0;
    bool done = false;
};

struct State {
    uint3 block_idx, block_dim, grid_dim;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<char> stacks;
    Fiber* cur = nullptr;
    ucontext_t sched;
    unsigned live = 0, arrived = 0, gen = 0;
    int or_acc = 0, or_result = 0;
    unsigned long long progress = 0;
    void (*cb)(void*) = nullptr;
    void* ctx = nullptr;
};
inline State g;
constexpr size_t STACK = 256 * 1024;

inline void yield() { swapcontext(&g.cur->ctx, &g.sched); }

inline void release_block_if_done() {
    if (g.arrived > 0 && g.arrived >= g.live) {
        g.arrived = 0;
        g.or_result = g.or_acc;
        g.or_acc = 0;
        ++g.gen;
        ++g.progress;
    }
}
inline void release_warp_if_done(Warp& w) {
    const unsigned need = w.mask & w.live;
    if (w.arrived != 0 && (w.arrived & need) == need) {
        w.arrived = 0;
        ++w.gen;
        ++g.progress;
    }
}

inline void sync_block() {
    const unsigned my = g.gen;
    ++g.arrived;
    ++g.progress;
    release_block_if_done();
    while (g.gen == my) yield();
}

inline void sync_warp(unsigned mask) {
    Warp& w = g.warps[g.cur->warp];
    const unsigned my = w.gen;
    w.mask = mask;
    w.arrived |= 1u << g.cur->lane;
    ++g.progress;
    release_warp_if_done(w);
    while (w.gen == my) yield();
}

inline void fiber_entry() {
    g.cb(g.ctx);
    Fiber* f = g.cur;
    f->done = true;
    --g.live;
    g.warps[f->warp].live &= ~(1u << f->lane);
    ++g.progress;
    release_block_if_done();
    release_warp_if_done(g.warps[f->warp]);
}

} // namespace emu

// Poisoned before each block; every __shared__ variable lives in this section.
extern "C" char __start_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_emu_shared[] __attribute__((weak, visibility("hidden")));

// Runs `cb(ctx)` as every thread of every block of the grid. Returns 0, or 1 with a message in
// `err` when the threads of a block deadlock (every live thread waits at a barrier the others
// never reach).
extern "C" __attribute__((visibility("default"))) int emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                                              unsigned by, unsigned bz, void (*cb)(void*), void* ctx,
                                                              char* err, size_t err_len) {
    using namespace emu;
    const unsigned n = bx * by * bz;
    if (n == 0 || n > 1024 || gx == 0 || gy == 0 || gz == 0) {
        snprintf(err, err_len, "bad launch: grid (%u, %u, %u), block (%u, %u, %u)", gx, gy, gz, bx, by, bz);
        return 1;
    }
    g.cb = cb;
    g.ctx = ctx;
    g.grid_dim = {gx, gy, gz};
    g.block_dim = {bx, by, bz};
    g.fibers.assign(n, Fiber{});
    g.warps.assign((n + 31) / 32, Warp{});
    if (g.stacks.size() < n * STACK) g.stacks.resize(n * STACK);
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                g.block_idx = {x, y, z};
                if (__start_emu_shared && __stop_emu_shared)
                    memset(__start_emu_shared, 0xff, (size_t)(__stop_emu_shared - __start_emu_shared));
                g.live = n;
                g.arrived = 0;
                g.or_acc = 0;
                for (auto& w : g.warps) w = Warp{};
                for (unsigned i = 0; i < n; ++i) {
                    Fiber& f = g.fibers[i];
                    f = Fiber{};
                    f.tid = {i % bx, (i / bx) % by, i / (bx * by)};
                    f.warp = (int)(i / 32);
                    f.lane = (int)(i % 32);
                    g.warps[f.warp].live |= 1u << f.lane;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = g.stacks.data() + (size_t)i * STACK;
                    f.ctx.uc_stack.ss_size = STACK;
                    f.ctx.uc_link = &g.sched;
                    makecontext(&f.ctx, (void (*)())fiber_entry, 0);
                }
                // Each warp runs as far as it can (to a block barrier or its end) before the next
                // one starts, first to last warp in even blocks and last to first in odd ones: a
                // block barrier missing between a shared-memory write and another warp's read
                // then shows as wrong (or poisoned) data.
                const int nw = (int)g.warps.size();
                const bool reverse = ((x + y + z) & 1u) != 0;
                while (g.live > 0) {
                    const unsigned long long before = g.progress;
                    for (int wi = 0; wi < nw; ++wi) {
                        const int w = reverse ? nw - 1 - wi : wi;
                        for (;;) {
                            const unsigned long long mark = g.progress;
                            for (unsigned i = (unsigned)w * 32; i < std::min(n, (unsigned)w * 32 + 32); ++i) {
                                Fiber& f = g.fibers[i];
                                if (f.done) continue;
                                g.cur = &f;
                                swapcontext(&g.sched, &f.ctx);
                            }
                            if (g.progress == mark) break;
                        }
                    }
                    if (g.live > 0 && g.progress == before) {
                        snprintf(err, err_len, "deadlock in block (%u, %u, %u): %u threads wait at barriers", x, y, z,
                                 g.live);
                        g.cur = nullptr;
                        return 1;
                    }
                }
                g.cur = nullptr;
            }
    return 0;
}

// ---- CUDA's built-in variables and qualifiers ----
#define threadIdx (emu::g.cur->tid)
#define blockIdx (emu::g.block_idx)
#define blockDim (emu::g.block_dim)
#define gridDim (emu::g.grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("emu_shared")))

// ---- intrinsics ----
inline void __syncthreads() { emu::sync_block(); }
inline int __syncthreads_or(int p) {
    emu::g.or_acc |= (p != 0);
    emu::sync_block();
    return emu::g.or_result;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::sync_warp(mask); }

template <class T>
inline T emu_shfl(unsigned mask, T v, int src_of_lane(int, int), int arg) {
    static_assert(sizeof(T) <= 8, "shuffle of a wide type");
    emu::Warp& w = emu::g.warps[emu::g.cur->warp];
    const int lane = emu::g.cur->lane;
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof(T));
    w.slot[lane] = bits;
    emu::sync_warp(mask);
    int src = src_of_lane(lane, arg);
    if (src < 0 || src > 31) src = lane;
    bits = w.slot[src];
    emu::sync_warp(mask);
    T r;
    memcpy(&r, &bits, sizeof(T));
    return r;
}
template <class T> inline T __shfl_xor_sync(unsigned m, T v, int o) {
    return emu_shfl(m, v, [](int l, int a) { return l ^ a; }, o);
}
template <class T> inline T __shfl_sync(unsigned m, T v, int s) {
    return emu_shfl(m, v, [](int, int a) { return a & 31; }, s);
}
template <class T> inline T __shfl_down_sync(unsigned m, T v, int d) {
    return emu_shfl(m, v, [](int l, int a) { return l + a; }, d);
}
template <class T> inline T __shfl_up_sync(unsigned m, T v, int d) {
    return emu_shfl(m, v, [](int l, int a) { return l - a; }, d);
}
inline unsigned __ballot_sync(unsigned mask, int p) {
    emu::Warp& w = emu::g.warps[emu::g.cur->warp];
    w.slot[emu::g.cur->lane] = p != 0;
    emu::sync_warp(mask);
    unsigned r = 0;
    for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && (w.live >> l & 1u) && w.slot[l]) r |= 1u << l;
    emu::sync_warp(mask);
    return r;
}

template <class T> inline T __ldg(const T* p) { return *p; }
template <class T, class U> inline T atomicAdd(T* p, U v) {
    T o = *p;
    *p = o + (T)v;
    return o;
}
template <class T, class U> inline T atomicMin(T* p, U v) {
    T o = *p;
    *p = std::min(o, (T)v);
    return o;
}
template <class T, class U> inline T atomicMax(T* p, U v) {
    T o = *p;
    *p = std::max(o, (T)v);
    return o;
}
template <class A, class B> inline auto min(A a, B b) { return a < b ? (std::common_type_t<A, B>)a : (std::common_type_t<A, B>)b; }
template <class A, class B> inline auto max(A a, B b) { return a < b ? (std::common_type_t<A, B>)b : (std::common_type_t<A, B>)a; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }

// ---- what common.cuh does with PTX: conversions (round to nearest even) and mma.sync ----
namespace emu {
inline float half_bits_to_f32(unsigned short h) {
    const unsigned sign = (h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 1023u;
    float v;
    if (e == 0) v = ldexpf((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 1024u), (int)e - 25);
    unsigned bits;
    memcpy(&bits, &v, 4);
    bits |= sign;
    memcpy(&v, &bits, 4);
    return v;
}
inline unsigned short f32_to_half_bits(float f) {
    unsigned x;
    memcpy(&x, &f, 4);
    const unsigned short sign = (unsigned short)((x >> 16) & 0x8000u);
    const unsigned ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fff;
    if (ax >= 0x477ff000u) return sign | 0x7c00u; // ≥ 65520 rounds to infinity
    if (ax < 0x38800000u) return sign | (unsigned short)nearbyintf(fabsf(f) * 16777216.0f); // subnormal
    unsigned h = ((((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13));
    const unsigned rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return sign | (unsigned short)h;
}
inline unsigned short f32_to_bf16_bits(float f) {
    unsigned x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_f32(unsigned short h) {
    const unsigned x = (unsigned)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

// D = A·B + C for one m16n8k16 tile, fragments as the PTX ISA lays them out (g = lane / 4,
// t = lane % 4): A regs (g, 2t..), (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..); B regs
// (k 2t.., n g), (k 2t + 8.., n g); C/D (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
// Each lane gathers the rows and columns of its own four outputs from the other lanes' regs.
template <class Elem>
inline void mma_16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1,
                      Elem elem) {
    Warp& w = g.warps[g.cur->warp];
    const int lane = g.cur->lane;
    w.mma_a[lane][0] = a0, w.mma_a[lane][1] = a1, w.mma_a[lane][2] = a2, w.mma_a[lane][3] = a3;
    w.mma_b[lane][0] = b0, w.mma_b[lane][1] = b1;
    sync_warp(0xffffffffu);
    auto A = [&](int row, int k) {
        const int t = (k % 8) / 2, reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        const unsigned v = w.mma_a[(row % 8) * 4 + t][reg];
        return elem((unsigned short)((k & 1) ? v >> 16 : v & 0xffffu));
    };
    auto B = [&](int k, int col) {
        const int t = (k % 8) / 2, reg = k >= 8 ? 1 : 0;
        const unsigned v = w.mma_b[col * 4 + t][reg];
        return elem((unsigned short)((k & 1) ? v >> 16 : v & 0xffffu));
    };
    const int gi = lane / 4, ti = lane % 4;
    float d[4];
    for (int e = 0; e < 4; ++e) {
        const int row = gi + (e >= 2 ? 8 : 0), col = 2 * ti + (e & 1);
        double acc = c[e];
        for (int k = 0; k < 16; ++k) acc += (double)A(row, k) * (double)B(k, col);
        d[e] = (float)acc;
    }
    sync_warp(0xffffffffu);
    for (int e = 0; e < 4; ++e) c[e] = d[e];
}

// cvt.rna.tf32.f32: keep 10 mantissa bits, rounding to nearest with ties away from zero (on the
// magnitude bits, so a carry may reach the exponent and overflow to infinity); NaN and infinity
// pass through.
inline unsigned f32_to_tf32_bits(float f) {
    unsigned x;
    memcpy(&x, &f, 4);
    if ((x & 0x7f800000u) == 0x7f800000u) return x;
    return (x + 0x1000u) & 0xffffe000u;
}

// D = A·B + C for one m16n8k8 TF32 tile (g = lane / 4, t = lane % 4): A regs (g, t), (g + 8, t),
// (g, t + 4), (g + 8, t + 4); B regs (k t, n g), (k t + 4, n g); C/D as in mma_16816. The
// tensor cores read only the top 19 bits of each operand, so the low 13 are dropped here too.
inline void mma_1688_tf32(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    Warp& w = g.warps[g.cur->warp];
    const int lane = g.cur->lane;
    w.mma_a[lane][0] = a0, w.mma_a[lane][1] = a1, w.mma_a[lane][2] = a2, w.mma_a[lane][3] = a3;
    w.mma_b[lane][0] = b0, w.mma_b[lane][1] = b1;
    sync_warp(0xffffffffu);
    auto val = [](unsigned v) {
        v &= 0xffffe000u;
        float f;
        memcpy(&f, &v, 4);
        return (double)f;
    };
    auto A = [&](int row, int k) { return val(w.mma_a[(row % 8) * 4 + k % 4][(row >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)]); };
    auto B = [&](int k, int col) { return val(w.mma_b[col * 4 + k % 4][k >= 4 ? 1 : 0]); };
    const int gi = lane / 4, ti = lane % 4;
    float d[4];
    for (int e = 0; e < 4; ++e) {
        const int row = gi + (e >= 2 ? 8 : 0), col = 2 * ti + (e & 1);
        double acc = c[e];
        for (int k = 0; k < 8; ++k) acc += A(row, k) * B(k, col);
        d[e] = (float)acc;
    }
    sync_warp(0xffffffffu);
    for (int e = 0; e < 4; ++e) c[e] = d[e];
}
} // namespace emu
