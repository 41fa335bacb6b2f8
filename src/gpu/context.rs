//! The GPU context: an adapter, its device and queue, and the kernels compiled for it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::buffers::map_read;
use crate::gpu::dispatch::Geometry;
use crate::gpu::shaders::{Config, Family, Kernel, MT_LANES, Slot, Width};

/// Environment variable naming the adapter to use (a case-insensitive fragment of its name);
/// `WGPU_ADAPTER_NAME` is honoured too. `WGPU_BACKEND` (e.g. `vulkan`, `gl`) limits the backends
/// searched.
pub const ADAPTER_ENV: &str = "SOFTMAX_CE_ADAPTER";

/// How to build a [`GpuContext`]. The defaults suit every adapter; the knobs exist for tests,
/// benchmarks, and users who know their hardware.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct GpuOptions {
    /// A fragment of the adapter's name. `None` reads [`ADAPTER_ENV`], then `WGPU_ADAPTER_NAME`,
    /// then picks the best adapter: discrete GPU, integrated GPU, virtual, then software.
    pub adapter: Option<String>,
    /// Backends to search. `None` reads `WGPU_BACKEND` (e.g. `vulkan`, `gl`), else searches all.
    pub backends: Option<wgpu::Backends>,
    /// Threads per row-kernel workgroup (a power of two from 32 to the adapter's limit), the
    /// fused kernels' included; `None` picks one for the adapter (and a larger one for the
    /// fused kernels on a CPU adapter).
    pub row_workgroup_size: Option<u32>,
    /// A cap on the bytes one kernel binding may see, below the device's limit. Large matrices
    /// are processed in row windows that each fit one binding; a small cap exercises that path
    /// on small data (tests use it).
    pub max_binding_bytes: Option<u64>,
    /// Whether row reductions may use subgroup shuffles where the device has
    /// [`wgpu::Features::SUBGROUP`]. `None` means yes; `Some(false)` keeps every reduction in
    /// workgroup memory (tests compare the two paths).
    pub subgroups: Option<bool>,
    /// A cap on the loop iterations one kernel invocation may run, below the driver's own
    /// limit (which the context measures: 65,535 on Mesa's llvmpipe, none on GPUs). Work whose
    /// threads would loop longer is split across dispatches or refused with
    /// [`Error::TooLarge`]; a small cap exercises that planning on small data (tests use it).
    pub max_loop_iterations: Option<u32>,
    /// A cap on the workgroups of one dispatch dimension, below the device's limit (65,535 on
    /// most adapters). Dispatches past it fold into `y`; a small cap exercises the folding on
    /// small data (tests use it).
    pub max_workgroups_per_dimension: Option<u32>,
}

impl GpuOptions {
    /// Sets [`adapter`](Self::adapter).
    pub fn adapter(mut self, name: impl Into<String>) -> Self {
        self.adapter = Some(name.into());
        self
    }

    /// Sets [`backends`](Self::backends).
    pub fn backends(mut self, backends: wgpu::Backends) -> Self {
        self.backends = Some(backends);
        self
    }

    /// Sets [`row_workgroup_size`](Self::row_workgroup_size).
    pub fn row_workgroup_size(mut self, threads: u32) -> Self {
        self.row_workgroup_size = Some(threads);
        self
    }

    /// Sets [`subgroups`](Self::subgroups).
    pub fn subgroups(mut self, on: bool) -> Self {
        self.subgroups = Some(on);
        self
    }

    /// Sets [`max_binding_bytes`](Self::max_binding_bytes).
    pub fn max_binding_bytes(mut self, bytes: u64) -> Self {
        self.max_binding_bytes = Some(bytes);
        self
    }

    /// Sets [`max_loop_iterations`](Self::max_loop_iterations).
    pub fn max_loop_iterations(mut self, iterations: u32) -> Self {
        self.max_loop_iterations = Some(iterations);
        self
    }

    /// Sets [`max_workgroups_per_dimension`](Self::max_workgroups_per_dimension).
    pub fn max_workgroups_per_dimension(mut self, groups: u32) -> Self {
        self.max_workgroups_per_dimension = Some(groups);
        self
    }
}

/// The smallest loop budget a context accepts: every kernel's fixed loops (team reductions,
/// a matmul's stores) fit in it with room for some work.
pub const MIN_LOOP_BUDGET: u32 = 256;

/// Trips the probe asks for: far past any limiter seen (llvmpipe's 65,535), and a few
/// milliseconds of one thread on the slowest adapter.
const LOOP_PROBE_TRIPS: u32 = 1 << 20;

