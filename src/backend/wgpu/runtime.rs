//! The wgpu backend's machinery: adapter and device, buffers, the pipeline cache, batched
//! dispatch, uploads and read-back. The binding convention is in `mod.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ::wgpu::naga;
use ::wgpu::util::DeviceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::{GemmKernel, Shader, WgpuBackend, WgpuData};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{numel, CpuData, Storage, Tensor};

/// Bytes of the per-batch parameter buffer: every dispatch takes one aligned slot.
const PARAMS_CAPACITY: usize = 256 * 1024;
/// Dispatches recorded before the batch is submitted without waiting for a read-back: the
/// first batch after the host waited for the device is FIRST_BATCH long, so the device starts
/// while the host records the rest, and each later one doubles, up to MAX_BATCH (fewer
/// submissions over long runs). A 7B decode step (~290 dispatches between two read-backs) goes
/// out in batches of 16, 32, 64, 128 and the rest, where one of 256 first kept the device idle
/// for as long as the host took to record it.
const FIRST_BATCH: usize = 16;
const MAX_BATCH: usize = 256;

/// One compiled entry point and the bindings it statically uses (auto-derived layouts drop the
/// unused ones, so the bind group must too).
pub(crate) struct Pipeline {
    pipeline: ::wgpu::ComputePipeline,
    layout: ::wgpu::BindGroupLayout,
    bindings: Vec<u32>,
}

struct Module {
    module: ::wgpu::ShaderModule,
    ir: naga::Module,
    info: naga::valid::ModuleInfo,
}

/// Work recorded but not yet submitted: one command encoder with one open compute pass, and the
/// parameters of every dispatch in it, written to `params_buf` just before submission.
struct Batch {
    encoder: ::wgpu::CommandEncoder,
    pass: Option<::wgpu::ComputePass<'static>>,
    params_buf: ::wgpu::Buffer,
    params: Vec<u8>,
    dispatches: usize,
}

impl Batch {
    /// The batch's compute pass, opened if need be.
    fn pass(&mut self) -> &mut ::wgpu::ComputePass<'static> {
        let Batch { encoder, pass, .. } = self;
        pass.get_or_insert_with(|| encoder.begin_compute_pass(&::wgpu::ComputePassDescriptor::default()).forget_lifetime())
    }

    /// The batch's encoder, with its compute pass (if any) closed first.
    fn encoder(&mut self) -> &mut ::wgpu::CommandEncoder {
        drop(self.pass.take());
        &mut self.encoder
    }
}

/// Idle buffers of dropped tensors, by size, for the next `alloc` of that size: steady-state
/// model runs (a decode step repeats the same shapes) then allocate nothing, and a reused buffer
/// needs no zero-fill. Safe on one queue: commands recorded before a buffer was returned run
/// before any later command that rewrites it (wgpu orders the uses).
pub(crate) struct BufferPool {
    free: Mutex<HashMap<u64, Vec<::wgpu::Buffer>>>,
    idle_bytes: AtomicU64,
}

/// Idle bytes the pool keeps; buffers returned beyond this are freed.
const POOL_CAP: u64 = 1 << 30;

impl BufferPool {
    fn take(&self, size: u64) -> Option<::wgpu::Buffer> {
        let b = lock(&self.free).get_mut(&size)?.pop()?;
        self.idle_bytes.fetch_sub(size, Ordering::Relaxed);
        Some(b)
    }

    pub(crate) fn put(&self, b: ::wgpu::Buffer) {
        let size = b.size();
        if self.idle_bytes.load(Ordering::Relaxed) + size > POOL_CAP {
            return;
        }
        self.idle_bytes.fetch_add(size, Ordering::Relaxed);
        lock(&self.free).entry(size).or_default().push(b);
    }
}

