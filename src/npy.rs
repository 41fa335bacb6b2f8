//! Reading and writing numpy `.npy` files, so that any numpy or PyTorch user can feed the ops
//! and check their results.
//!
//! Floats are read from `float32` or `float64` (converted) by [`read_f32`] and its 1-D and 2-D
//! forms; [`read_array`] and [`read_matrix_any`] also read `float16`, which they keep as
//! [`struct@f16`] ([`NpyArray`], [`Matrix`]) so that a half-precision input can give a
//! half-precision result, as in PyTorch. Labels are read from any integer dtype. Both byte orders and both
//! memory orders (`C` and `fortran_order`) are accepted. Everything written is little-endian
//! `float32` ([`write_f32`]) or `float16` ([`write_f16`]) in C order.
//!
//! # Reading untrusted files
//!
//! The reader is written for files from anywhere: the header is bounded before anything is
//! allocated ([`MAX_HEADER_LEN`], numpy's own default), the size the shape promises is computed
//! with checked arithmetic and compared with the file's length before the payload is read, and
//! the payload goes into one buffer of exactly the promised size. Every error is one line that
//! names the file and quotes at most a few dozen bytes of it.
//!
//! # Writing
//!
//! [`write_f32`], [`write_f16`] and [`PendingFile`] never leave a half-written file where an old
//! one was: the data goes to a temporary file beside the target, is flushed to disk, and is
//! renamed over the target only once complete.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use half::f16;
use ndarray::{Array1, Array2, ArrayD, ArrayViewD, IxDyn, ShapeBuilder};
use npyz::WriterBuilder;

use crate::data::fill;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// The longest header the reader accepts, in bytes: numpy's own default
/// (`numpy.lib.format`'s `max_header_size`, 10,000 since numpy 1.24), which `np.load` enforces
/// unless told to trust the file. A plain dtype with numpy's maximum of 64 dimensions needs
/// under 1,500 bytes.
pub const MAX_HEADER_LEN: usize = 10_000;

/// numpy's limit on the number of dimensions (`NPY_MAXDIMS` of numpy 2).
const MAX_DIMS: usize = 64;

/// How many bytes of a malformed header an error quotes.
const QUOTE_LEN: usize = 40;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The element type of a plain (non-structured) array, from the header's `descr`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Dtype {
    /// numpy's kind character: `f`, `i`, `u`, `b`, `c`, `S`, `U`, `M`, ...
    kind: char,
    /// Bytes per element.
    size: usize,
    big_endian: bool,
    /// The `descr` string as written, for errors about kinds we do not name.
    descr: String,
}

impl Dtype {
    /// numpy's name for the dtype (`float16`, `int64`, `uint8`, `bool`); the `descr` string for
    /// kinds we never read (strings, dates, objects).
    fn name(&self) -> String {
        let bits = self.size * 8;
        match self.kind {
            'f' => format!("float{bits}"),
            'i' => format!("int{bits}"),
            'u' => format!("uint{bits}"),
            'c' => format!("complex{bits}"),
            'b' if self.size == 1 => "bool".to_string(),
            _ => format!("{:?}", self.descr),
        }
    }
}

/// A parsed header: what the payload holds and where it starts.
#[derive(Debug)]
struct Header {
    dtype: Dtype,
    fortran: bool,
    shape: Vec<usize>,
    /// Number of elements (the checked product of the shape).
    len: usize,
    /// Payload bytes the header promises (`len * dtype.size`, checked).
    bytes: u64,
}

/// An open file positioned at its payload.
struct Source {
    header: Header,
    reader: BufReader<File>,
}

fn malformed(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::parse(path, format!("not a readable .npy file: {message}"))
}

/// At most [`QUOTE_LEN`] bytes of `bytes`, escaped, for an error message that must stay one
/// short line whatever the file holds.
fn quote(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(QUOTE_LEN)];
    let mut s: String = shown.escape_ascii().to_string();
    if bytes.len() > QUOTE_LEN {
        s.push_str("...");
    }
    format!("\"{s}\"")
}

/// Reads and checks the preamble and header; the reader is left at the payload. Returns the
/// header and the number of bytes before the payload.
fn read_header(path: &Path, r: &mut impl Read) -> Result<(Header, u64)> {
    let io = |e| Error::io(path, e);
    let mut pre = [0u8; 8];
    let got = fill(r, &mut pre).map_err(io)?;
    if got < pre.len() || &pre[..6] != MAGIC {
        return Err(malformed(
            path,
            format!(
                "it does not begin with numpy's magic string (it begins {})",
                quote(&pre[..got])
            ),
        ));
    }
    let (major, minor) = (pre[6], pre[7]);
    let len_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => {
            return Err(malformed(
                path,
                format!("format version {major}.{minor} is not 1.0, 2.0 or 3.0"),
            ));
        }
    };
    let mut len = [0u8; 4];
    if fill(r, &mut len[..len_bytes]).map_err(io)? < len_bytes {
        return Err(malformed(path, "the file ends inside the header length"));
    }
    let header_len = u32::from_le_bytes(len);
    // Checked before anything is allocated: a 27-byte file can claim a 4 GiB header.
    let header_len = match usize::try_from(header_len) {
        Ok(n) if n <= MAX_HEADER_LEN => n,
        _ => {
            return Err(malformed(
                path,
                format!(
                    "its header claims {header_len} bytes, more than numpy's limit of \
                     {MAX_HEADER_LEN}"
                ),
            ));
        }
    };
    let mut text = vec![0u8; header_len];
    let got = fill(r, &mut text).map_err(io)?;
    if got < header_len {
        return Err(malformed(
            path,
            format!("the header claims {header_len} bytes, the file ends after {got}"),
        ));
    }
    let header = parse_header(&text).map_err(|m| malformed(path, m))?;
    let offset = (8 + len_bytes + header_len) as u64;
    Ok((header, offset))
}

/// A Python literal as numpy writes them in a header (`ast.literal_eval`'s subset we need).
#[derive(Debug)]
enum Lit {
    Str(String),
    /// Python integers are unbounded; those past `u64` (or negative) are `None`.
    Int(Option<u64>),
    Bool(bool),
    /// `None`.
    Nothing,
    Tuple(Vec<Lit>),
    /// A list: a structured dtype's `descr`, refused whatever it holds.
    List,
    Dict(Vec<(Lit, Lit)>),
}

