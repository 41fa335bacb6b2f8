//! Property-based fuzzing of everything that reads untrusted input: the `.npy` reader, the IDX
//! reader (raw and gzipped) and the `eval` command line.
//!
//! Properties: nothing panics; every error is one line of bounded length; an accepted file
//! has exactly the elements its shape promises. Case sizes are bounded (a few KiB per file),
//! so no case can allocate much even where a reader is wrong. `PROPTEST_CASES` sets the number
//! of cases (256 by default; the binary's property runs a tenth as many, at least 8).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use proptest::prelude::*;
use softmax_ce::{data, npy};

/// A fresh directory for one property.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// proptest's configuration with `cases` cases. Failures are not persisted to files: a case
/// that fails becomes a named regression test in tests/data.rs, tests/cli.rs or src/npy.rs.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// One line, and short: a message that quotes a whole header would fail here.
fn one_line(e: &impl std::fmt::Display) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.contains('\n'), "multi-line error: {msg}");
    prop_assert!(msg.len() < 400, "long error ({} bytes): {msg}", msg.len());
    Ok(())
}

/// Reads `bytes` as a `.npy` file every way the library can.
fn check_npy(path: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    let f32s = npy::read_f32(path);
    match &f32s {
        Ok(a) => prop_assert!(a.len() * 4 <= bytes.len()),
        Err(e) => one_line(e)?,
    }
    // read_array reads what read_f32 reads, bit for bit, and float16 besides.
    let bits = |a: &ndarray::ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    match npy::read_array(path) {
        Ok(npy::NpyArray::F32(a)) => {
            prop_assert!(
                f32s.as_ref()
                    .is_ok_and(|b| b.shape() == a.shape() && bits(b) == bits(&a))
            )
        }
        Ok(npy::NpyArray::F16(a)) => {
            prop_assert!(f32s.is_err());
            prop_assert!(a.len() * 2 <= bytes.len());
        }
        Err(e) => {
            prop_assert!(f32s.is_err());
            one_line(&e)?
        }
    }
    if let Err(e) = npy::read_matrix_any(path, "m") {
        one_line(&e)?;
    }
    match npy::read_labels(path) {
        Ok(a) => prop_assert!(a.len() <= bytes.len()),
        Err(e) => one_line(&e)?,
    }
    match npy::read_labels_nd(path) {
        Ok(a) => prop_assert!(a.len() <= bytes.len()),
        Err(e) => one_line(&e)?,
    }
    if let Err(e) = npy::read_matrix(path, "m") {
        one_line(&e)?;
    }
    Ok(())
}

/// A valid `.npy` file: header text, then data.
fn npy_file(descr: &str, fortran: bool, shape: &[usize], version: u8, data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let order = if fortran { "True" } else { "False" };
    let text = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}\n");
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    out
}

fn descr() -> impl Strategy<Value = (&'static str, usize)> {
    prop::sample::select(vec![
        ("<f4", 4),
        (">f4", 4),
        ("<f8", 8),
        (">f8", 8),
        ("<f2", 2),
        ("|u1", 1),
        ("|i1", 1),
        ("<i2", 2),
        ("<i4", 4),
        ("<i8", 8),
        (">u8", 8),
        ("<u8", 8),
        ("|b1", 1),
        ("<c8", 8),
        ("<U3", 12),
        ("|O", 8),
        ("<f", 4),
        ("xf4", 4),
    ])
}

/// A valid file of a random small shape and dtype.
fn valid_npy() -> impl Strategy<Value = Vec<u8>> {
    (
        descr(),
        any::<bool>(),
        prop::collection::vec(0usize..6, 0..4),
        prop::sample::select(vec![1u8, 2, 3]),
        any::<u64>(),
    )
        .prop_map(|((descr, item), fortran, shape, version, seed)| {
            let n: usize = shape.iter().product();
            let data: Vec<u8> = (0..n * item)
                .map(|i| (seed.rotate_left(i as u32 % 64) as u8) ^ (i as u8))
                .collect();
            npy_file(descr, fortran, &shape, version, &data)
        })
}

