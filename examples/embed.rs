//! softmax-ce inside an application's own GPU frame.
//!
//! The application creates its own wgpu device (not through softmax-ce), writes logits into a
//! buffer it owns with its own WGSL kernel, and hands that buffer to softmax-ce without a copy,
//! with the labels it keeps on the device as `i32` (PyTorch's -100 marking an ignored row).
//! The fused cross-entropy and its gradient are recorded into the application's command
//! encoder right after its kernel, into an output buffer the application owns too; one
//! submission runs the frame and one readback brings the logits, the loss and the gradient
//! home, where the CPU reference checks them. Prints one line ending in `ok`.
//!
//! `cargo run --release --example embed`; with `-- --overhead` it also times the plan
//! recorded 1,000 times into one encoder against 1,000 calls of the convenience method and
//! against as many empty dispatches in one submission (the figures in BENCHMARKS.md).

use softmax_ce::{CrossEntropyOptions, GpuContext, LabelType, Labels, Loss, cpu};

const ROWS: usize = 4;
const COLS: usize = 1000;

/// The application's own kernel: deterministic logits, some of them large.
const FILL: &str = r#"
@group(0) @binding(0) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(64)
fn fill(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i < arrayLength(&logits) {
        logits[i] = 8.0 * sin(f32(i) * 0.37) + f32(i % 7u);
    }
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- The application's device, made without softmax-ce.
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("application"),
        // Subgroups if the adapter has them (softmax-ce's reductions use them), f16 if it has
        // it (the half-precision frame below), and the adapter's own limits.
        required_features: adapter.features()
            & (wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16),
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    let gpu = GpuContext::from_device(device.clone(), queue.clone())?;

    // --- Its buffers: logits after a 256-byte header of its own, and an output buffer
    // holding the loss (at 0) and the gradient (at 256).
    let logit_bytes = (ROWS * COLS * 4) as u64;
    let logits = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("application logits"),
        size: 256 + logit_bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let outputs = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("application outputs"),
        size: 256 + logit_bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let label_words: [i32; ROWS] = [3, 999, -100, 0];
    let labels_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("application labels"),
        size: std::mem::size_of_val(&label_words) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&labels_buf, 0, bytemuck::cast_slice(&label_words));
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("application readback"),
        size: 2 * (256 + logit_bytes),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    // --- Its kernel, bound at the logits' offset.
    let fill = Fill::new(&device, FILL, &logits, logit_bytes);

    // --- softmax-ce over the application's memory: wrapped, never copied or uploaded.
    let x = gpu.wrap_matrix(&logits, 256, ROWS, COLS)?;
    let loss = gpu.wrap_vector(&outputs, 0, 1)?;
    let grad = gpu.wrap_matrix(&outputs, 256, ROWS, COLS)?;
    // Its labels too: decoded in the kernels, the rows a mean divides by counted there.
    let y = gpu.wrap_labels(&labels_buf, 0, ROWS, COLS, LabelType::I32, -100)?;
    let opts = CrossEntropyOptions::default().label_smoothing(0.1);
    // Built once; a frame loop would record the same plan every frame.
    let plan = gpu.plan_cross_entropy(&x, &y, &opts, &loss, Some(&grad))?;
    let allocations = gpu.allocations();

    // --- The frame: the application's kernel, then softmax-ce's, then the readback copy.
    let mut encoder = device.create_command_encoder(&Default::default());
    fill.record(&mut encoder);
    plan.record(&mut encoder);
    encoder.copy_buffer_to_buffer(&logits, 0, &staging, 0, 256 + logit_bytes);
    encoder.copy_buffer_to_buffer(&outputs, 0, &staging, 256 + logit_bytes, 256 + logit_bytes);
    queue.submit([encoder.finish()]);
    assert_eq!(gpu.allocations(), allocations, "recording allocated");

    // --- One readback.
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| drop(tx.send(r)));
    device.poll(wgpu::PollType::wait_indefinitely())?;
    rx.recv()??;
    let data: Vec<f32> = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..)?);
    let half = (256 + logit_bytes) as usize / 4;
    let x_host = ndarray::Array2::from_shape_vec((ROWS, COLS), data[64..half].to_vec())?;
    let loss_gpu = data[half];
    let grad_gpu = ndarray::ArrayView2::from_shape((ROWS, COLS), &data[half + 64..])?;

    // --- The CPU reference, on the logits the application's kernel wrote.
    let labels = Labels::new(label_words.map(i64::from), COLS, -100)?;
    let Loss::Reduced(loss_cpu) = cpu::cross_entropy(x_host.view(), &labels, &opts)? else {
        unreachable!("a mean is one value")
    };
    let grad_cpu = cpu::cross_entropy_grad(x_host.view(), &labels, &opts)?;
    let grad_err = grad_gpu
        .iter()
        .zip(&grad_cpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let loss_err = (loss_gpu - loss_cpu).abs() / loss_cpu.abs().max(1.0);
    if !(loss_err < 1e-5 && grad_err < 1e-6) {
        return Err(format!(
            "mismatch: loss {loss_gpu} against {loss_cpu}, gradient off by up to {grad_err:e}"
        )
        .into());
    }
    println!(
        "embed: {ROWS} x {COLS} cross-entropy with gradient recorded into the application's \
         encoder after its own kernel, one submission, loss {loss_gpu:.6} (cpu {loss_cpu:.6}), \
         gradient within {grad_err:.1e}, {} steps, 0 allocations per frame: ok",
        plan.steps()
    );
    if device.features().contains(wgpu::Features::SHADER_F16) {
        half_frame(&gpu, &y, &labels)?;
    } else {
        println!("embed f16: skipped, the adapter lacks SHADER_F16");
    }
    if std::env::args().any(|a| a == "--overhead") {
        overhead(&gpu, &plan, (&x, &y, &opts), "labels counted on the device")?;
        // Uploaded labels: the host knows their count, and the plan has no counting steps.
        let y = gpu.upload_labels(&labels)?;
        let plan = gpu.plan_cross_entropy(&x, &y, &opts, &loss, Some(&grad))?;
        overhead(&gpu, &plan, (&x, &y, &opts), "labels counted on the host")?;
    }
    Ok(())
}

