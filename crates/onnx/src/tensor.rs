//! Constant tensors: initializers, `Constant` nodes and the shape arithmetic exporters emit
//! (`Shape → Gather → Unsqueeze → Concat → Reshape`), folded at import.

use crate::proto::{tensor_proto::DataLocation, TensorProto};
use std::cell::Cell;
use std::path::{Component, Path, PathBuf};

/// Most elements one constant tensor may have (that of a layer's weights,
/// [`blindfold_nn::arch::MAX_WEIGHTS`]), checked before anything is allocated.
pub const MAX_ELEMENTS: usize = blindfold_nn::arch::MAX_WEIGHTS;

/// The values of a constant: floating point (`float`, `double`) or integer (`int32`,
/// `int64`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

/// A constant tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Const {
    pub dims: Vec<usize>,
    pub values: Values,
}

/// ONNX `TensorProto.DataType` codes this importer reads.
const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;
const DOUBLE: i32 = 11;

/// Name of an ONNX data type code, for messages.
pub(crate) fn type_name(code: i32) -> String {
    const NAMES: [&str; 17] = [
        "undefined",
        "float",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "int32",
        "int64",
        "string",
        "bool",
        "float16",
        "double",
        "uint32",
        "uint64",
        "complex64",
        "complex128",
        "bfloat16",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).map_or_else(|| format!("type {code}"), |s| s.to_string())
}

/// The number of elements of `dims`, if every dimension is non-negative and the product is at
/// most [`MAX_ELEMENTS`].
pub(crate) fn element_count(dims: &[i64]) -> Result<usize, String> {
    let mut n = 1usize;
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| format!("negative dimension {d} in {dims:?}"))?;
        n = n.checked_mul(d).filter(|&n| n <= MAX_ELEMENTS).ok_or_else(|| {
            format!("dimensions {dims:?} declare more than {MAX_ELEMENTS} elements (at most that many per tensor)")
        })?;
    }
    Ok(n)
}

/// Where tensors stored outside the model file are read from (ONNX external data: files
/// beside the model, named relative to its directory), with a budget of bytes for all of them.
pub(crate) struct External {
    dir: PathBuf,
    remaining: Cell<u64>,
}

impl External {
    /// External data in `dir`, at most `budget` bytes in all.
    pub fn new(dir: PathBuf, budget: u64) -> Self {
        Self { dir, remaining: Cell::new(budget) }
    }

    /// The `length` bytes (or all) at `offset` of the file `location`, which must name a file
    /// inside the model's directory.
    fn read(&self, location: &str, offset: u64, length: Option<u64>) -> Result<Vec<u8>, String> {
        use std::io::{Read, Seek, SeekFrom};
        let rel = Path::new(location);
        if location.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!(
                "external data location {location:?} must be a file name inside the model's directory"
            ));
        }
        let path = self.dir.join(rel);
        let err = |e: std::io::Error| format!("external data {}: {e}", path.display());
        let mut file = std::fs::File::open(&path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        let length = length.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(format!("external data {}: bytes {offset}+{length} of a {size}-byte file", path.display()));
        }
        if length > self.remaining.get() {
            return Err(format!("external data beyond the {} bytes a model may have", blindfold_nn::MAX_MODEL_FILE));
        }
        self.remaining.set(self.remaining.get() - length);
        file.seek(SeekFrom::Start(offset)).map_err(err)?;
        let mut bytes = Vec::with_capacity(length as usize);
        file.take(length).read_to_end(&mut bytes).map_err(err)?;
        Ok(bytes)
    }
}