/// Nesting deeper than this is refused: a header of 10,000 `(` must not exhaust the stack.
const MAX_DEPTH: usize = 16;

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self
            .s
            .get(self.at)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'))
        {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn err(&self, what: &str) -> String {
        format!(
            "{what} at byte {} of the header {}",
            self.at,
            quote(&self.s[self.at.min(self.s.len())..])
        )
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Lit, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.ws();
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => self.string(q),
            Some(b'(') => self.seq(b')', depth).map(Lit::Tuple),
            Some(b'[') => self.seq(b']', depth).map(|_| Lit::List),
            Some(b'{') => self.dict(depth),
            Some(b'0'..=b'9' | b'-' | b'+') => self.int(),
            Some(b'A'..=b'Z' | b'a'..=b'z') => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                    self.at += 1;
                }
                match &self.s[start..self.at] {
                    b"True" => Ok(Lit::Bool(true)),
                    b"False" => Ok(Lit::Bool(false)),
                    b"None" => Ok(Lit::Nothing),
                    _ => {
                        self.at = start;
                        Err(self.err("unexpected name"))
                    }
                }
            }
            Some(_) => Err(self.err("unexpected character")),
            None => Err(self.err("unexpected end")),
        }
    }

    fn string(&mut self, q: u8) -> std::result::Result<Lit, String> {
        let start = self.at;
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => {
                    self.at = start;
                    return Err(self.err("unterminated string"));
                }
                Some(c) if c == q => {
                    self.at += 1;
                    return Ok(Lit::Str(String::from_utf8_lossy(&out).into_owned()));
                }
                Some(b'\\') => {
                    // dtype strings hold no escapes; keep the escaped byte as it is.
                    self.at += 1;
                    if let Some(c) = self.peek() {
                        out.push(c);
                        self.at += 1;
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
    }

    fn int(&mut self) -> std::result::Result<Lit, String> {
        let negative = match self.peek() {
            Some(b'-') => {
                self.at += 1;
                true
            }
            Some(b'+') => {
                self.at += 1;
                false
            }
            _ => false,
        };
        let start = self.at;
        let mut v: Option<u64> = Some(0);
        while let Some(c @ b'0'..=b'9') = self.peek() {
            v = v
                .and_then(|v| v.checked_mul(10))
                .and_then(|v| v.checked_add(u64::from(c - b'0')));
            self.at += 1;
        }
        if self.at == start {
            return Err(self.err("expected digits"));
        }
        // Python 2's numpy wrote long integers as `3L`.
        if self.peek() == Some(b'L') {
            self.at += 1;
        }
        Ok(Lit::Int(if negative && v != Some(0) { None } else { v }))
    }

    /// Items separated by commas (a trailing comma allowed) up to `close`.
    fn seq(&mut self, close: u8, depth: usize) -> std::result::Result<Vec<Lit>, String> {
        self.at += 1;
        let mut items = Vec::new();
        loop {
            self.ws();
            if self.peek() == Some(close) {
                self.at += 1;
                return Ok(items);
            }
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(c) if c == close => {}
                _ => return Err(self.err("expected a comma")),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> std::result::Result<Lit, String> {
        self.at += 1;
        let mut items = Vec::new();
        loop {
            self.ws();
            if self.peek() == Some(b'}') {
                self.at += 1;
                return Ok(Lit::Dict(items));
            }
            let key = self.value(depth + 1)?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected a colon"));
            }
            self.at += 1;
            let value = self.value(depth + 1)?;
            items.push((key, value));
            self.ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {}
                _ => return Err(self.err("expected a comma")),
            }
        }
    }
}

/// Parses numpy's `descr` for a plain dtype: a byte order (`<`, `>`, `|`, `=`), a kind
/// character and a size in bytes (`<f4`, `|u1`, `>i8`).
fn parse_descr(descr: &str) -> std::result::Result<Dtype, String> {
    let unsupported = || format!("dtype {descr:?} is not a plain numeric dtype");
    let mut chars = descr.chars();
    let (order, rest) = match chars.next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, chars.as_str()),
        _ => ('=', descr),
    };
    let mut chars = rest.chars();
    let kind = chars.next().ok_or_else(unsupported)?;
    let digits = chars.as_str();
    let size = match digits.parse::<usize>() {
        Ok(n) if n > 0 && n <= 64 && digits.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err(unsupported()),
    };
    let big_endian = match order {
        '>' => true,
        '<' => false,
        _ => cfg!(target_endian = "big"),
    };
    Ok(Dtype {
        kind,
        size,
        big_endian,
        descr: descr.to_string(),
    })
}

/// Parses a header's text: numpy's dictionary with exactly the keys `descr`, `fortran_order`
/// and `shape`. The message of an error quotes at most [`QUOTE_LEN`] bytes of it.
fn parse_header(text: &[u8]) -> std::result::Result<Header, String> {
    let mut p = Parser { s: text, at: 0 };
    let lit = p.value(0)?;
    p.ws();
    // numpy pads with spaces; a NUL here and there is seen in files written by other tools.
    while p.peek() == Some(0) {
        p.at += 1;
        p.ws();
    }
    if p.at < text.len() {
        return Err(p.err("unexpected text after the header's dictionary"));
    }
    let Lit::Dict(items) = lit else {
        return Err(format!("the header {} is not a dictionary", quote(text)));
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in items {
        let Lit::Str(key) = key else {
            return Err(format!(
                "the header {} has a key that is not a string",
                quote(text)
            ));
        };
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            _ => {
                return Err(format!(
                    "the header has the unexpected key {}",
                    quote(key.as_bytes())
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("the header repeats the key {key:?}"));
        }
    }
    let missing = |k: &str| format!("the header has no {k:?} key");
    let dtype = match descr.ok_or_else(|| missing("descr"))? {
        Lit::Str(s) => parse_descr(&s)?,
        Lit::List => return Err("structured dtypes are not supported".to_string()),
        _ => return Err("the header's descr is not a string".to_string()),
    };
    let fortran = match fortran.ok_or_else(|| missing("fortran_order"))? {
        Lit::Bool(b) => b,
        _ => return Err("the header's fortran_order is not True or False".to_string()),
    };
    let Lit::Tuple(dims) = shape.ok_or_else(|| missing("shape"))? else {
        return Err("the header's shape is not a tuple".to_string());
    };
    if dims.len() > MAX_DIMS {
        return Err(format!(
            "the shape has {} dimensions, more than numpy's {MAX_DIMS}",
            dims.len()
        ));
    }
    let shape = dims
        .iter()
        .map(|d| match d {
            Lit::Int(Some(v)) => usize::try_from(*v)
                .ok()
                .filter(|&v| isize::try_from(v).is_ok()),
            _ => None,
        })
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| "the header's shape is not a tuple of sizes".to_string())?;
    let (len, bytes) = checked_size(&shape, dtype.size)
        .ok_or_else(|| format!("shape {shape:?} is too large for this machine's addresses"))?;
    Ok(Header {
        dtype,
        fortran,
        shape,
        len,
        bytes,
    })
}

/// The number of elements of `shape` and its payload in bytes, or `None` when either
/// overflows what an ndarray can index (`isize::MAX`, which ndarray also requires of the
/// product of the non-zero dimensions).
fn checked_size(shape: &[usize], item: usize) -> Option<(usize, u64)> {
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    isize::try_from(nonzero.checked_mul(item)?).ok()?;
    let len = shape.iter().product::<usize>();
    Some((len, u64::try_from(len.checked_mul(item)?).ok()?))
}

fn open(path: &Path) -> Result<Source> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::io(
            path,
            io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
        ));
    }
    let mut reader = BufReader::new(file);
    let (header, offset) = read_header(path, &mut reader)?;
    // A regular file's length bounds the payload before anything is allocated; a pipe's
    // payload is bounded by the memory check in `payload` and by its own end.
    if meta.is_file() {
        let available = meta.len().saturating_sub(offset);
        if available < header.bytes {
            return Err(Error::parse(
                path,
                format!(
                    "shape {:?} of {} needs {} data bytes, the file has {available}",
                    header.shape,
                    header.dtype.name(),
                    header.bytes
                ),
            ));
        }
    }
    Ok(Source { header, reader })
}

