//! Arrays that live on the device: uploads, downloads and the size checks in front of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Waker};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::shaders::STEP_UNIFORM_BYTES;
use crate::labels::Labels;

/// What a staging buffer's map callback hands to the future waiting on it.
#[derive(Default)]
struct MapState {
    result: Option<std::result::Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

/// The future of one `map_async`: ready once wgpu has run its callback.
struct Mapped(Arc<Mutex<MapState>>);

impl Future for Mapped {
    type Output = std::result::Result<(), wgpu::BufferAsyncError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// An `rows x cols` row-major `f32` matrix on the device.
///
/// Results of one op can be passed straight to the next; nothing returns to the host until
/// [`GpuContext::download`].
///
/// Not `Clone`: ops that work in place consume their input, and a clone sharing the buffer
/// would see it change.
#[derive(Debug)]
pub struct GpuMatrix {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) owner: u64,
    rows: usize,
    cols: usize,
}

impl GpuMatrix {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn dim(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// A vector of `f32` on the device: one value per row (row maxima, losses), or a scalar.
#[derive(Debug)]
pub struct GpuVector {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) owner: u64,
    len: usize,
}

impl GpuVector {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Validated [`Labels`] on the device: one `u32` per row, ignored rows marked.
#[derive(Clone, Debug)]
pub struct GpuLabels {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) owner: u64,
    len: usize,
    classes: usize,
    active: usize,
    /// Rows of each class present, as `(class, rows)` sorted by class (for the weighted mean's
    /// denominator without a readback).
    pub(crate) counts: std::sync::Arc<[(u32, u64)]>,
}

impl GpuLabels {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of classes the labels were validated against.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Number of rows not ignored.
    pub fn active_count(&self) -> usize {
        self.active
    }

    pub(crate) fn check_fits(&self, op: &'static str, rows: usize, cols: usize) -> Result<()> {
        if self.len != rows || self.classes != cols {
            return Err(Error::shape(
                op,
                format!("{rows} labels over {cols} classes (the logits' shape)"),
                format!("{} labels over {} classes", self.len, self.classes),
            ));
        }
        Ok(())
    }
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Readbacks go through a staging buffer of at most this many bytes, so that downloading a
/// 512 MiB matrix does not allocate a second 512 MiB.
const STAGING_BYTES: u64 = 64 << 20;

impl GpuContext {
    /// Bytes needed for `elems` elements, checked against the device's buffer limit.
    pub(crate) fn check_bytes(&self, op: &'static str, what: &str, elems: usize) -> Result<u64> {
        let bytes = (elems as u64).saturating_mul(4);
        let limit = self.limits().max_buffer_size;
        if bytes > limit {
            return Err(Error::TooLarge {
                op,
                what: what.to_string(),
                bytes,
                limit,
            });
        }
        Ok(bytes)
    }

    /// A device buffer of `bytes` bytes (at least 4: wgpu cannot bind an empty buffer).
    pub(crate) fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: STORAGE,
            mapped_at_creation: false,
        })
    }