impl Const {
    /// Reads a `TensorProto`, checking its declared size against the bytes present before
    /// allocating; data stored outside the model file is read from `external` (refused
    /// without it).
    pub fn from_proto(t: &TensorProto, external: Option<&External>) -> Result<Self, String> {
        if t.segment.is_some() {
            return Err("segmented tensors are not supported".into());
        }
        let n = element_count(&t.dims)?;
        let dims = t.dims.iter().map(|&d| d as usize).collect();
        let code = t.data_type();
        let width = match code {
            FLOAT | INT32 => 4,
            INT64 | DOUBLE => 8,
            other => {
                return Err(format!("element type {} is not supported (float, double, int32, int64)", type_name(other)))
            }
        };
        let stored;
        let raw = if t.data_location() == DataLocation::External {
            let ext = external.ok_or(
                "its data is stored outside the model file (external data), and no directory to read it from was \
                 given: import the file by its path, or save the model with every tensor inside it",
            )?;
            let entry = |key: &str| t.external_data.iter().find(|e| e.key() == key).map(|e| e.value());
            let number = |key: &str| -> Result<Option<u64>, String> {
                entry(key)
                    .map(|v| v.parse::<u64>().map_err(|_| format!("external data {key} {v:?} is not a number")))
                    .transpose()
            };
            let location = entry("location").ok_or("external data without a location")?;
            let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
            if length.is_some_and(|l| l != (n * width) as u64) {
                return Err(format!(
                    "external data of {} bytes for {n} elements of {width} bytes",
                    length.unwrap_or(0)
                ));
            }
            stored = ext.read(location, offset, Some((n * width) as u64))?;
            Some(stored.as_slice())
        } else {
            t.raw_data.as_deref()
        };
        if let Some(raw) = raw {
            if raw.len() != n * width {
                return Err(format!("{} bytes of data for {n} elements of {} bytes", raw.len(), width));
            }
        }
        let check_len = |len: usize| {
            if len == n {
                Ok(())
            } else {
                Err(format!("{len} values for {n} elements ({:?})", t.dims))
            }
        };
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
        let half = |c: &[u8]| u32::from_le_bytes(c.try_into().expect("4 bytes"));
        let values = match (code, raw) {
            (FLOAT, Some(r)) => Values::Float(r.chunks_exact(4).map(|c| f32::from_bits(half(c))).collect()),
            (FLOAT, None) => {
                check_len(t.float_data.len())?;
                Values::Float(t.float_data.clone())
            }
            (DOUBLE, Some(r)) => Values::Float(r.chunks_exact(8).map(|c| f64::from_bits(word(c)) as f32).collect()),
            (DOUBLE, None) => {
                check_len(t.double_data.len())?;
                Values::Float(t.double_data.iter().map(|&v| v as f32).collect())
            }
            (INT64, Some(r)) => Values::Int(r.chunks_exact(8).map(|c| word(c) as i64).collect()),
            (INT64, None) => {
                check_len(t.int64_data.len())?;
                Values::Int(t.int64_data.clone())
            }
            (INT32, Some(r)) => Values::Int(r.chunks_exact(4).map(|c| half(c) as i32 as i64).collect()),
            (INT32, None) => {
                check_len(t.int32_data.len())?;
                Values::Int(t.int32_data.iter().map(|&v| v as i64).collect())
            }
            _ => unreachable!("element types were checked"),
        };
        if let Values::Float(v) = &values {
            if v.iter().any(|x| !x.is_finite()) {
                return Err("holds a value that is not finite".into());
            }
        }
        Ok(Self { dims, values })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.values {
            Values::Float(v) => v.len(),
            Values::Int(v) => v.len(),
        }
    }

    /// The values as `f64`.
    pub fn floats(&self) -> Vec<f64> {
        match &self.values {
            Values::Float(v) => v.iter().map(|&x| x as f64).collect(),
            Values::Int(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// The values if they are integers.
    pub fn ints(&self) -> Option<&[i64]> {
        match &self.values {
            Values::Int(v) => Some(v),
            Values::Float(_) => None,
        }
    }

    /// The one value of a tensor with one element.
    pub fn scalar(&self) -> Option<f64> {
        (self.len() == 1).then(|| self.floats()[0])
    }

    /// A rank-1 integer tensor.
    pub fn int_vector(values: Vec<i64>) -> Self {
        Self { dims: vec![values.len()], values: Values::Int(values) }
    }
}
