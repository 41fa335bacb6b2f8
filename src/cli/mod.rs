//! Argument parsing and dispatch for the `softmax-ce` binary.

/// `println!` that returns an error instead of panicking on a closed pipe or a full disk.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that ignores failure instead of panicking.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::output::note(format_args!($($arg)*))
    };
}

mod bench;
mod eval;
mod info;
pub mod output;
mod plot;
mod train;
mod wgsl;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use softmax_ce::{Device, DeviceKind};

/// Softmax and cross-entropy on the GPU (WGSL through wgpu), with an ndarray reference on the
/// CPU.
#[derive(Debug, Parser)]
#[command(name = "softmax-ce", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the adapters wgpu sees, the one chosen, its limits and features.
    Info,
    /// Run one op on .npy files (float32 or float64 inputs, integer labels of any dtype).
    Eval {
        #[command(subcommand)]
        op: eval::Op,
    },
    /// Time the same work on every path (CPU reference, fast CPU, GPU) against a copy kernel, and
    /// print one table, or JSON lines with --json.
    Bench(bench::BenchArgs),
    /// Train softmax regression by SGD (the seed's algorithm) and print loss and error per
    /// epoch. With no data option: the bundled digits, 10 epochs, lr 0.2, batch 100.
    Train(train::TrainArgs),
    /// Write every WGSL module the library can assemble, for every configuration it picks, one
    /// file each (for checking them with another WebGPU implementation).
    Wgsl(wgsl::WgslArgs),
}

/// `--device gpu|cpu`; absent means the GPU when there is one, else the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// A wgpu adapter (an error when there is none).
    Gpu,
    /// The ndarray reference path.
    Cpu,
}

impl From<DeviceArg> for DeviceKind {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Gpu => DeviceKind::Gpu,
            DeviceArg::Cpu => DeviceKind::Cpu,
        }
    }
}

/// Opens the requested device and says on stderr which one runs the work.
pub fn open_device(arg: Option<DeviceArg>) -> Result<Device> {
    let (device, passed_over) = Device::select(arg.map(Into::into))?;
    match passed_over {
        Some(why) => note!("softmax-ce: using {device}: no GPU ({why})"),
        None => note!("softmax-ce: using {device}"),
    }
    Ok(device)
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info => info::run(),
        Command::Eval { op } => eval::run(op),
        Command::Bench(args) => bench::run(args),
        Command::Train(args) => train::run(args),
        Command::Wgsl(args) => wgsl::run(args),
    }
}