    /// A zeroed buffer that kernels may also read as a uniform
    /// ([`Slot::Uniform`](crate::gpu::shaders::Slot::Uniform)): at least
    /// [`STEP_UNIFORM_BYTES`], the size its uniform binding declares.
    pub(crate) fn uniform_storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(STEP_UNIFORM_BYTES),
            usage: STORAGE | wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: false,
        })
    }

    pub(crate) fn storage_init(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        if bytes.is_empty() {
            return self.storage(label, 4);
        }
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: STORAGE,
            })
    }

    /// An uninitialised matrix, checked against the device's limits.
    pub(crate) fn new_matrix(
        &self,
        op: &'static str,
        rows: usize,
        cols: usize,
    ) -> Result<GpuMatrix> {
        let what = format!("a {rows} x {cols} f32 matrix");
        let bytes = self.check_bytes(op, &what, rows.saturating_mul(cols))?;
        // Fail now, not halfway through an op, if a single row cannot be bound.
        self.geometry.windows(op, rows.min(1), cols)?;
        Ok(GpuMatrix {
            buffer: self.storage(op, bytes),
            owner: self.id,
            rows,
            cols,
        })
    }

    /// An uninitialised vector.
    pub(crate) fn new_vector(&self, op: &'static str, len: usize) -> Result<GpuVector> {
        let bytes = self.check_bytes(op, &format!("a vector of {len} f32"), len)?;
        Ok(GpuVector {
            buffer: self.storage(op, bytes),
            owner: self.id,
            len,
        })
    }

    /// Copies a matrix to the device.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when the matrix exceeds the device's largest buffer, or one of its
    /// rows exceeds the largest binding (rows are never split).
    pub fn upload(&self, x: ArrayView2<f32>) -> Result<GpuMatrix> {
        const OP: &str = "upload";
        let (rows, cols) = x.dim();
        self.check_bytes(OP, &format!("a {rows} x {cols} f32 matrix"), x.len())?;
        self.geometry.windows(OP, rows.min(1), cols)?;
        let data = x.as_standard_layout();
        let bytes = bytemuck::cast_slice(data.as_slice().expect("standard layout is contiguous"));
        let buffer = self.capture(OP, || Ok(self.storage_init("matrix", bytes)))?;
        Ok(GpuMatrix {
            buffer,
            owner: self.id,
            rows,
            cols,
        })
    }

    /// Copies a vector to the device.
    pub fn upload_vector(&self, v: ArrayView1<f32>) -> Result<GpuVector> {
        const OP: &str = "upload_vector";
        self.check_bytes(OP, &format!("a vector of {} f32", v.len()), v.len())?;
        let data = v.as_standard_layout();
        let bytes = bytemuck::cast_slice(data.as_slice().expect("standard layout is contiguous"));
        let buffer = self.capture(OP, || Ok(self.storage_init("vector", bytes)))?;
        Ok(GpuVector {
            buffer,
            owner: self.id,
            len: v.len(),
        })
    }

    /// Copies validated labels to the device.
    pub fn upload_labels(&self, labels: &Labels) -> Result<GpuLabels> {
        const OP: &str = "upload_labels";
        self.check_bytes(OP, &format!("{} labels", labels.len()), labels.len())?;
        let bytes = bytemuck::cast_slice(labels.raw());
        let buffer = self.capture(OP, || Ok(self.storage_init("labels", bytes)))?;
        // Rows per class present, sorted by class: a sort of the labels, never an array of
        // `classes` counters (a label set may claim a billion classes).
        let mut present: Vec<u32> = labels.iter().flatten().map(|y| y as u32).collect();
        present.sort_unstable();
        let counts: Vec<(u32, u64)> = present
            .chunk_by(|a, b| a == b)
            .map(|run| (run[0], run.len() as u64))
            .collect();
        Ok(GpuLabels {
            buffer,
            owner: self.id,
            len: labels.len(),
            classes: labels.classes(),
            active: labels.active_count(),
            counts: counts.into(),
        })
    }

    /// Fails unless every array in `owners` was made by this context: binding another
    /// device's buffer would abort inside wgpu instead of reporting an error.
    pub(crate) fn check_owned(&self, op: &'static str, owners: &[u64]) -> Result<()> {
        if owners.iter().any(|&o| o != self.id) {
            return Err(Error::invalid(
                op,
                "an input lives on another GpuContext; upload it to this one",
            ));
        }
        Ok(())
    }

    /// Copies a matrix back to the host, waiting for the work that writes it.
    pub fn download(&self, m: &GpuMatrix) -> Result<Array2<f32>> {
        self.check_owned("download", &[m.owner])?;
        let data = self.read_f32(&m.buffer, m.rows * m.cols)?;
        Ok(Array2::from_shape_vec((m.rows, m.cols), data).expect("length matches the shape"))
    }

    /// Copies a vector back to the host, waiting for the work that writes it.
    pub fn download_vector(&self, v: &GpuVector) -> Result<Array1<f32>> {
        self.check_owned("download_vector", &[v.owner])?;
        Ok(Array1::from(self.read_f32(&v.buffer, v.len)?))
    }

    /// Copies a matrix back to the host without blocking: the future resolves once the device
    /// has run the work that writes `m` and copied it out. Nothing waits inside: on native
    /// backends wgpu delivers the mapping while the device is polled (the application's own
    /// `device.poll`, say once a frame, or any blocking call of this context); in a browser the
    /// event loop does. The staging buffer holds the whole matrix at once, where the blocking
    /// [`download`](Self::download) goes through a smaller one in chunks.
    pub fn download_async(
        &self,
        m: &GpuMatrix,
    ) -> impl Future<Output = Result<Array2<f32>>> + Send + 'static {
        let (rows, cols) = (m.rows, m.cols);
        let read = self
            .check_owned("download_async", &[m.owner])
            .map(|()| self.read_pod_async::<f32>(&m.buffer, rows * cols));
        async move {
            let data = read?.await?;
            Ok(Array2::from_shape_vec((rows, cols), data).expect("length matches the shape"))
        }
    }

    /// [`download_async`](Self::download_async) for a vector.
    pub fn download_vector_async(
        &self,
        v: &GpuVector,
    ) -> impl Future<Output = Result<Array1<f32>>> + Send + 'static {
        let read = self
            .check_owned("download_vector_async", &[v.owner])
            .map(|()| self.read_pod_async::<f32>(&v.buffer, v.len));
        async move { Ok(Array1::from(read?.await?)) }
    }

    /// Records a copy of the first `len` values of `buffer` into a new staging buffer, submits
    /// it, and returns a future of the values, ready once the staging buffer is mapped.
    fn read_pod_async<T: bytemuck::Pod + Send>(
        &self,
        buffer: &wgpu::Buffer,
        len: usize,
    ) -> impl Future<Output = Result<Vec<T>>> + Send + 'static {
        let total = (len * std::mem::size_of::<T>()) as u64;
        self.readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let state = Arc::new(Mutex::new(MapState::default()));
        if total > 0 {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, total);
            self.queue.submit([encoder.finish()]);
            let done = Arc::clone(&state);
            staging.map_async(wgpu::MapMode::Read, ..total, move |r| {
                let mut s = done.lock().unwrap_or_else(|e| e.into_inner());
                s.result = Some(r);
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            });
        }
        async move {
            if total == 0 {
                return Ok(Vec::new());
            }
            Mapped(state).await?;
            let out = {
                let view = staging.get_mapped_range(..total).map_err(|e| Error::Gpu {
                    op: "download_async",
                    message: e.to_string(),
                })?;
                bytemuck::pod_collect_to_vec(&view)
            };
            staging.unmap();
            Ok(out)
        }
    }

    /// Reads the first `len` floats of `buffer`: copy into a mappable staging buffer, map it,
    /// wait, copy out. Large buffers go through the staging buffer a chunk at a time.
    pub(crate) fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        self.read_pod(buffer, len)
    }

    /// Reads the first `len` values of type `T` of `buffer` (see [`read_f32`](Self::read_f32)).
    pub(crate) fn read_pod<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<T>> {
        let total = (len * std::mem::size_of::<T>()) as u64;
        self.readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut out: Vec<T> = Vec::with_capacity(len);
        if total == 0 {
            return Ok(out);
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: total.min(STAGING_BYTES),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut offset = 0;
        while offset < total {
            let chunk = (total - offset).min(STAGING_BYTES);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, chunk);
            self.queue.submit([encoder.finish()]);
            let (tx, rx) = mpsc::channel();
            staging.map_async(wgpu::MapMode::Read, ..chunk, move |r| {
                let _ = tx.send(r);
            });
            // Poll from this, the submitting, thread: on the GL backend another thread's poll
            // would contend for the one GL context while llvmpipe runs our submission.
            self.device.poll(wgpu::PollType::wait_indefinitely())?;
            rx.recv().expect("wgpu runs the map callback during poll")?;
            {
                let view = staging.get_mapped_range(..chunk).map_err(|e| Error::Gpu {
                    op: "download",
                    message: e.to_string(),
                })?;
                out.extend_from_slice(bytemuck::cast_slice(&view));
            }
            staging.unmap();
            offset += chunk;
        }
        Ok(out)
    }

    /// Runs `f` with wgpu's validation and out-of-memory errors captured, so that they come back
    /// as [`Error::Gpu`] naming `op` rather than reaching the uncaptured-error handler.
    pub(crate) fn capture<T>(&self, op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        match (result, validation.or(oom)) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(e)) => Err(Error::Gpu {
                op,
                message: e.to_string(),
            }),
            (Ok(v), None) => Ok(v),
        }
    }
}
