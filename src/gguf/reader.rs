//! The GGUF container: a memory-mapped file parsed and validated up front.
//!
//! Layout (version 2 and 3, little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! metadata count; the metadata key/values; the tensor infos (name, n_dims, dims with the fastest
//! first, u32 ggml type, u64 offset); padding to `general.alignment` (default 32); the tensor data,
//! each tensor at an aligned offset from the start of that section.
//!
//! Every length and count is checked against the bytes that remain before anything is read or
//! allocated, so a truncated or hostile file gives an `Error::Gguf` naming the key or tensor, never
//! a panic or an out-of-bounds read.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dequant::{self, GgmlType};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is only ever an attack on the stack.
const MAX_ARRAY_DEPTH: usize = 4;

/// A metadata value. Arrays keep their element type so an empty array still says what it holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

const TYPE_NAMES: [&str; 13] = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"];
const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// Smallest encoded size of one value of a type: what a declared count must leave room for.
fn min_value_size(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        STRING => 8,
        _ => 12, // array: element type + count
    }
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Array(..) => "array",
            Value::String(_) => "string",
            Value::Bool(_) => "bool",
            Value::F32(_) | Value::F64(_) => "float",
            _ => "integer",
        }
    }

    /// Any integer value that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

/// Where one tensor's data lives, with its ggml dims (fastest first, as stored).
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// ggml's `ne`: `dims[0]` is the fastest-varying (innermost) dimension.
    pub dims: Vec<u64>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    /// The row-major shape (outermost first): ggml's dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn numel(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// A parsed, validated GGUF file. Tensor data stays in the memory map until asked for.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub alignment: u64,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

fn gguf_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Gguf { path: path.to_path_buf(), msg: msg.into() }
}

