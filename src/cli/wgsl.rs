//! `softmax-ce wgsl --emit DIR [--target native|web]`: every WGSL module the library can
//! assemble, one file each, so that another WebGPU implementation (Dawn, a browser) can be
//! checked against exactly the sources the library builds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use softmax_ce::gpu::{Target, assemble_all};
use softmax_ce::npy::PendingFile;

/// Options of `softmax-ce wgsl`.
#[derive(Debug, clap::Args)]
pub struct WgslArgs {
    /// Write every module into DIR (created if missing), one `.wgsl` file per module with its
    /// configuration in its name; files of the same names are replaced.
    #[arg(long, value_name = "DIR")]
    emit: PathBuf,
    /// The implementation the sources are written for.
    #[arg(long, value_enum, default_value_t = TargetArg::Native)]
    target: TargetArg,
}

/// `--target native|web`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    /// wgpu-native (naga): what the library itself compiles.
    Native,
    /// Dawn and the browsers: with the `enable` directives they require.
    Web,
}

impl From<TargetArg> for Target {
    fn from(t: TargetArg) -> Self {
        match t {
            TargetArg::Native => Target::Native,
            TargetArg::Web => Target::Web,
        }
    }
}

/// Assembles every module, then writes them all to temporaries and renames them into place:
/// a module that cannot be assembled, or a file that cannot be written, leaves every existing
/// file as it was.
pub fn run(args: WgslArgs) -> Result<()> {
    let target = Target::from(args.target);
    let modules = assemble_all(target).context("assembling the WGSL modules")?;
    std::fs::create_dir_all(&args.emit)
        .with_context(|| format!("creating {}", args.emit.display()))?;
    let mut pending = Vec::with_capacity(modules.len());
    for m in &modules {
        let mut file = PendingFile::new(&args.emit.join(&m.file_name))?;
        file.write_with(|w| w.write_all(m.source.as_bytes()))?;
        pending.push(file);
    }
    for file in pending {
        file.commit()?;
    }
    outln!(
        "wrote {} {} modules to {}",
        modules.len(),
        target.name(),
        args.emit.display()
    )
}
