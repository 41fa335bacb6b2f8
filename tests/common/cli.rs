//! Running the `softmax-ce` binary, for the command-line tests.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::gpu;

/// A fresh directory named `name` under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_softmax-ce"))
}

/// Runs the binary with `args` and collects its output.
pub fn run<S: AsRef<OsStr> + Debug>(args: &[S]) -> Output {
    bin().args(args).output().unwrap()
}

/// Runs the binary, which must succeed.
pub fn ok<S: AsRef<OsStr> + Debug>(args: &[S]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The command fails with exactly one error line on stderr (after any adapter noise) that
/// contains every needle, and no panic.
pub fn fails_with<S: AsRef<OsStr> + Debug>(args: &[S], needles: &[&str]) {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("softmax-ce: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{args:?}: want one error line, got:\n{stderr}"
    );
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{args:?}: {:?} lacks {needle:?}",
            errors[0]
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The devices `--device` can name here: the GPU only where there is an adapter.
pub fn devices() -> Vec<&'static str> {
    if gpu().is_some() {
        vec!["cpu", "gpu"]
    } else {
        vec!["cpu"]
    }
}
