//! Arrays that live on the device: uploads, downloads and the size checks in front of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Waker};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use wgpu::util::DeviceExt;

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::record::At;
use crate::gpu::shaders::STEP_UNIFORM_BYTES;
use crate::labels::{IGNORED, INVALID, Labels};
use half::f16;

/// What a staging buffer's map callback hands to the future waiting on it.
#[derive(Default)]
struct MapState {
    result: Option<std::result::Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

/// The future of one `map_async`: ready once wgpu has run its callback.
struct Mapped(Arc<Mutex<MapState>>);

/// Maps the first `len` bytes of `staging` for reading: ready once wgpu has mapped them (on a
/// native backend, while the device is polled; in a browser, by its event loop).
pub(crate) fn map_read(
    staging: &wgpu::Buffer,
    len: u64,
) -> impl Future<Output = std::result::Result<(), wgpu::BufferAsyncError>> + Send + 'static + use<>
{
    let state = Arc::new(Mutex::new(MapState::default()));
    let done = Arc::clone(&state);
    staging.map_async(wgpu::MapMode::Read, ..len, move |r| {
        let mut s = done.lock().unwrap_or_else(|e| e.into_inner());
        s.result = Some(r);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    });
    Mapped(state)
}

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

/// An `rows x cols` row-major matrix of `f32` or `f16` ([`dtype`](Self::dtype)) on the
/// device: its rows [`stride`](Self::stride) elements apart in a buffer, from byte
/// [`offset`](Self::offset).
///
/// Results of one op can be passed straight to the next; nothing returns to the host until
/// [`GpuContext::download`]. An application binds them in its own passes through
/// [`buffer`](Self::buffer) and [`offset`](Self::offset), and hands its own buffers to the
/// ops through [`GpuContext::wrap_matrix`].
///
/// Not `Clone`: ops that work in place consume their input, and a clone sharing the buffer
/// would see it change.
#[derive(Debug)]
pub struct GpuMatrix {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) owner: u64,
    offset: u64,
    rows: usize,
    cols: usize,
    /// Elements from one row's start to the next's: `cols`, or more for padded rows.
    stride: usize,
    dtype: DType,
}

impl GpuMatrix {
    /// How its elements are stored.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The buffer that holds it.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Where its first element lies in [`buffer`](Self::buffer), in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Elements from the start of one row to the start of the next: [`cols`](Self::cols)
    /// unless the matrix was wrapped with padded rows
    /// ([`GpuContext::wrap_matrix_strided`]).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Whether its rows lie end to end (`stride == cols`), as [`upload`](GpuContext::upload)
    /// and every op's own outputs make them.
    pub fn is_contiguous(&self) -> bool {
        self.stride == self.cols || self.rows <= 1
    }

    /// The bytes it spans in the buffer, from its first element to its last: `4 * rows * cols`
    /// for a contiguous `f32` matrix, `2 * rows * cols` for `f16`.
    pub fn byte_len(&self) -> u64 {
        (self.dtype.size() * self.span()) as u64
    }

    /// The elements it spans, from its first to its last.
    fn span(&self) -> usize {
        match self.rows {
            0 => 0,
            r => (r - 1) * self.stride + self.cols,
        }
    }

    /// Fails unless it is an `f32` matrix, naming it as `what`: an array that is `f32`
    /// whatever the precision of the op's other matrices.
    pub(crate) fn check_f32_as(&self, op: &'static str, what: &str) -> Result<()> {
        if self.dtype == DType::F32 {
            return Ok(());
        }
        Err(Error::invalid(
            op,
            format!(
                "{what}: a {} x {} matrix of {}, not f32",
                self.rows, self.cols, self.dtype
            ),
        ))
    }

    /// The matrix as a kernel binds it, from its row `first_row`.
    pub(crate) fn at_row(&self, first_row: usize) -> At<'_> {
        At {
            buffer: &self.buffer,
            offset: self.offset,
            first_row,
            stride: self.stride,
            dtype: self.dtype,
        }
    }

    /// Fails unless the rows lie end to end: `op` reads the matrix as one flat run of floats.
    pub(crate) fn check_contiguous(&self, op: &'static str) -> Result<()> {
        if self.is_contiguous() {
            return Ok(());
        }
        Err(Error::invalid(
            op,
            format!(
                "a {} x {} matrix with rows {} elements apart: {op} needs rows end to end; \
                 copy it into a contiguous matrix first (GpuContext::copy)",
                self.rows, self.cols, self.stride
            ),
        ))
    }

    /// The matrix as a kernel binds it.
    pub(crate) fn at(&self) -> At<'_> {
        self.at_row(0)
    }

    /// A contiguous matrix as one flat run of floats, cut into rows of the kernel's own column
    /// count (the elementwise kernels), from that row `first_row`.
    pub(crate) fn flat_at(&self, first_row: usize) -> At<'_> {
        debug_assert!(self.is_contiguous(), "only contiguous matrices are flat");
        At {
            stride: 0,
            ..self.at_row(first_row)
        }
    }

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