/// How a valid file is damaged.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flip bits of one byte.
    Flip(usize, u8),
    /// Cut the file.
    Truncate(usize),
    /// Overwrite the header-length field.
    HeaderLen(u32),
    /// Replace the shape with these (possibly huge) sizes.
    Shape(Vec<u64>),
    /// Append bytes.
    Append(Vec<u8>),
    /// Replace the header's text with arbitrary bytes.
    Text(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        prop_oneof![any::<u32>(), 0u32..20_000].prop_map(Mutation::HeaderLen),
        prop::collection::vec(
            prop_oneof![any::<u64>(), 0u64..10, Just(u64::MAX), Just(1 << 32)],
            0..5
        )
        .prop_map(Mutation::Shape),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::Append),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Mutation::Text),
    ]
}

fn apply(mut file: Vec<u8>, m: &Mutation) -> Vec<u8> {
    // An earlier cut may have left too little to mutate in place: restore the preamble.
    if file.len() < 12 {
        file.resize(12, 0);
        file[..8].copy_from_slice(b"\x93NUMPY\x01\x00");
    }
    match m {
        Mutation::Flip(i, b) => {
            let n = file.len();
            file[i % n] ^= b;
        }
        Mutation::Truncate(i) => file.truncate(i % (file.len() + 1)),
        Mutation::HeaderLen(len) => {
            if file[6] == 1 {
                file[8..10].copy_from_slice(&(*len as u16).to_le_bytes());
            } else {
                file[8..12].copy_from_slice(&len.to_le_bytes());
            }
        }
        Mutation::Shape(dims) => {
            let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            let text = format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
                dims.join(", ")
            );
            let data = file[file.len().min(64)..].to_vec();
            file = b"\x93NUMPY\x01\x00".to_vec();
            file.extend_from_slice(&(text.len() as u16).to_le_bytes());
            file.extend_from_slice(text.as_bytes());
            file.extend_from_slice(&data);
        }
        Mutation::Append(bytes) => file.extend_from_slice(bytes),
        Mutation::Text(text) => {
            file.truncate(8);
            file.extend_from_slice(&(text.len() as u16).to_le_bytes());
            file[6] = 1;
            file.extend_from_slice(text);
        }
    }
    file
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An IDX file whose header may lie about its data.
fn idx_file() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![1u8, 3]),
        prop::collection::vec(
            prop_oneof![0u32..8, any::<u32>(), Just(1 << 31), Just(u32::MAX)],
            3,
        ),
        prop::collection::vec(any::<u8>(), 0..256),
        any::<u8>(),
    )
        .prop_map(|(rank, dims, data, type_code)| {
            let code = if type_code < 200 { 0x08 } else { type_code };
            let mut out = vec![0, 0, code, rank];
            for d in &dims[..usize::from(rank)] {
                out.extend_from_slice(&d.to_be_bytes());
            }
            // Mostly exactly the promised length, so the checks past the header run.
            let promised = dims[..usize::from(rank)]
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
                .unwrap_or(u64::MAX);
            if promised <= 256 && type_code % 2 == 0 {
                out.extend((0..promised).map(|i| i as u8));
            } else {
                out.extend_from_slice(&data);
            }
            out
        })
}

fn check_idx(bytes: &[u8]) -> Result<(), TestCaseError> {
    match data::parse_idx_images(bytes, "fuzz") {
        Ok(x) => prop_assert!(x.len() <= bytes.len()),
        Err(e) => one_line(&e)?,
    }
    match data::parse_idx_labels(bytes, "fuzz") {
        Ok(y) => prop_assert!(y.len() <= bytes.len()),
        Err(e) => one_line(&e)?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn npy_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        let dir = scratch("npy_bytes");
        let mut bytes = bytes;
        if magic {
            // Past the magic string, where the interesting checks are.
            let mut b = b"\x93NUMPY".to_vec();
            b.extend_from_slice(&bytes);
            bytes = b;
        }
        check_npy(&dir.join("a.npy"), &bytes)?;
    }

    #[test]
    fn npy_valid_files_read(file in valid_npy()) {
        let dir = scratch("npy_valid");
        check_npy(&dir.join("v.npy"), &file)?;
    }

    #[test]
    fn npy_mutated_files(file in valid_npy(), mutations in prop::collection::vec(mutation(), 1..3)) {
        let dir = scratch("npy_mutated");
        let file = mutations.iter().fold(file, apply);
        check_npy(&dir.join("m.npy"), &file)?;
    }

    #[test]
    fn idx_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300), zipped in any::<bool>()) {
        let bytes = if zipped { gz(&bytes) } else { bytes };
        check_idx(&bytes)?;
    }

    #[test]
    fn idx_crafted_headers(file in idx_file(), zipped in any::<bool>(), cut in any::<usize>()) {
        let mut bytes = if zipped { gz(&file) } else { file };
        if cut % 4 == 0 {
            let n = bytes.len();
            bytes.truncate(cut % (n + 1));
        }
        check_idx(&bytes)?;
    }
}

