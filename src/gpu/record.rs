//! Plans: an op's kernels with everything bound, built once and recorded as often as needed.
//!
//! An op opens a [`Recorder`], which collects its steps in order into a plan; the plan is then
//! recorded into a command encoder by [`encode`], the one place that records dispatches, and
//! submitted: the library's own submission ([`GpuContext::record`]), or the caller's encoder
//! ([`GpuPlan::record`]). Each [`Recorder::rows`] call cuts the rows into windows that fit one
//! binding ([`Geometry::windows`]), and for each window writes a [`RowParams`], binds every
//! buffer at the window's offset, and adds a dispatch. WebGPU orders dispatches and makes each
//! one's writes visible to the next, so stages chain without host round trips.
//!
//! [`Geometry::windows`]: crate::gpu::dispatch::Geometry::windows

use wgpu::util::DeviceExt;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::buffers::GpuLabels;
use crate::gpu::context::Pipeline;
use crate::gpu::dispatch::{FIXED_TRIPS, row_groups, threads_per_row};
use crate::gpu::params::{Args, LossArgs, MATRICES, RowParams};
use crate::gpu::shaders::{Kernel, STEP_UNIFORM_BYTES, SUM_TERMS, Shape, Slot, Width};

/// One step of a plan, with everything bound: built once, recorded as often as needed. The
/// trainer builds its per-batch dispatches once per shape and replays them every epoch.
#[derive(Clone, Debug)]
pub(crate) struct Dispatch {
    work: Work,
}

#[derive(Clone, Debug)]
enum Work {
    /// A kernel dispatch.
    Kernel {
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        groups: [u32; 3],
    },
    /// A copy of whole rows of a buffer into the top-left of a texture: how an operand whose
    /// rows are whole multiples of 256 bytes is packed for the texture matmul, with no kernel.
    CopyToTexture {
        buffer: wgpu::Buffer,
        offset: u64,
        bytes_per_row: u32,
        texture: wgpu::Texture,
        size: wgpu::Extent3d,
    },
    /// Zeroing a buffer (the sum of no values).
    Clear { buffer: wgpu::Buffer },
    /// A copy between buffers.
    Copy {
        from: wgpu::Buffer,
        from_offset: u64,
        to: wgpu::Buffer,
        to_offset: u64,
        bytes: u64,
    },
}

impl Dispatch {
    /// Copies `size` texels of `texture` from `buffer`, rows `bytes_per_row` apart from byte
    /// `offset` (a multiple of 256 bytes per row, as wgpu requires of buffer-texture copies).
    pub(crate) fn copy_to_texture(
        buffer: &wgpu::Buffer,
        offset: u64,
        bytes_per_row: u32,
        texture: &wgpu::Texture,
        size: wgpu::Extent3d,
    ) -> Self {
        Dispatch {
            work: Work::CopyToTexture {
                buffer: buffer.clone(),
                offset,
                bytes_per_row,
                texture: texture.clone(),
                size,
            },
        }
    }
}

/// An array in a buffer, from byte `offset` (a multiple of the binding alignment), and the
/// first row of it that a dispatch covers (rows of the kernel's column count for matrices,
/// single elements for per-row buffers).
#[derive(Clone, Copy, Debug)]
pub(crate) struct At<'b> {
    pub buffer: &'b wgpu::Buffer,
    pub offset: u64,
    pub first_row: usize,
    /// A matrix's row stride in elements; 0 for rows of the kernel's column count, end to end.
    pub stride: usize,
    /// How a matrix's elements are stored; `f32` for everything else.
    pub dtype: DType,
}

impl<'b> From<&'b wgpu::Buffer> for At<'b> {
    fn from(buffer: &'b wgpu::Buffer) -> Self {
        At {
            buffer,
            offset: 0,
            first_row: 0,
            stride: 0,
            dtype: DType::F32,
        }
    }
}