/// Where storage index `k` lies in the array, in words: "row r, column c" for a matrix.
fn position(header: &Header, k: usize) -> String {
    let shape = &header.shape;
    let mut index = vec![0; shape.len()];
    let mut rest = k;
    // Storage order: the last axis fastest in C order, the first in Fortran order.
    let axes: Vec<usize> = if header.fortran {
        (0..shape.len()).collect()
    } else {
        (0..shape.len()).rev().collect()
    };
    for axis in axes {
        let d = shape[axis].max(1);
        index[axis] = rest % d;
        rest /= d;
    }
    match index.as_slice() {
        [i] => format!("index {i}"),
        [r, c] => format!("row {r}, column {c}"),
        _ => format!("index {index:?}"),
    }
}

/// An empty buffer with room for exactly the header's elements of `U`, once they are known to
/// fit this machine's memory.
fn reserve<U>(path: &Path, header: &Header) -> Result<Vec<U>> {
    let out_bytes = (header.len as u64).saturating_mul(std::mem::size_of::<U>() as u64);
    if let Some(memory) = crate::data::physical_memory()
        && out_bytes > memory
    {
        return Err(Error::parse(
            path,
            format!(
                "shape {:?} needs {out_bytes} bytes of memory, more than this machine's \
                 {memory}",
                header.shape
            ),
        ));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(header.len).map_err(|_| {
        Error::parse(
            path,
            format!(
                "cannot allocate {out_bytes} bytes for shape {:?}",
                header.shape
            ),
        )
    })?;
    Ok(out)
}

fn short_data(path: &Path, header: &Header, got: u64) -> Error {
    Error::parse(
        path,
        format!(
            "the data ends after {got} of the {} bytes that shape {:?} needs",
            header.bytes, header.shape
        ),
    )
}

/// Reads the payload, converting each element with `f` (given its bytes, in the file's byte
/// order, and its storage index), into one buffer of exactly the promised size: the input is
/// never held twice, nor grown by doubling.
fn payload<U>(
    path: &Path,
    header: &Header,
    reader: &mut impl Read,
    mut f: impl FnMut(&[u8], usize) -> Result<U>,
) -> Result<Vec<U>> {
    let (len, item) = (header.len, header.dtype.size);
    let mut out = reserve(path, header)?;
    // Whole elements per chunk, so that no element straddles two reads.
    let mut buf = vec![0u8; (64 * 1024 / item).max(1) * item];
    let mut done = 0usize;
    while done < len {
        let want = ((len - done) * item).min(buf.len());
        let got = fill(reader, &mut buf[..want]).map_err(|e| Error::io(path, e))?;
        if got < want {
            return Err(short_data(
                path,
                header,
                done as u64 * item as u64 + got as u64,
            ));
        }
        for (i, bytes) in buf[..want].chunks_exact(item).enumerate() {
            out.push(f(bytes, done + i)?);
        }
        done += want / item;
    }
    Ok(out)
}

/// [`payload`] for floats in the machine's own byte order, the common case: read straight into
/// the result, with no per-element work. `U` must be the header's dtype.
fn payload_native<U: bytemuck::Pod>(
    path: &Path,
    header: &Header,
    reader: &mut impl Read,
) -> Result<Vec<U>> {
    debug_assert_eq!(std::mem::size_of::<U>(), header.dtype.size);
    let mut out = reserve(path, header)?;
    out.resize(header.len, U::zeroed());
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
    let got = fill(reader, bytes).map_err(|e| Error::io(path, e))?;
    if got < bytes.len() {
        return Err(short_data(path, header, got as u64));
    }
    Ok(out)
}

/// `N` bytes of one element in native order.
fn native<const N: usize>(bytes: &[u8], big_endian: bool) -> [u8; N] {
    let mut b = [0u8; N];
    b.copy_from_slice(bytes);
    if big_endian != cfg!(target_endian = "big") {
        b.reverse();
    }
    b
}

fn into_array<U>(path: &Path, header: &Header, data: Vec<U>) -> Result<ArrayD<U>> {
    let dim = IxDyn(&header.shape);
    let array = if header.fortran {
        ArrayD::from_shape_vec(dim.f(), data)
    } else {
        ArrayD::from_shape_vec(dim, data)
    };
    array.map_err(|e| {
        Error::parse(
            path,
            format!("data does not fill shape {:?}: {e}", header.shape),
        )
    })
}

/// Reads a float array of any shape; `float64` is converted to `float32`.
///
/// `float16` is refused rather than widened: it is read, and kept, by [`read_array`].
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Parse`] when it is not a `.npy` file,
/// its dtype is not `float32` or `float64`, its data is shorter than its shape, or a finite
/// `float64` value is too large for `float32` (it would silently become infinite; infinities
/// and NaN in the file are kept as they are).
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    f32s(path, open(path)?, "float32 or float64")
}

/// A float array as its `.npy` file stores it: `float16` as [`struct@f16`], `float32` as `f32`, and
/// `float64` converted to `f32` as [`read_f32`] converts it (no op of the crate stores `f64`).
#[derive(Clone, Debug, PartialEq)]
pub enum NpyArray {
    /// A `float32` (or converted `float64`) file.
    F32(ArrayD<f32>),
    /// A `float16` file.
    F16(ArrayD<f16>),
}

impl NpyArray {
    /// The element type: [`DType::F16`] for a `float16` file, else [`DType::F32`].
    pub fn dtype(&self) -> DType {
        match self {
            NpyArray::F32(_) => DType::F32,
            NpyArray::F16(_) => DType::F16,
        }
    }

    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::F32(a) => a.shape(),
            NpyArray::F16(a) => a.shape(),
        }
    }

    /// As `f32`, widening an `f16` array exactly (every `f16` is an `f32`).
    pub fn into_f32(self) -> ArrayD<f32> {
        match self {
            NpyArray::F32(a) => a,
            NpyArray::F16(a) => a.mapv(f16::to_f32),
        }
    }
}

/// A 2-D float array (rows x classes) as its `.npy` file stores it; see [`NpyArray`].
#[derive(Clone, Debug, PartialEq)]
pub enum Matrix {
    /// A `float32` (or converted `float64`) file.
    F32(Array2<f32>),
    /// A `float16` file.
    F16(Array2<f16>),
}

impl Matrix {
    /// The element type: [`DType::F16`] for a `float16` file, else [`DType::F32`].
    pub fn dtype(&self) -> DType {
        match self {
            Matrix::F32(_) => DType::F32,
            Matrix::F16(_) => DType::F16,
        }
    }

    /// `(rows, columns)`.
    pub fn dim(&self) -> (usize, usize) {
        match self {
            Matrix::F32(a) => a.dim(),
            Matrix::F16(a) => a.dim(),
        }
    }

    /// As `f32`, widening an `f16` matrix exactly (every `f16` is an `f32`).
    pub fn into_f32(self) -> Array2<f32> {
        match self {
            Matrix::F32(a) => a,
            Matrix::F16(a) => a.mapv(f16::to_f32),
        }
    }
}

/// Reads a float array of any shape, keeping `float16` as [`struct@f16`]: [`NpyArray::F16`] for a
/// `float16` file, [`NpyArray::F32`] for `float32` and for `float64` (converted as [`read_f32`]
/// converts it).
///
/// # Errors
/// Those of [`read_f32`], with `float16` among the dtypes accepted.
pub fn read_array(path: &Path) -> Result<NpyArray> {
    let mut src = open(path)?;
    let dtype = src.header.dtype.clone();
    if (dtype.kind, dtype.size) != ('f', 2) {
        return f32s(path, src, "float16, float32 or float64").map(NpyArray::F32);
    }
    let be = dtype.big_endian;
    let (header, reader) = (&src.header, &mut src.reader);
    let data = if be == cfg!(target_endian = "big") {
        payload_native(path, header, reader)?
    } else {
        payload(path, header, reader, |b, _| {
            Ok(f16::from_bits(u16::from_ne_bytes(native(b, be))))
        })?
    };
    into_array(path, header, data).map(NpyArray::F16)
}

/// Reads a 2-D float array, keeping `float16` as [`struct@f16`] (see [`read_array`]); `what`
/// names it in errors ("logits", "targets").
///
/// # Errors
/// Those of [`read_array`], and [`Error::Parse`] when the array is not 2-D.
pub fn read_matrix_any(path: &Path, what: &str) -> Result<Matrix> {
    Ok(match read_array(path)? {
        NpyArray::F32(a) => Matrix::F32(into_matrix(path, what, a)?),
        NpyArray::F16(a) => Matrix::F16(into_matrix(path, what, a)?),
    })
}

/// The elements of a `float32` or `float64` file as `f32`; for any other dtype an error that
/// says the dtype found and `expected`, the dtypes the caller reads.
fn f32s(path: &Path, mut src: Source, expected: &str) -> Result<ArrayD<f32>> {
    let dtype = src.header.dtype.clone();
    let be = dtype.big_endian;
    let (header, reader) = (&src.header, &mut src.reader);
    let data = match (dtype.kind, dtype.size) {
        ('f', 4) if be == cfg!(target_endian = "big") => payload_native(path, header, reader)?,
        ('f', 4) => payload(path, header, reader, |b, _| {
            Ok(f32::from_ne_bytes(native(b, be)))
        })?,
        ('f', 8) => payload(path, header, reader, |b, k| {
            let v = f64::from_ne_bytes(native(b, be));
            let r = v as f32;
            // Only finite values that round to an infinity: -inf masks stay legal.
            if v.is_finite() && r.is_infinite() {
                Err(Error::parse(
                    path,
                    format!(
                        "float64 value {v:e} at {} is too large for float32 (at most {:e})",
                        position(header, k),
                        f32::MAX
                    ),
                ))
            } else {
                Ok(r)
            }
        })?,
        _ => {
            return Err(Error::parse(
                path,
                format!("dtype {} is not {expected}", dtype.name()),
            ));
        }
    };
    into_array(path, header, data)
}

/// Reads a 2-D float array; `what` names it in errors ("logits", "targets").
///
/// # Errors
/// Those of [`read_f32`], and [`Error::Parse`] when the array is not 2-D.
pub fn read_matrix(path: &Path, what: &str) -> Result<Array2<f32>> {
    into_matrix(path, what, read_f32(path)?)
}

/// `a` as a matrix, or an error naming `what` and the shape found.
fn into_matrix<U>(path: &Path, what: &str, a: ArrayD<U>) -> Result<Array2<U>> {
    let shape = a.shape().to_vec();
    a.into_dimensionality().map_err(|_| {
        Error::parse(
            path,
            format!("{what} must be a 2-D array (rows x classes), got shape {shape:?}"),
        )
    })
}

/// Reads a 1-D float array; `what` names it in errors.
///
/// # Errors
/// Those of [`read_f32`], and [`Error::Parse`] when the array is not 1-D.
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
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Parse`] when it is not a 1-D `.npy`
/// array of an integer dtype, its data is short, or a `uint64` label does not fit `int64`.
pub fn read_labels(path: &Path) -> Result<Array1<i64>> {
    let src = open(path)?;
    if src.header.shape.len() != 1 {
        return Err(Error::parse(
            path,
            format!(
                "labels must be a 1-D integer array, got shape {:?}",
                src.header.shape
            ),
        ));
    }
    // Checked 1-D above, so this cannot fail.
    integers(path, src)?
        .into_dimensionality()
        .map_err(|e| Error::parse(path, e.to_string()))
}

