//! Weights from safetensors files, memory-mapped and zero-copy.
//!
//! `Weights::open` takes a `.safetensors` file, a `model.safetensors.index.json`, or a directory
//! holding either. Every header is validated before any tensor is handed out: header length
//! within the file, known dtypes, `shape × dtype size == byte length`, offsets inside the data
//! section and not overlapping. Tensors are looked up by their checkpoint names through scoped
//! views (`VarView::pp("model").pp("layers.0")`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{numel, CpuData, Tensor};

/// Where one tensor lives inside a mapped file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
    file: usize,
}

struct MappedFile {
    path: PathBuf,
    map: Arc<Mmap>,
}

/// A set of safetensors files viewed as one name → tensor map.
pub struct Weights {
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
    /// Header `__metadata__` of the first file.
    pub metadata: HashMap<String, String>,
    origin: PathBuf,
    /// Synthetic weights: every requested tensor exists and is generated from its name.
    synthetic: Option<(u64, DType)>,
}

fn st_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Safetensors { path: path.to_path_buf(), msg: msg.into() }
}

impl Weights {
    /// Open a file, an index json, or a directory (model.safetensors, or the sharded index).
    pub fn open(path: impl AsRef<Path>) -> Result<Weights> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")));
        }
        if path.is_dir() {
            let single = path.join("model.safetensors");
            let index = path.join("model.safetensors.index.json");
            if index.exists() {
                return Self::open_index(&index);
            }
            if single.exists() {
                return Self::open_files(&[single], path);
            }
            // Any single *.safetensors in the directory.
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::config(path, "no model.safetensors or model.safetensors.index.json in this directory"));
            }
            return Self::open_files(&found, path);
        }
        if path.to_string_lossy().ends_with(".index.json") {
            return Self::open_index(path);
        }
        Self::open_files(&[path.to_path_buf()], path)
    }

    fn open_index(index: &Path) -> Result<Weights> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| st_err(index, format!("index is not JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| st_err(index, "index has no `weight_map` object"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<String> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| st_err(index, format!("weight_map[{name}] is not a string")))?;
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(st_err(index, format!("shard path `{file}` leaves the model directory")));
            }
            if !shards.iter().any(|s| s == file) {
                shards.push(file.to_string());
            }
        }
        shards.sort();
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let w = Self::open_files(&paths, index)?;
        for (name, file) in map {
            let info = w.tensors.get(name).ok_or_else(|| {
                st_err(index, format!("index lists `{name}` in {file}, which does not contain it"))
            })?;
            if w.files[info.file].path != dir.join(file.as_str().unwrap_or_default()) {
                return Err(st_err(index, format!("index puts `{name}` in {file}, but it is in another shard")));
            }
        }
        Ok(w)
    }

    fn open_files(paths: &[PathBuf], origin: &Path) -> Result<Weights> {
        let mut w = Weights { files: Vec::new(), tensors: BTreeMap::new(), metadata: HashMap::new(), origin: origin.to_path_buf(), synthetic: None };
        for (fi, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the file is opened read-only and mapped privately; the project never
            // writes to weight files while they are mapped. (Another process truncating the
            // file underneath us is outside what a memory map can defend against.)
            // `populate` maps every page now (one kernel call; from the page cache a 0.5 GB
            // model takes tens of ms) instead of taking ~130K page faults inside the first
            // forward pass.
            let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| Error::io(path, e))?;
            let (infos, meta) = parse_header(path, &map, fi)?;
            if fi == 0 {
                w.metadata = meta;
            }
            for info in infos {
                if w.tensors.contains_key(&info.name) {
                    return Err(st_err(path, format!("tensor `{}` appears in more than one shard", info.name)));
                }
                w.tensors.insert(info.name.clone(), info);
            }
            w.files.push(MappedFile { path: path.clone(), map: Arc::new(map) });
        }
        Ok(w)
    }

    /// Random weights for benchmarks: every tensor a model asks for exists, with the shape it
    /// asks for, generated deterministically from `seed` and its name (norm weights near 1,
    /// everything else small), stored as `dtype`.
    pub fn synthetic(seed: u64, dtype: DType) -> Weights {
        Weights {
            files: Vec::new(),
            tensors: BTreeMap::new(),
            metadata: HashMap::new(),
            origin: PathBuf::from("<random weights>"),
            synthetic: Some((seed, dtype)),
        }
    }

    pub fn is_synthetic(&self) -> bool {
        self.synthetic.is_some()
    }

    /// One synthetic tensor. A 7B model is ~7·10⁹ values, so they are generated in parallel,
    /// straight into the stored dtype: the tensor is cut into fixed 64 Ki-element chunks, each
    /// with its own xorshift stream seeded from (seed, name, chunk index), so the values do not
    /// depend on the thread count.
    fn synthesize(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        let (seed, dtype) = self.synthetic.unwrap_or((0, DType::F32));
        let mut h = seed ^ 0xcbf29ce484222325;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        let n = numel(shape);
        let fan_in = shape.last().copied().unwrap_or(1).max(1) as f32;
        let is_norm = name.ends_with("weight") && shape.len() == 1;
        let scale = if shape.len() == 1 { 0.02 } else { 1.0 / fan_in.sqrt() };
        let dtype = if shape.len() >= 2 { dtype } else { DType::F32 };
        fn fill<T: Send>(out: &mut [T], h: u64, chunk: usize, value: impl Fn(u64) -> T + Sync) {
            out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| {
                // SplitMix64 of (name hash, chunk) gives each chunk an independent, non-zero start.
                let mut z = h.wrapping_add((i as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
                let mut s = (z ^ (z >> 31)) | 1;
                for o in c {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    *o = value(s);
                }
            });
        }
        let f = move |s: u64| {
            let u = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            if is_norm { 1.0 + 0.1 * u } else { u * scale }
        };
        let data = match dtype {
            DType::BF16 => {
                let mut v = vec![half::bf16::ZERO; n];
                fill(&mut v, h, CHUNK, |s| half::bf16::from_f32(f(s)));
                CpuData::BF16(v)
            }
            DType::F16 => {
                let mut v = vec![half::f16::ZERO; n];
                fill(&mut v, h, CHUNK, |s| half::f16::from_f32(f(s)));
                CpuData::F16(v)
            }
            _ => {
                let mut v = vec![0f32; n];
                fill(&mut v, h, CHUNK, f);
                CpuData::F32(v)
            }
        };
        Tensor::from_cpu(data, dtype, shape.to_vec())
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn infos(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.synthetic.is_some() || self.tensors.contains_key(name)
    }

    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors.get(name).map(|i| self.files[i.file].path.as_path())
    }

    /// A host tensor for `name`: zero-copy when the bytes are aligned for the dtype, else copied.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), path: self.origin.clone() })?;
        let f = &self.files[info.file];
        let bytes = &f.map[info.start..info.end];
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(info.dtype.size());
        let data = if aligned {
            CpuData::Mapped { map: f.map.clone(), start: info.start, end: info.end }
        } else {
            copy_unaligned(bytes, info.dtype)
        };
        Tensor::from_cpu(data, info.dtype, info.shape.clone())
    }
}

