//! Reading and writing numpy `.npy` files, so that any numpy or PyTorch user can feed the ops
//! and check their results.
//!
//! Floats are read from `float32` or `float64` (converted); labels from any integer dtype. Both
//! byte orders and both memory orders (`C` and `fortran_order`) are accepted. Everything written
//! is little-endian `float32` in C order.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use ndarray::{Array1, Array2, ArrayD, ArrayViewD, IxDyn, ShapeBuilder};
use npyz::{DType, Deserialize, NpyFile, Order, TypeChar, WriterBuilder};

use crate::error::{Error, Result};

fn open(path: &Path) -> Result<NpyFile<BufReader<File>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    NpyFile::new(BufReader::new(file))
        .map_err(|e| Error::parse(path, format!("not a readable .npy file: {e}")))
}

/// The dtype of a plain (non-structured) array: its kind and its size in bytes.
fn plain(path: &Path, npy: &NpyFile<BufReader<File>>) -> Result<(TypeChar, u64)> {
    match npy.dtype() {
        DType::Plain(ts) => Ok((ts.type_char(), ts.size_field())),
        other => Err(Error::parse(
            path,
            format!("structured dtype {other:?} is not supported"),
        )),
    }
}

fn shape_of(npy: &NpyFile<BufReader<File>>) -> Vec<usize> {
    npy.shape().iter().map(|&d| d as usize).collect()
}

/// Reads all elements as `T` (the file's exact type), then converts each with `f`.
fn elements<T: Deserialize, U>(
    path: &Path,
    npy: NpyFile<BufReader<File>>,
    f: impl Fn(T) -> Result<U>,
) -> Result<ArrayD<U>> {
    let shape = shape_of(&npy);
    let order = npy.order();
    let data: Vec<T> = npy
        .into_vec()
        .map_err(|e| Error::parse(path, format!("reading the data failed: {e}")))?;
    let data = data.into_iter().map(f).collect::<Result<Vec<U>>>()?;
    let dim = IxDyn(&shape);
    let array = match order {
        Order::C => ArrayD::from_shape_vec(dim, data),
        Order::Fortran => ArrayD::from_shape_vec(dim.f(), data),
    };
    array.map_err(|e| Error::parse(path, format!("data does not fill shape {shape:?}: {e}")))
}

/// Reads a float array of any shape; `float64` is converted to `float32`.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    let npy = open(path)?;
    match plain(path, &npy)? {
        (TypeChar::Float, 4) => elements(path, npy, |v: f32| Ok(v)),
        (TypeChar::Float, 8) => elements(path, npy, |v: f64| Ok(v as f32)),
        (kind, size) => Err(Error::parse(
            path,
            format!("dtype {kind:?}{size} is not float32 or float64"),
        )),
    }
}

/// Reads a 2-D float array; `what` names it in errors ("logits", "targets").
pub fn read_matrix(path: &Path, what: &str) -> Result<Array2<f32>> {
    let a = read_f32(path)?;
    let shape = a.shape().to_vec();
    a.into_dimensionality().map_err(|_| {
        Error::parse(
            path,
            format!("{what} must be a 2-D array (rows x classes), got shape {shape:?}"),
        )
    })
}

/// Reads a 1-D float array; `what` names it in errors.
pub fn read_vector(path: &Path, what: &str) -> Result<Array1<f32>> {
    let a = read_f32(path)?;
    let shape = a.shape().to_vec();
    a.into_dimensionality().map_err(|_| {
        Error::parse(
            path,
            format!("{what} must be a 1-D array, got shape {shape:?}"),
        )
    })
}

/// Reads 1-D integer labels of any integer dtype (`uint8`, `int32`, `int64`, ...).
pub fn read_labels(path: &Path) -> Result<Array1<i64>> {
    let npy = open(path)?;
    let shape = shape_of(&npy);
    if shape.len() != 1 {
        return Err(Error::parse(
            path,
            format!("labels must be a 1-D integer array, got shape {shape:?}"),
        ));
    }
    Ok(integers(path, npy)?
        .into_dimensionality()
        .expect("checked 1-D above"))
}

/// Reads integer labels of any shape and any integer dtype: per-position labels
/// `(N, d1, ..., dk)` of a cross-entropy over extra dimensions, or a 0-d label.
pub fn read_labels_nd(path: &Path) -> Result<ArrayD<i64>> {
    integers(path, open(path)?)
}

/// The elements of an integer array of any dtype, as `i64`.
fn integers(path: &Path, npy: NpyFile<BufReader<File>>) -> Result<ArrayD<i64>> {
    let too_big = |v: u64| {
        i64::try_from(v).map_err(|_| Error::parse(path, format!("label {v} does not fit int64")))
    };
    match plain(path, &npy)? {
        (TypeChar::Int, 1) => elements(path, npy, |v: i8| Ok(v as i64)),
        (TypeChar::Int, 2) => elements(path, npy, |v: i16| Ok(v as i64)),
        (TypeChar::Int, 4) => elements(path, npy, |v: i32| Ok(v as i64)),
        (TypeChar::Int, 8) => elements(path, npy, |v: i64| Ok(v)),
        (TypeChar::Uint, 1) => elements(path, npy, |v: u8| Ok(v as i64)),
        (TypeChar::Uint, 2) => elements(path, npy, |v: u16| Ok(v as i64)),
        (TypeChar::Uint, 4) => elements(path, npy, |v: u32| Ok(v as i64)),
        (TypeChar::Uint, 8) => elements(path, npy, |v: u64| too_big(v)),
        (kind, size) => Err(Error::parse(
            path,
            format!("labels must have an integer dtype, got {kind:?}{size}"),
        )),
    }
}

/// Writes a float32 array of any shape (a 0-d array for a scalar).
pub fn write_f32(path: &Path, a: ArrayViewD<f32>) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let shape: Vec<u64> = a.shape().iter().map(|&d| d as u64).collect();
    let io = |e: std::io::Error| Error::io(path, e);
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(io)?;
    // `iter` walks logical (C) order whatever the view's memory layout.
    writer.extend(a.iter().copied()).map_err(io)?;
    writer.finish().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn round_trips_shapes_including_scalars() {
        let dir = std::env::temp_dir().join(format!("softmax-ce-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let path = dir.join("m.npy");
        write_f32(&path, m.view().into_dyn()).unwrap();
        assert_eq!(read_matrix(&path, "m").unwrap(), m);
        // A transposed view is written in logical order.
        write_f32(&path, m.t().into_dyn()).unwrap();
        assert_eq!(read_matrix(&path, "m").unwrap(), m.t());
        let scalar = ArrayD::from_elem(IxDyn(&[]), 2.5f32);
        write_f32(&path, scalar.view()).unwrap();
        assert_eq!(read_f32(&path).unwrap(), scalar);
        let err = read_vector(&path, "weights").unwrap_err().to_string();
        assert!(err.contains("weights must be a 1-D array"), "{err}");
        assert!(read_labels(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = read_f32(Path::new("/nonexistent/x.npy"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.npy"), "{err}");
    }
}