/// Reads integer labels of any shape and any integer dtype: per-position labels
/// `(N, d1, ..., dk)` of a cross-entropy over extra dimensions, or a 0-d label.
///
/// # Errors
/// As [`read_labels`], without its 1-D requirement.
pub fn read_labels_nd(path: &Path) -> Result<ArrayD<i64>> {
    integers(path, open(path)?)
}

/// The elements of an integer array of any dtype, as `i64`, in the file's shape and order.
fn integers(path: &Path, mut src: Source) -> Result<ArrayD<i64>> {
    let dtype = src.header.dtype.clone();
    let be = dtype.big_endian;
    let (header, reader) = (&src.header, &mut src.reader);
    let data = match (dtype.kind, dtype.size) {
        ('i', 1) => payload(path, header, reader, |b, _| Ok(i64::from(b[0] as i8)))?,
        ('i', 2) => payload(path, header, reader, |b, _| {
            Ok(i64::from(i16::from_ne_bytes(native(b, be))))
        })?,
        ('i', 4) => payload(path, header, reader, |b, _| {
            Ok(i64::from(i32::from_ne_bytes(native(b, be))))
        })?,
        ('i', 8) => payload(path, header, reader, |b, _| {
            Ok(i64::from_ne_bytes(native(b, be)))
        })?,
        ('u', 1) => payload(path, header, reader, |b, _| Ok(i64::from(b[0])))?,
        ('u', 2) => payload(path, header, reader, |b, _| {
            Ok(i64::from(u16::from_ne_bytes(native(b, be))))
        })?,
        ('u', 4) => payload(path, header, reader, |b, _| {
            Ok(i64::from(u32::from_ne_bytes(native(b, be))))
        })?,
        ('u', 8) => payload(path, header, reader, |b, k| {
            let v = u64::from_ne_bytes(native(b, be));
            i64::try_from(v).map_err(|_| {
                Error::parse(
                    path,
                    format!("label {v} at {} does not fit int64", position(header, k)),
                )
            })
        })?,
        _ => {
            return Err(Error::parse(
                path,
                format!("labels must have an integer dtype, got {}", dtype.name()),
            ));
        }
    };
    into_array(path, &src.header, data)
}