/// The application's fill kernel over `bytes` of its buffer from byte 256, built once.
struct Fill {
    pipeline: wgpu::ComputePipeline,
    binds: wgpu::BindGroup,
}

impl Fill {
    fn new(device: &wgpu::Device, source: &str, buffer: &wgpu::Buffer, bytes: u64) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("fill"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("fill"),
            layout: None,
            module: &module,
            entry_point: Some("fill"),
            compilation_options: Default::default(),
            cache: None,
        });
        let binds = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("fill"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: 256,
                    size: wgpu::BufferSize::new(bytes),
                }),
            }],
        });
        Fill { pipeline, binds }
    }

    /// The application's own pass, one invocation per logit.
    fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.binds, &[]);
        pass.dispatch_workgroups((ROWS * COLS).div_ceil(64) as u32, 1, 1);
    }
}

/// The application's kernel in half precision: the same logits, stored as `f16`.
const FILL_F16: &str = r#"
enable f16;
@group(0) @binding(0) var<storage, read_write> logits: array<f16>;

@compute @workgroup_size(64)
fn fill(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i < arrayLength(&logits) {
        logits[i] = f16(8.0 * sin(f32(i) * 0.37) + f32(i % 7u));
    }
}
"#;

/// The frame again with `f16` logits the application's own kernel writes: softmax-ce reads
/// them in half precision, computes in `f32`, and writes the gradient in `f16` into the
/// application's buffer (the loss in `f32`). Prints a line ending in `ok`.
fn half_frame(
    gpu: &GpuContext,
    y: &softmax_ce::GpuLabels,
    labels: &Labels,
) -> Result<(), Box<dyn std::error::Error>> {
    use softmax_ce::{DType, f16};
    let device = gpu.device();
    let bytes = (ROWS * COLS * 2) as u64;
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let buffer = |label| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 256 + bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    let (logits, outputs) = (
        buffer("application f16 logits"),
        buffer("application outputs"),
    );
    let fill = Fill::new(device, FILL_F16, &logits, bytes);
    let x = gpu.wrap_matrix_as(&logits, 256, (ROWS, COLS), COLS, DType::F16)?;
    let loss = gpu.wrap_vector(&outputs, 0, 1)?;
    let grad = gpu.wrap_matrix_as(&outputs, 256, (ROWS, COLS), COLS, DType::F16)?;
    let opts = CrossEntropyOptions::default().label_smoothing(0.1);
    let plan = gpu.plan_cross_entropy(&x, y, &opts, &loss, Some(&grad))?;
    let mut encoder = device.create_command_encoder(&Default::default());
    fill.record(&mut encoder);
    plan.record(&mut encoder);
    gpu.queue().submit([encoder.finish()]);

    // The reference on the f16 logits, widened exactly; the gradient rounded once to f16.
    let x_host = gpu.download_f16(&x)?.mapv(f16::to_f32);
    let Loss::Reduced(loss_cpu) = cpu::cross_entropy(x_host.view(), labels, &opts)? else {
        unreachable!("a mean is one value")
    };
    let grad_cpu = cpu::cross_entropy_grad(x_host.view(), labels, &opts)?;
    let grad_gpu = gpu.download_f16(&grad)?;
    let loss_gpu = gpu.download_vector(&loss)?[0];
    // One f16 step of each element (2^-10 relative), or the subnormal step near 0.
    let grad_ok = grad_gpu
        .iter()
        .zip(&grad_cpu)
        .all(|(g, &c)| (g.to_f32() - f16::from_f32(c).to_f32()).abs() <= c.abs() * 2e-3 + 1.2e-7);
    let loss_err = (loss_gpu - loss_cpu).abs() / loss_cpu.abs().max(1.0);
    if !(loss_err < 1e-5 && grad_ok) {
        return Err(format!(
            "f16 mismatch: loss {loss_gpu} against {loss_cpu}, gradient within one f16 step: \
             {grad_ok}"
        )
        .into());
    }
    println!(
        "embed f16: the application's f16 logits, the gradient written in f16 into its \
         buffer ({} bytes where f32 takes {}), loss {loss_gpu:.6} (cpu {loss_cpu:.6}): ok",
        grad.byte_len(),
        2 * grad.byte_len()
    );
    Ok(())
}