/// Device state behind `WgpuBackend`.
pub(crate) struct Runtime {
    pub(crate) device: ::wgpu::Device,
    pub(crate) queue: ::wgpu::Queue,
    pub(crate) info: ::wgpu::AdapterInfo,
    pub(crate) limits: ::wgpu::Limits,
    /// The adapter offers (and the device enabled) `shader-f16`.
    pub(crate) has_f16: bool,
    /// The adapter offers (and the device enabled) subgroup operations.
    pub(crate) has_subgroups: bool,
    /// Kernels with a subgroup variant use it (on by default where offered; tests switch it off
    /// to check the plain fallback on adapters that have subgroups).
    use_subgroups: AtomicBool,
    max_groups_per_dim: AtomicU32,
    /// The device enabled cooperative matrices (`coop_gemm_config` held and VISWORD_WGPU_COOP
    /// was not 0).
    pub(crate) has_coop: bool,
    /// GEMMs on f16 weights take matmul_coop (VISWORD_WGPU_COOP=1, once its self-check passed).
    pub(crate) use_coop: AtomicBool,
    /// Why cooperative matrices are off although the device has them (a failed self-check).
    pub(crate) coop_note: Mutex<String>,
    /// The plain GEMM kernel choice (`GemmKernel::code`): VISWORD_WGPU_GEMM, else auto.
    gemm_kernel: AtomicU8,
    /// The GEMVs take their batched builds (VISWORD_WGPU_GEMV=batched).
    gemv_batched: AtomicBool,
    modules: Mutex<HashMap<&'static str, Arc<Module>>>,
    pipelines: Mutex<HashMap<&'static str, HashMap<String, Arc<Pipeline>>>>,
    batch: Mutex<Option<Batch>>,
    pub(crate) pool: Arc<BufferPool>,
    errors: Arc<Mutex<Vec<String>>>,
    /// VISWORD_WGPU_SYNC=1: submit and wait after every dispatch, so a failing kernel is the one
    /// named in the error (debugging only).
    sync_each: bool,
    /// Shaders are compiled without wgpu's injected runtime checks (see `module`); off with
    /// VISWORD_WGPU_CHECKS=1.
    trusted: bool,
    /// Dispatches the open batch may take before it is submitted (FIRST_BATCH after a wait,
    /// doubling per submission up to MAX_BATCH).
    batch_limit: AtomicUsize,
    /// The profiler's timestamp queries (timestamps.rs), when profiling with stamps and the
    /// adapter offers timestamp queries inside compute passes.
    pub(super) stamps: Option<Mutex<super::timestamps::Stamps>>,
    /// The adapter offers timestamp queries inside compute passes (whether or not they are on).
    pub(super) stamps_offered: bool,
}