/// Writes `a` as a little-endian `float32` `.npy` file (a 0-d array for a scalar) to `w`.
///
/// # Errors
/// The writer's errors.
pub fn write_f32_to<W: Write>(w: W, a: ArrayViewD<f32>) -> io::Result<()> {
    write_to(w, a)
}

/// Writes `a` as a little-endian `float16` `.npy` file (`'<f2'`, a 0-d array for a scalar) to
/// `w`, every bit pattern as it is (NaN payloads, `-0`, subnormals).
///
/// # Errors
/// The writer's errors.
pub fn write_f16_to<W: Write>(w: W, a: ArrayViewD<f16>) -> io::Result<()> {
    write_to(w, a)
}

/// `a` as a `.npy` file of npyz's default dtype for `U`: little-endian, C order.
fn write_to<W: Write, U: npyz::AutoSerialize + Copy>(w: W, a: ArrayViewD<U>) -> io::Result<()> {
    let shape: Vec<u64> = a.shape().iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(w)
        .begin_nd()?;
    // `iter` walks logical (C) order whatever the view's memory layout.
    writer.extend(a.iter().copied())?;
    writer.finish()
}

/// Writes a float32 array of any shape (a 0-d array for a scalar), atomically: a failure
/// leaves any existing file at `path` as it was (see [`PendingFile`]).
///
/// # Errors
/// [`Error::Io`] when the file cannot be created, written or moved into place.
pub fn write_f32(path: &Path, a: ArrayViewD<f32>) -> Result<()> {
    let mut file = PendingFile::new(path)?;
    file.write_f32(a)?;
    file.commit()
}

/// Writes a float16 array of any shape (a 0-d array for a scalar), atomically: a failure
/// leaves any existing file at `path` as it was (see [`PendingFile`]).
///
/// # Errors
/// [`Error::Io`] when the file cannot be created, written or moved into place.
pub fn write_f16(path: &Path, a: ArrayViewD<f16>) -> Result<()> {
    let mut file = PendingFile::new(path)?;
    file.write_f16(a)?;
    file.commit()
}

/// Distinguishes the temporary files of one process.
static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One output file, written beside its target and moved over it only when complete.
///
/// [`PendingFile::new`] creates a temporary file in the target's directory (so a missing or
/// unwritable directory fails at once, before any work); [`PendingFile::write_with`] writes it
/// and flushes it to disk; [`PendingFile::commit`] renames it over the target, which is atomic
/// on POSIX file systems. A `PendingFile` dropped before its commit removes the temporary
/// file, and the target is never touched. Several files can be committed together only after
/// all were written, which is how the CLI keeps a failing command from replacing any output.
///
/// A target that exists and is not a regular file (a device such as `/dev/null`, or a named
/// pipe) is written directly when written: it holds no old contents to keep, and it must not
/// be replaced by a rename. A target that is a symbolic link to a file replaces the file it
/// points at, as writing through the link would; a dangling link is itself replaced by the
/// new file (its target is not created).
#[derive(Debug)]
pub struct PendingFile {
    /// The path as given, for messages.
    shown: PathBuf,
    state: State,
}

#[derive(Debug)]
enum State {
    /// A temporary file beside `target`.
    Temp {
        target: PathBuf,
        temp: PathBuf,
        file: File,
        written: bool,
    },
    /// A device or pipe, written in place.
    Direct { target: PathBuf, written: bool },
    /// Committed, or failed and cleaned up.
    Done,
}

