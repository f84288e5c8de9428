//! `Tensor`: a contiguous, row-major, immutable n-d array that lives on one backend.
//!
//! Data is shared (`Arc`), so clones and reshapes are free. CPU data is either owned or a
//! zero-copy window into a memory-mapped safetensors file. GPU backends add their own storage
//! variants; model code never looks inside a `Storage`.

use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Host (CPU) data of one tensor.
#[derive(Debug)]
pub enum CpuData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    /// Bytes `start..end` of a mapped file, already checked to be aligned for `dtype`.
    Mapped { map: Arc<Mmap>, start: usize, end: usize },
}

/// Where a tensor's data lives. GPU variants hold a backend's own buffer type; only that
/// backend looks inside it.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(Arc<CpuData>),
    Cuda(Arc<crate::backend::cuda::CudaData>),
    Wgpu(Arc<crate::backend::wgpu::WgpuData>),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Storage,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub fn from_cpu(data: CpuData, dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
        let n = numel(&shape);
        let len = match &data {
            CpuData::F32(v) => v.len(),
            CpuData::F16(v) => v.len(),
            CpuData::BF16(v) => v.len(),
            CpuData::I64(v) => v.len(),
            CpuData::I32(v) => v.len(),
            CpuData::U8(v) => v.len(),
            CpuData::Mapped { start, end, .. } => (end - start) / dtype.size(),
        };
        if len != n {
            return Err(Error::shape("tensor", format!("{len} elements for shape {shape:?}")));
        }
        Ok(Tensor { shape, dtype, storage: Storage::Cpu(Arc::new(data)) })
    }

    pub fn from_f32(data: Vec<f32>, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        Self::from_cpu(CpuData::F32(data), DType::F32, shape.into())
    }

    pub fn from_i64(data: Vec<i64>, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        Self::from_cpu(CpuData::I64(data), DType::I64, shape.into())
    }

    pub fn from_i32(data: Vec<i32>, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        Self::from_cpu(CpuData::I32(data), DType::I32, shape.into())
    }

    pub fn zeros(shape: impl Into<Vec<usize>>) -> Tensor {
        let shape = shape.into();
        let n = numel(&shape);
        Tensor { shape, dtype: DType::F32, storage: Storage::Cpu(Arc::new(CpuData::F32(vec![0.0; n]))) }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dims(&self) -> usize {
        self.shape.len()
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// Same data, new shape (free). `usize::MAX` in one place means "infer".
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let mut shape = shape.to_vec();
        if let Some(pos) = shape.iter().position(|&d| d == usize::MAX) {
            let rest: usize = shape.iter().enumerate().filter(|(i, _)| *i != pos).map(|(_, d)| *d).product();
            if rest == 0 || !self.numel().is_multiple_of(rest) {
                return Err(Error::shape("reshape", format!("{:?} -> {:?}", self.shape, shape)));
            }
            shape[pos] = self.numel() / rest;
        }
        if numel(&shape) != self.numel() {
            return Err(Error::shape("reshape", format!("{:?} -> {:?}", self.shape, shape)));
        }
        Ok(Tensor { shape, dtype: self.dtype, storage: self.storage.clone() })
    }

    /// A tensor on a GPU backend: `storage` holds that backend's buffer for `shape` × `dtype`.
    pub fn from_storage(storage: Storage, dtype: DType, shape: Vec<usize>) -> Tensor {
        Tensor { shape, dtype, storage }
    }

    pub fn cpu_data(&self) -> Option<&CpuData> {
        match &self.storage {
            Storage::Cpu(d) => Some(d),
            _ => None,
        }
    }

    /// The f32 elements of a CPU tensor (error if another dtype or device).
    pub fn as_f32(&self) -> Result<&[f32]> {
        match self.cpu_data() {
            Some(CpuData::F32(v)) => Ok(v),
            Some(CpuData::Mapped { map, start, end }) if self.dtype == DType::F32 => {
                Ok(bytemuck::cast_slice(&map[*start..*end]))
            }
            _ => Err(Error::shape("as_f32", format!("tensor is {} on {}, not f32 on the CPU", self.dtype, self.device_name()))),
        }
    }

    pub fn as_f16(&self) -> Result<&[f16]> {
        match self.cpu_data() {
            Some(CpuData::F16(v)) => Ok(v),
            Some(CpuData::Mapped { map, start, end }) if self.dtype == DType::F16 => {
                Ok(bytemuck::cast_slice(&map[*start..*end]))
            }
            _ => Err(Error::shape("as_f16", format!("tensor is {}, not f16 on the CPU", self.dtype))),
        }
    }

    pub fn as_bf16(&self) -> Result<&[bf16]> {
        match self.cpu_data() {
            Some(CpuData::BF16(v)) => Ok(v),
            Some(CpuData::Mapped { map, start, end }) if self.dtype == DType::BF16 => {
                Ok(bytemuck::cast_slice(&map[*start..*end]))
            }
            _ => Err(Error::shape("as_bf16", format!("tensor is {}, not bf16 on the CPU", self.dtype))),
        }
    }

    pub fn as_i64(&self) -> Result<&[i64]> {
        match self.cpu_data() {
            Some(CpuData::I64(v)) => Ok(v),
            Some(CpuData::Mapped { map, start, end }) if self.dtype == DType::I64 => {
                bytemuck::try_cast_slice(&map[*start..*end]).map_err(|e| Error::shape("as_i64", e.to_string()))
            }
            _ => Err(Error::shape("as_i64", format!("tensor is {}, not i64 on the CPU", self.dtype))),
        }
    }

    pub fn as_i32(&self) -> Result<&[i32]> {
        match self.cpu_data() {
            Some(CpuData::I32(v)) => Ok(v),
            Some(CpuData::Mapped { map, start, end }) if self.dtype == DType::I32 => {
                bytemuck::try_cast_slice(&map[*start..*end]).map_err(|e| Error::shape("as_i32", e.to_string()))
            }
            _ => Err(Error::shape("as_i32", format!("tensor is {}, not i32 on the CPU", self.dtype))),
        }
    }

    /// Raw little-endian bytes of a CPU tensor (for writing files).
    pub fn raw_bytes(&self) -> Result<&[u8]> {
        Ok(match self.cpu_data() {
            Some(CpuData::F32(v)) => bytemuck::cast_slice(v),
            Some(CpuData::F16(v)) => bytemuck::cast_slice(v),
            Some(CpuData::BF16(v)) => bytemuck::cast_slice(v),
            Some(CpuData::I64(v)) => bytemuck::cast_slice(v),
            Some(CpuData::I32(v)) => bytemuck::cast_slice(v),
            Some(CpuData::U8(v)) => v,
            Some(CpuData::Mapped { map, start, end }) => &map[*start..*end],
            None => return Err(Error::shape("raw_bytes", "tensor is not on the CPU")),
        })
    }

    /// Host copy as f32, converting f16/bf16/ints (error for GPU storage).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            DType::F32 => self.as_f32()?.to_vec(),
            DType::F16 => self.as_f16()?.iter().map(|x| x.to_f32()).collect(),
            DType::BF16 => self.as_bf16()?.iter().map(|x| x.to_f32()).collect(),
            DType::I64 => self.as_i64()?.iter().map(|&x| x as f32).collect(),
            DType::I32 => self.as_i32()?.iter().map(|&x| x as f32).collect(),
            DType::U8 => self.raw_bytes()?.iter().map(|&x| x as f32).collect(),
        })
    }

    /// The same tensor as f32 (free when already f32).
    pub fn to_f32(&self) -> Result<Tensor> {
        if self.dtype == DType::F32 {
            return Ok(self.clone());
        }
        Tensor::from_f32(self.to_f32_vec()?, self.shape.clone())
    }

    /// Convert a float tensor to `dtype` on the host (round to nearest even).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        let v = self.to_f32_vec()?;
        let data = match dtype {
            DType::F32 => CpuData::F32(v),
            DType::F16 => CpuData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => CpuData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            other => return Err(Error::shape("to_dtype", format!("cannot convert {} to {other}", self.dtype))),
        };
        Tensor::from_cpu(data, dtype, self.shape.clone())
    }

    /// Mutable f32 elements of a CPU tensor, copying the data first if it is shared or mapped.
    pub fn f32_mut(&mut self) -> Result<&mut [f32]> {
        if self.dtype != DType::F32 {
            return Err(Error::shape("f32_mut", format!("tensor is {}, not f32", self.dtype)));
        }
        let device = self.device_name();
        let Storage::Cpu(arc) = &mut self.storage else {
            return Err(Error::shape("f32_mut", format!("tensor is on {device}, not the CPU")));
        };
        if Arc::get_mut(arc).map(|d| matches!(d, CpuData::F32(_))) != Some(true) {
            let owned = match &**arc {
                CpuData::F32(v) => v.clone(),
                CpuData::Mapped { map, start, end } => bytemuck::cast_slice::<u8, f32>(&map[*start..*end]).to_vec(),
                _ => return Err(Error::shape("f32_mut", "tensor data is not f32")),
            };
            *arc = Arc::new(CpuData::F32(owned));
        }
        match Arc::get_mut(arc) {
            Some(CpuData::F32(v)) => Ok(v),
            _ => Err(Error::shape("f32_mut", "tensor data is not uniquely owned")),
        }
    }

    pub fn device_name(&self) -> &'static str {
        match self.storage {
            Storage::Cpu(_) => "cpu",
            Storage::Cuda(_) => "cuda",
            Storage::Wgpu(_) => "wgpu",
        }
    }
}
