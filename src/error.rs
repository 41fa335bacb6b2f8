//! The one error type of the crate.
//!
//! Every failure a caller can cause or meet is a variant here, named after what went wrong and
//! carrying the op and the values involved, so that a message read in a log is enough to act on.
//! Bugs inside the crate are the only panics.

use std::path::PathBuf;

/// Result type of every fallible call in the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `softmax-ce`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === GPU setup ===
    /// wgpu found no adapter that can run compute shaders.
    #[error(
        "no GPU adapter with compute shaders was found ({detail}); on Debian or Ubuntu, \
         `apt-get install mesa-vulkan-drivers` provides a software Vulkan adapter (lavapipe)"
    )]
    NoAdapter {
        /// What was searched, and what was seen.
        detail: String,
    },

    /// An adapter was requested by name (`SOFTMAX_CE_ADAPTER`, `WGPU_ADAPTER_NAME` or
    /// [`GpuOptions::adapter`](crate::gpu::GpuOptions::adapter)) and none matched.
    #[error("no adapter name contains {wanted:?}; adapters seen: {available}")]
    AdapterNotFound {
        /// The requested name fragment.
        wanted: String,
        /// The names of the adapters wgpu enumerated.
        available: String,
    },

    /// The adapter refused to create a device.
    #[error("requesting a device failed: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    /// A shader failed to compile or a pipeline failed validation.
    #[error("kernel {kernel} failed to build: {message}")]
    Shader {
        /// The kernel's entry point.
        kernel: &'static str,
        /// wgpu's (naga's) message.
        message: String,
    },

    /// wgpu reported a validation or out-of-memory error while running an op.
    #[error("{op}: the GPU reported an error: {message}")]
    Gpu {
        /// The op that was running.
        op: &'static str,
        /// wgpu's message.
        message: String,
    },

    /// Mapping a buffer for readback failed.
    #[error("reading results back from the GPU failed: {0}")]
    Map(#[from] wgpu::BufferAsyncError),

    /// Waiting for the GPU failed (device lost, or a timeout).
    #[error("waiting for the GPU failed: {0}")]
    Poll(#[from] wgpu::PollError),

    // === Bad input ===
    /// Two inputs, or an input and the op, disagree on a shape.
    #[error("{op}: expected {expected}, got {got}")]
    Shape {
        /// The op that checked.
        op: &'static str,
        /// The shape the op needed.
        expected: String,
        /// The shape it was given.
        got: String,
    },

    /// A label is outside `[0, classes)` and is not the ignore index.
    #[error(
        "{op}: label {label} at row {row} is outside [0, {classes}) and is not the ignore index {ignore_index}"
    )]
    LabelOutOfRange {
        /// The op that checked.
        op: &'static str,
        /// Row of the offending label.
        row: usize,
        /// The label's value.
        label: i64,
        /// Number of classes.
        classes: usize,
        /// The ignore index in force.
        ignore_index: i64,
    },

    /// An input that must not be empty is.
    #[error("{op}: {what} must not be empty")]
    Empty {
        /// The op that checked.
        op: &'static str,
        /// What was empty (e.g. "the class dimension").
        what: &'static str,
    },

    /// An option or scalar argument is outside its domain.
    #[error("{op}: {message}")]
    InvalidArgument {
        /// The op that checked.
        op: &'static str,
        /// What is wrong, with the value.
        message: String,
    },

    /// The op needs a feature the device was not created with (e.g. `SHADER_F16` for `f16`
    /// matrices: wgpu's GL backend has none).
    #[error("{op}: {what} needs the device feature {feature}, which {device} lacks")]
    MissingFeature {
        /// The op that checked.
        op: &'static str,
        /// What needs the feature.
        what: String,
        /// The wgpu feature's name.
        feature: &'static str,
        /// The adapter the device runs on.
        device: String,
    },

    /// Data is larger than the device allows and cannot be split to fit.
    #[error("{op}: {what} needs {bytes} bytes but the device allows at most {limit}")]
    TooLarge {
        /// The op that checked.
        op: &'static str,
        /// What is too large.
        what: String,
        /// Bytes needed.
        bytes: u64,
        /// The device's limit in bytes.
        limit: u64,
    },

    /// Work needs more workgroups than a dispatch can have and cannot be split to fit.
    #[error("{op}: {what} needs {groups} workgroups but a dispatch allows at most {limit}")]
    TooManyWorkgroups {
        /// The op that checked.
        op: &'static str,
        /// What needs the workgroups.
        what: String,
        /// Workgroups needed.
        groups: u64,
        /// The most a dispatch (or one of its dimensions, as `what` says) may have.
        limit: u64,
    },

    /// A kernel thread would loop longer than the adapter lets one invocation loop, and the
    /// work cannot be split to fit ([`GpuContext::loop_budget`](crate::GpuContext::loop_budget)).
    #[error(
        "{op}: {what}: a kernel thread would loop {trips} times, past the {limit} loop \
         iterations the adapter runs per invocation (Mesa's llvmpipe cuts longer loops short)"
    )]
    LoopLimit {
        /// The op that checked.
        op: &'static str,
        /// What the thread would walk.
        what: String,
        /// Iterations the thread would need.
        trips: u64,
        /// Iterations the adapter allows.
        limit: u64,
    },

    // === Files ===
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// A file was read but its contents are not what was expected.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    pub(crate) fn shape(
        op: &'static str,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Self {
        Error::Shape {
            op,
            expected: expected.into(),
            got: got.into(),
        }
    }

    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Parse {
            path: path.into(),
            message: message.into(),
        }
    }
}