/// A vector of `f32` on the device: one value per row (row maxima, losses), or a scalar;
/// `len` contiguous floats of a buffer from byte [`offset`](Self::offset).
#[derive(Debug)]
pub struct GpuVector {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) owner: u64,
    offset: u64,
    len: usize,
}

impl GpuVector {
    /// The buffer that holds it.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Where its first element lies in [`buffer`](Self::buffer), in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The vector as a kernel binds it.
    pub(crate) fn at(&self) -> At<'_> {
        At {
            buffer: &self.buffer,
            offset: self.offset,
            first_row: 0,
            stride: 0,
            dtype: DType::F32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How an application stores class labels in its own buffer: one 32-bit integer per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelType {
    /// `u32`: an ignore index that is negative (PyTorch's default -100) marks no row.
    U32,
    /// `i32`: every negative label other than the ignore index is out of range.
    I32,
}

/// Class labels on the device: one 32-bit word per row, ignored rows marked.
///
/// Either [uploaded](GpuContext::upload_labels) from validated [`Labels`] (`u32`, an ignored
/// row `0xffffffff`), whose counts the host knows, or [wrapped](GpuContext::wrap_labels) over
/// words an application wrote there, which the host never reads: the kernels decode each word
/// (the ignore index, then the range), give a row whose label is out of range a NaN loss and
/// NaN gradient instead of a silently wrong number, and count the rows a mean divides by on
/// the device, each time a plan runs.
#[derive(Clone, Debug)]
pub struct GpuLabels {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) owner: u64,
    offset: u64,
    len: usize,
    classes: usize,
    /// The word that marks an ignored row, where one can: none for an ignore index the type
    /// cannot hold (a negative index in `u32` labels).
    ignore: Option<u32>,
    counted: Option<Counted>,
}

/// What the host knows of uploaded labels: the denominators of a mean without a readback.
#[derive(Clone, Debug)]
pub(crate) struct Counted {
    /// Rows not ignored.
    pub active: usize,
    /// Rows of each class present, as `(class, rows)` sorted by class.
    pub per_class: Arc<[(u32, u64)]>,
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

    /// Number of classes the labels are read against.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Number of rows not ignored, where the host knows it: `None` for wrapped labels, whose
    /// rows are counted on the device.
    pub fn active_count(&self) -> Option<usize> {
        self.counted.as_ref().map(|c| c.active)
    }

    /// The buffer that holds them, from byte [`offset`](Self::offset): one 32-bit word per
    /// row (`0xffffffff` for an ignored row of uploaded labels).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Where the first label starts in [`buffer`](Self::buffer), in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The host's counts of uploaded labels; `None` for wrapped ones.
    pub(crate) fn counted(&self) -> Option<&Counted> {
        self.counted.as_ref()
    }

    /// The ignore word, as the kernels that decode labels take it.
    pub(crate) fn ignore(&self) -> Option<u32> {
        self.ignore
    }