/// Buffer sizes are rounded up to 16 bytes (never 0), so kernels can read any buffer as
/// `array<vec4<..>>` without the last partial vector falling outside it.
fn padded_size(bytes: u64) -> u64 {
    bytes.next_multiple_of(16).max(16)
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable { backend: "wgpu".into(), reason: reason.into() }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether matmul_coop.wgsl can run on `adapter`: cooperative matrices with a subgroup-scoped
/// 16×16×16 f16 × f16 → f32 configuration, shader-f16, and subgroups of exactly 32 invocations
/// (the shader's four subgroups per 128-invocation workgroup).
fn coop_gemm_config(adapter: &::wgpu::Adapter, info: &::wgpu::AdapterInfo) -> bool {
    use ::wgpu::{CooperativeScalarType as T, Features as F};
    let needed = F::EXPERIMENTAL_COOPERATIVE_MATRIX | F::SHADER_F16 | F::SUBGROUP;
    adapter.features().contains(needed)
        && info.subgroup_min_size == 32
        && info.subgroup_max_size == 32
        && adapter.cooperative_matrix_properties().iter().any(|p| (p.m_size, p.n_size, p.k_size) == (16, 16, 16) && p.ab_type == T::F16 && p.cr_type == T::F32)
}

fn rank(t: ::wgpu::DeviceType) -> u8 {
    use ::wgpu::DeviceType::*;
    match t {
        DiscreteGpu => 0,
        IntegratedGpu => 1,
        VirtualGpu => 2,
        Other => 3,
        Cpu => 4,
    }
}

impl Runtime {
    /// Open the best adapter (discrete > integrated > virtual > other > software). With
    /// `hardware_only`, software rasterisers (lavapipe, WARP) are refused.
    pub(crate) fn open(hardware_only: bool) -> Result<Runtime> {
        let instance = ::wgpu::Instance::new(::wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let mut adapters = pollster::block_on(instance.enumerate_adapters(::wgpu::Backends::all()));
        adapters.sort_by_key(|a| rank(a.get_info().device_type));
        let software: Vec<String> = adapters.iter().filter(|a| a.get_info().device_type == ::wgpu::DeviceType::Cpu).map(|a| a.get_info().name).collect();
        if hardware_only {
            adapters.retain(|a| a.get_info().device_type != ::wgpu::DeviceType::Cpu);
        }
        let Some(adapter) = adapters.into_iter().next() else {
            return Err(unavailable(if hardware_only && !software.is_empty() {
                format!("no hardware Vulkan/Metal/DX12 adapter found (only the software adapter {})", software.join(", "))
            } else {
                "no Vulkan/Metal/DX12 adapter found".to_string()
            }));
        };
        let info = adapter.get_info();
        let gemm_kernel = GemmKernel::from_env(std::env::var("VISWORD_WGPU_GEMM").ok().as_deref())?;
        let gemv_batched = gemv_batched_from_env(std::env::var("VISWORD_WGPU_GEMV").ok().as_deref())?;
        let offered = adapter.features();
        let mut base = offered & (::wgpu::Features::SHADER_F16 | ::wgpu::Features::SUBGROUP);
        let stamp_features = ::wgpu::Features::TIMESTAMP_QUERY | ::wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        if crate::backend::profile::mode() == crate::backend::profile::Mode::Stamps && offered.contains(stamp_features) {
            base |= stamp_features;
        }
        let coop_env = std::env::var("VISWORD_WGPU_COOP").ok();
        let want_coop = coop_env.as_deref() != Some("0") && coop_gemm_config(&adapter, &info);
        // The adapter's own limits: weights need far more than the 128 MiB default binding.
        let limits = adapter.limits();
        let request = |features: ::wgpu::Features| {
            let coop = features.contains(::wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
            let desc = ::wgpu::DeviceDescriptor {
                label: Some("visword"),
                required_features: features,
                required_limits: limits.clone(),
                // SAFETY: wgpu's experimental features may hide undefined behaviour in its own
                // implementation. The one requested is cooperative matrices, used by a single
                // shader (matmul_coop.wgsl) only when switched on, and then only after its
                // results matched the plain GEMM's (`matmul::coop_self_check`, run by
                // `WgpuBackend::new`; tests switch it on to compare it with the CPU themselves).
                experimental_features: if coop { unsafe { ::wgpu::ExperimentalFeatures::enabled() } } else { ::wgpu::ExperimentalFeatures::disabled() },
                memory_hints: ::wgpu::MemoryHints::Performance,
                trace: ::wgpu::Trace::Off,
            };
            pollster::block_on(adapter.request_device(&desc))
        };
        // A device refused with the experimental feature is asked for again without it.
        let coop_features = base | ::wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        let (features, (device, queue)) = match want_coop.then(|| request(coop_features)) {
            Some(Ok(dq)) => (coop_features, dq),
            _ => (base, request(base).map_err(|e| unavailable(format!("adapter {} refused a device: {e}", info.name)))?),
        };
        let has_coop = features.contains(::wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: ::wgpu::Error| lock(&sink).push(e.to_string())));
        let lost = errors.clone();
        device.set_device_lost_callback(move |reason, msg| lock(&lost).push(format!("device lost ({reason:?}): {msg}")));
        let max_groups = limits.max_compute_workgroups_per_dimension.max(1);
        let stamps = features.contains(stamp_features).then(|| Mutex::new(super::timestamps::Stamps::new(&device)));
        Ok(Runtime {
            device,
            queue,
            info,
            limits,
            has_f16: features.contains(::wgpu::Features::SHADER_F16),
            has_subgroups: features.contains(::wgpu::Features::SUBGROUP),
            use_subgroups: AtomicBool::new(features.contains(::wgpu::Features::SUBGROUP)),
            max_groups_per_dim: AtomicU32::new(max_groups),
            has_coop,
            use_coop: AtomicBool::new(has_coop && coop_env.as_deref() == Some("1")),
            coop_note: Mutex::new(String::new()),
            gemm_kernel: AtomicU8::new(gemm_kernel.code()),
            gemv_batched: AtomicBool::new(gemv_batched),
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            batch: Mutex::new(None),
            pool: Arc::new(BufferPool { free: Mutex::default(), idle_bytes: AtomicU64::new(0) }),
            errors,
            sync_each: std::env::var("VISWORD_WGPU_SYNC").is_ok_and(|v| v == "1"),
            trusted: !std::env::var("VISWORD_WGPU_CHECKS").is_ok_and(|v| v.trim() == "1"),
            batch_limit: AtomicUsize::new(FIRST_BATCH),
            stamps,
            stamps_offered: offered.contains(stamp_features),
        })
    }

    /// The smallest subgroup size, when the subgroup variants of kernels are to be used.
    pub(crate) fn subgroup_min_size(&self) -> Option<u32> {
        (self.has_subgroups && self.use_subgroups.load(Ordering::Relaxed) && self.info.subgroup_min_size > 0).then_some(self.info.subgroup_min_size)
    }

    /// GEMMs on f16 weights take the cooperative-matrix kernel.
    pub(crate) fn coop_gemm(&self) -> bool {
        self.use_coop.load(Ordering::Relaxed)
    }

    /// Which plain GEMM kernel to use where the wide one applies.
    pub(crate) fn gemm_kernel(&self) -> GemmKernel {
        GemmKernel::from_code(self.gemm_kernel.load(Ordering::Relaxed))
    }

    /// Whether the GEMVs take their batched builds (gemv_batch8.wgsl).
    pub(crate) fn gemv_batched(&self) -> bool {
        self.gemv_batched.load(Ordering::Relaxed)
    }

    pub(crate) fn set_max_groups_per_dim(&self, n: u32) {
        let hw = self.limits.max_compute_workgroups_per_dimension.max(1);
        self.max_groups_per_dim.store(n.clamp(1, hw), Ordering::Relaxed);
    }

    /// Errors wgpu reported since the last check, as one `Error` naming `what`.
    pub(super) fn check(&self, what: &str) -> Result<()> {
        let mut e = lock(&self.errors);
        if e.is_empty() {
            return Ok(());
        }
        let msg = e.join("; ");
        e.clear();
        Err(unavailable(format!("{what}: {msg}")))
    }

    fn module(&self, shader: &Shader) -> Result<Arc<Module>> {
        if let Some(m) = lock(&self.modules).get(shader.name) {
            return Ok(m.clone());
        }
        // Parse and validate with naga first: a bad shader becomes an error that quotes naga,
        // not a panic inside wgpu.
        let ir = naga::front::wgsl::parse_str(shader.source)
            .map_err(|e| unavailable(format!("shader {}: {}", shader.name, e.emit_to_string(shader.source))))?;
        // Every capability: this pass is for reflection and readable errors; wgpu validates again
        // against what the device really enabled.
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all())
            .validate(&ir)
            .map_err(|e| unavailable(format!("shader {}: {}", shader.name, e.emit_to_string(shader.source))))?;
        let desc = ::wgpu::ShaderModuleDescriptor { label: Some(shader.name), source: ::wgpu::ShaderSource::Wgsl(shader.source.into()) };
        let module = if self.trusted {
            // wgpu's default checks put a 64-bit iteration counter on every loop (which keeps
            // the driver from unrolling a GEMM's inner loop) and clamp every dynamic index into
            // a fixed-size array (each workgroup-memory load). These are visword's own shaders:
            // every loop is counted, workgroup memory is written before it is read (the tests
            // run them on lavapipe, which does not clear it between workgroups), and the host
            // checks each dispatch's index ranges against its buffers; storage-buffer accesses
            // keep the driver's robust buffer access where it has it. Integer division keeps
            // its zero-divisor guard (WGSL's `select` evaluates both arms).
            let mut checks = ::wgpu::ShaderRuntimeChecks::checked();
            checks.bounds_checks = false;
            checks.force_loop_bounding = false;
            // SAFETY: as above: no infinite loop, no out-of-range index into a fixed-size array.
            unsafe { self.device.create_shader_module_trusted(desc, checks) }
        } else {
            self.device.create_shader_module(desc)
        };
        self.check(&format!("shader {}", shader.name))?;
        let m = Arc::new(Module { module, ir, info });
        lock(&self.modules).insert(shader.name, m.clone());
        Ok(m)
    }

    fn pipeline(&self, shader: &Shader, entry: &str) -> Result<Arc<Pipeline>> {
        if let Some(p) = lock(&self.pipelines).get(shader.name).and_then(|m| m.get(entry)) {
            return Ok(p.clone());
        }
        let m = self.module(shader)?;
        let idx = m.ir.entry_points.iter().position(|ep| ep.name == entry && ep.stage == naga::ShaderStage::Compute)
            .ok_or_else(|| unavailable(format!("shader {} has no compute entry point `{entry}`", shader.name)))?;
        let uses = m.info.get_entry_point(idx);
        let mut bindings: Vec<u32> = m.ir.global_variables.iter()
            .filter_map(|(h, v)| v.binding.as_ref().filter(|b| b.group == 0 && !uses[h].is_empty()).map(|b| b.binding))
            .collect();
        bindings.sort_unstable();
        let pipeline = self.device.create_compute_pipeline(&::wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &m.module,
            entry_point: Some(entry),
            // Workgroup memory is not cleared at each workgroup's start in trusted mode (see
            // `module`): every shader writes it before reading it.
            compilation_options: ::wgpu::PipelineCompilationOptions { zero_initialize_workgroup_memory: !self.trusted, ..Default::default() },
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        self.check(&format!("pipeline {}/{entry}", shader.name))?;
        let p = Arc::new(Pipeline { pipeline, layout, bindings });
        lock(&self.pipelines).entry(shader.name).or_default().insert(entry.to_string(), p.clone());
        Ok(p)
    }

    fn new_batch(&self) -> Batch {
        Batch {
            encoder: self.device.create_command_encoder(&::wgpu::CommandEncoderDescriptor { label: Some("visword batch") }),
            pass: None,
            params_buf: self.device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some("params"),
                size: PARAMS_CAPACITY as u64,
                usage: ::wgpu::BufferUsages::STORAGE | ::wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            params: Vec::new(),
            dispatches: 0,
        }
    }

    /// Fold a workgroup count above the per-dimension limit into a 2-D grid (x = limit,
    /// y = ⌈x / limit⌉); kernels index with `flat_wg` and bounds-check.
    fn fold(&self, [x, y, z]: [u32; 3]) -> Option<[u32; 3]> {
        let max = self.max_groups_per_dim.load(Ordering::Relaxed);
        if x <= max && y <= max && z <= max {
            return Some([x, y, z]);
        }
        if y == 1 && z == 1 && x.div_ceil(max) <= max {
            return Some([max, x.div_ceil(max), 1]);
        }
        None
    }

    pub(crate) fn dispatch(&self, shader: &Shader, entry: &str, buffers: &[&::wgpu::Buffer], params: &[u32], workgroups: [u32; 3]) -> Result<()> {
        if workgroups.contains(&0) {
            return Ok(());
        }
        let groups = self.fold(workgroups).ok_or_else(|| {
            unavailable(format!("{}/{entry}: {workgroups:?} workgroups exceed the adapter's limit of {} per dimension", shader.name, self.max_groups_per_dim.load(Ordering::Relaxed)))
        })?;
        let pipe = self.pipeline(shader, entry)?;
        let align = (self.limits.min_storage_buffer_offset_alignment as usize).max(4);
        let param_bytes = (params.len() * 4).max(4);
        if param_bytes > PARAMS_CAPACITY {
            return Err(unavailable(format!("{}/{entry}: {} parameters is too many", shader.name, params.len())));
        }
        let mut guard = lock(&self.batch);
        if guard.as_ref().is_some_and(|b| b.params.len().next_multiple_of(align) + param_bytes > PARAMS_CAPACITY) {
            self.submit(&mut guard)?;
        }
        let batch = guard.get_or_insert_with(|| self.new_batch());
        let offset = batch.params.len().next_multiple_of(align);
        batch.params.resize(offset, 0);
        batch.params.extend(params.iter().flat_map(|p| p.to_le_bytes()));
        batch.params.resize(offset + param_bytes, 0);

        let mut entries = Vec::with_capacity(pipe.bindings.len());
        for &b in &pipe.bindings {
            let resource = if b == 0 {
                ::wgpu::BindingResource::Buffer(::wgpu::BufferBinding {
                    buffer: &batch.params_buf,
                    offset: offset as u64,
                    size: ::wgpu::BufferSize::new(param_bytes as u64),
                })
            } else {
                let buf = buffers.get(b as usize - 1).ok_or_else(|| {
                    unavailable(format!("{}/{entry} reads binding {b} but only {} buffers were passed", shader.name, buffers.len()))
                })?;
                if buf.size() > self.limits.max_storage_buffer_binding_size {
                    return Err(unavailable(format!(
                        "{}/{entry}: a {} MiB buffer exceeds the adapter's storage binding limit of {} MiB",
                        shader.name,
                        buf.size() >> 20,
                        self.limits.max_storage_buffer_binding_size >> 20
                    )));
                }
                buf.as_entire_binding()
            };
            entries.push(::wgpu::BindGroupEntry { binding: b, resource });
        }
        let bind_group = self.device.create_bind_group(&::wgpu::BindGroupDescriptor { label: Some(entry), layout: &pipe.layout, entries: &entries });
        let pass = batch.pass();
        pass.set_pipeline(&pipe.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        batch.dispatches += 1;
        // With the profiler's stamps on, an op's closing stamp submits a full batch
        // (`write_stamp`); this bound only catches dispatches made outside any op.
        let limit = if self.stamps.is_some() { 4 * MAX_BATCH } else { self.batch_limit.load(Ordering::Relaxed) };
        if batch.dispatches >= limit || self.sync_each {
            self.submit(&mut guard)?;
            if self.sync_each {
                self.wait()?;
            }
        }
        drop(guard);
        self.check(&format!("{}/{entry}", shader.name))
    }

    /// Write timestamp query `index` of `set` into the open batch's compute pass (opened if need
    /// be), after the dispatches recorded so far. An op's closing stamp (`end`) is the point at
    /// which a batch at its dispatch limit is submitted (`dispatch` leaves that to it while the
    /// profiler's stamps are on, so an op's dispatches and its closing stamp go out together),
    /// and goes out at once when it opened the batch (the op ended in a read-back): it is then
    /// reached as soon as the device is done, not when the host has recorded the next batch.
    pub(super) fn write_stamp(&self, set: &::wgpu::QuerySet, index: u32, end: bool) -> Result<()> {
        let mut guard = lock(&self.batch);
        let batch = guard.get_or_insert_with(|| self.new_batch());
        let n = batch.dispatches;
        batch.pass().write_timestamp(set, index);
        if end && (n == 0 || n >= self.batch_limit.load(Ordering::Relaxed)) {
            self.submit(&mut guard)?;
        }
        Ok(())
    }

    /// Run `f` on the open batch's encoder after its compute pass (if any) is closed.
    pub(super) fn with_encoder<R>(&self, f: impl FnOnce(&mut ::wgpu::CommandEncoder) -> R) -> R {
        let mut guard = lock(&self.batch);
        f(guard.get_or_insert_with(|| self.new_batch()).encoder())
    }

    /// Submit the recorded batch (if any) without waiting.
    fn submit(&self, guard: &mut MutexGuard<'_, Option<Batch>>) -> Result<()> {
        if let Some(mut b) = guard.take() {
            drop(b.pass.take());
            if !b.params.is_empty() {
                b.params.resize(b.params.len().next_multiple_of(4), 0);
                self.queue.write_buffer(&b.params_buf, 0, &b.params);
            }
            self.queue.submit([b.encoder.finish()]);
            let limit = self.batch_limit.load(Ordering::Relaxed);
            self.batch_limit.store((2 * limit).min(MAX_BATCH), Ordering::Relaxed);
        }
        self.check("submit")
    }

    pub(crate) fn flush(&self) -> Result<()> {
        self.submit(&mut lock(&self.batch))
    }

    fn wait(&self) -> Result<()> {
        self.device.poll(::wgpu::PollType::wait_indefinitely()).map_err(|e| unavailable(format!("waiting for the device: {e}")))?;
        self.batch_limit.store(FIRST_BATCH, Ordering::Relaxed);
        self.check("wait")
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.wait()
    }

    /// A buffer of at least `bytes` (from the pool when one of that size is idle; contents
    /// unspecified).
    pub(crate) fn alloc_buffer(&self, bytes: u64) -> Result<::wgpu::Buffer> {
        let size = padded_size(bytes);
        if let Some(b) = self.pool.take(size) {
            return Ok(b);
        }
        if size > self.limits.max_buffer_size {
            return Err(unavailable(format!("a {} MiB tensor exceeds the adapter's buffer limit of {} MiB", size >> 20, self.limits.max_buffer_size >> 20)));
        }
        let buffer = self.device.create_buffer(&::wgpu::BufferDescriptor {
            label: None,
            size,
            usage: ::wgpu::BufferUsages::STORAGE | ::wgpu::BufferUsages::COPY_SRC | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.check("allocating a buffer")?;
        Ok(buffer)
    }

    fn upload_bytes(&self, bytes: &[u8]) -> Result<::wgpu::Buffer> {
        let size = padded_size(bytes.len() as u64);
        if size > self.limits.max_buffer_size {
            return Err(unavailable(format!("a {} MiB tensor exceeds the adapter's buffer limit of {} MiB", size >> 20, self.limits.max_buffer_size >> 20)));
        }
        let padded;
        let contents = if bytes.len() as u64 == size {
            bytes
        } else {
            padded = { let mut v = bytes.to_vec(); v.resize(size as usize, 0); v };
            &padded
        };
        let buffer = self.device.create_buffer_init(&::wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: ::wgpu::BufferUsages::STORAGE | ::wgpu::BufferUsages::COPY_SRC | ::wgpu::BufferUsages::COPY_DST,
        });
        self.check("uploading a tensor")?;
        Ok(buffer)
    }

    /// Upload a host tensor, converting the float dtypes no shader reads: bf16 → f16 when every
    /// value is finite and within f16's range and the adapter has shader-f16, else f32; f16
    /// stays f16 with shader-f16, else f32. Integer dtypes go up as raw bytes.
    pub(crate) fn upload(&self, t: &Tensor) -> Result<(::wgpu::Buffer, DType)> {
        match t.dtype() {
            DType::BF16 => {
                let v = t.as_bf16()?;
                let fits = self.has_f16 && v.par_iter().all(|x| x.is_finite() && x.to_f32().abs() <= f16::MAX.to_f32());
                if fits {
                    let h: Vec<f16> = v.par_iter().map(|x| f16::from_f32(x.to_f32())).collect();
                    Ok((self.upload_bytes(bytemuck::cast_slice(&h))?, DType::F16))
                } else {
                    let f: Vec<f32> = v.par_iter().map(|x: &bf16| x.to_f32()).collect();
                    Ok((self.upload_bytes(bytemuck::cast_slice(&f))?, DType::F32))
                }
            }
            DType::F16 if !self.has_f16 => {
                let f: Vec<f32> = t.as_f16()?.par_iter().map(|x| x.to_f32()).collect();
                Ok((self.upload_bytes(bytemuck::cast_slice(&f))?, DType::F32))
            }
            dt => Ok((self.upload_bytes(t.raw_bytes()?)?, dt)),
        }
    }

    /// Copy `bytes` bytes of `src` back to the host (submits pending work and waits for it).
    pub(crate) fn read(&self, src: &::wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.next_multiple_of(4).max(4);
        let staging = self.device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("read-back"),
            size,
            usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut guard = lock(&self.batch);
            guard.get_or_insert_with(|| self.new_batch()).encoder().copy_buffer_to_buffer(src, 0, &staging, 0, size);
            self.submit(&mut guard)?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(::wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| unavailable("read-back: the mapping callback never ran"))?
            .map_err(|e| unavailable(format!("read-back: {e}")))?;
        let out = {
            let view = staging.get_mapped_range(..).map_err(|e| unavailable(format!("read-back: {e}")))?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        Ok(out)
    }
}

impl WgpuBackend {
    /// The buffer behind a tensor of this backend (an error naming `op` if it lives elsewhere).
    pub(crate) fn buffer<'a>(&self, t: &'a Tensor, op: &'static str) -> Result<&'a ::wgpu::Buffer> {
        match t.storage() {
            Storage::Wgpu(d) => Ok(&d.buffer),
            _ => Err(Error::shape(op, format!("a {} tensor {:?} is on {}, not wgpu (upload it first)", t.dtype(), t.shape(), t.device_name()))),
        }
    }

    /// A new tensor on this backend, its contents unspecified (a recycled buffer): the kernel
    /// that fills it must write every element. Its buffer returns to the pool when the last
    /// handle is dropped.
    pub(crate) fn alloc(&self, shape: Vec<usize>, dtype: DType) -> Result<Tensor> {
        let bytes = numel(&shape) as u64 * dtype.size() as u64;
        let buffer = self.rt.alloc_buffer(bytes)?;
        Ok(Tensor::from_storage(Storage::Wgpu(Arc::new(WgpuData { buffer, pool: Some(self.rt.pool.clone()) })), dtype, shape))
    }

    /// Record one dispatch of `shader`'s `entry` (see the binding convention in `mod.rs`).
    pub(crate) fn dispatch(&self, shader: &Shader, entry: &str, buffers: &[&::wgpu::Buffer], params: &[u32], workgroups: [u32; 3]) -> Result<()> {
        self.rt.dispatch(shader, entry, buffers, params, workgroups)
    }

    /// A small index buffer (token ids) for one dispatch.
    pub(crate) fn upload_u32(&self, v: &[u32]) -> Result<::wgpu::Buffer> {
        self.rt.upload_bytes(bytemuck::cast_slice(v))
    }

    pub fn upload(&self, t: &Tensor) -> Result<Tensor> {
        if let Storage::Wgpu(_) = t.storage() {
            return Ok(t.clone());
        }
        let (buffer, dtype) = self.rt.upload(t)?;
        Ok(Tensor::from_storage(Storage::Wgpu(Arc::new(WgpuData { buffer, pool: None })), dtype, t.shape().to_vec()))
    }

    /// Weights follow the same dtype rule as `upload` (see `Runtime::upload`).
    pub fn upload_weight(&self, t: &Tensor) -> Result<Tensor> {
        self.upload(t)
    }

    pub fn to_host(&self, t: &Tensor) -> Result<Tensor> {
        let buf = self.buffer(t, "to_host")?;
        let n = t.numel();
        let bytes = if n == 0 { Vec::new() } else { self.rt.read(buf, t.size_bytes() as u64)? };
        let data = match t.dtype() {
            DType::F32 => CpuData::F32(bytemuck::pod_collect_to_vec(&bytes)),
            DType::F16 => CpuData::F16(bytemuck::pod_collect_to_vec(&bytes)),
            DType::BF16 => CpuData::BF16(bytemuck::pod_collect_to_vec(&bytes)),
            DType::I64 => CpuData::I64(bytemuck::pod_collect_to_vec(&bytes)),
            DType::I32 => CpuData::I32(bytemuck::pod_collect_to_vec(&bytes)),
            DType::U8 => CpuData::U8(bytes),
        };
        Tensor::from_cpu(data, t.dtype(), t.shape().to_vec())
    }

    pub fn synchronize(&self) -> Result<()> {
        self.rt.synchronize()
    }

    pub fn device_name(&self) -> String {
        let coop = if self.rt.coop_gemm() {
            ", cooperative-matrix GEMM".to_string()
        } else {
            let note = lock(&self.rt.coop_note);
            if note.is_empty() { String::new() } else { format!(", {note}") }
        };
        format!("{} ({:?}, {:?}{coop})", self.rt.info.name, self.rt.info.backend, self.rt.info.device_type)
    }

    /// The device has cooperative matrices for the GEMM (whether or not they are switched on).
    pub fn has_coop_gemm(&self) -> bool {
        self.rt.has_coop
    }

    /// GEMMs on f16 weights run on cooperative matrices (shaders/matmul_coop.wgsl).
    pub fn coop_gemm(&self) -> bool {
        self.rt.coop_gemm()
    }

    /// Switch the cooperative-matrix GEMM on (where the device has it) or off, without the
    /// start-up self-check (tests compare it against the CPU themselves).
    #[doc(hidden)]
    pub fn set_coop_gemm(&self, on: bool) {
        self.rt.use_coop.store(on && self.rt.has_coop, Ordering::Relaxed)
    }

    /// The plain GEMM kernel choice (VISWORD_WGPU_GEMM when the backend opened, else auto).
    pub fn gemm_kernel(&self) -> GemmKernel {
        self.rt.gemm_kernel()
    }

    /// Force the wide or the 64×64-tile GEMM kernel where the wide one applies, or go back to
    /// choosing by grid size (`GemmKernel::Auto`), so tests reach either on any shape.
    #[doc(hidden)]
    pub fn set_gemm_kernel(&self, k: GemmKernel) {
        self.rt.gemm_kernel.store(k.code(), Ordering::Relaxed)
    }

    /// Whether the GEMVs (M = 1 linears and the fused decode GEMVs) take their batched builds,
    /// eight weight loads in flight per lane (VISWORD_WGPU_GEMV=batched when the backend opened).
    pub fn gemv_batched(&self) -> bool {
        self.rt.gemv_batched()
    }

    /// Switch the GEMVs' batched builds on or off, so tests reach both.
    #[doc(hidden)]
    pub fn set_gemv_batched(&self, on: bool) {
        self.rt.gemv_batched.store(on, Ordering::Relaxed)
    }

    /// The adapter's shader-f16 feature is enabled.
    pub fn has_f16(&self) -> bool {
        self.rt.has_f16
    }

    /// The adapter's subgroup operations are enabled.
    pub fn has_subgroups(&self) -> bool {
        self.rt.has_subgroups
    }

    /// Use (the default where offered) or skip the subgroup variants of kernels, so tests can
    /// check the plain fallback on an adapter that has subgroups.
    #[doc(hidden)]
    pub fn set_use_subgroups(&self, on: bool) {
        self.rt.use_subgroups.store(on && self.rt.has_subgroups, Ordering::Relaxed)
    }

    /// The adapter's subgroup sizes (min, max), when it has subgroups.
    pub fn subgroup_sizes(&self) -> Option<(u32, u32)> {
        self.rt.has_subgroups.then_some((self.rt.info.subgroup_min_size, self.rt.info.subgroup_max_size))
    }

    /// Lower the workgroups-per-dimension limit (never above the adapter's), so tests reach the
    /// 2-D dispatch fold with small tensors.
    #[doc(hidden)]
    pub fn set_max_workgroups_per_dim(&self, n: u32) {
        self.rt.set_max_groups_per_dim(n)
    }
}

/// The value of VISWORD_WGPU_GEMV: `batched` (eight weight loads in flight per lane) or
/// `single` (the default, also when unset); anything else is an error.
fn gemv_batched_from_env(v: Option<&str>) -> Result<bool> {
    match v.map(str::trim) {
        None | Some("") | Some("single") => Ok(false),
        Some("batched") => Ok(true),
        Some(other) => Err(Error::arg("VISWORD_WGPU_GEMV", format!("`{other}`: expected single or batched"))),
    }
}
