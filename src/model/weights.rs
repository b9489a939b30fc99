//! Memory-mapped safetensors files. Tensors are converted to f32 on read (f32, f16
//! and bf16 are accepted); every read is checked for name, shape and dtype, and
//! the loader can ask at the end whether any tensor in the file was never used.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensors};
use safetensors::Dtype;

use crate::error::{Error, Result};

const HEADER_LEN_BYTES: usize = 8;

/// The bytes of a weight file: memory-mapped from disk, or held in memory.
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

pub struct WeightFile {
    path: PathBuf,
    map: Bytes,
    data_start: usize,
    metadata: Metadata,
    used: RefCell<BTreeSet<String>>,
}

impl WeightFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file =
            File::open(&path).map_err(|e| Error::io(&path, "cannot open safetensors file", e))?;
        // SAFETY: the map is read-only; like every mmap-based loader we assume the
        // file is not truncated by another process while it is loaded.
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, "cannot memory-map", e))?;
        Self::parse(path, Bytes::Mapped(map))
    }

    /// A safetensors file already in memory; `path` names it in messages. Checked
    /// exactly as [`WeightFile::open`] checks a file on disk.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path.into(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, map: Bytes) -> Result<Self> {
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| Error::Safetensors {
                path: path.clone(),
                message: format!(
                    "{e} (the file may be truncated or not a safetensors file; it is {} bytes)",
                    map.len()
                ),
            })?;
        Ok(WeightFile {
            path,
            data_start: HEADER_LEN_BYTES + header_len,
            map,
            metadata,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of all tensors in the file, in storage order.
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The file's free-form `__metadata__` entry.
    pub fn user_metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .metadata()
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.metadata.info(name).map(|i| i.shape.clone())
    }

    fn bytes(&self, name: &str) -> Result<(&[u8], Dtype, &[usize])> {
        let info = self.metadata.info(name).ok_or_else(|| self.missing(name))?;
        let (start, end) = info.data_offsets;
        let bytes = self
            .map
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| {
                Error::tensor(&self.path, name, "data lies outside the file (truncated?)")
            })?;
        Ok((bytes, info.dtype, &info.shape))
    }

    fn missing(&self, name: &str) -> Error {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let parent = name.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        let similar: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| n.starts_with(parent) || n.ends_with(leaf))
            .take(3)
            .collect();
        let hint = if similar.is_empty() {
            String::new()
        } else {
            format!(" (similar names in the file: {})", similar.join(", "))
        };
        Error::tensor(&self.path, name, format!("missing from the file{hint}"))
    }

    /// Reads a floating-point tensor as f32, whatever its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (bytes, dtype, shape) = self.bytes(name)?;
        let values = crate::tensor::dtype::float_values_as_f32(bytes, dtype).ok_or_else(|| {
            Error::tensor(
                &self.path,
                name,
                format!("dtype {dtype:?} is not supported (expected F32, F16 or BF16)"),
            )
        })?;
        Ok((shape.to_vec(), values))
    }

    /// Reads an integer tensor (I64, I32, U8...) as i64.
    pub fn read_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (bytes, dtype, shape) = self.bytes(name)?;
        let values = match dtype {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::U8 => bytes.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(Error::tensor(
                    &self.path,
                    name,
                    format!("dtype {other:?} is not an integer type (expected I64, I32 or U8)"),
                ))
            }
        };
        Ok((shape.to_vec(), values))
    }

    /// Reads `name` as f32, requiring exactly `shape`, and marks it used.
    pub fn take(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (found, values) = self.read_f32(name)?;
        if found != shape {
            return Err(Error::tensor(
                &self.path,
                name,
                format!("has shape {found:?}, expected {shape:?} from the model config"),
            ));
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok(values)
    }

    /// Reads integer tensor `name`, requiring exactly `shape`, and marks it used
    /// (e.g. a saved `position_ids` buffer).
    pub fn take_i64(&self, name: &str, shape: &[usize]) -> Result<Vec<i64>> {
        let (found, values) = self.read_i64(name)?;
        if found != shape {
            return Err(Error::tensor(
                &self.path,
                name,
                format!("has shape {found:?}, expected {shape:?} from the model config"),
            ));
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok(values)
    }

    /// Marks every tensor whose name starts with `prefix` as accounted for without
    /// reading it: a part of the model deliberately left unloaded (a VAE's encoder).
    pub fn skip_prefix(&self, prefix: &str) {
        let mut used = self.used.borrow_mut();
        for name in self.names() {
            if name.starts_with(prefix) {
                used.insert(name);
            }
        }
    }

    /// An error if any tensor was never taken: a file with extra tensors is for a
    /// different model than the config describes.
    pub fn ensure_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        let unused: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = unused.iter().take(5).map(String::as_str).collect();
        let more = if unused.len() > 5 {
            format!(" and {} more", unused.len() - 5)
        } else {
            String::new()
        };
        Err(Error::tensor(
            &self.path,
            shown.join(", ") + &more,
            "unexpected: the model config does not use these tensors (config and weights do not match)",
        ))
    }
}

/// A view of a [`WeightFile`] under a name prefix (`down_blocks.0.resnets.1`).
#[derive(Clone)]
pub struct Scope<'a> {
    file: &'a WeightFile,
    prefix: String,
}

impl<'a> Scope<'a> {
    pub fn root(file: &'a WeightFile) -> Self {
        Scope {
            file,
            prefix: String::new(),
        }
    }

    pub fn file(&self) -> &'a WeightFile {
        self.file
    }

    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    pub fn sub(&self, part: impl std::fmt::Display) -> Scope<'a> {
        Scope {
            file: self.file,
            prefix: self.name(&part.to_string()),
        }
    }

    pub fn take(&self, leaf: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.file.take(&self.name(leaf), shape)
    }

    pub fn contains(&self, leaf: &str) -> bool {
        self.file.contains(&self.name(leaf))
    }
}