impl GpuContext {
    /// The dispatches of `kernel` over `rows` rows of `cols` elements, cut into windows that
    /// each fit one binding. `buffers` follow the kernel's binding signature
    /// ([`Kernel::bindings`]); row `r` of the work is row `first_row + r` of each buffer.
    pub(crate) fn plan_rows<A: Args>(
        &self,
        op: &'static str,
        kernel: Kernel,
        (rows, cols): (usize, usize),
        buffers: &[At<'_>],
        args: A,
        labels: Option<&GpuLabels>,
    ) -> Result<Vec<Dispatch>> {
        debug_assert!(
            A::FAMILIES.contains(&kernel.family()),
            "{} takes the arguments of {:?}",
            kernel.entry(),
            kernel.family()
        );
        let ignore = labels.and_then(GpuLabels::ignore);
        let signature = kernel.bindings();
        assert_eq!(
            signature.len(),
            buffers.len(),
            "{} takes {} buffers",
            kernel.entry(),
            signature.len()
        );
        // Each matrix's row stride; vec4 access where every row of every matrix is whole vec4s
        // (bindings start 16-byte aligned, so rows then start on a vec4 too).
        let matrices: Vec<_> = signature
            .iter()
            .zip(buffers)
            .filter(|(b, _)| b.slot.is_matrix())
            .collect();
        let strides: Vec<usize> = matrices
            .iter()
            .map(|(_, at)| if at.stride == 0 { cols } else { at.stride })
            .collect();
        assert!(
            strides.len() <= MATRICES,
            "{}: too many matrices",
            kernel.entry()
        );
        let width = if strides.iter().all(|s| s.is_multiple_of(4)) {
            kernel.width(cols)
        } else {
            Width::Scalar
        };
        let dtype = self.matrices_dtype(op, kernel, signature, buffers)?;
        let pipeline = self.pipeline_of(kernel, width, dtype)?;
        let geometry = self.geometry;
        let wg = self.config.wg(kernel.family());
        let tpr = match kernel.shape() {
            Shape::TeamPerRow => threads_per_row(cols.div_ceil(width.lanes()), wg),
            Shape::CachedTeamPerRow => {
                let lanes = cols.div_ceil(width.lanes());
                threads_per_row(lanes.div_ceil(self.config.row_cache as usize), wg)
            }
            Shape::ThreadPerRow => 1,
            Shape::Blocks | Shape::Tiles => {
                unreachable!("{} is not a row kernel", kernel.entry())
            }
        };
        // A thread walks its share of the row once per pass: the loop budget bounds the row.
        let share = (cols.div_ceil(width.lanes()) as u64).div_ceil(u64::from(tpr));
        geometry.check_trips(
            op,
            kernel.row_passes() * share + FIXED_TRIPS,
            &format!("rows of {cols} elements"),
        )?;
        let mut out = Vec::new();
        let per_dispatch = geometry.dispatch_rows(u64::from(wg / tpr));
        // Windows sized by the widest row in bytes: every matrix's window fits one binding.
        // Without matrices only the per-row bindings, one element a row, need to fit. Windows
        // are cut in 4-byte words: two f16 to a word.
        let row_words = matrices
            .iter()
            .zip(&strides)
            .map(|((b, _), &s)| crate::gpu::buffers::words(s.max(cols), b.slot.matrix_dtype(dtype)))
            .fold(1, usize::max);
        let lanes = width.lanes() as u32;
        for window in geometry.windows_capped(op, rows, row_words, per_dispatch)? {
            let groups = geometry.fold(op, row_groups(window.len(), tpr, wg))?;
            // Every buffer sees the same window of rows, shifted to where its rows start.
            let shifted = |at: &At<'_>| at.first_row + window.start..at.first_row + window.end;
            let mut base = [0u32; MATRICES];
            let mut stride = [0u32; MATRICES];
            let mut matrix = 0;
            let mut vec_base = None;
            let mut entries = Vec::with_capacity(buffers.len());
            for (binding, at) in signature.iter().zip(buffers) {
                let resource = match binding.slot {
                    Slot::Whole => at.buffer.as_entire_binding(),
                    Slot::Uniform => uniform_binding(at.buffer),
                    Slot::Texture => unreachable!("row kernels bind no textures"),
                    Slot::Matrix | Slot::MatrixF32 | Slot::PerRow => {
                        let (offset, size) = if binding.slot.is_matrix() {
                            let s = strides[matrix];
                            let (offset, size, b) = geometry.slice_rows(
                                at.offset,
                                &shifted(at),
                                (s, cols),
                                binding.slot.matrix_dtype(dtype).size() as u64,
                            );
                            debug_assert_eq!(b % lanes, 0);
                            base[matrix] = b / lanes;
                            stride[matrix] = (s / width.lanes()) as u32;
                            matrix += 1;
                            (offset, size)
                        } else {
                            let (offset, size, b) = geometry.slice_at(at.offset, &shifted(at), 1);
                            // One base is passed for every per-row buffer, so they must agree
                            // on where the window starts inside their binding.
                            assert!(
                                vec_base.replace(b).is_none_or(|v| v == b),
                                "{}: per-row buffers disagree on the window's alignment",
                                kernel.entry()
                            );
                            (offset, size)
                        };
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: at.buffer,
                            offset,
                            size: wgpu::BufferSize::new(size),
                        })
                    }
                };
                entries.push(resource);
            }
            let params = RowParams {
                rows: window.len() as u32,
                cols: cols as u32,
                tpr,
                vec_base: vec_base.unwrap_or(0),
                ignore: ignore.unwrap_or(0),
                ignores: u32::from(ignore.is_some()),
                nan: f32::NAN,
                pad: 0,
                args: args.words(),
                base,
                stride,
            };
            out.push(self.dispatch(
                kernel,
                &pipeline,
                bytemuck::bytes_of(&params),
                entries,
                groups,
            ));
        }
        Ok(out)
    }

    /// The one element type of `kernel`'s matrix bindings ([`Slot::Matrix`]; a
    /// [`Slot::MatrixF32`] is `f32` in either): `f32`, or `f16` where the kernel's family has an
    /// `f16` variant and the device has `SHADER_F16`.
    fn matrices_dtype(
        &self,
        op: &'static str,
        kernel: Kernel,
        signature: &[crate::gpu::shaders::Binding],
        buffers: &[At<'_>],
    ) -> Result<DType> {
        let mut dtypes = signature
            .iter()
            .zip(buffers)
            .filter(|(b, _)| b.slot == Slot::Matrix)
            .map(|(_, at)| at.dtype);
        // The f32-always matrices are the op layer's to check with a message of its own; one of
        // f16 here would be read at the wrong width.
        let f32_slots = signature.iter().zip(buffers);
        if f32_slots
            .filter(|(b, _)| b.slot == Slot::MatrixF32)
            .any(|(_, at)| at.dtype != DType::F32)
        {
            return Err(Error::invalid(
                op,
                format!("{} takes its losses and weights in f32", kernel.entry()),
            ));
        }
        let Some(dtype) = dtypes.next() else {
            return Ok(DType::F32);
        };
        if dtypes.any(|d| d != dtype) {
            return Err(Error::invalid(
                op,
                "its matrices mix f32 and f16: inputs and outputs share one precision",
            ));
        }
        if dtype == DType::F16 {
            if !kernel.family().has_f16() {
                return Err(Error::invalid(
                    op,
                    format!("{} has no f16 kernel: pass f32 matrices", kernel.entry()),
                ));
            }
            self.check_shader_f16(op, "an f16 matrix")?;
        }
        Ok(dtype)
    }

    /// Fails unless the device has `SHADER_F16`, which `what` needs.
    pub(crate) fn check_shader_f16(&self, op: &'static str, what: &str) -> Result<()> {
        if self.device.features().contains(wgpu::Features::SHADER_F16) {
            return Ok(());
        }
        Err(Error::MissingFeature {
            op,
            what: what.into(),
            feature: "SHADER_F16",
            device: self.adapter_info().name.clone(),
        })
    }

    /// The dispatches that write `scale * sum` of `len` values of `values` (from its element
    /// `first_row`) into element 0 of `out`: a tree of `sum_tree` dispatches, each level
    /// reducing blocks of `SUM_TERMS x WG` values to one partial (scratch buffers that the
    /// plan's bind groups keep alive), until one value is left. No thread loops over the data
    /// and every value meets the others in a fixed pairwise tree, so the sum needs no
    /// compensation that a fast-math compiler could fold away, and its error grows with the
    /// tree's depth, not with `len`.
    pub(crate) fn plan_sum(
        &self,
        op: &'static str,
        values: At<'_>,
        len: usize,
        out: At<'_>,
        scale: f32,
    ) -> Result<Vec<Dispatch>> {
        if len == 0 {
            let zero = self.storage("zero", 4);
            return Ok(vec![Dispatch::copy(&zero, 0, out.buffer, out.offset, 4)]);
        }
        let kernel = Kernel::SumTree;
        let pipeline = self.pipeline(kernel, Width::Scalar)?;
        let wg = self.config.wg(kernel.family());
        let block = (SUM_TERMS * wg) as usize;
        let mut plan = Vec::new();
        let mut level: (wgpu::Buffer, u64, usize, usize) =
            (values.buffer.clone(), values.offset, values.first_row, len);
        loop {
            let (input, origin, first, len) = &level;
            let windows = self.geometry.windows_capped(
                op,
                *len,
                1,
                self.geometry.dispatch_rows(block as u64),
            )?;
            let partials: usize = windows.iter().map(|w| w.len().div_ceil(block)).sum();
            let last = partials == 1;
            // The last level writes its one value at `out`, bound from there.
            let (target, target_offset) = if last {
                (out.buffer.clone(), out.offset)
            } else {
                (self.storage("partial sums", partials as u64 * 4), 0)
            };
            let mut base = 0;
            for window in &windows {
                let (offset, size, vec_base) =
                    self.geometry
                        .slice_at(*origin, &(first + window.start..first + window.end), 1);
                let groups = window.len().div_ceil(block);
                let params = RowParams {
                    rows: window.len() as u32,
                    cols: 1,
                    tpr: wg,
                    vec_base,
                    args: LossArgs {
                        first_partial: base as u32,
                        scale: if last { scale } else { 1.0 },
                        ..LossArgs::default()
                    }
                    .words(),
                    ..RowParams::default()
                };
                plan.push(self.dispatch(
                    kernel,
                    &pipeline,
                    bytemuck::bytes_of(&params),
                    vec![
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: input,
                            offset,
                            size: wgpu::BufferSize::new(size),
                        }),
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &target,
                            offset: target_offset,
                            size: if last { wgpu::BufferSize::new(4) } else { None },
                        }),
                    ],
                    self.geometry.fold(op, groups as u64)?,
                ));
                base += groups;
            }
            if last {
                return Ok(plan);
            }
            level = (target, 0, 0, partials);
        }
    }

    /// A dispatch of `kernel` with `params` as its uniform and `storage` as bindings 1...
    pub(crate) fn dispatch(
        &self,
        kernel: Kernel,
        pipeline: &Pipeline,
        params: &[u8],
        storage: Vec<wgpu::BindingResource<'_>>,
        groups: [u32; 3],
    ) -> Dispatch {
        self.count_allocations(2);
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: params,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let entries: Vec<_> = std::iter::once(uniform.as_entire_binding())
            .chain(storage)
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry()),
            layout: &pipeline.layout,
            entries: &entries,
        });
        Dispatch {
            work: Work::Kernel {
                pipeline: pipeline.pipeline.clone(),
                bind_group,
                groups,
            },
        }
    }
}

