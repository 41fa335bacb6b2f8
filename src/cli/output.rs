//! Everything the binary writes: its output files, standard output and standard error.
//!
//! Files: every command declares its inputs and outputs up front in [`Outputs::prepare`],
//! which refuses an output that is an input or another output, and creates each output's
//! temporary file (so a missing or unwritable directory fails before any work). Outputs are
//! written to those temporaries and renamed into place together by [`Outputs::commit`], only
//! once all were written: a command that fails before the renames leaves every existing file
//! as it was. The renames themselves go one file at a time, so a rename that fails part way
//! (a file replaced under us, say) leaves the outputs renamed before it in place.
//!
//! Standard output: [`line`] (and the `outln!` macro) return write errors instead of
//! panicking as `println!` does. A closed pipe becomes [`BrokenPipe`], which `main` turns into
//! a quiet exit with status 141, as a tool killed by `SIGPIPE` reports in a shell.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use ndarray::ArrayViewD;
use softmax_ce::npy::PendingFile;

/// Standard output's reader went away (`EPIPE`): the consumer, say `head`, has what it wants.
#[derive(Debug)]
pub struct BrokenPipe;

impl fmt::Display for BrokenPipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for BrokenPipe {}

/// What a failed write to standard output means for the command.
pub fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(BrokenPipe)
    } else {
        anyhow!("writing to standard output failed: {e}")
    }
}

/// Writes one line to standard output and flushes it, so that a full disk or a closed pipe is
/// an error here and now, not a panic or a silent loss at exit.
pub fn line(args: fmt::Arguments<'_>) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Writes one line to standard error, ignoring failure: there is nowhere left to report it,
/// and a diagnostic must never be what kills the command.
pub fn note(args: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// Which file a path names: its canonical path and, on Unix, its device and inode, so that a
/// relative path, a symbolic link or a hard link to the same file all compare equal.
#[derive(Debug)]
struct Identity {
    path: PathBuf,
    inode: Option<(u64, u64)>,
}

impl Identity {
    fn of(path: &Path) -> Identity {
        if let Ok(canonical) = std::fs::canonicalize(path) {
            return Identity {
                path: canonical,
                inode: inode(path),
            };
        }
        // A file that does not exist yet: its canonical directory and its name.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let path = match (std::fs::canonicalize(dir), path.file_name()) {
            (Ok(dir), Some(name)) => dir.join(name),
            _ => path.to_path_buf(),
        };
        Identity { path, inode: None }
    }

    fn same(&self, other: &Identity) -> bool {
        self.path == other.path || (self.inode.is_some() && self.inode == other.inode)
    }
}

#[cfg(unix)]
fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn inode(_: &Path) -> Option<(u64, u64)> {
    None
}

/// The output files of one command, written to temporaries and committed together.
#[derive(Debug)]
pub struct Outputs {
    files: Vec<(String, PendingFile)>,
}

impl Outputs {
    /// Checks the outputs against the inputs and each other, then creates every output's
    /// temporary file. Each entry is a flag and its path; `None` is an option not given, so
    /// that optional flags are listed like the others.
    pub fn prepare(
        inputs: &[(&str, Option<&Path>)],
        outputs: &[(&str, Option<&Path>)],
    ) -> Result<Outputs> {
        let given = |list: &[(&str, Option<&Path>)]| -> Vec<(String, PathBuf, Identity)> {
            list.iter()
                .filter_map(|&(flag, path)| {
                    path.map(|p| (flag.to_string(), p.to_path_buf(), Identity::of(p)))
                })
                .collect()
        };
        let inputs = given(inputs);
        let outputs = given(outputs);
        for (i, (flag, path, id)) in outputs.iter().enumerate() {
            if let Some((input, input_path, _)) = inputs.iter().find(|(_, _, other)| id.same(other))
            {
                bail!(
                    "{flag} {} is the same file as {input} {}: an output must not replace an input",
                    path.display(),
                    input_path.display()
                );
            }
            if let Some((other, other_path, _)) =
                outputs[..i].iter().find(|(_, _, other)| id.same(other))
            {
                bail!(
                    "{flag} {} is the same file as {other} {}: each output needs its own file",
                    path.display(),
                    other_path.display()
                );
            }
        }
        let files = outputs
            .into_iter()
            .map(|(flag, path, _)| {
                let file = PendingFile::new(&path).with_context(|| flag.clone())?;
                Ok((flag, file))
            })
            .collect::<Result<_>>()?;
        Ok(Outputs { files })
    }

    /// Writes `a` to the temporary file of the output given as `flag`.
    pub fn write(&mut self, flag: &str, a: ArrayViewD<f32>) -> Result<()> {
        let (_, file) = self
            .files
            .iter_mut()
            .find(|(f, _)| f == flag)
            .ok_or_else(|| anyhow!("internal error: {flag} is not a prepared output"))?;
        file.write_f32(a).with_context(|| flag.to_string())
    }

    /// [`write`](Self::write) for a float16 output.
    pub fn write_f16(&mut self, flag: &str, a: ArrayViewD<softmax_ce::f16>) -> Result<()> {
        let (_, file) = self
            .files
            .iter_mut()
            .find(|(f, _)| f == flag)
            .ok_or_else(|| anyhow!("internal error: {flag} is not a prepared output"))?;
        file.write_f16(a).with_context(|| flag.to_string())
    }

    /// Writes `text` as the whole of the output given as `flag` (an SVG picture, ...).
    pub fn write_text(&mut self, flag: &str, text: &str) -> Result<()> {
        let (_, file) = self
            .files
            .iter_mut()
            .find(|(f, _)| f == flag)
            .ok_or_else(|| anyhow!("internal error: {flag} is not a prepared output"))?;
        file.write_with(|w| w.write_all(text.as_bytes()))
            .with_context(|| flag.to_string())
    }

    /// Writes `a` in its own precision: float32, or float16.
    pub fn write_as<T: softmax_ce::Element>(&mut self, flag: &str, a: ArrayViewD<T>) -> Result<()> {
        match T::DTYPE {
            softmax_ce::DType::F32 => self.write(flag, a.mapv(|v| v.to_f32()).view()),
            // Exact: the values are f16 already.
            softmax_ce::DType::F16 => self.write_f16(
                flag,
                a.mapv(|v| softmax_ce::f16::from_f32(v.to_f32())).view(),
            ),
        }
    }

    /// Renames every output into place, once all were written; on any failure the temporaries
    /// left are removed.
    pub fn commit(self) -> Result<()> {
        if let Some((flag, _)) = self.files.iter().find(|(_, f)| !f.is_written()) {
            bail!("internal error: {flag} was prepared but never written");
        }
        for (flag, file) in self.files {
            file.commit().with_context(|| flag)?;
        }
        Ok(())
    }
}