/// Runs `probe.wgsl` once: the iterations a loop of [`LOOP_PROBE_TRIPS`] really ran, or `None`
/// when it ran them all. A driver that cuts loops short (Mesa's llvmpipe stops every loop of an
/// invocation after 65,535 iterations in all) would otherwise turn long loops into wrong
/// numbers without an error.
async fn measure_loop_limit(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Option<u32>> {
    use wgpu::util::DeviceExt;
    const OP: &str = "loop limit probe";
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("probe"),
        source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/probe.wgsl").into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("loop_limit"),
        layout: None,
        module: &module,
        entry_point: Some("loop_limit"),
        compilation_options: Default::default(),
        cache: None,
    });
    let n = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("probe trips"),
        contents: bytemuck::bytes_of(&LOOP_PROBE_TRIPS),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let count = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe count"),
        size: 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe readback"),
        size: 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("loop_limit"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: n.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: count.as_entire_binding(),
            },
        ],
    });
    let mut encoder =
        device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(OP) });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(OP),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    encoder.copy_buffer_to_buffer(&count, 0, &staging, 0, 4);
    queue.submit([encoder.finish()]);
    if let Some(e) = scope.pop().await {
        return Err(Error::Gpu {
            op: OP,
            message: e.to_string(),
        });
    }
    let mapped = map_read(&staging, 4);
    // A browser maps by its event loop; a native backend while polled.
    if !cfg!(target_arch = "wasm32") {
        device.poll(wgpu::PollType::wait_indefinitely())?;
    }
    mapped.await?;
    let ran = {
        let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu {
            op: OP,
            message: e.to_string(),
        })?;
        u32::from_le_bytes([view[0], view[1], view[2], view[3]])
    };
    staging.unmap();
    Ok((ran < LOOP_PROBE_TRIPS).then_some(ran))
}

/// What `softmax-ce info` and a log line say about an adapter.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// wgpu's description of the adapter.
    pub info: wgpu::AdapterInfo,
    /// The adapter's own limits (which a [`GpuContext`] requests in full).
    pub limits: wgpu::Limits,
    /// The adapter's features.
    pub features: wgpu::Features,
    /// Whether it can run compute shaders at all (a downlevel GL adapter may not).
    pub compute: bool,
}

/// Lists every adapter wgpu can see on the backends `WGPU_BACKEND` allows.
#[cfg(not(target_arch = "wasm32"))]
pub fn enumerate_adapters() -> Vec<AdapterReport> {
    adapters(None).iter().map(report).collect()
}

#[cfg(not(target_arch = "wasm32"))]
fn adapters(backends: Option<wgpu::Backends>) -> Vec<wgpu::Adapter> {
    let backends = backends
        .or_else(wgpu::Backends::from_env)
        .unwrap_or(wgpu::Backends::all());
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle().with_env();
    desc.backends = backends;
    pollster::block_on(wgpu::Instance::new(desc).enumerate_adapters(backends))
}

#[cfg(not(target_arch = "wasm32"))]
fn report(adapter: &wgpu::Adapter) -> AdapterReport {
    AdapterReport {
        info: adapter.get_info(),
        limits: adapter.limits(),
        features: adapter.features(),
        compute: adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
    }
}

/// Preference among adapters: hardware first, and Vulkan/Metal/DX12 before GL, whose compute
/// path is the least capable (no subgroups, and one context lock for every thread).
#[cfg(not(target_arch = "wasm32"))]
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (device, backend)
}

#[cfg(not(target_arch = "wasm32"))]
fn wanted_adapter(opts: &GpuOptions) -> Option<String> {
    opts.adapter
        .clone()
        .or_else(|| std::env::var(ADAPTER_ENV).ok())
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
        .filter(|s| !s.is_empty())
}