/// A bounds-checked reader over the mapped bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(gguf_err(
                self.path,
                format!("truncated: {} needs {n} bytes at offset {}, but the file is {} bytes", what(), self.pos, self.buf.len()),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| gguf_err(self.path, format!("{} is not valid UTF-8", what())))
    }

    /// A `count` of items of at least `min_size` bytes each must fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn Fn() -> String) -> Result<()> {
        if count.checked_mul(min_size).is_none_or(|n| n > self.remaining()) {
            return Err(gguf_err(
                self.path,
                format!("{} declares {count} entries, more than the {} bytes left in the file can hold", what(), self.remaining()),
            ));
        }
        Ok(())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let what = || format!("metadata `{key}`");
        Ok(match ty {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(gguf_err(self.path, format!("metadata `{key}`: bool byte is {b}, expected 0 or 1"))),
            },
            STRING => Value::String(self.string(&what)?),
            ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(gguf_err(self.path, format!("metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.u32(&|| format!("element type of metadata `{key}`"))?;
                if elem as usize >= TYPE_NAMES.len() {
                    return Err(gguf_err(self.path, format!("metadata `{key}`: unknown array element type {elem}")));
                }
                let count = self.u64(&|| format!("length of metadata `{key}`"))?;
                self.check_count(count, min_value_size(elem), &what)?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            t => return Err(gguf_err(self.path, format!("metadata `{key}`: unknown value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Map and validate a GGUF file: header, metadata, tensor infos and every tensor's byte range.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 24 {
            return Err(gguf_err(path, format!("truncated: the file is {len} bytes, shorter than the 24-byte header")));
        }
        // SAFETY: mapped read-only and privately; visword never writes a file it has mapped. (Another
        // process truncating it underneath us is outside what a memory map can defend against.)
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (version, alignment, metadata, tensors) = parse(path, &map)?;
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile { path: path.to_path_buf(), map, version, alignment, metadata, tensors, index })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of a tensor (its range was validated at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.start..info.end]
    }

    /// A tensor dequantized to f32, row-major in `info.shape()`.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        dequant::dequantize(info.ggml_type, self.tensor_bytes(info), info.numel())
            .map_err(|m| self.err(format!("tensor `{}`: {m}", info.name)))
    }

    pub fn err(&self, msg: impl Into<String>) -> Error {
        gguf_err(&self.path, msg)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.err(format!("required metadata key `{key}` is missing")))
    }

    fn wrong_type(&self, key: &str, v: &Value, want: &str) -> Error {
        self.err(format!("metadata `{key}` is {} {v:?}, expected {want}", v.type_name()))
    }

    /// A required non-negative integer that fits in usize.
    pub fn req_usize(&self, key: &str) -> Result<usize> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|_| self.req_usize(key)).transpose()
    }

    pub fn req_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, v, "a float"))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|_| self.req_f64(key)).transpose()
    }

    pub fn req_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, v, "a string"))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|_| self.req_str(key)).transpose()
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong_type(key, v, "a bool")),
        }
    }

    /// A required array of strings.
    pub fn req_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| self.wrong_type(key, v, "an array of strings"))?;
        items
            .iter()
            .enumerate()
            .map(|(i, x)| x.as_str().ok_or_else(|| self.err(format!("metadata `{key}`[{i}] is {}, expected a string", x.type_name()))))
            .collect()
    }

    /// An optional array of integers.
    pub fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let items = v.as_array().ok_or_else(|| self.wrong_type(key, v, "an array of integers"))?;
        items
            .iter()
            .enumerate()
            .map(|(i, x)| x.as_i64().ok_or_else(|| self.err(format!("metadata `{key}`[{i}] is {}, expected an integer", x.type_name()))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

type Parsed = (u32, u64, BTreeMap<String, Value>, Vec<TensorInfo>);

fn parse(path: &Path, buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.array::<4>(&|| "magic".into())?;
    if &magic != MAGIC {
        return Err(gguf_err(path, format!("bad magic {magic:02x?}, expected \"GGUF\" (is this a GGUF file?)")));
    }
    let version = c.u32(&|| "version".into())?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() <= 3 { " (a big-endian file, which is not supported)" } else { "" };
        return Err(gguf_err(path, format!("GGUF version {version}{hint}; only versions 2 and 3 are supported")));
    }
    let n_tensors = c.u64(&|| "tensor count".into())?;
    let n_kv = c.u64(&|| "metadata count".into())?;
    // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least
    // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    c.check_count(n_kv, 13, &|| "the header's metadata count".into())?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        let ty = c.u32(&|| format!("type of metadata `{key}`"))?;
        let value = c.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(gguf_err(path, format!("metadata key `{key}` appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => return Err(gguf_err(path, format!("metadata `general.alignment` is {v:?}, expected a power of two"))),
        },
    };

    c.check_count(n_tensors, 24, &|| "the header's tensor count".into())?;
    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut names = HashMap::new();
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor {i}"))?;
        let what = || format!("info of tensor `{name}`");
        let n_dims = c.u32(&what)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(gguf_err(path, format!("tensor `{name}` has {n_dims} dimensions, expected 1 to {MAX_DIMS}")));
        }
        let dims = (0..n_dims).map(|_| c.u64(&what)).collect::<Result<Vec<u64>>>()?;
        let type_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| gguf_err(path, format!("tensor `{name}` has unknown ggml type {type_id}")))?;
        if names.insert(name.clone(), i).is_some() {
            return Err(gguf_err(path, format!("tensor `{name}` appears twice")));
        }
        raw.push((name, ggml_type, dims, offset));
    }

    // The data section starts at the next multiple of the alignment.
    let data_start = (c.pos as u64).div_ceil(alignment).saturating_mul(alignment);
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, ty, dims, offset) in raw {
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= isize::MAX as u64)
            .ok_or_else(|| gguf_err(path, format!("tensor `{name}`: dims {dims:?} overflow")))?;
        if dims[0] % ty.block != 0 {
            return Err(gguf_err(
                path,
                format!("tensor `{name}`: innermost dim {} is not a multiple of the {}-weight {} block", dims[0], ty.block, ty.name),
            ));
        }
        let nbytes = ty.bytes_for(numel).ok_or_else(|| gguf_err(path, format!("tensor `{name}`: byte size overflows")))?;
        if offset % alignment != 0 {
            return Err(gguf_err(path, format!("tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}")));
        }
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(nbytes));
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) if e <= file_len => (s as usize, e as usize),
            _ => {
                return Err(gguf_err(
                    path,
                    format!(
                        "tensor `{name}`: data at offset {offset} (+{nbytes} bytes) runs past the end of the file ({} data bytes after byte {data_start})",
                        file_len.saturating_sub(data_start),
                    ),
                ))
            }
        };
        tensors.push(TensorInfo { name, ggml_type: ty, dims, start, end });
    }

    let mut ranges: Vec<&TensorInfo> = tensors.iter().filter(|t| t.end > t.start).collect();
    ranges.sort_by_key(|t| t.start);
    for w in ranges.windows(2) {
        if w[1].start < w[0].end {
            return Err(gguf_err(path, format!("tensors `{}` and `{}` overlap in the data section", w[0].name, w[1].name)));
        }
    }
    Ok((version, alignment, metadata, tensors))
}