/// The first [`STEP_UNIFORM_BYTES`] of `buffer`, the size the kernels declare.
pub(crate) fn uniform_binding(buffer: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: 0,
        size: wgpu::BufferSize::new(STEP_UNIFORM_BYTES),
    })
}

/// An op's steps, collected in order: the plan being built.
pub(crate) struct Recorder<'a> {
    gpu: &'a GpuContext,
    op: &'static str,
    steps: Vec<Dispatch>,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(gpu: &'a GpuContext, op: &'static str) -> Self {
        Recorder {
            gpu,
            op,
            steps: Vec::new(),
        }
    }

    /// Adds `kernel` over `rows` rows of `cols` elements. `buffers` follow the kernel's
    /// binding signature ([`Kernel::bindings`]); matrices among them are `rows x cols`,
    /// per-row buffers hold `rows` elements.
    pub(crate) fn rows<A: Args>(
        &mut self,
        kernel: Kernel,
        rows: usize,
        cols: usize,
        buffers: &[At<'_>],
        args: A,
    ) -> Result<()> {
        self.rows_of(kernel, (rows, cols), buffers, args, None)
    }

    /// [`rows`](Self::rows) for a kernel that decodes `labels` (their ignore word).
    pub(crate) fn rows_labelled<A: Args>(
        &mut self,
        kernel: Kernel,
        rows: usize,
        cols: usize,
        buffers: &[At<'_>],
        args: A,
        labels: &GpuLabels,
    ) -> Result<()> {
        self.rows_of(kernel, (rows, cols), buffers, args, Some(labels))
    }

    fn rows_of<A: Args>(
        &mut self,
        kernel: Kernel,
        shape: (usize, usize),
        buffers: &[At<'_>],
        args: A,
        labels: Option<&GpuLabels>,
    ) -> Result<()> {
        let plan = self
            .gpu
            .plan_rows(self.op, kernel, shape, buffers, args, labels)?;
        self.steps.extend(plan);
        Ok(())
    }

    /// Adds the steps of a plan built elsewhere.
    pub(crate) fn push(&mut self, plan: Vec<Dispatch>) {
        self.steps.extend(plan);
    }

    /// Adds the steps of a kept plan (a trainer's stored dispatches).
    pub(crate) fn run(&mut self, plan: &[Dispatch]) {
        self.steps.extend_from_slice(plan);
    }

    /// Adds zeroing `buffer`.
    pub(crate) fn clear(&mut self, buffer: &wgpu::Buffer) {
        self.steps.push(Dispatch {
            work: Work::Clear {
                buffer: buffer.clone(),
            },
        });
    }

    /// Adds copying `bytes` bytes from the start of the array `from` to `to` at `to_offset`.
    pub(crate) fn copy(&mut self, from: At<'_>, to: &wgpu::Buffer, to_offset: u64, bytes: u64) {
        self.steps.push(Dispatch::copy(
            from.buffer,
            from.offset,
            to,
            to_offset,
            bytes,
        ));
    }
}

impl Dispatch {
    /// A copy of `bytes` bytes between buffers.
    pub(crate) fn copy(
        from: &wgpu::Buffer,
        from_offset: u64,
        to: &wgpu::Buffer,
        to_offset: u64,
        bytes: u64,
    ) -> Self {
        Dispatch {
            work: Work::Copy {
                from: from.clone(),
                from_offset,
                to: to.clone(),
                to_offset,
                bytes,
            },
        }
    }
}

/// Records `steps` into `encoder` in order: each run of kernels in one compute pass, copies
/// between them. WebGPU makes each step's writes visible to the next. The one place the crate
/// records an op's work.
pub(crate) fn encode(label: &str, steps: &[Dispatch], encoder: &mut wgpu::CommandEncoder) {
    let mut rest = steps;
    while let Some((first, tail)) = rest.split_first() {
        match &first.work {
            Work::Clear { buffer } => {
                encoder.clear_buffer(buffer, 0, None);
                rest = tail;
                continue;
            }
            Work::Copy {
                from,
                from_offset,
                to,
                to_offset,
                bytes,
            } => {
                encoder.copy_buffer_to_buffer(from, *from_offset, to, *to_offset, *bytes);
                rest = tail;
                continue;
            }
            Work::CopyToTexture {
                buffer,
                offset,
                bytes_per_row,
                texture,
                size,
            } => {
                encoder.copy_buffer_to_texture(
                    wgpu::TexelCopyBufferInfo {
                        buffer,
                        layout: wgpu::TexelCopyBufferLayout {
                            offset: *offset,
                            bytes_per_row: Some(*bytes_per_row),
                            rows_per_image: None,
                        },
                    },
                    texture.as_image_copy(),
                    *size,
                );
                rest = tail;
                continue;
            }
            Work::Kernel { .. } => {}
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        while let Some((
            Dispatch {
                work:
                    Work::Kernel {
                        pipeline,
                        bind_group,
                        groups,
                    },
            },
            tail,
        )) = rest.split_first()
        {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            rest = tail;
        }
    }
}

/// An op with everything bound (its inputs, its outputs, its workspace, its parameters),
/// ready to be recorded into any command encoder of its context's device, as often as needed.
/// Recording allocates nothing and submits nothing: the application decides when the encoder
/// is submitted, and the work runs then. Build one with a `plan_*` method of [`GpuContext`]
/// (for instance [`GpuContext::plan_cross_entropy`]); the convenience methods
/// ([`GpuContext::cross_entropy_with_grad`], ...) build one, submit it and drop it.
///
/// A plan keeps its buffers alive. Its arrays must not be written by other work between its
/// recording and the time it runs, or it reads what that work wrote: WebGPU orders the
/// commands of a queue, nothing more.
#[derive(Clone, Debug)]
pub struct GpuPlan {
    op: &'static str,
    steps: Vec<Dispatch>,
    owner: u64,
}

impl GpuPlan {
    /// The op it computes (`"cross_entropy_with_grad"`, ...), as errors name it.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The kernel dispatches and copies it records.
    pub fn steps(&self) -> usize {
        self.steps.len()
    }

    /// Records the op into `encoder`, which must belong to the device of the context that
    /// built the plan. Nothing is allocated, submitted, polled or read back.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        encode(self.op, &self.steps, encoder);
    }
}

impl GpuContext {
    /// Runs `f` with a fresh recorder, submits the plan it built, and turns any wgpu error
    /// along the way into [`Error::Gpu`](crate::Error::Gpu) naming `op`.
    pub(crate) fn record<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Recorder<'_>) -> Result<T>,
    ) -> Result<T> {
        self.capture(op, || {
            let mut rec = Recorder::new(self, op);
            let out = f(&mut rec)?;
            self.submit_steps(op, [rec.steps.as_slice()]);
            Ok(out)
        })
    }

    /// Runs `f` with a fresh recorder and returns the plan it built, unsubmitted.
    pub(crate) fn build_plan(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Recorder<'_>) -> Result<()>,
    ) -> Result<GpuPlan> {
        self.capture(op, || {
            let mut rec = Recorder::new(self, op);
            f(&mut rec)?;
            Ok(GpuPlan {
                op,
                steps: rec.steps,
                owner: self.id,
            })
        })
    }

    /// Records `plans` into one new command encoder and submits it.
    pub(crate) fn submit_steps<'p>(
        &self,
        op: &'static str,
        plans: impl IntoIterator<Item = &'p [Dispatch]>,
    ) -> wgpu::SubmissionIndex {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
        for steps in plans {
            encode(op, steps, &mut encoder);
        }
        self.queue.submit([encoder.finish()])
    }

    /// Submits `plan` on its own: the work runs in the background, and a download waits for it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when another context built the
    /// plan.
    pub fn submit(&self, plan: &GpuPlan) -> Result<wgpu::SubmissionIndex> {
        self.check_owned("submit", &[plan.owner])?;
        self.capture(plan.op, || {
            Ok(self.submit_steps(plan.op, [plan.steps.as_slice()]))
        })
    }
}