#[cfg(not(target_arch = "wasm32"))]
fn choose_adapter(opts: &GpuOptions) -> Result<wgpu::Adapter> {
    // GL is only a fallback: when a Vulkan, Metal or DX12 adapter runs compute, never probe
    // EGL at all (it is slow to start, and chatty on stderr on headless machines).
    let explicit = opts.backends.or_else(wgpu::Backends::from_env);
    if explicit.is_none() && wanted_adapter(opts).is_none() {
        let primary = adapters(Some(wgpu::Backends::PRIMARY));
        if let Some(best) = primary
            .iter()
            .filter(|a| report(a).compute)
            .min_by_key(|a| rank(&a.get_info()))
        {
            return Ok(best.clone());
        }
    }
    let all = adapters(explicit);
    let names = || {
        all.iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let usable: Vec<&wgpu::Adapter> = all.iter().filter(|a| report(a).compute).collect();
    if let Some(wanted) = wanted_adapter(opts) {
        let needle = wanted.to_lowercase();
        return usable
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&needle))
            .cloned()
            .ok_or_else(|| Error::AdapterNotFound {
                wanted,
                available: if all.is_empty() {
                    "none".into()
                } else {
                    names()
                },
            });
    }
    usable
        .into_iter()
        .min_by_key(|a| rank(&a.get_info()))
        .cloned()
        .ok_or_else(|| Error::NoAdapter {
            detail: if all.is_empty() {
                "wgpu enumerated no adapters".into()
            } else {
                format!("none of {} can run compute shaders", names())
            },
        })
}

/// The adapter a browser's `navigator.gpu` offers, high-performance preferred.
#[cfg(target_arch = "wasm32")]
async fn browser_adapter() -> Result<wgpu::Adapter> {
    let desc = wgpu::InstanceDescriptor {
        backends: wgpu::Backends::BROWSER_WEBGPU,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    };
    wgpu::Instance::new(desc)
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter {
            detail: format!("the browser offers no WebGPU adapter ({e})"),
        })
}

/// An adapter's device and queue, and the kernels compiled for them.
///
/// Build one with [`GpuContext::new`] (which picks an adapter) or, inside an application that
/// already owns a device, [`GpuContext::from_device`]. Kernels are compiled on first use and
/// kept: a pipeline is built once per context, never per call. A context is cheap to share by
/// reference across threads; every call blocks until its work is submitted, and downloads block
/// until the GPU has finished.
///
/// A context is cheap to clone and `Send + Sync`: clones share the device, the compiled
/// kernels and the readback counter, and arrays made by one are arrays of all of them.
#[derive(Clone)]
pub struct GpuContext {
    /// Tells this context's arrays from another's (see `check_owned`).
    pub(crate) id: u64,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pub(crate) config: Config,
    pub(crate) geometry: Geometry,
    /// What `probe.wgsl` measured: the loop iterations an invocation may run, if bounded.
    driver_loop_limit: Option<u32>,
    pipelines: Arc<Mutex<HashMap<PipelineKey, Pipeline>>>,
    modules: Arc<Mutex<HashMap<ModuleKey, wgpu::ShaderModule>>>,
    /// Device-to-host reads so far (see [`GpuContext::readbacks`]).
    pub(crate) readbacks: Arc<AtomicU64>,
    /// Device objects created so far (see [`GpuContext::allocations`]).
    allocations: Arc<AtomicU64>,
    /// In a browser, the verdicts of error scopes not yet awaited (see `settle`).
    #[cfg(target_arch = "wasm32")]
    pending: Arc<Mutex<Vec<Verdict>>>,
}

/// An error scope's verdict on the calls made inside it, as our error.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
type Verdict = Pin<Box<dyn Future<Output = Option<Error>> + Send>>;