fn copy_unaligned(bytes: &[u8], dtype: DType) -> CpuData {
    match dtype {
        DType::F32 => CpuData::F32(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
        DType::F16 => CpuData::F16(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect()),
        DType::BF16 => CpuData::BF16(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect()),
        DType::I64 => CpuData::I64(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
        DType::I32 => CpuData::I32(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()),
        DType::U8 => CpuData::U8(bytes.to_vec()),
    }
}

/// Parse and validate a safetensors header. Returns tensor infos with absolute byte ranges.
pub fn parse_header(path: &Path, buf: &[u8], file: usize) -> Result<(Vec<TensorInfo>, HashMap<String, String>)> {
    if buf.len() < 8 {
        return Err(st_err(path, format!("file is {} bytes, shorter than the 8-byte header length", buf.len())));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().unwrap());
    let data_start = 8u64.checked_add(n).filter(|&e| e <= buf.len() as u64).ok_or_else(|| {
        st_err(path, format!("header length {n} runs past the end of the {}-byte file", buf.len()))
    })? as usize;
    let header: serde_json::Value = serde_json::from_slice(&buf[8..data_start])
        .map_err(|e| st_err(path, format!("header is not valid JSON: {e}")))?;
    let obj = header.as_object().ok_or_else(|| st_err(path, "header is not a JSON object"))?;
    let data_len = buf.len() - data_start;
    let mut infos = Vec::new();
    let mut metadata = HashMap::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let t = v.as_object().ok_or_else(|| st_err(path, format!("entry `{name}` is not an object")))?;
        let dtype_s = t.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| st_err(path, format!("`{name}` has no dtype")))?;
        let dtype = DType::from_safetensors_name(dtype_s)
            .ok_or_else(|| st_err(path, format!("`{name}` has unknown or unsupported dtype {dtype_s}")))?;
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| st_err(path, format!("`{name}` has no shape")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| st_err(path, format!("`{name}` has a non-integer dimension")))?;
        let offs = t
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| st_err(path, format!("`{name}` has no [begin, end] data_offsets")))?;
        let (b, e) = match (offs[0].as_u64(), offs[1].as_u64()) {
            (Some(b), Some(e)) if b <= e => (b as usize, e as usize),
            _ => return Err(st_err(path, format!("`{name}` has invalid data_offsets {offs:?}"))),
        };
        if e > data_len {
            return Err(st_err(path, format!("`{name}` ends at byte {e}, past the {data_len}-byte data section")));
        }
        let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let want = elems.and_then(|n| n.checked_mul(dtype.size()));
        if want != Some(e - b) {
            return Err(st_err(path, format!("`{name}`: shape {shape:?} × {dtype} is not its {} bytes", e - b)));
        }
        infos.push(TensorInfo { name: name.clone(), dtype, shape, start: data_start + b, end: data_start + e, file });
    }
    let mut ranges: Vec<(usize, usize, &str)> = infos.iter().filter(|i| i.end > i.start).map(|i| (i.start, i.end, i.name.as_str())).collect();
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(st_err(path, format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2)));
        }
    }
    Ok((infos, metadata))
}