/// Calls per measurement.
const CALLS: usize = 1000;

/// Times `CALLS` frames' worth of the op three ways, each after a warm-up, and prints the
/// time per call of each.
fn overhead(
    gpu: &GpuContext,
    plan: &softmax_ce::GpuPlan,
    (x, y, opts): (
        &softmax_ce::GpuMatrix,
        &softmax_ce::GpuLabels,
        &CrossEntropyOptions,
    ),
    what: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let (device, queue) = (gpu.device(), gpu.queue());
    let wait = || device.poll(wgpu::PollType::wait_indefinitely()).map(drop);
    let time = |f: &dyn Fn() -> Result<(), Box<dyn std::error::Error>>| {
        f()?;
        let start = std::time::Instant::now();
        f()?;
        Ok::<_, Box<dyn std::error::Error>>(start.elapsed().as_secs_f64() * 1e6 / CALLS as f64)
    };
    // The plan, recorded CALLS times into one encoder, one submission.
    let recorded = time(&|| {
        let mut encoder = device.create_command_encoder(&Default::default());
        for _ in 0..CALLS {
            plan.record(&mut encoder);
        }
        queue.submit([encoder.finish()]);
        wait()?;
        Ok(())
    })?;
    // The host's share alone: recording and finishing the encoder, nothing submitted.
    let recording = time(&|| {
        let mut encoder = device.create_command_encoder(&Default::default());
        for _ in 0..CALLS {
            plan.record(&mut encoder);
        }
        drop(encoder.finish());
        Ok(())
    })?;
    // As many empty dispatches, of the fused kernel's grid, in one submission: what wgpu and
    // the driver cost with no work at all.
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("nop"),
        source: wgpu::ShaderSource::Wgsl("@compute @workgroup_size(128) fn nop() {}".into()),
    });
    let nop = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("nop"),
        layout: None,
        module: &module,
        entry_point: Some("nop"),
        compilation_options: Default::default(),
        cache: None,
    });
    let empty = time(&|| {
        let mut encoder = device.create_command_encoder(&Default::default());
        for _ in 0..CALLS {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&nop);
            for _ in 0..plan.steps() {
                pass.dispatch_workgroups(ROWS as u32, 1, 1);
            }
        }
        queue.submit([encoder.finish()]);
        wait()?;
        Ok(())
    })?;
    // The convenience method: new outputs and a new plan per call, one submission each.
    let convenience = time(&|| {
        for _ in 0..CALLS {
            gpu.cross_entropy_with_grad(x, y, opts)?;
        }
        wait()?;
        Ok(())
    })?;
    println!(
        "overhead per call of the {ROWS} x {COLS} cross-entropy with gradient, {what} ({} steps): \
         recorded plan {recorded:.1} us (recording alone {recording:.1} us), {} empty \
         dispatches {empty:.1} us ({:.2}x), convenience method {convenience:.1} us ({:.2}x)",
        plan.steps(),
        plan.steps(),
        recorded / empty,
        convenience / empty
    );
    Ok(())
}