    /// The labels as a kernel binds them.
    pub(crate) fn at(&self) -> At<'_> {
        At {
            offset: self.offset,
            ..At::from(&self.buffer)
        }
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

/// The `rows x cols` matrix in `data`, its rows `stride` elements apart.
fn rows_of<T: Copy>(data: Vec<T>, (rows, cols): (usize, usize), stride: usize) -> Array2<T> {
    if stride == cols || rows <= 1 {
        let mut data = data;
        data.truncate(rows * cols);
        return Array2::from_shape_vec((rows, cols), data).expect("length matches the shape");
    }
    Array2::from_shape_fn((rows, cols), |(r, c)| data[r * stride + c])
}

/// The first `len` halves of `words`, as the device stores them (little-endian pairs).
fn halves(words: &[u32], len: usize) -> Vec<f16> {
    let mut out: Vec<f16> = bytemuck::cast_slice(words).to_vec();
    out.truncate(len);
    out
}

/// The 4-byte words `elems` elements of `dtype` take, rounded up: what buffers, bindings and
/// copies are sized in.
pub(crate) fn words(elems: usize, dtype: DType) -> usize {
    match dtype {
        DType::F32 => elems,
        DType::F16 => elems.div_ceil(2),
    }
}

/// Fails unless `buffer` can be copied out (a wrapped buffer may lack `COPY_SRC`).
fn check_readable(op: &'static str, buffer: &wgpu::Buffer) -> Result<()> {
    if buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
        return Ok(());
    }
    Err(Error::invalid(
        op,
        format!(
            "the buffer's usage {:?} lacks COPY_SRC, which reading it back needs",
            buffer.usage()
        ),
    ))
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
        self.count_allocations(1);
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
        self.count_allocations(1);
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
        self.count_allocations(1);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: STORAGE,
            })
    }

    /// An uninitialised `f32` matrix, checked against the device's limits.
    pub(crate) fn new_matrix(
        &self,
        op: &'static str,
        rows: usize,
        cols: usize,
    ) -> Result<GpuMatrix> {
        self.new_matrix_of(op, rows, cols, DType::F32)
    }

    /// An uninitialised matrix of `dtype`, checked against the device's limits.
    pub(crate) fn new_matrix_of(
        &self,
        op: &'static str,
        rows: usize,
        cols: usize,
        dtype: DType,
    ) -> Result<GpuMatrix> {
        let what = format!("a {rows} x {cols} {dtype} matrix");
        let bytes = self.check_bytes(op, &what, words(rows.saturating_mul(cols), dtype))?;
        // Fail now, not halfway through an op, if a single row cannot be bound.
        self.geometry.windows(op, rows.min(1), words(cols, dtype))?;
        Ok(GpuMatrix {
            buffer: self.storage(op, bytes),
            owner: self.id,
            offset: 0,
            rows,
            cols,
            stride: cols,
            dtype,
        })
    }

    /// An uninitialised vector.
    pub(crate) fn new_vector(&self, op: &'static str, len: usize) -> Result<GpuVector> {
        let bytes = self.check_bytes(op, &format!("a vector of {len} f32"), len)?;
        Ok(GpuVector {
            buffer: self.storage(op, bytes),
            owner: self.id,
            offset: 0,
            len,
        })
    }

    /// Copies a matrix to the device.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when the matrix exceeds the device's largest buffer, or one of its
    /// rows exceeds the largest binding (rows are never split).
    pub fn upload(&self, x: ArrayView2<f32>) -> Result<GpuMatrix> {
        self.upload_as("upload", x)
    }

    /// Copies an `f16` matrix to the device, in half precision: the ops take it where the
    /// device has `SHADER_F16` (softmax, log-softmax, log-sum-exp, the cross-entropies, the
    /// backward passes, the binary cross-entropy, the staged kernels, the products, the
    /// copies; not the linear cross-entropy), compute in `f32`, and write their matrices in
    /// `f16` (losses in `f32`).
    ///
    /// # Errors
    /// Those of [`upload`](Self::upload).
    pub fn upload_f16(&self, x: ArrayView2<f16>) -> Result<GpuMatrix> {
        self.upload_as("upload_f16", x)
    }

    /// [`upload`](Self::upload) or [`upload_f16`](Self::upload_f16), by the element type.
    pub(crate) fn upload_as<T: Element>(
        &self,
        op: &'static str,
        x: ArrayView2<T>,
    ) -> Result<GpuMatrix> {
        let (rows, cols) = x.dim();
        let dtype = T::DTYPE;
        let what = format!("a {rows} x {cols} {dtype} matrix");
        self.check_bytes(op, &what, words(x.len(), dtype))?;
        self.geometry.windows(op, rows.min(1), words(cols, dtype))?;
        let data = x.as_standard_layout();
        let mut bytes: Vec<u8> =
            bytemuck::cast_slice(data.as_slice().expect("standard layout is contiguous")).to_vec();
        // Bindings and copies move whole 4-byte words: an odd count of f16 gets a zero pad.
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        let buffer = self.capture(op, || Ok(self.storage_init("matrix", &bytes)))?;
        Ok(GpuMatrix {
            buffer,
            owner: self.id,
            offset: 0,
            rows,
            cols,
            stride: cols,
            dtype,
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
            offset: 0,
            len: v.len(),
        })
    }

    /// A matrix over `rows * cols` floats of the application's own `buffer`, row-major and
    /// contiguous, from byte `offset`: no copy, no upload. The ops read it and write it where
    /// it lies, so an application hands over logits its own pipelines wrote, and binds what
    /// the ops wrote into it in its own passes. The buffer must belong to this context's device
    /// (wgpu cannot tell this library a buffer's device, so that is the caller's to keep)
    /// and have [`STORAGE`](wgpu::BufferUsages::STORAGE) usage (and `COPY_SRC` for
    /// [`download`](Self::download)). An op's outputs may share a buffer with each other but
    /// not with its inputs: WebGPU refuses a buffer bound both read-only and writable in one
    /// dispatch, whatever the ranges.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the value for: a buffer without `STORAGE` usage; an
    /// offset that is not a multiple of the device's storage-binding alignment
    /// (`min_storage_buffer_offset_alignment`, 256 bytes on most adapters: every op binds its
    /// arrays at such offsets); a view past the end of the buffer.
    /// [`Error::TooLarge`] for a row longer than one binding.
    pub fn wrap_matrix(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        cols: usize,
    ) -> Result<GpuMatrix> {
        self.wrap_matrix_strided(buffer, offset, rows, cols, cols)
    }

    /// [`wrap_matrix`](Self::wrap_matrix) over rows `stride` elements apart (`stride >= cols`):
    /// padded rows, or the first `cols` columns of a wider matrix. The row kernels read and
    /// write such matrices where they lie; the products, the binary cross-entropy and the flat
    /// copies need rows end to end and say so with an error.
    ///
    /// # Errors
    /// Those of [`wrap_matrix`](Self::wrap_matrix), and [`Error::InvalidArgument`] for a
    /// stride below `cols`.
    pub fn wrap_matrix_strided(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        cols: usize,
        stride: usize,
    ) -> Result<GpuMatrix> {
        self.wrap_matrix_as(buffer, offset, (rows, cols), stride, DType::F32)
    }

    /// [`wrap_matrix_strided`](Self::wrap_matrix_strided) over elements of `dtype`: an `f16`
    /// matrix is `2 * stride` bytes a row, and its view must end inside the buffer rounded up
    /// to a whole 4-byte word (bindings are sized in words).
    ///
    /// # Errors
    /// Those of [`wrap_matrix_strided`](Self::wrap_matrix_strided).
    pub fn wrap_matrix_as(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        (rows, cols): (usize, usize),
        stride: usize,
        dtype: DType,
    ) -> Result<GpuMatrix> {
        const OP: &str = "wrap_matrix";
        if stride < cols {
            return Err(Error::invalid(
                OP,
                format!("a row stride of {stride} elements is shorter than a row of {cols}"),
            ));
        }
        // From the first element to the last, checked before anything is bound.
        let span = match rows {
            0 => Some(0),
            r => (r - 1)
                .checked_mul(stride)
                .and_then(|e| e.checked_add(cols)),
        }
        .ok_or_else(|| {
            Error::invalid(
                OP,
                format!("{rows} rows {stride} elements apart overflow usize"),
            )
        })?;
        self.check_view(
            OP,
            buffer,
            offset,
            words(span, dtype),
            &format!("a {rows} x {cols} {dtype} matrix"),
        )?;
        self.geometry
            .windows(OP, rows.min(1), words(stride, dtype))?;
        Ok(GpuMatrix {
            buffer: buffer.clone(),
            owner: self.id,
            offset,
            rows,
            cols,
            stride,
            dtype,
        })
    }

    /// A vector over `len` floats of the application's own `buffer` from byte `offset`, with
    /// the requirements and errors of [`wrap_matrix`](Self::wrap_matrix).
    pub fn wrap_vector(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<GpuVector> {
        const OP: &str = "wrap_vector";
        self.check_view(OP, buffer, offset, len, &format!("a vector of {len} f32"))?;
        Ok(GpuVector {
            buffer: buffer.clone(),
            owner: self.id,
            offset,
            len,
        })
    }

    /// Fails unless `elems` floats from byte `offset` of `buffer` can be bound by the ops.
    fn check_view(
        &self,
        op: &'static str,
        buffer: &wgpu::Buffer,
        offset: u64,
        elems: usize,
        what: &str,
    ) -> Result<()> {
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::invalid(
                op,
                format!(
                    "the buffer's usage {:?} lacks STORAGE, which binding it to a kernel needs",
                    buffer.usage()
                ),
            ));
        }
        let align = self.geometry.align;
        if !offset.is_multiple_of(align) {
            return Err(Error::invalid(
                op,
                format!(
                    "offset {offset} is not a multiple of {align} bytes, the device's storage \
                     binding alignment"
                ),
            ));
        }
        let bytes = self.check_bytes(op, what, elems)?;
        let end = offset.checked_add(bytes);
        if end.is_none_or(|end| end > buffer.size()) {
            return Err(Error::invalid(
                op,
                format!(
                    "{what} from byte {offset} ({bytes} bytes) runs past the end of a buffer of \
                     {} bytes",
                    buffer.size()
                ),
            ));
        }
        Ok(())
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
        let per_class: Vec<(u32, u64)> = present
            .chunk_by(|a, b| a == b)
            .map(|run| (run[0], run.len() as u64))
            .collect();
        Ok(GpuLabels {
            buffer,
            owner: self.id,
            offset: 0,
            len: labels.len(),
            classes: labels.classes(),
            ignore: Some(IGNORED),
            counted: Some(Counted {
                active: labels.active_count(),
                per_class: per_class.into(),
            }),
        })
    }

    /// Labels over `len` 32-bit words of the application's own `buffer` from byte `offset`,
    /// read against `classes` classes: a row whose label equals `ignore_index` is ignored
    /// (PyTorch's `ignore_index`), one outside `[0, classes)` gets a NaN loss and gradient. The
    /// host never reads them, so the application may rewrite them between replays of a plan;
    /// the count of rows a mean divides by is taken on the device each time. The buffer's
    /// requirements and errors are those of [`wrap_matrix`](Self::wrap_matrix).
    ///
    /// # Errors
    /// Those of [`wrap_matrix`](Self::wrap_matrix), [`Error::Empty`] for no classes, and
    /// [`Error::InvalidArgument`] for more classes than the label type can name.
    pub fn wrap_labels(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
        classes: usize,
        ty: LabelType,
        ignore_index: i64,
    ) -> Result<GpuLabels> {
        const OP: &str = "wrap_labels";
        if classes == 0 {
            return Err(Error::Empty {
                op: OP,
                what: "the class dimension",
            });
        }
        // Two words are taken (IGNORED and INVALID); an i32 class must be non-negative.
        let most = match ty {
            LabelType::U32 => INVALID as usize,
            LabelType::I32 => 1 << 31,
        };
        if classes > most {
            return Err(Error::invalid(
                OP,
                format!("{classes} classes do not fit {ty:?} labels (at most {most})"),
            ));
        }
        self.check_view(OP, buffer, offset, len, &format!("{len} labels"))?;
        let ignore = match ty {
            LabelType::U32 => u32::try_from(ignore_index).ok(),
            LabelType::I32 => i32::try_from(ignore_index).ok().map(|i| i as u32),
        };
        Ok(GpuLabels {
            buffer: buffer.clone(),
            owner: self.id,
            offset,
            len,
            classes,
            ignore,
            counted: None,
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

    /// Copies a matrix back to the host, waiting for the work that writes it; an `f16`
    /// matrix comes back widened to `f32`, exactly ([`download_f16`](Self::download_f16)
    /// keeps it in `f16`).
    pub fn download(&self, m: &GpuMatrix) -> Result<Array2<f32>> {
        self.check_owned("download", &[m.owner])?;
        check_readable("download", &m.buffer)?;
        let data = match m.dtype {
            DType::F32 => self.read_pod::<f32>(&m.buffer, m.offset, m.span())?,
            DType::F16 => {
                let words = self.read_pod::<u32>(&m.buffer, m.offset, words(m.span(), m.dtype))?;
                halves(&words, m.span())
                    .iter()
                    .map(|h| h.to_f32())
                    .collect()
            }
        };
        Ok(rows_of(data, m.dim(), m.stride))
    }

    /// [`download`](Self::download) or [`download_f16`](Self::download_f16), by the element
    /// type, which must be the matrix's own.
    pub(crate) fn download_as<T: Element>(&self, m: &GpuMatrix) -> Result<Array2<T>> {
        if m.dtype != T::DTYPE {
            return Err(Error::invalid(
                "download",
                format!("a matrix of {} read back as {}", m.dtype, T::DTYPE),
            ));
        }
        // Exact both ways: an f16 widens to f32 and narrows back to itself.
        Ok(self.download(m)?.mapv(T::from_f32))
    }

    /// Copies an `f16` matrix back to the host in `f16`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an `f32` matrix (narrowing it would round).
    pub fn download_f16(&self, m: &GpuMatrix) -> Result<Array2<f16>> {
        const OP: &str = "download_f16";
        self.check_owned(OP, &[m.owner])?;
        check_readable(OP, &m.buffer)?;
        if m.dtype != DType::F16 {
            return Err(Error::invalid(
                OP,
                format!("a matrix of {}: download it with download", m.dtype),
            ));
        }
        let words = self.read_pod::<u32>(&m.buffer, m.offset, words(m.span(), m.dtype))?;
        Ok(rows_of(halves(&words, m.span()), m.dim(), m.stride))
    }

    /// Copies a vector back to the host, waiting for the work that writes it.
    pub fn download_vector(&self, v: &GpuVector) -> Result<Array1<f32>> {
        self.check_owned("download_vector", &[v.owner])?;
        check_readable("download_vector", &v.buffer)?;
        Ok(Array1::from(
            self.read_pod::<f32>(&v.buffer, v.offset, v.len)?,
        ))
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
    ) -> impl Future<Output = Result<Array2<f32>>> + Send + 'static + use<> {
        let (rows, cols, stride, dtype) = (m.rows, m.cols, m.stride, m.dtype);
        let span = m.span();
        let read = self
            .check_owned("download_async", &[m.owner])
            .and_then(|()| check_readable("download_async", &m.buffer))
            .map(|()| self.read_pod_async::<u32>(&m.buffer, m.offset, words(span, dtype)));
        async move {
            let words = read?.await?;
            let data = match dtype {
                DType::F32 => bytemuck::cast_slice(&words).to_vec(),
                DType::F16 => halves(&words, span).iter().map(|h| h.to_f32()).collect(),
            };
            Ok(rows_of(data, (rows, cols), stride))
        }
    }

    /// [`download_async`](Self::download_async) for a vector.
    pub fn download_vector_async(
        &self,
        v: &GpuVector,
    ) -> impl Future<Output = Result<Array1<f32>>> + Send + 'static + use<> {
        let read = self
            .check_owned("download_vector_async", &[v.owner])
            .and_then(|()| check_readable("download_vector_async", &v.buffer))
            .map(|()| self.read_pod_async::<f32>(&v.buffer, v.offset, v.len));
        async move { Ok(Array1::from(read?.await?)) }
    }

    /// Records a copy of `len` values of `buffer` from byte `origin` into a new staging buffer,
    /// submits it, and returns a future of the values, ready once the staging buffer is mapped.
    pub(crate) fn read_pod_async<T: bytemuck::Pod + Send>(
        &self,
        buffer: &wgpu::Buffer,
        origin: u64,
        len: usize,
    ) -> impl Future<Output = Result<Vec<T>>> + Send + 'static + use<T> {
        let total = (len * std::mem::size_of::<T>()) as u64;
        self.readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.count_allocations(1);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // Errors kept from earlier calls (in a browser, see `settle`) come first: a result
        // written past an error is never returned.
        let earlier = self.verdicts();
        let mapped = (total > 0).then(|| {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(buffer, origin, &staging, 0, total);
            self.queue.submit([encoder.finish()]);
            map_read(&staging, total)
        });
        async move {
            earlier.await?;
            let Some(mapped) = mapped else {
                return Ok(Vec::new());
            };
            mapped.await?;
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
        self.read_pod(buffer, 0, len)
    }

    /// Reads `len` values of type `T` of `buffer` from byte `origin` (see
    /// [`read_f32`](Self::read_f32)).
    pub(crate) fn read_pod<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        origin: u64,
        len: usize,
    ) -> Result<Vec<T>> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::invalid(
                "download",
                "a browser cannot block its one thread until the GPU is done: use the async \
                 downloads (download_async and its kin)",
            ));
        }
        let total = (len * std::mem::size_of::<T>()) as u64;
        self.readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut out: Vec<T> = Vec::with_capacity(len);
        if total == 0 {
            return Ok(out);
        }
        self.count_allocations(1);
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
            encoder.copy_buffer_to_buffer(buffer, origin + offset, &staging, 0, chunk);
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
        let gpu_error = move |e: wgpu::Error| Error::Gpu {
            op,
            message: e.to_string(),
        };
        // Innermost first: scopes pop in the reverse order of their pushes.
        let validation = self.settle(validation, gpu_error);
        let oom = self.settle(oom, gpu_error);
        let value = result?;
        validation?;
        oom?;
        Ok(value)
    }
}