/// A compiled kernel and the layout its bind groups are built against.
#[derive(Clone)]
pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GpuContext {
    /// A context on the best adapter (see [`GpuOptions::adapter`]), with default options.
    ///
    /// Not in a browser, which cannot block: there use [`new_async`](Self::new_async).
    ///
    /// # Errors
    /// [`Error::NoAdapter`] when wgpu sees no adapter that can run compute shaders (the message
    /// says how to install a software one), [`Error::AdapterNotFound`] when a requested adapter
    /// is absent, [`Error::RequestDevice`] when the adapter refuses a device.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        Self::with_options(&GpuOptions::default())
    }

    /// A context built as `opts` says.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(opts: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(opts))
    }

    /// [`with_options`](Self::with_options) without blocking, on every target: in a browser
    /// the adapter is the one `navigator.gpu` offers (its limits and features decide the
    /// configuration as they do natively; [`GpuOptions::adapter`] and
    /// [`GpuOptions::backends`] are ignored there).
    pub async fn new_async(opts: &GpuOptions) -> Result<Self> {
        #[cfg(not(target_arch = "wasm32"))]
        let adapter = choose_adapter(opts)?;
        #[cfg(target_arch = "wasm32")]
        let adapter = browser_adapter().await?;
        // Only features some kernel or benchmark uses; everything else stays off.
        let wanted =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("softmax_ce"),
                required_features: adapter.features() & wanted,
                // wgpu's defaults cap buffers at 256 MiB; the adapter's own limits are what it can do.
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await?;
        // A validation error that escapes our error scopes must not abort the process.
        device.on_uncaptured_error(Arc::new(|e| log::error!("uncaptured wgpu error: {e}")));
        Self::build(device, queue, opts).await
    }

    /// A context on a device and queue the application already owns. Kernels are compiled for
    /// that device's limits; the device's uncaptured-error handler is left as the application
    /// set it (our own calls capture their errors).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self> {
        Self::from_device_with_options(device, queue, &GpuOptions::default())
    }

    /// [`from_device`](Self::from_device) with options (the adapter choice is ignored).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_device_with_options(
        device: wgpu::Device,
        queue: wgpu::Queue,
        opts: &GpuOptions,
    ) -> Result<Self> {
        pollster::block_on(Self::build(device, queue, opts))
    }

    /// [`from_device_with_options`](Self::from_device_with_options) without blocking, on every
    /// target (a browser application's own `GPUDevice`, through wgpu).
    pub async fn from_device_async(
        device: wgpu::Device,
        queue: wgpu::Queue,
        opts: &GpuOptions,
    ) -> Result<Self> {
        Self::build(device, queue, opts).await
    }

    async fn build(device: wgpu::Device, queue: wgpu::Queue, opts: &GpuOptions) -> Result<Self> {
        let info = device.adapter_info();
        let limits = device.limits();
        let max_wg = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x);
        let row_wg = match opts.row_workgroup_size {
            Some(wg) if wg.is_power_of_two() && (32..=max_wg).contains(&wg) => wg,
            Some(wg) => {
                return Err(Error::invalid(
                    "GpuContext",
                    format!("row workgroup size {wg} is not a power of two in [32, {max_wg}]"),
                ));
            }
            None => default_row_workgroup(&info).min(max_wg),
        };
        let fused_wg = match opts.row_workgroup_size {
            Some(_) => row_wg,
            None => default_fused_workgroup(&info).min(max_wg).max(row_wg),
        };
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(opts.max_binding_bytes.unwrap_or(u64::MAX));
        let max_groups_per_dim = match opts.max_workgroups_per_dimension {
            Some(g) if g >= 1 => g.min(limits.max_compute_workgroups_per_dimension),
            Some(g) => {
                return Err(Error::invalid(
                    "GpuContext",
                    format!("at most {g} workgroups per dimension: at least 1 is needed"),
                ));
            }
            None => limits.max_compute_workgroups_per_dimension,
        };
        let driver_loop_limit = measure_loop_limit(&device, &queue).await?;
        let loop_budget = match opts.max_loop_iterations {
            Some(n) if n < MIN_LOOP_BUDGET => {
                return Err(Error::invalid(
                    "GpuContext",
                    format!(
                        "at most {n} loop iterations per invocation: at least {MIN_LOOP_BUDGET} \
                         are needed"
                    ),
                ));
            }
            Some(n) => driver_loop_limit.map_or(n, |d| d.min(n)),
            None => driver_loop_limit.unwrap_or(u32::MAX),
        };
        log::info!("loop limit of the driver: {driver_loop_limit:?}; budget {loop_budget}");
        let geometry = Geometry {
            max_binding,
            align: (limits.min_storage_buffer_offset_alignment as u64).max(16),
            max_groups_per_dim,
            loop_budget: u64::from(loop_budget),
        };
        log::info!(
            "softmax-ce on {} ({:?}, {:?}), row workgroup {row_wg}, fused {fused_wg}",
            info.name,
            info.backend,
            info.device_type
        );
        let row_cache = if info.device_type == wgpu::DeviceType::Cpu {
            256
        } else {
            1
        };
        let subgroup = if opts.subgroups != Some(false)
            && device.features().contains(wgpu::Features::SUBGROUP)
        {
            // The butterfly's distances must stay inside every subgroup the driver may pick.
            match info.subgroup_min_size {
                s if s.is_power_of_two() => s.min(row_wg),
                _ => 1,
            }
        } else {
            1
        };
        log::info!("subgroup shuffles over {subgroup} threads");
        // The texture kernels' broadcasts name lanes 0..8 of subgroups of exactly 8, which is
        // what a CPU adapter's SIMD registers are (lavapipe on AVX2); GPUs keep the storage
        // kernels, whose loads their caches serve.
        let texture_kernels = info.device_type == wgpu::DeviceType::Cpu
            && subgroup > 1
            && info.subgroup_min_size == MT_LANES
            && info.subgroup_max_size == MT_LANES;
        log::info!("texture kernels: {texture_kernels}");
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(GpuContext {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            device,
            queue,
            info,
            limits,
            config: Config {
                row_wg,
                fused_wg,
                row_cache,
                subgroup,
                texture_kernels,
            },
            geometry,
            driver_loop_limit,
            pipelines: Arc::default(),
            modules: Arc::default(),
            readbacks: Arc::default(),
            allocations: Arc::default(),
            #[cfg(target_arch = "wasm32")]
            pending: Arc::default(),
        })
    }

    /// Whether the calls made since `scope` was pushed failed, as `error` turns wgpu's error
    /// into ours. A native backend validates each call as it is made, so the verdict is ready
    /// at once and a failure is this call's own `Err`. A browser validates on its own time,
    /// and waiting would stall the page's one thread: there the verdict is kept, and the next
    /// async download awaits it before its data ([`verdicts`](Self::verdicts)), so that a
    /// result written past an error is never returned.
    pub(crate) fn settle(
        &self,
        scope: wgpu::ErrorScopeGuard,
        error: impl FnOnce(wgpu::Error) -> Error + Send + 'static,
    ) -> Result<()> {
        let verdict = scope.pop();
        #[cfg(not(target_arch = "wasm32"))]
        {
            pollster::block_on(verdict).map_or(Ok(()), |e| Err(error(e)))
        }
        #[cfg(target_arch = "wasm32")]
        {
            lock(&self.pending).push(Box::pin(async move { verdict.await.map(error) }));
            Ok(())
        }
    }

    /// The kept verdicts of every call so far (none on a native backend, see
    /// [`settle`](Self::settle)): the first error among them.
    pub(crate) fn verdicts(&self) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        #[cfg(target_arch = "wasm32")]
        let pending = std::mem::take(&mut *lock(&self.pending));
        #[cfg(not(target_arch = "wasm32"))]
        let pending: Vec<Verdict> = Vec::new();
        async move {
            for verdict in pending {
                if let Some(e) = verdict.await {
                    return Err(e);
                }
            }
            Ok(())
        }
    }

    /// The adapter the context runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The limits of the device, which are the adapter's own.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether the adapter is a CPU emulating a GPU (lavapipe, llvmpipe, WARP): its timings
    /// measure kernel quality and overhead, not GPU speed.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether the kernels written for CPU adapters run where shapes fit the device's texture
    /// limits: matrix products through `matmul_tex.wgsl` (operands packed into textures, rows
    /// of op(A) shared by subgroup broadcasts), and the fused training step and its
    /// evaluation reading the data from a texture (`train_tex.wgsl`). True on a CPU adapter
    /// whose subgroups hold exactly 8 threads, unless subgroups are turned off
    /// ([`GpuOptions::subgroups`]); elsewhere products run the register-tiled `matmul.wgsl`
    /// and training reads storage buffers.
    pub fn texture_kernels(&self) -> bool {
        self.config.texture_kernels
    }

    /// The loop iterations the driver lets one kernel invocation run before it silently cuts
    /// every loop short, as measured when the context was built: `Some(65535)` on Mesa's
    /// llvmpipe (lavapipe), `None` (no limit seen) on GPUs. Every dispatch is planned within it.
    pub fn driver_loop_limit(&self) -> Option<u32> {
        self.driver_loop_limit
    }

    /// The loop iterations one kernel invocation is planned to stay within: the driver's limit
    /// ([`driver_loop_limit`](Self::driver_loop_limit)), or
    /// [`GpuOptions::max_loop_iterations`] where lower; `u32::MAX` when neither bounds it.
    pub fn loop_budget(&self) -> u64 {
        self.geometry.loop_budget
    }

    /// How many times this context has read device memory back to the host (each download,
    /// each epoch's metrics). A loop that must stay on the device can be checked with it.
    pub fn readbacks(&self) -> u64 {
        self.readbacks.load(Ordering::Relaxed)
    }

    /// How many buffers, textures, bind groups and uniform blocks this context (and its clones)
    /// has created for arrays and ops so far, staging buffers of downloads included; compiled
    /// pipelines are not counted. Recording a [`GpuPlan`](crate::gpu::GpuPlan) again creates
    /// none, which is what a frame loop can check with it.
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Counts `n` device objects created (see [`allocations`](Self::allocations)).
    pub(crate) fn count_allocations(&self, n: u64) {
        self.allocations.fetch_add(n, Ordering::Relaxed);
    }

    /// The device, for applications that mix their own work with ours.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue our work is submitted to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The compiled pipeline of `kernel` at `width`, building it on first use.
    pub(crate) fn pipeline(&self, kernel: Kernel, width: Width) -> Result<Pipeline> {
        self.pipeline_of(kernel, width, DType::F32)
    }

    /// The pipeline of `kernel` at `width` over matrices of `dtype`.
    pub(crate) fn pipeline_of(
        &self,
        kernel: Kernel,
        width: Width,
        dtype: DType,
    ) -> Result<Pipeline> {
        let key = (kernel, width, dtype);
        if let Some(p) = lock(&self.pipelines).get(&key) {
            return Ok(p.clone());
        }
        let built = self.build_pipeline(key)?;
        // Two threads may race to build the same pipeline; both results are valid and equal.
        Ok(lock(&self.pipelines).entry(key).or_insert(built).clone())
    }

    fn module(&self, family: Family, width: Width, dtype: DType) -> Result<wgpu::ShaderModule> {
        if let Some(m) = lock(&self.modules).get(&(family, width, dtype)) {
            return Ok(m.clone());
        }
        let source = self.config.source(family, width, dtype);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(family.name()),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let kernel = family.name();
        self.settle(scope, move |e| Error::Shader {
            kernel,
            message: e.to_string(),
        })?;
        Ok(lock(&self.modules)
            .entry((family, width, dtype))
            .or_insert(module)
            .clone())
    }

    fn build_pipeline(&self, (kernel, width, dtype): PipelineKey) -> Result<Pipeline> {
        let module = self.module(kernel.family(), width, dtype)?;
        let uniform = std::iter::once(wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
        let storage =
            kernel
                .bindings()
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: match b.slot {
                        Slot::Texture => wgpu::BindingType::StorageTexture {
                            access: if b.writable {
                                wgpu::StorageTextureAccess::WriteOnly
                            } else {
                                wgpu::StorageTextureAccess::ReadOnly
                            },
                            format: wgpu::TextureFormat::Rgba32Float,
                            view_dimension: wgpu::TextureViewDimension::D2,
                        },
                        _ => wgpu::BindingType::Buffer {
                            ty: if b.slot == Slot::Uniform {
                                wgpu::BufferBindingType::Uniform
                            } else {
                                wgpu::BufferBindingType::Storage {
                                    read_only: !b.writable,
                                }
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                    },
                    count: None,
                });
        let entries: Vec<_> = uniform.chain(storage).collect();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(kernel.entry()),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(kernel.entry()),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry()),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(kernel.entry()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let entry = kernel.entry();
        self.settle(scope, move |e| Error::Shader {
            kernel: entry,
            message: e.to_string(),
        })?;
        Ok(Pipeline { pipeline, layout })
    }
}