/// A scoped view of the weights on a backend: `vv.pp("encoder").pp("layers.3").get("fc1.weight", &[..])`.
#[derive(Clone)]
pub struct VarView<'a> {
    weights: &'a Weights,
    backend: &'a Backend,
    prefix: String,
}

impl<'a> VarView<'a> {
    pub fn new(weights: &'a Weights, backend: &'a Backend) -> Self {
        VarView { weights, backend, prefix: String::new() }
    }

    /// Push a path segment.
    pub fn pp(&self, segment: impl std::fmt::Display) -> VarView<'a> {
        let prefix = if self.prefix.is_empty() { segment.to_string() } else { format!("{}.{}", self.prefix, segment) };
        VarView { weights: self.weights, backend: self.backend, prefix }
    }

    pub fn backend(&self) -> &'a Backend {
        self.backend
    }

    pub fn weights(&self) -> &'a Weights {
        self.weights
    }

    pub fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{}", self.prefix, name) }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.full_name(name))
    }

    /// The shape `name` is stored with, for tensors whose size a model reads from the checkpoint
    /// (e.g. SAM's relative-position tables). Synthetic weights store nothing, so they report
    /// `expected`, the shape the model would ask for.
    pub fn stored_shape(&self, name: &str, expected: &[usize]) -> Result<Vec<usize>> {
        if self.weights.is_synthetic() {
            return Ok(expected.to_vec());
        }
        let full = self.full_name(name);
        match self.weights.info(&full) {
            Some(info) => Ok(info.shape.clone()),
            None => Err(Error::MissingTensor { name: full, path: self.weights.origin().to_path_buf() }),
        }
    }

    /// The tensor in its stored dtype, shape-checked, on the backend.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_host(name, shape)?;
        self.backend.upload_weight(&t)
    }

    /// The tensor converted to f32 (norm weights, biases, embeddings used in f32 math).
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_host(name, shape)?.to_f32()?;
        self.backend.upload(&t)
    }

    /// Host copy, shape-checked, any float dtype.
    pub fn get_host(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.full_name(name);
        let t = if self.weights.is_synthetic() { self.weights.synthesize(&full, shape)? } else { self.weights.get(&full)? };
        if t.shape() != shape {
            return Err(Error::TensorShape { name: full, expected: shape.to_vec(), got: t.shape().to_vec() });
        }
        if !t.dtype().is_float() {
            return Err(Error::TensorDtype { name: full, dtype: t.dtype().to_string(), msg: "expected f32, f16 or bf16".into() });
        }
        Ok(t)
    }
}

/// Write named tensors as one safetensors file, atomically (temp file + rename).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: Option<&BTreeMap<String, String>>) -> Result<()> {
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), serde_json::to_value(m).unwrap_or_default());
    }
    let mut offset = 0usize;
    let mut order = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let bytes = t.raw_bytes()?;
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": t.dtype().safetensors_name(),
                "shape": t.shape(),
                "data_offsets": [offset, offset + bytes.len()],
            }),
        );
        offset += bytes.len();
        order.push(bytes);
    }
    let mut hbytes = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| Error::Output { path: path.into(), msg: e.to_string() })?;
    // Spaces pad the header so the data starts on a 64-byte boundary: the CPU kernels read
    // weight rows in place with 512-bit loads when they are cache-line aligned (safetensors
    // allows no gaps between tensors, so later tensors stay aligned when sizes are multiples of
    // 64 bytes, as every SmolLM2 or CLIP tensor's is).
    while !(8 + hbytes.len()).is_multiple_of(64) {
        hbytes.push(b' ');
    }
    write_atomic(path, |f| {
        f.write_all(&(hbytes.len() as u64).to_le_bytes())?;
        f.write_all(&hbytes)?;
        for b in order {
            f.write_all(b)?;
        }
        Ok(())
    })
}

/// Write a file through a temporary sibling and rename it into place, so a failure never
/// leaves a half-written output.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::Output { path: path.into(), msg: format!("directory {} does not exist", dir.display()) });
    }
    let fname = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{fname}.tmp{}", std::process::id()));
    let res = (|| {
        let f = File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Output { path: path.into(), msg: e.to_string() });
    }
    Ok(())
}