// === The command line: a bounded number of runs of the binary ===

fn bin_cases() -> u32 {
    (cases() / 10).max(8)
}

/// The files a run can be given: valid ones, and damaged ones.
fn eval_files(dir: &Path) -> Vec<PathBuf> {
    let f32_file = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|i| ((i % 7) as f32 - 3.0).to_le_bytes())
            .collect();
        npy_file("<f4", false, shape, 1, &data)
    };
    let labels = npy_file("<i8", false, &[4], 1, &[1, 0, 0, 0, 0, 0, 0, 0].repeat(4));
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("x.npy", f32_file(&[4, 3])),
        ("p.npy", f32_file(&[4, 3])),
        ("w.npy", f32_file(&[3])),
        ("y.npy", labels),
        ("scalar.npy", f32_file(&[])),
        ("wide.npy", f32_file(&[4, 5])),
        (
            "garbage.npy",
            b"\x93NUMPY\x02\x00\xf0\xff\xff\xff   ".to_vec(),
        ),
        ("short.npy", f32_file(&[4, 3])[..40].to_vec()),
        (
            "big64.npy",
            npy_file(
                "<f8",
                false,
                &[1, 2],
                1,
                &[1e300f64, 0.0].map(f64::to_le_bytes).concat(),
            ),
        ),
    ];
    files
        .into_iter()
        .map(|(name, bytes)| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        })
        .collect()
}

const OPS: [&str; 7] = [
    "softmax",
    "log-softmax",
    "logsumexp",
    "cross-entropy",
    "softmax-backward",
    "log-softmax-backward",
    "bce-with-logits",
];

const FLAGS: [&str; 14] = [
    "--logits",
    "--labels",
    "--targets",
    "--weight",
    "--probs",
    "--log-probs",
    "--upstream",
    "--out",
    "--grad-out",
    "--reduction",
    "--ignore-index",
    "--label-smoothing",
    "--z-loss",
    "--bogus",
];

proptest! {
    #![proptest_config(config(bin_cases()))]

    /// Random ops, flags and files: the binary exits 0, 1 or 2, never by a panic or a signal,
    /// and a failure is exactly one error line.
    #[test]
    fn eval_command_lines(
        op in prop::sample::select(OPS.to_vec()),
        args in prop::collection::vec((prop::sample::select(FLAGS.to_vec()), 0usize..16), 0..7),
    ) {
        let dir = scratch("eval_args");
        let files = eval_files(&dir);
        let out_path = dir.join("out.npy");
        let values = ["mean", "none", "-1", "-100", "0.5", "nan", "1e40", "x"];
        let mut argv: Vec<String> = vec!["eval".into(), op.into(), "--device".into(), "cpu".into()];
        for (flag, pick) in &args {
            argv.push(flag.to_string());
            let value = match *flag {
                "--out" | "--grad-out" if pick % 3 == 0 => files[pick % files.len()].clone(),
                "--out" | "--grad-out" => dir.join(format!("o{pick}.npy")),
                "--reduction" | "--ignore-index" | "--label-smoothing" | "--z-loss" => {
                    PathBuf::from(values[pick % values.len()])
                }
                _ => files[pick % files.len()].clone(),
            };
            argv.push(value.to_string_lossy().into_owned());
        }
        if !args.iter().any(|(f, _)| *f == "--out") {
            argv.push("--out".into());
            argv.push(out_path.to_string_lossy().into_owned());
        }
        let out = Command::new(env!("CARGO_BIN_EXE_softmax-ce")).args(&argv).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(
            matches!(out.status.code(), Some(0..=2)),
            "{argv:?}: status {:?}\n{stderr}", out.status
        );
        prop_assert!(!stderr.contains("panicked"), "{argv:?}: {stderr}");
        if !out.status.success() {
            let errors = stderr.lines().filter(|l| l.starts_with("softmax-ce: error:")).count();
            prop_assert_eq!(errors, 1, "{:?}: {}", argv, stderr);
            prop_assert!(stderr.lines().all(|l| l.len() < 400), "{stderr}");
        }
        // No temporary file survives, whatever happened.
        let temps: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        prop_assert!(temps.is_empty(), "{temps:?}");
    }
}