/// A compiled pipeline's key: one per kernel, vector width and matrix precision, built on first
/// use.
type PipelineKey = (Kernel, Width, DType);

/// A compiled shader module's key: one per family, vector width and matrix precision.
type ModuleKey = (Family, Width, DType);

/// Locks a cache, recovering it if a thread panicked while holding it: the maps only ever hold
/// complete entries.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Threads per row workgroup: 64 on a CPU adapter, where a workgroup runs on one core and each
/// extra reduction step costs barriers; 256 on a GPU, to keep many loads in flight.
fn default_row_workgroup(info: &wgpu::AdapterInfo) -> u32 {
    if info.device_type == wgpu::DeviceType::Cpu {
        64
    } else {
        256
    }
}

/// Threads per workgroup of the fused kernels, which keep their share of a row in a private
/// cache between the read and the write pass: on a CPU adapter 128, twice the row workgroup,
/// so that rows of up to 131,072 floats fit 128 caches of 256 vec4s instead of re-reading
/// half of the row from storage (measured on lavapipe: 256 x 131072 softmax from 1.44x to
/// 1.18x a copy, no change on shorter rows; the other kernels stay at 64, where the training
/// step's 100-row batches still fill two workgroups); on a GPU the row workgroup.
fn default_fused_workgroup(info: &wgpu::AdapterInfo) -> u32 {
    if info.device_type == wgpu::DeviceType::Cpu {
        128
    } else {
        default_row_workgroup(info)
    }
}
