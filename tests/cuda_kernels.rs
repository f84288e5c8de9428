//! Every CUDA kernel file compiles with NVRTC for sm_80 and sm_90: the run-time path used when
//! the binary was built without nvcc (build.rs already compile-checks them with nvcc when one is
//! found). Needs only libnvrtc, no GPU; skips with the reason when NVRTC cannot be loaded here
//! (`VISWORD_REQUIRE=nvrtc` turns that into a failure).

use visword::backend::cuda::{kernels, nvrtc_available, nvrtc_compile};

fn required() -> bool {
    std::env::var("VISWORD_REQUIRE").map(|v| v.split(',').any(|s| s.trim() == "nvrtc")).unwrap_or(false)
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if let Err(e) = nvrtc_available() {
        assert!(!required(), "NVRTC is required here (VISWORD_REQUIRE) but unavailable: {e}");
        eprintln!("every_kernel_compiles_with_nvrtc: skipping: {e}");
        return;
    }
    assert!(!kernels::ALL.is_empty(), "no kernels/*.cu found by build.rs");
    let mut failures = Vec::new();
    for k in kernels::ALL {
        for arch in ["sm_80", "sm_90"] {
            match nvrtc_compile(k, arch) {
                Ok(ptx) => {
                    assert!(ptx.contains(".entry"), "kernels/{}.cu for {arch}: PTX without an entry point", k.name);
                    // Every extern "C" __global__ in the source must be in the PTX under its own name.
                    for name in entry_points(k.source) {
                        assert!(ptx.contains(&format!(".entry {name}(")), "kernels/{}.cu for {arch}: `{name}` missing from the PTX", k.name);
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Build-time PTX, when nvcc was found, declares every entry point too (loaded as is on a GPU).
#[test]
fn build_time_ptx_has_every_entry_point() {
    for k in kernels::ALL {
        let Some(ptx) = k.ptx else {
            eprintln!("build_time_ptx_has_every_entry_point: kernels/{}.cu: no build-time PTX (nvcc absent)", k.name);
            continue;
        };
        for name in entry_points(k.source) {
            assert!(ptx.contains(&format!(".entry {name}(")), "kernels/{}.cu: `{name}` missing from the build-time PTX", k.name);
        }
    }
}

/// Names of the `extern "C" __global__ void [__launch_bounds__(..)] name(` functions of a source.
/// Names built by token pasting inside a macro (`name_d##DP##_f32`) cannot be read from the
/// source and are left out.
fn entry_points(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("__global__ void ") {
        rest = rest[i + "__global__ void ".len()..].trim_start();
        if let Some(after) = rest.strip_prefix("__launch_bounds__") {
            let close = after.find(')').map_or(after.len(), |j| j + 1);
            rest = after[close..].trim_start();
        }
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let pasted = rest[name.len()..].starts_with('#');
        if !name.is_empty() && !pasted {
            out.push(name);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Every CudaBackend op against the CPU backend, on a machine with a CUDA device (skips without
// one; `VISWORD_REQUIRE=cuda` makes that a failure). Shapes cover sizes not divisible by the
// block size, size 1, empty dims, more rows than one grid dimension holds and more elements than
// one grid-stride pass covers. Every case runs and the failures are reported together, so one
// run on a GPU says everything that is wrong.

mod common;

use common::{compare, Rng, Tol};
use visword::backend::cuda::{CudaBackend, DecodeSplits, FusedGemm};
use visword::backend::cpu::CpuBackend;
use visword::{Activation, AttnParams, DType, Tensor, TwoWayParams};

const TOL: Tol = Tol { atol: 1e-4, rtol: 1e-4 };

struct Checker {
    gpu: CudaBackend,
    cpu: CpuBackend,
    failures: Vec<String>,
    passed: usize,
}

impl Checker {
    fn up(&self, t: &Tensor) -> Tensor {
        self.gpu.upload(t).expect("upload")
    }

    /// Compare a GPU result with the CPU's (shape and values).
    fn check(&mut self, what: &str, got: visword::Result<Tensor>, want: visword::Result<Tensor>, tol: Tol) {
        let want = match want {
            Ok(w) => w,
            Err(e) => {
                // The CPU rejects it: the GPU must too.
                if got.is_ok() {
                    self.failures.push(format!("{what}: CPU errors ({e}) but CUDA returned a result"));
                }
                return;
            }
        };
        let got = match got.and_then(|g| self.gpu.to_host(&g)) {
            Ok(g) => g,
            Err(e) => {
                self.failures.push(format!("{what}: CUDA error: {e}"));
                return;
            }
        };
        if got.shape() != want.shape() {
            self.failures.push(format!("{what}: shape {:?}, CPU {:?}", got.shape(), want.shape()));
            return;
        }
        let (g, w) = (got.to_f32_vec().expect("host f32"), want.to_f32_vec().expect("host f32"));
        let r = compare(&g, &w, Tol { atol: tol.atol, rtol: tol.rtol });
        if r.bad > 0 {
            self.failures.push(format!(
                "{what}: {} of {} out of tolerance, max |err| {:.3e}; worst [{}]: got {} want {}",
                r.bad, r.n, r.max_abs, r.worst, g[r.worst], w[r.worst]
            ));
        } else {
            self.passed += 1;
            eprintln!("{what}: ok ({} elements, max |err| {:.2e})", r.n, r.max_abs);
        }
    }
}

fn half(t: &Tensor, dt: DType) -> Tensor {
    t.to_dtype(dt).expect("to_dtype")
}

#[test]
fn cuda_ops_match_cpu() {
    let gpu = match CudaBackend::new() {
        Ok(b) => b,
        Err(e) => {
            let req = std::env::var("VISWORD_REQUIRE").map(|v| v.split(',').any(|s| s.trim() == "cuda")).unwrap_or(false);
            assert!(!req, "CUDA is required here (VISWORD_REQUIRE) but unavailable: {e}");
            eprintln!("cuda_ops_match_cpu: skipping: {e}");
            return;
        }
    };
    eprintln!("device: {}", gpu.device_name());
    // These checks hold every op to the f32 tolerance against the CPU: the exact f32 GEMM path.
    // The bf16 tensor-core GEMMs (the default) are checked by tests/gpu against the CPU on the
    // same bf16-rounded activations.
    gpu.set_bf16_gemm(false);
    let mut c = Checker { gpu, cpu: CpuBackend::new(), failures: Vec::new(), passed: 0 };
    let mut rng = Rng::new(7);
    elementwise(&mut c, &mut rng);
    norms(&mut c, &mut rng);
    layout(&mut c, &mut rng);
    convs(&mut c, &mut rng);
    linears(&mut c, &mut rng);
    matmuls(&mut c, &mut rng);
    kv_and_pool(&mut c, &mut rng);
    // VISWORD_CUDA_SKIP_LARGE=1 leaves out the multi-GB cases (for runs under compute-sanitizer).
    if std::env::var("VISWORD_CUDA_SKIP_LARGE").as_deref() != Ok("1") {
        large(&mut c, &mut rng);
    }
    eprintln!("{} checks passed, {} failed", c.passed, c.failures.len());
    assert!(c.failures.is_empty(), "{} CUDA op checks failed:\n{}", c.failures.len(), c.failures.join("\n"));
}

fn elementwise(c: &mut Checker, rng: &mut Rng) {
    for shape in [vec![1], vec![3, 1000], vec![257], vec![0, 5]] {
        let x = rng.tensor(&shape);
        let xg = c.up(&x);
        c.check(&format!("affine {shape:?}"), c.gpu.affine(&xg, -1.5, 0.25), c.cpu.affine(&x, -1.5, 0.25), TOL);
        let x4 = c.cpu.affine(&x, 6.0, 0.0).expect("scale");
        let x4g = c.up(&x4);
        for act in [Activation::None, Activation::Gelu, Activation::GeluTanh, Activation::QuickGelu, Activation::Relu, Activation::Silu] {
            c.check(&format!("activate {act:?} {shape:?}"), c.gpu.activate(&x4g, act), c.cpu.activate(&x4, act), TOL);
        }
        let u = rng.tensor(&shape);
        c.check(&format!("silu_mul {shape:?}"), c.gpu.silu_mul(&x4g, &c.up(&u)), c.cpu.silu_mul(&x4, &u), TOL);
    }
    let pairs: &[(&[usize], &[usize])] = &[
        (&[4, 257], &[4, 257]),
        (&[2, 3, 5], &[5]),
        (&[2, 1, 5], &[1, 3, 1]),
        (&[4, 1], &[1, 6]),
        (&[3], &[2, 3]),
        (&[2, 3, 4, 5], &[1]),
        (&[1], &[1]),
        (&[2, 3, 4, 5, 2, 3, 2, 3, 2], &[3, 1, 3, 2, 1]),
        (&[2, 3], &[4, 3]),
    ];
    for (sa, sb) in pairs {
        let (a, b) = (rng.tensor(sa), rng.tensor(sb));
        let (ag, bg) = (c.up(&a), c.up(&b));
        for (op, name) in [(visword::backend::BinaryOp::Add, "add"), (visword::backend::BinaryOp::Sub, "sub"), (visword::backend::BinaryOp::Mul, "mul")] {
            c.check(&format!("{name} {sa:?} {sb:?}"), c.gpu.binary(&ag, &bg, op), c.cpu.binary(&a, &b, op), TOL);
        }
    }
    for d in [1, 7, 32, 100, 1000, 5000, 9000] {
        let x = c.cpu.affine(&rng.tensor(&[3, d]), 20.0, 0.0).expect("scale");
        c.check(&format!("softmax d={d}"), c.gpu.softmax(&c.up(&x)), c.cpu.softmax(&x), TOL);
    }
    // A fully masked row becomes zeros; a partly masked one ignores the −∞.
    let mut v = rng.vec(2 * 40);
    v[..40].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
    v[40..60].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
    let x = Tensor::from_f32(v, vec![2, 40]).expect("tensor");
    c.check("softmax masked rows", c.gpu.softmax(&c.up(&x)), c.cpu.softmax(&x), TOL);
}

fn norms(c: &mut Checker, rng: &mut Rng) {
    for d in [1, 5, 64, 576, 1000, 3000, 9000] {
        let x = c.cpu.affine(&rng.tensor(&[3, d]), 3.0, 0.5).expect("scale");
        let (w, b) = (rng.tensor(&[d]), rng.tensor(&[d]));
        let xg = c.up(&x);
        c.check(&format!("layer_norm d={d}"), c.gpu.layer_norm(&xg, &c.up(&w), &c.up(&b), 1e-5), c.cpu.layer_norm(&x, &w, &b, 1e-5), TOL);
        c.check(&format!("rms_norm d={d}"), c.gpu.rms_norm(&xg, &c.up(&w), 1e-6), c.cpu.rms_norm(&x, &w, 1e-6), TOL);
        // Half-precision norm weights are widened in the kernel (the CPU wants f32: compare
        // against the CPU on the widened values).
        let wb = half(&w, DType::BF16);
        c.check(&format!("rms_norm bf16 weight d={d}"), c.gpu.rms_norm(&xg, &c.up(&wb), 1e-6), c.cpu.rms_norm(&x, &wb.to_f32().expect("f32"), 1e-6), TOL);
    }
    for shape in [[2, 7, 5, 3], [1, 256, 8, 8], [1, 1, 1, 1]] {
        let x = rng.tensor(&shape);
        let (w, b) = (rng.tensor(&[shape[1]]), rng.tensor(&[shape[1]]));
        c.check(&format!("layer_norm_channels {shape:?}"), c.gpu.layer_norm_channels(&c.up(&x), &c.up(&w), &c.up(&b), 1e-6), c.cpu.layer_norm_channels(&x, &w, &b, 1e-6), TOL);
    }
    for (shape, max_pos, off) in [([2, 3, 5, 8], 16, 3), ([1, 9, 7, 128], 7, 0), ([1, 1, 1, 2], 4, 3), ([1, 2, 4, 64], 4, 1)] {
        let h = shape[3] / 2;
        let (x, cos, sin) = (rng.tensor(&shape), rng.tensor(&[max_pos, h]), rng.tensor(&[max_pos, h]));
        c.check(&format!("rope {shape:?} offset {off}"), c.gpu.rope(&c.up(&x), &c.up(&cos), &c.up(&sin), off), c.cpu.rope(&x, &cos, &sin, off), TOL);
    }
}

fn layout(c: &mut Checker, rng: &mut Rng) {
    let table = rng.tensor(&[50, 37]);
    let ids = [0u32, 49, 3, 3, 17];
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let t = half(&table, dt);
        c.check(&format!("embedding {dt:?}"), c.gpu.embedding(&c.up(&t), &ids), c.cpu.embedding(&t, &ids), TOL);
    }
    c.check("embedding id out of range", c.gpu.embedding(&c.up(&table), &[50]), c.cpu.embedding(&table, &[50]), TOL);
    c.check("embedding no ids", c.gpu.embedding(&c.up(&table), &[]), c.cpu.embedding(&table, &[]), TOL);
    let perms: &[(&[usize], &[usize])] = &[
        (&[2, 3, 4, 5], &[0, 2, 1, 3]),
        (&[2, 3, 4, 5], &[3, 2, 1, 0]),
        (&[2, 3, 4, 5], &[0, 1, 2, 3]),
        (&[1, 4, 1, 6], &[2, 0, 3, 1]),
        (&[3, 1000], &[1, 0]),
        (&[2, 33, 4, 17], &[0, 3, 1, 2]),
    ];
    for (s, d) in perms {
        let x = rng.tensor(s);
        c.check(&format!("permute {s:?} {d:?}"), c.gpu.permute(&c.up(&x), d), c.cpu.permute(&x, d), TOL);
    }
    let x = rng.tensor(&[3, 7, 5]);
    let xg = c.up(&x);
    for (dim, start, len) in [(1, 2, 4), (0, 1, 2), (2, 4, 1), (2, 0, 0), (1, 0, 7), (1, 5, 3)] {
        c.check(&format!("narrow dim {dim} {start}+{len}"), c.gpu.narrow(&xg, dim, start, len), c.cpu.narrow(&x, dim, start, len), TOL);
    }
    let (a, b) = (rng.tensor(&[2, 3, 4]), rng.tensor(&[2, 5, 4]));
    let (ag, bg) = (c.up(&a), c.up(&b));
    c.check("concat dim 1", c.gpu.concat(&[&ag, &bg, &ag], 1), c.cpu.concat(&[&a, &b, &a], 1), TOL);
    c.check("concat dim 0", c.gpu.concat(&[&ag, &ag], 0), c.cpu.concat(&[&a, &a], 0), TOL);
    c.check("concat dim 2", c.gpu.concat(&[&ag, &ag], 2), c.cpu.concat(&[&a, &a], 2), TOL);
    c.check("concat mismatched", c.gpu.concat(&[&ag, &bg], 2), c.cpu.concat(&[&a, &b], 2), TOL);
    let x = rng.tensor(&[2, 3, 4, 5]);
    for (t, bo, l, r) in [(1, 2, 3, 0), (0, 0, 0, 0), (4, 4, 1, 1)] {
        c.check(&format!("pad2d {t},{bo},{l},{r}"), c.gpu.pad2d(&c.up(&x), t, bo, l, r), c.cpu.pad2d(&x, t, bo, l, r), TOL);
    }
}

fn convs(c: &mut Checker, rng: &mut Rng) {
    let cases: &[([usize; 4], [usize; 4], usize, usize)] = &[
        ([2, 3, 9, 11], [4, 3, 3, 3], 2, 1),
        ([1, 8, 5, 5], [6, 8, 1, 1], 1, 0),
        ([1, 3, 32, 32], [16, 3, 4, 4], 4, 0),
        ([1, 4, 7, 7], [5, 4, 3, 3], 1, 1),
        ([1, 1, 1, 1], [1, 1, 1, 1], 1, 0),
    ];
    for (xs, ws, stride, pad) in cases {
        let (x, w, b) = (rng.tensor(xs), rng.tensor(ws), rng.tensor(&[ws[0]]));
        let xg = c.up(&x);
        c.check(&format!("conv2d {xs:?} {ws:?} s{stride} p{pad}"), c.gpu.conv2d(&xg, &c.up(&w), Some(&c.up(&b)), *stride, *pad), c.cpu.conv2d(&x, &w, Some(&b), *stride, *pad), TOL);
        let wb = half(&w, DType::BF16);
        c.check(&format!("conv2d bf16 weight {xs:?} {ws:?}"), c.gpu.conv2d(&xg, &c.up(&wb), None, *stride, *pad), c.cpu.conv2d(&x, &wb, None, *stride, *pad), TOL);
    }
}

fn linears(c: &mut Checker, rng: &mut Rng) {
    let shapes: &[(&[usize], usize, usize)] = &[(&[1, 576], 576, 1536), (&[3, 100], 100, 37), (&[4, 64], 64, 8), (&[2, 2, 96], 96, 33), (&[17, 96], 96, 40), (&[130, 200], 200, 301), (&[1, 8], 8, 1), (&[5, 1], 1, 3)];
    let acts = [Activation::None, Activation::Gelu, Activation::Silu, Activation::GeluTanh, Activation::QuickGelu, Activation::Relu];
    for (i, (xs, k, n)) in shapes.iter().enumerate() {
        let x = rng.tensor(xs);
        let w = rng.tensor(&[*n, *k]);
        let b = rng.tensor(&[*n]);
        let mut ys = xs.to_vec();
        *ys.last_mut().expect("dims") = *n;
        let r = rng.tensor(&ys);
        let (xg, bg, rg) = (c.up(&x), c.up(&b), c.up(&r));
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let wd = half(&w, dt);
            let wg = c.up(&wd);
            let act = acts[i % acts.len()];
            c.check(&format!("linear {xs:?}·[{n},{k}] {dt:?}"), c.gpu.linear(&xg, &wg, None, Activation::None, None), c.cpu.linear(&x, &wd, None, Activation::None, None), TOL);
            c.check(
                &format!("linear {xs:?}·[{n},{k}] {dt:?} bias {act:?} residual"),
                c.gpu.linear(&xg, &wg, Some(&bg), act, Some(&rg)),
                c.cpu.linear(&x, &wd, Some(&b), act, Some(&r)),
                TOL,
            );
        }
    }
    for m in [1, 6] {
        let x = rng.tensor(&[m, 64]);
        let (w1, w2) = (rng.tensor(&[32, 64]), half(&rng.tensor(&[48, 64]), DType::BF16));
        let got = c.gpu.linear_many(&c.up(&x), &[&c.up(&w1), &c.up(&w2)]);
        let want = c.cpu.linear_many(&x, &[&w1, &w2]);
        match (got, want) {
            (Ok(g), Ok(w)) if g.len() == w.len() => {
                for (i, (g, w)) in g.into_iter().zip(w).enumerate() {
                    c.check(&format!("linear_many m={m} #{i}"), Ok(g), Ok(w), TOL);
                }
            }
            (g, w) => c.failures.push(format!("linear_many m={m}: CUDA {:?} vs CPU {:?}", g.map(|v| v.len()), w.map(|v| v.len()))),
        }
    }
    // Shape errors are errors, not panics.
    let x = rng.tensor(&[2, 5]);
    c.check("linear K mismatch", c.gpu.linear(&c.up(&x), &c.up(&rng.tensor(&[3, 4])), None, Activation::None, None), c.cpu.linear(&x, &rng.tensor(&[3, 4]), None, Activation::None, None), TOL);
}

fn matmuls(c: &mut Checker, rng: &mut Rng) {
    let cases: &[(&[usize], &[usize], bool)] = &[
        (&[2, 3, 5, 7], &[7, 4], false),
        (&[2, 3, 5, 7], &[2, 3, 7, 4], false),
        (&[2, 5, 7], &[2, 4, 7], true),
        (&[1, 7], &[4, 7], true),
        (&[3, 1, 64], &[3, 64, 100], false),
        (&[2, 33, 65], &[2, 65, 17], false),
        (&[2, 3, 0], &[0, 4], false),
        (&[1, 4, 5], &[2, 5, 3], false),
    ];
    for (sa, sb, tb) in cases {
        let (a, b) = (rng.tensor(sa), rng.tensor(sb));
        c.check(&format!("matmul {sa:?}·{sb:?} trans_b={tb}"), c.gpu.matmul(&c.up(&a), &c.up(&b), *tb), c.cpu.matmul(&a, &b, *tb), TOL);
    }
    let (a, b) = (rng.tensor(&[6, 40]), half(&rng.tensor(&[40, 24]), DType::F16));
    c.check("matmul f16 b", c.gpu.matmul(&c.up(&a), &c.up(&b), false), c.cpu.matmul(&a, &b, false), TOL);
}

fn kv_and_pool(c: &mut Checker, rng: &mut Rng) {
    let mut cache_cpu = Tensor::zeros(vec![1, 2, 10, 8]);
    let mut cache_gpu = c.up(&cache_cpu);
    for (pos, n) in [(0, 4), (4, 1), (5, 5)] {
        let new = rng.tensor(&[1, 2, n, 8]);
        let g = c.gpu.write_kv(&mut cache_gpu, &c.up(&new), pos);
        let w = c.cpu.write_kv(&mut cache_cpu, &new, pos);
        if let (Err(e), _) | (_, Err(e)) = (&g, &w) {
            c.failures.push(format!("write_kv at {pos}: {e}"));
        }
        c.check(&format!("write_kv at {pos} (+{n})"), Ok(cache_gpu.clone()), Ok(cache_cpu.clone()), TOL);
    }
    // A shared cache is copied, not changed under its other owner.
    let before = c.gpu.to_host(&cache_gpu).expect("to_host");
    let shared = cache_gpu.clone();
    let new = rng.tensor(&[1, 2, 2, 8]);
    if let Err(e) = c.gpu.write_kv(&mut cache_gpu, &c.up(&new), 1) {
        c.failures.push(format!("write_kv shared: {e}"));
    }
    c.check("write_kv leaves a shared copy alone", Ok(shared), Ok(before), Tol { atol: 0.0, rtol: 0.0 });
    let new_big = rng.tensor(&[1, 2, 9, 8]);
    if c.gpu.write_kv(&mut cache_gpu, &c.up(&new_big), 3).is_ok() {
        c.failures.push("write_kv past the end: no error".into());
    }

    for (s, p, ch) in [(5, 37, 300), (1, 1, 1), (40, 576, 1024), (3, 10, 0)] {
        let mut w = vec![0f32; s * p];
        for r in 0..s {
            // Sparse coverage: a few patches per superpixel, normalised.
            let picks: Vec<usize> = (0..3).map(|_| (rng.next_u64() % p as u64) as usize).collect();
            for &q in &picks {
                w[r * p + q] += 1.0 / picks.len() as f32;
            }
        }
        let wt = Tensor::from_f32(w, vec![s, p]).expect("tensor");
        let (f, ps) = (rng.tensor(&[p, ch]), rng.tensor(&[p, ch]));
        c.check(&format!("scatter_mean_pool S={s} P={p} C={ch}"), c.gpu.scatter_mean_pool(&c.up(&wt), &c.up(&f), &c.up(&ps)), c.cpu.scatter_mean_pool(&wt, &f, &ps), TOL);
    }
}

/// Sizes past one launch's coverage: more rows than gridDim.x holds (2-D row grids), more
/// elements than one grid-stride pass covers, and a half weight widened in several blocks.
fn large(c: &mut Checker, rng: &mut Rng) {
    let x = rng.tensor(&[70_000, 3]);
    let w = rng.tensor(&[3]);
    let b = rng.tensor(&[3]);
    let xg = c.up(&x);
    c.check("softmax 70000 rows", c.gpu.softmax(&xg), c.cpu.softmax(&x), TOL);
    c.check("layer_norm 70000 rows", c.gpu.layer_norm(&xg, &c.up(&w), &c.up(&b), 1e-5), c.cpu.layer_norm(&x, &w, &b, 1e-5), TOL);
    // 150M elements: beyond the grid-stride cap of 65535·8 blocks × 256 threads (134M).
    let n = 150_000_000;
    let big = Tensor::from_f32((0..n).map(|i| (i % 1000) as f32 * 1e-3).collect(), vec![n]).expect("tensor");
    c.check("affine 150M elements", c.gpu.affine(&c.up(&big), 2.0, 1.0), c.cpu.affine(&big, 2.0, 1.0), TOL);
    drop(big);
    // 9000 × 4096 bf16 = 36.9M elements: two widening blocks of at most 2^25.
    let x = rng.tensor(&[8, 4096]);
    let w = half(&rng.tensor(&[9000, 4096]), DType::BF16);
    c.check("linear bf16 9000×4096, M=8 (blocked widening)", c.gpu.linear(&c.up(&x), &c.up(&w), None, Activation::None, None), c.cpu.linear(&x, &w, None, Activation::None, None), Tol { atol: 2e-4, rtol: 2e-4 });
}

/// Decode-path throughput (only with VISWORD_CUDA_TIMINGS=1): the GEMV's effective weight
/// bandwidth per dtype and a cuBLAS GEMM, printed for the report.
#[test]
fn cuda_timings() {
    if std::env::var("VISWORD_CUDA_TIMINGS").as_deref() != Ok("1") {
        return;
    }
    let Ok(gpu) = CudaBackend::new() else {
        eprintln!("cuda_timings: no CUDA device");
        return;
    };
    let gpu = visword::Backend::Cuda(gpu);
    let mut rng = Rng::new(3);
    let time = |f: &dyn Fn() -> visword::Result<Tensor>| time_per_call(&gpu, f);
    for (n, k) in [(1536, 576), (49152, 576), (16384, 4096)] {
        let w = rng.tensor(&[n, k]);
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let wg = gpu.upload(&w.to_dtype(dt).expect("dtype")).expect("upload");
            let x = gpu.upload(&rng.tensor(&[1, k])).expect("upload");
            let s = time(&|| gpu.linear(&x, &wg, None, Activation::None, None));
            let bytes = (n * k * dt.size()) as f64;
            eprintln!("gemv M=1 [{n}×{k}] {dt:?}: {:.1} µs, {:.0} GB/s of weights", s * 1e6, bytes / s / 1e9);
        }
    }
    for (m, n, k) in [(256, 1536, 576), (1024, 4096, 4096)] {
        let x = gpu.upload(&rng.tensor(&[m, k])).expect("upload");
        let w = gpu.upload(&rng.tensor(&[n, k])).expect("upload");
        let s = time(&|| gpu.linear(&x, &w, None, Activation::Gelu, None));
        eprintln!("linear f32 cuBLAS M={m} N={n} K={k} + GELU epilogue: {:.1} µs, {:.1} TFLOP/s", s * 1e6, 2.0 * (m * n * k) as f64 / s / 1e12);
        let wb = gpu.upload(&rng.tensor(&[n, k]).to_dtype(DType::BF16).expect("dtype")).expect("upload");
        let s = time(&|| gpu.linear(&x, &wb, None, Activation::None, None));
        eprintln!("linear bf16 weight (widened) M={m} N={n} K={k}: {:.1} µs, {:.1} TFLOP/s", s * 1e6, 2.0 * (m * n * k) as f64 / s / 1e12);
    }
    stack_linear_timings(&gpu, &mut rng);
    two_way_timings(&gpu, &mut rng);
    decode_attention_timings(&gpu, &mut rng);
}

/// A Llama-7B decode step's attention (32 heads, d 128, one query, causal over the first `nk`
/// rows of a 4096-row cache) per call, with f32 and bf16 K/V, at the default key splits and at
/// others (how many blocks to aim for, fewest keys per split), each as µs and TB/s of K/V read:
/// the data to set `DecodeSplits::default()` from.
fn decode_attention_timings(be: &visword::Backend, rng: &mut Rng) {
    let visword::Backend::Cuda(cb) = be else { return };
    let (h, d, cap) = (32, 128, 4096);
    let q = be.upload(&rng.tensor(&[1, h, 1, d])).expect("upload");
    let kv32 = [rng.tensor(&[1, h, cap, d]), rng.tensor(&[1, h, cap, d])];
    let default = cb.decode_split_config();
    for dt in [DType::F32, DType::BF16] {
        let k = be.upload(&kv32[0].to_dtype(dt).expect("dtype")).expect("upload");
        let v = be.upload(&kv32[1].to_dtype(dt).expect("dtype")).expect("upload");
        for nk in [80, 616, 4096] {
            let p = AttnParams { causal: true, kv_len: Some(nk), ..AttnParams::new(d) };
            for (target_blocks, min_chunk) in [(default.target_blocks, default.min_chunk), (256, 64), (1024, 32), (2048, 16), (1024, 64)] {
                cb.set_decode_split_config(DecodeSplits { target_blocks, min_chunk }).expect("splits");
                let s = time_per_call(be, &|| be.attention(&q, &k, &v, &p));
                let bytes = (2 * h * nk * d * dt.size()) as f64;
                eprintln!("decode attention {dt:?} K/V, {nk} keys, splits aiming at {target_blocks} blocks of ≥ {min_chunk} keys: {:.1} µs, {:.2} TB/s of K/V", s * 1e6, bytes / s / 1e12);
            }
        }
    }
    cb.set_decode_split_config(default).expect("splits");
}

/// The linears of the benchmark's stages at their own sizes (bf16 weights), each against its
/// two floors: the weight bytes at 4 TB/s and the multiply-adds at 600 TFLOP/s. SAM's mask
/// decoder on a batch of 64 prompts, prefill of 80 and 616 tokens through Llama-7B, CLIP
/// ViT-L/14-336 and SAM ViT-H's layers; each on the path the stack takes and on the other side
/// of the fused kernel's size bound (one launch of kernels/gemm.cu, or x rounded to bf16 and
/// the GEMM), so the bound can be set from a run; a residual on the bf16 path also with
/// cuBLASLt off (cuBLAS, then the epilogue pass, against cuBLASLt applying it).
fn stack_linear_timings(be: &visword::Backend, rng: &mut Rng) {
    let visword::Backend::Cuda(cb) = be else { return };
    let time = |f: &dyn Fn() -> visword::Result<Tensor>| time_per_call(be, f);
    let weight = |rng: &mut Rng, n: usize, k: usize| be.upload(&rng.tensor(&[n, k]).to_dtype(DType::BF16).expect("dtype")).expect("upload");
    let report = |what: &str, m: usize, n: usize, k: usize, s: f64| {
        let (flops, bytes) = (2.0 * (m * n * k) as f64, (2 * n * k) as f64);
        let floor = (bytes / 4e12).max(flops / 600e12);
        eprintln!("{what} M={m} N={n} K={k}: {:.1} µs, {:.0} TFLOP/s, {:.2} TB/s of weights, {:.0}% of the larger floor", s * 1e6, flops / s / 1e12, bytes / s / 1e12, 100.0 * floor / s);
    };
    // (name, M, N, K, activation, residual)
    let shapes: [(&str, usize, usize, usize, Activation, bool); 17] = [
        ("sam mask decoder token q", 448, 256, 256, Activation::None, false),
        ("sam mask decoder token mlp lin1 + ReLU", 448, 2048, 256, Activation::Relu, false),
        ("sam mask decoder token mlp lin2 + residual", 448, 256, 2048, Activation::None, true),
        ("sam mask decoder hypernetwork", 256, 256, 256, Activation::Relu, false),
        ("sam mask decoder token-to-image q (downsampled)", 448, 128, 256, Activation::None, false),
        ("llama o_proj + residual", 80, 4096, 4096, Activation::None, true),
        ("llama gate", 80, 11008, 4096, Activation::None, false),
        ("llama down + residual", 80, 4096, 11008, Activation::None, true),
        ("llama o_proj + residual", 616, 4096, 4096, Activation::None, true),
        ("llama gate", 616, 11008, 4096, Activation::None, false),
        ("llama down + residual", 616, 4096, 11008, Activation::None, true),
        ("clip q", 577, 1024, 1024, Activation::None, false),
        ("clip fc1 + quick-GELU", 577, 4096, 1024, Activation::QuickGelu, false),
        ("clip fc2 + residual", 577, 1024, 4096, Activation::None, true),
        ("sam qkv (windows)", 4900, 3840, 1280, Activation::None, false),
        ("sam fc1 + GELU", 4096, 5120, 1280, Activation::Gelu, false),
        ("sam fc2 + residual", 4096, 1280, 5120, Activation::None, true),
    ];
    for (what, m, n, k, act, res) in shapes {
        let w = weight(rng, n, k);
        let x = be.upload(&rng.tensor(&[m, k])).expect("upload");
        let r = res.then(|| be.upload(&rng.tensor(&[m, n])).expect("upload"));
        // Each shape as the stack runs it, then on the other side of the fused kernel's
        // size bound (kernels/gemm.cu in one launch against round + cuBLAS + epilogue).
        let s = time(&|| be.linear(&x, &w, None, act, r.as_ref()));
        report(&format!("{what} ({})", cb.linear_path(m, &w)), m, n, k, s);
        let other = if cb.linear_path(m, &w).contains("fused") { FusedGemm::Off } else { FusedGemm::All };
        cb.set_fused_gemm(other);
        let s = time(&|| be.linear(&x, &w, None, act, r.as_ref()));
        report(&format!("{what} ({})", cb.linear_path(m, &w)), m, n, k, s);
        cb.set_fused_gemm(FusedGemm::Small);
        // On the bf16 path a residual (or bias, ReLU) is applied by cuBLASLt in the GEMM; with
        // cuBLASLt off, by the epilogue pass after a cuBLAS GEMM.
        if res && cb.linear_path(m, &w).contains("bf16 GEMM") {
            cb.set_lt_gemm(false);
            let s = time(&|| be.linear(&x, &w, None, act, r.as_ref()));
            report(&format!("{what} (bf16 GEMM + epilogue pass, cuBLASLt off)"), m, n, k, s);
            cb.set_lt_gemm(true);
        }
    }
    // Q, K and V of one Llama-7B layer on one rounded x (three cuBLAS calls).
    for m in [80, 616] {
        let ws = [weight(rng, 4096, 4096), weight(rng, 4096, 4096), weight(rng, 4096, 4096)];
        let x = be.upload(&rng.tensor(&[m, 4096])).expect("upload");
        let s = time(&|| be.linear_many(&x, &[&ws[0], &ws[1], &ws[2]]).map(|mut v| v.remove(0)));
        report("llama q, k, v (linear_many)", m, 3 * 4096, 4096, s);
    }
}

/// Seconds per call of `f` on `be`: 3 calls to warm up, then the mean of 20 between syncs.
fn time_per_call(be: &visword::Backend, f: &dyn Fn() -> visword::Result<Tensor>) -> f64 {
    for _ in 0..3 {
        f().expect("warm-up");
    }
    be.synchronize().expect("sync");
    let iters = 20;
    let t = std::time::Instant::now();
    for _ in 0..iters {
        f().expect("run");
    }
    be.synchronize().expect("sync");
    t.elapsed().as_secs_f64() / iters as f64
}

/// SAM's two-way ops at the mask decoder's sizes (64 prompts × 4096 image tokens of 256
/// channels, 8 heads × 7 tokens, Dy 16) per call: the TF32 kernels (half-precision callers)
/// and the f32 ones, with per-prompt and shared image tokens, next to one of the image-side
/// projections they replace ([64·4096, 256] through a [128, 256] bf16 weight, cuBLASLt TF32).
fn two_way_timings(be: &visword::Backend, rng: &mut Rng) {
    let time = |f: &dyn Fn() -> visword::Result<Tensor>| time_per_call(be, f);
    let (b, n, c, groups, t, dy) = (64, 4096, 256, 8, 7, 16);
    let r = groups * t;
    let mut up = |shape: &[usize], scale: f32| {
        let v = rng.tensor(shape).to_f32_vec().expect("f32").iter().map(|x| x * scale).collect();
        be.upload(&Tensor::from_f32(v, shape.to_vec()).expect("tensor")).expect("upload")
    };
    let (xs, xp, y) = (up(&[1, n, c], 1.0), up(&[b, n, c], 1.0), up(&[1, n, groups * dy], 1.0));
    let (ax, ay, u) = (up(&[b, r, c], 2.0 / (c as f32).sqrt()), up(&[b, r, dy], 1.0), up(&[b, r, c], 1.0));
    let (bias, lw, lb) = (up(&[c], 1.0), up(&[c], 1.0), up(&[c], 1.0));
    for low_precision in [true, false] {
        let p = TwoWayParams { low_precision, ..TwoWayParams::new(groups) };
        let kind = if low_precision { "TF32" } else { "f32" };
        for (x, which) in [(&xp, "per-prompt"), (&xs, "shared")] {
            let s = time(&|| be.two_way_update(x, &y, &ax, &ay, &u, &bias, (&lw, &lb, 1e-6), p));
            eprintln!("two_way_update {kind} B={b} N={n} C={c} R={r} ({which} image tokens): {:.1} µs", s * 1e6);
        }
        let s = time(&|| be.two_way_pool(&xp, &y, &ax, &ay, p));
        eprintln!("two_way_pool {kind} B={b} N={n} C={c} R={r}: {:.1} µs", s * 1e6);
    }
    let w = be.upload_weight(&rng.tensor(&[c / 2, c]).to_dtype(DType::BF16).expect("dtype")).expect("upload");
    let s = time(&|| be.linear(&xp, &w, None, Activation::None, None));
    eprintln!("linear [{b}·{n}, {c}] × bf16 [{}, {c}] (one image-side projection): {:.1} µs", c / 2, s * 1e6);
}
