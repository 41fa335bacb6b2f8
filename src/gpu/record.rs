//! Recording kernels into one command buffer: the only place that builds bind groups for ops.
//!
//! An op opens a [`Recorder`], records its kernels in order, and submits once. Each
//! [`Recorder::rows`] call cuts the rows into windows that fit one binding
//! ([`Geometry::windows`]), and for each window writes a [`RowParams`], binds every buffer at the
//! window's offset, and dispatches. WebGPU orders dispatches and makes each one's writes visible
//! to the next, so stages chain without host round trips.
//!
//! [`Geometry::windows`]: crate::gpu::dispatch::Geometry::windows

use wgpu::util::DeviceExt;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{row_groups, threads_per_row};
use crate::gpu::params::RowParams;
use crate::gpu::shaders::{Kernel, Shape, Slot, Width};

/// The kernel-specific fields of [`RowParams`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Extra {
    pub flags: u32,
    pub f0: f32,
    pub f1: f32,
}

impl Extra {
    pub(crate) fn f0(f0: f32) -> Self {
        Extra {
            f0,
            ..Default::default()
        }
    }
}

/// One op's command encoder.
pub(crate) struct Recorder<'a> {
    gpu: &'a GpuContext,
    op: &'static str,
    encoder: wgpu::CommandEncoder,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(gpu: &'a GpuContext, op: &'static str) -> Self {
        let encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
        Recorder { gpu, op, encoder }
    }

    /// Records `kernel` over `rows` rows of `cols` elements. `buffers` follow the kernel's
    /// binding signature ([`Kernel::bindings`]); matrices among them are `rows x cols`,
    /// per-row buffers hold `rows` elements.
    pub(crate) fn rows(
        &mut self,
        kernel: Kernel,
        rows: usize,
        cols: usize,
        buffers: &[&wgpu::Buffer],
        extra: Extra,
    ) -> Result<()> {
        let signature = kernel.bindings();
        assert_eq!(
            signature.len(),
            buffers.len(),
            "{} takes {} buffers",
            kernel.entry(),
            signature.len()
        );
        let width = Width::for_cols(cols);
        let pipeline = self.gpu.pipeline(kernel, width)?;
        let geometry = self.gpu.geometry;
        let wg = self.gpu.config.row_wg;
        let tpr = match kernel.shape() {
            Shape::TeamPerRow => threads_per_row(cols.div_ceil(width.lanes()), wg),
            Shape::ThreadPerRow => 1,
            Shape::OneWorkgroup => wg,
        };
        for window in geometry.windows(self.op, rows, cols)? {
            let (_, _, mat_base) = geometry.slice(&window, cols);
            let (_, _, vec_base) = geometry.slice(&window, 1);
            debug_assert_eq!(mat_base as usize % width.lanes(), 0);
            let params = RowParams {
                rows: window.len() as u32,
                cols: cols as u32,
                tpr,
                mat_base: mat_base / width.lanes() as u32,
                vec_base,
                flags: extra.flags,
                f0: extra.f0,
                f1: extra.f1,
            };
            let groups = match kernel.shape() {
                Shape::OneWorkgroup => [1, 1, 1],
                _ => geometry.fold(self.op, row_groups(window.len(), tpr, wg))?,
            };
            let uniform = self
                .gpu
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("row_params"),
                    contents: bytemuck::bytes_of(&params),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: uniform.as_entire_binding(),
            }];
            for (i, (binding, buffer)) in signature.iter().zip(buffers).enumerate() {
                let resource = match binding.slot {
                    Slot::Whole => buffer.as_entire_binding(),
                    Slot::Matrix | Slot::PerRow => {
                        let elems = if binding.slot == Slot::Matrix {
                            cols
                        } else {
                            1
                        };
                        let (offset, size, _) = geometry.slice(&window, elems);
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer,
                            offset,
                            size: wgpu::BufferSize::new(size),
                        })
                    }
                };
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource,
                });
            }
            let bind_group = self
                .gpu
                .device
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(kernel.entry()),
                    layout: &pipeline.layout,
                    entries: &entries,
                });
            let mut pass = self
                .encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(kernel.entry()),
                    timestamp_writes: None,
                });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        Ok(())
    }

    /// Records zeroing `buffer`.
    pub(crate) fn clear(&mut self, buffer: &wgpu::Buffer) {
        self.encoder.clear_buffer(buffer, 0, None);
    }

    /// Submits what was recorded. The GPU runs it in the background; a download waits for it.
    pub(crate) fn submit(self) {
        self.gpu.queue.submit([self.encoder.finish()]);
    }
}

impl GpuContext {
    /// Runs `f` with a fresh recorder, submits what it recorded, and turns any wgpu error along
    /// the way into [`Error::Gpu`](crate::Error::Gpu) naming `op`.
    pub(crate) fn record<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Recorder<'_>) -> Result<T>,
    ) -> Result<T> {
        self.capture(op, || {
            let mut rec = Recorder::new(self, op);
            let out = f(&mut rec)?;
            rec.submit();
            Ok(out)
        })
    }
}