impl PendingFile {
    /// Prepares to write `path`: checks it is not a directory, and creates the temporary file
    /// beside it.
    ///
    /// # Errors
    /// [`Error::Io`] when `path` is a directory or its directory is missing or not writable.
    pub fn new(path: &Path) -> Result<Self> {
        let shown = path.to_path_buf();
        let io = |e| Error::io(path, e);
        let target = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(io(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "is a directory",
                )));
            }
            Ok(m) if !m.is_file() => {
                return Ok(PendingFile {
                    shown,
                    state: State::Direct {
                        target: path.to_path_buf(),
                        written: false,
                    },
                });
            }
            // Through any symbolic link to the real file, which the rename must replace.
            Ok(_) => std::fs::canonicalize(path).map_err(io)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
            Err(e) => return Err(io(e)),
        };
        let name = target.file_name().ok_or_else(|| {
            io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "does not name a file",
            ))
        })?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut attempts = 0;
        let (temp, file) = loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{}-{n}.tmp", std::process::id()));
            let temp = dir.join(temp_name);
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => break (temp, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => {
                    attempts += 1;
                }
                Err(e) => {
                    let why = format!("cannot create a file in {}: {e}", dir.display());
                    return Err(io(io::Error::new(e.kind(), why)));
                }
            }
        };
        // The replaced file keeps its permissions, as it would when written in place.
        if let Ok(m) = std::fs::metadata(&target) {
            let _ = file.set_permissions(m.permissions());
        }
        Ok(PendingFile {
            shown,
            state: State::Temp {
                target,
                temp,
                file,
                written: false,
            },
        })
    }

    /// The path as given to [`PendingFile::new`].
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// Writes the file's whole contents with `f` (replacing anything written before) and, for
    /// a regular file, flushes them to disk.
    ///
    /// # Errors
    /// [`Error::Io`] for any failed write; the temporary file is then removed and the target
    /// is left as it was.
    pub fn write_with(&mut self, f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
        let result = match &mut self.state {
            State::Temp { file, written, .. } => (|| {
                file.set_len(0)?;
                file.rewind()?;
                let mut w = BufWriter::new(&*file);
                f(&mut w)?;
                w.flush()?;
                drop(w);
                file.sync_all()?;
                *written = true;
                Ok(())
            })(),
            State::Direct { target, written } => (|| {
                let file = OpenOptions::new().write(true).open(&*target)?;
                let mut w = BufWriter::new(file);
                f(&mut w)?;
                w.flush()?;
                *written = true;
                Ok(())
            })(),
            State::Done => Err(io::Error::other("the file was already committed")),
        };
        result.map_err(|e| {
            self.discard();
            Error::io(&self.shown, e)
        })
    }

    /// Whether the file's contents were written (and so it can be committed).
    pub fn is_written(&self) -> bool {
        match &self.state {
            State::Temp { written, .. } | State::Direct { written, .. } => *written,
            State::Done => false,
        }
    }

    /// Writes `a` as a little-endian `float32` `.npy` file ([`write_f32_to`]).
    ///
    /// # Errors
    /// As [`PendingFile::write_with`].
    pub fn write_f32(&mut self, a: ArrayViewD<f32>) -> Result<()> {
        self.write_with(|w| write_f32_to(w, a))
    }

    /// Writes `a` as a little-endian `float16` `.npy` file ([`write_f16_to`]).
    ///
    /// # Errors
    /// As [`PendingFile::write_with`].
    pub fn write_f16(&mut self, a: ArrayViewD<f16>) -> Result<()> {
        self.write_with(|w| write_f16_to(w, a))
    }

    /// Moves the written file over its target (nothing to do for a device or pipe).
    ///
    /// # Errors
    /// [`Error::Io`] when nothing was written or the rename fails; the target is then as it
    /// was.
    pub fn commit(mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Temp {
                target,
                temp,
                file,
                written,
            } => {
                // Closed before the rename (on wasm32 a `File` has no `Drop`, hence no `drop`).
                {
                    let _closed = file;
                }
                let result = if written {
                    std::fs::rename(&temp, &target)
                } else {
                    Err(io::Error::other("nothing was written"))
                };
                match result {
                    Ok(()) => {
                        // The rename itself reaches the disk with the directory; best effort,
                        // since the file is in place whatever this says.
                        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty())
                            && let Ok(d) = File::open(dir)
                        {
                            let _ = d.sync_all();
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&temp);
                        Err(Error::io(&self.shown, e))
                    }
                }
            }
            State::Direct { .. } | State::Done => Ok(()),
        }
    }

    fn discard(&mut self) {
        if let State::Temp { temp, .. } = std::mem::replace(&mut self.state, State::Done) {
            let _ = std::fs::remove_file(temp);
        }
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("softmax-ce-npy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A version-1 file with `header` as its dictionary text, then `data`.
    fn npy_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn round_trips_shapes_including_scalars() {
        let dir = scratch("round_trip");
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
        // Only the written file is left: no temporaries.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = read_f32(Path::new("/nonexistent/x.npy"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.npy"), "{err}");
    }

    #[test]
    fn headers_parse_as_numpy_writes_them() {
        let h =
            parse_header(b"{'descr': '<f8', 'fortran_order': True, 'shape': (3, 4), }          \n")
                .unwrap();
        assert_eq!((h.dtype.kind, h.dtype.size, h.fortran), ('f', 8, true));
        assert_eq!((h.shape, h.len, h.bytes), (vec![3, 4], 12, 96));
        let h = parse_header(b"{\"shape\": (5L,), \"descr\": \"|u1\", \"fortran_order\": False}")
            .unwrap();
        assert_eq!((h.shape, h.dtype.name()), (vec![5], "uint8".to_string()));
        let h = parse_header(b"{'descr': '>i8', 'fortran_order': False, 'shape': ()}").unwrap();
        assert!(h.dtype.big_endian);
        assert_eq!((h.shape.len(), h.len), (0, 1));
    }

    #[test]
    fn malformed_headers_are_short_one_line_errors() {
        let long = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': '{}'}}",
            "y".repeat(5000)
        );
        let bad: &[&[u8]] = &[
            b"",
            b"{",
            b"[1, 2]",
            b"{'descr': '<f4'}",
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (2,)}",
            b"{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
            b"{'descr': '<f4', 'fortran_order': False, 'shape': [2]}",
            b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}",
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} trailing",
            long.as_bytes(),
        ];
        for text in bad {
            let err = parse_header(text).unwrap_err();
            assert!(!err.contains('\n') && err.len() < 200, "{err}");
        }
        // Deep nesting is refused, not recursed into.
        let deep = format!("{}{}", "(".repeat(5000), ")".repeat(5000));
        assert!(
            parse_header(deep.as_bytes())
                .unwrap_err()
                .contains("nesting")
        );
    }

    #[test]
    fn sizes_are_checked_arithmetic() {
        assert_eq!(checked_size(&[2, 3], 4), Some((6, 24)));
        assert_eq!(checked_size(&[], 8), Some((1, 8)));
        assert_eq!(checked_size(&[0, 5], 4), Some((0, 0)));
        assert_eq!(checked_size(&[1 << 32, 1 << 32], 4), None);
        assert_eq!(checked_size(&[usize::MAX / 2, 2], 1), None);
        // A zero dimension does not hide an overflowing rest, which ndarray would refuse.
        assert_eq!(checked_size(&[0, 1 << 62, 4], 4), None);
    }

    #[test]
    fn an_absurd_header_length_is_refused_before_allocating() {
        let dir = scratch("header_len");
        let path = dir.join("h.npy");
        // 27 bytes that claim a 4 GiB header (format 2.0, header_len 0xFFFFFFF0).
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[2, 0]);
        bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        bytes.resize(27, b' ');
        std::fs::write(&path, &bytes).unwrap();
        let err = read_f32(&path).unwrap_err().to_string();
        assert!(err.contains("4294967280") && err.contains("10000"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_payload_is_checked_against_the_file_length() {
        let dir = scratch("payload");
        let path = dir.join("p.npy");
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }";
        std::fs::write(&path, npy_bytes(header, &[0; 16])).unwrap();
        let err = read_f32(&path).unwrap_err().to_string();
        assert!(
            err.contains("4000000000000 data bytes, the file has 16"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stream_shorter_than_its_shape_is_an_error() {
        // Regular files are checked against their length when opened; a pipe is not.
        let header =
            parse_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,)}").unwrap();
        let path = Path::new("pipe");
        let err = payload_native::<f32>(path, &header, &mut &[0u8; 10][..]).unwrap_err();
        assert!(
            err.to_string().contains("ends after 10 of the 16 bytes"),
            "{err}"
        );
        let err = payload(path, &header, &mut &[0u8; 10][..], |b, _| Ok(b[0])).unwrap_err();
        assert!(
            err.to_string().contains("ends after 10 of the 16 bytes"),
            "{err}"
        );
        let ok = payload_native::<f32>(path, &header, &mut &[0u8; 20][..]).unwrap();
        assert_eq!(ok.len(), 4);
    }

    #[test]
    fn float64_beyond_float32_is_an_error_but_infinities_pass() {
        let dir = scratch("f64");
        let path = dir.join("x.npy");
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";
        let data = |v: [f64; 6]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(
            &path,
            npy_bytes(header, &data([0.0, 1.0, 2.0, 3.0, -1e300, 5.0])),
        )
        .unwrap();
        let err = read_f32(&path).unwrap_err().to_string();
        assert!(
            err.contains("x.npy") && err.contains("row 1, column 1") && err.contains("-1e300"),
            "{err}"
        );
        let inf = f64::INFINITY;
        std::fs::write(
            &path,
            npy_bytes(
                header,
                &data([-inf, inf, f64::NAN, 1e-300, f64::from(f32::MAX), 0.0]),
            ),
        )
        .unwrap();
        let a = read_f32(&path).unwrap();
        assert_eq!(a[[0, 0]], f32::NEG_INFINITY);
        assert_eq!(a[[0, 1]], f32::INFINITY);
        assert!(a[[0, 2]].is_nan());
        assert_eq!((a[[1, 0]], a[[1, 1]]), (0.0, f32::MAX));
        // Fortran order names the logical position.
        let header = "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }";
        std::fs::write(
            &path,
            npy_bytes(header, &data([0.0, 0.0, 0.0, 1e39, 0.0, 0.0])),
        )
        .unwrap();
        let err = read_f32(&path).unwrap_err().to_string();
        assert!(err.contains("row 1, column 1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dtypes_are_named_as_numpy_names_them() {
        let dir = scratch("dtypes");
        let path = dir.join("d.npy");
        for (descr, name) in [
            ("<f2", "float16"),
            ("<i8", "int64"),
            ("|u1", "uint8"),
            ("|b1", "bool"),
        ] {
            let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
            std::fs::write(&path, npy_bytes(&header, &[0; 16])).unwrap();
            let err = read_f32(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("dtype {name} is not")), "{err}");
        }
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        std::fs::write(&path, npy_bytes(header, &[0; 8])).unwrap();
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(err.contains("integer dtype, got float32"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn big_endian_and_short_data() {
        let dir = scratch("be");
        let path = dir.join("b.npy");
        let header = "{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }";
        std::fs::write(&path, npy_bytes(header, &[0, 0, 0, 7, 255, 255, 255, 254])).unwrap();
        assert_eq!(read_labels(&path).unwrap(), array![7i64, -2]);
        std::fs::write(&path, npy_bytes(header, &[0, 0, 0, 7])).unwrap();
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(err.contains("8 data bytes, the file has 4"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn labels_of_any_shape() {
        let dir = scratch("labels_nd");
        let path = dir.join("y.npy");
        let header = "{'descr': '|u1', 'fortran_order': True, 'shape': (2, 3), }";
        std::fs::write(&path, npy_bytes(header, &[0, 1, 2, 3, 4, 5])).unwrap();
        let y = read_labels_nd(&path).unwrap();
        assert_eq!(y, array![[0i64, 2, 4], [1, 3, 5]].into_dyn());
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(err.contains("1-D integer array, got shape [2, 3]"), "{err}");
        let header = "{'descr': '<u8', 'fortran_order': False, 'shape': (), }";
        std::fs::write(&path, npy_bytes(header, &u64::MAX.to_le_bytes())).unwrap();
        let err = read_labels_nd(&path).unwrap_err().to_string();
        assert!(err.contains("does not fit int64"), "{err}");
        std::fs::write(&path, npy_bytes(header, &7u64.to_le_bytes())).unwrap();
        let y = read_labels_nd(&path).unwrap();
        assert_eq!((y.ndim(), y.first()), (0, Some(&7)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Bit patterns of `a`, to compare NaN payloads and signed zeros exactly.
    fn bits(a: &ArrayD<f16>) -> Vec<u16> {
        a.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn float16_round_trips_every_bit_pattern() {
        let dir = scratch("f16_round_trip");
        let path = dir.join("h.npy");
        // All 65536: both zeros, subnormals, normals, both infinities, every NaN payload.
        let all = Array2::from_shape_fn((256, 256), |(i, j)| f16::from_bits((i * 256 + j) as u16));
        write_f16(&path, all.view().into_dyn()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes[..128]);
        assert!(text.contains("'descr': '<f2'"), "{text}");
        let data = &bytes[bytes.len() - 2 * 65536..];
        assert_eq!(
            &data[..6],
            &[0, 0, 1, 0, 2, 0],
            "little-endian bits, C order"
        );
        let NpyArray::F16(got) = read_array(&path).unwrap() else {
            panic!("float16 read as float32");
        };
        assert_eq!(got.shape(), &[256, 256]);
        assert_eq!(bits(&got), (0..=u16::MAX).collect::<Vec<_>>());
        let Matrix::F16(m) = read_matrix_any(&path, "logits").unwrap() else {
            panic!("float16 read as float32");
        };
        assert_eq!(bits(&m.into_dyn()), bits(&got));
        // A transposed view is written in logical order; a scalar as a 0-d array.
        write_f16(&path, all.t().into_dyn()).unwrap();
        let got = read_array(&path).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        let NpyArray::F16(got) = got else {
            unreachable!()
        };
        assert_eq!(bits(&got), bits(&all.t().to_owned().into_dyn()));
        let scalar = ArrayD::from_elem(IxDyn(&[]), f16::from_f32(-0.0));
        let mut file = PendingFile::new(&path).unwrap();
        file.write_f16(scalar.view()).unwrap();
        file.commit().unwrap();
        let got = read_array(&path).unwrap();
        assert_eq!(got.shape(), &[] as &[usize]);
        assert_eq!(
            got.into_f32().first().map(|v| v.to_bits()),
            Some(0x8000_0000)
        );
        // Only the written file is left: no temporaries.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A float16 file byte for byte as `np.save` writes it: version 1.0, the header padded
    /// with spaces and a newline so that the data starts at a multiple of 64 bytes.
    fn numpy_f16(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let order = if fortran { "True" } else { "False" };
        let dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
        let pad = 63 - (10 + dict.len()) % 64;
        let header = format!("{dict}{}\n", " ".repeat(pad));
        assert_eq!((10 + header.len()) % 64, 0);
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn float16_reads_as_numpy_writes_it() {
        let dir = scratch("f16_numpy");
        let path = dir.join("logits.npy");
        // 1, -2.5, 65504 (the largest finite), -inf, 2^-24 (the smallest subnormal), NaN.
        let want: [u16; 6] = [0x3C00, 0xC100, 0x7BFF, 0xFC00, 0x0001, 0x7E00];
        let le: Vec<u8> = want.iter().flat_map(|b| b.to_le_bytes()).collect();
        let bytes = numpy_f16("<f2", false, "(2, 3)", &le);
        assert_eq!(bytes.len(), 128 + 12);
        std::fs::write(&path, &bytes).unwrap();
        let NpyArray::F16(a) = read_array(&path).unwrap() else {
            panic!("float16 read as float32");
        };
        assert_eq!(a.shape(), &[2, 3]);
        assert_eq!(bits(&a), want);
        assert_eq!(a[[0, 1]], f16::from_f32(-2.5));
        assert_eq!(a[[1, 1]].to_f64(), 2f64.powi(-24));
        let m = read_matrix_any(&path, "logits").unwrap();
        assert_eq!((m.dtype(), m.dim()), (DType::F16, (2, 3)));
        let widened = m.into_f32();
        assert_eq!(widened[[0, 2]], 65504.0);
        assert!(widened[[1, 2]].is_nan());

        // Big-endian, and Fortran order (columns first): the same matrix.
        let be: Vec<u8> = [0, 3, 1, 4, 2, 5]
            .iter()
            .flat_map(|&k| want[k].to_be_bytes())
            .collect();
        std::fs::write(&path, numpy_f16(">f2", true, "(2, 3)", &be)).unwrap();
        let NpyArray::F16(b) = read_array(&path).unwrap() else {
            panic!("float16 read as float32");
        };
        assert_eq!(b.shape(), &[2, 3]);
        assert_eq!(b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);

        // The f32 readers refuse float16, naming the file and both dtypes, as for any other
        // dtype they do not read; they never reinterpret the bytes.
        std::fs::write(&path, &bytes).unwrap();
        for err in [
            read_f32(&path).unwrap_err(),
            read_matrix(&path, "logits").unwrap_err(),
        ] {
            let err = err.to_string();
            assert!(
                err.contains("logits.npy")
                    && err.contains("dtype float16 is not float32 or float64"),
                "{err}"
            );
        }
        // Short data, and a 1-D array where a matrix is wanted.
        std::fs::write(&path, numpy_f16("<f2", false, "(2, 3)", &le[..10])).unwrap();
        let err = read_array(&path).unwrap_err().to_string();
        assert!(
            err.contains("float16 needs 12 data bytes, the file has 10"),
            "{err}"
        );
        std::fs::write(&path, numpy_f16("<f2", false, "(6,)", &le)).unwrap();
        let err = read_matrix_any(&path, "logits").unwrap_err().to_string();
        assert!(err.contains("logits must be a 2-D array"), "{err}");
        assert_eq!(read_array(&path).unwrap().shape(), &[6]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_array_keeps_float32_and_converts_float64_as_read_f32_does() {
        let dir = scratch("read_array");
        let path = dir.join("a.npy");
        let m = array![[1.5f32, -2.0], [f32::NEG_INFINITY, 4.0]];
        write_f32(&path, m.view().into_dyn()).unwrap();
        assert_eq!(
            read_array(&path).unwrap(),
            NpyArray::F32(m.clone().into_dyn())
        );
        assert_eq!(read_matrix_any(&path, "m").unwrap(), Matrix::F32(m.clone()));
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
        let data = |v: [f64; 2]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(&path, npy_bytes(header, &data([0.1, -3.0]))).unwrap();
        let a = read_array(&path).unwrap();
        assert_eq!(a.dtype(), DType::F32);
        assert_eq!(a.into_f32(), array![0.1f32, -3.0].into_dyn());
        std::fs::write(&path, npy_bytes(header, &data([1e300, 0.0]))).unwrap();
        let err = read_array(&path).unwrap_err().to_string();
        assert!(err.contains("too large for float32"), "{err}");
        for (descr, name) in [("<i8", "int64"), ("|u1", "uint8"), ("<f16", "float128")] {
            let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}");
            std::fs::write(&path, npy_bytes(&header, &[0; 16])).unwrap();
            let err = read_array(&path).unwrap_err().to_string();
            assert!(
                err.contains("a.npy")
                    && err.contains(&format!("dtype {name} is not float16, float32 or float64")),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = scratch("atomic");
        let path = dir.join("keep.npy");
        std::fs::write(&path, b"old").unwrap();
        let mut f = PendingFile::new(&path).unwrap();
        let err = f
            .write_with(|w| {
                w.write_all(b"new, then")?;
                Err(io::Error::other("a failure part way"))
            })
            .unwrap_err();
        assert!(err.to_string().contains("part way"), "{err}");
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // Dropped uncommitted: the same.
        let mut f = PendingFile::new(&path).unwrap();
        f.write_f32(ArrayD::zeros(IxDyn(&[2])).view()).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let mut f = PendingFile::new(&path).unwrap();
        f.write_f16(ArrayD::from_elem(IxDyn(&[2]), f16::ONE).view())
            .unwrap();
        assert!(f.is_written());
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let err = write_f16(
            &dir.join("no/such/dir.npy"),
            ArrayD::zeros(IxDyn(&[1])).view(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no/such/dir.npy"), "{err}");
        // A missing directory fails when the file is prepared, not after the work.
        let err = PendingFile::new(&dir.join("no/such/dir.npy")).unwrap_err();
        assert!(err.to_string().contains("no/such/dir.npy"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
