//! Tensor values: ONNX data types, decoded element storage, and conversion from `TensorProto`.

use std::fmt;

use crate::error::{OnnxError, Result};
use crate::external::ExternalFiles;
use crate::proto::{self, TensorProto};
use crate::Limits;

/// The ONNX element types this crate can hold (`TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Float,
    Uint8,
    Int8,
    Uint16,
    Int16,
    Int32,
    Int64,
    String,
    Bool,
    Float16,
    Double,
    Uint32,
    Uint64,
    Bfloat16,
}

impl DataType {
    /// The type with this `TensorProto.DataType` code, if this crate supports it.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::Float,
            2 => Self::Uint8,
            3 => Self::Int8,
            4 => Self::Uint16,
            5 => Self::Int16,
            6 => Self::Int32,
            7 => Self::Int64,
            8 => Self::String,
            9 => Self::Bool,
            10 => Self::Float16,
            11 => Self::Double,
            12 => Self::Uint32,
            13 => Self::Uint64,
            16 => Self::Bfloat16,
            _ => return None,
        })
    }

    pub fn code(self) -> i32 {
        match self {
            Self::Float => 1,
            Self::Uint8 => 2,
            Self::Int8 => 3,
            Self::Uint16 => 4,
            Self::Int16 => 5,
            Self::Int32 => 6,
            Self::Int64 => 7,
            Self::String => 8,
            Self::Bool => 9,
            Self::Float16 => 10,
            Self::Double => 11,
            Self::Uint32 => 12,
            Self::Uint64 => 13,
            Self::Bfloat16 => 16,
        }
    }

    /// Bytes per element in `raw_data` and external data; `None` for strings.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Self::Uint8 | Self::Int8 | Self::Bool => 1,
            Self::Uint16 | Self::Int16 | Self::Float16 | Self::Bfloat16 => 2,
            Self::Float | Self::Int32 | Self::Uint32 => 4,
            Self::Int64 | Self::Double | Self::Uint64 => 8,
            Self::String => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            Self::Float | Self::Float16 | Self::Bfloat16 | Self::Double
        )
    }
}

/// The `TensorProto.DataType` name of any code, supported or not, for messages.
pub fn data_type_name(code: i32) -> String {
    const NAMES: [&str; 27] = [
        "UNDEFINED",
        "FLOAT",
        "UINT8",
        "INT8",
        "UINT16",
        "INT16",
        "INT32",
        "INT64",
        "STRING",
        "BOOL",
        "FLOAT16",
        "DOUBLE",
        "UINT32",
        "UINT64",
        "COMPLEX64",
        "COMPLEX128",
        "BFLOAT16",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "UINT4",
        "INT4",
        "FLOAT4E2M1",
        "FLOAT8E8M0",
        "UINT2",
        "INT2",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("data type {code}"), |name| (*name).to_string())
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_type_name(self.code()))
    }
}

/// Decoded elements, row-major. Several ONNX types share a storage: FLOAT16 and BFLOAT16 are
/// widened to `F32` (exactly), INT16/UINT16 to `I32`, UINT32 to `I64`.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
}

/// Applies `$body` to the vector inside any variant, rebuilding the same variant.
macro_rules! map_values {
    ($v:expr, $x:ident => $body:expr) => {
        match $v {
            Values::F32($x) => Values::F32($body),
            Values::F64($x) => Values::F64($body),
            Values::I64($x) => Values::I64($body),
            Values::I32($x) => Values::I32($body),
            Values::I8($x) => Values::I8($body),
            Values::U8($x) => Values::U8($body),
            Values::U64($x) => Values::U64($body),
            Values::Bool($x) => Values::Bool($body),
            Values::Str($x) => Values::Str($body),
        }
    };
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::I32(v) => v.len(),
            Values::I8(v) => v.len(),
            Values::U8(v) => v.len(),
            Values::U64(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ONNX type these values are held as (after the widenings listed on [`Values`]).
    pub fn data_type(&self) -> DataType {
        match self {
            Values::F32(_) => DataType::Float,
            Values::F64(_) => DataType::Double,
            Values::I64(_) => DataType::Int64,
            Values::I32(_) => DataType::Int32,
            Values::I8(_) => DataType::Int8,
            Values::U8(_) => DataType::Uint8,
            Values::U64(_) => DataType::Uint64,
            Values::Bool(_) => DataType::Bool,
            Values::Str(_) => DataType::String,
        }
    }

    /// The elements at these flat indices, same type. Every structural op of the constant
    /// folder (Gather, Slice, Expand, Transpose, ...) is an index list fed to this.
    // The same closure serves String (which needs the clone) and the Copy types.
    #[allow(clippy::clone_on_copy)]
    pub fn select(&self, indices: &[usize]) -> Values {
        map_values!(self, v => indices.iter().map(|&i| v[i].clone()).collect())
    }

    /// Numeric elements as f64 (exact for every type but the largest 64-bit integers).
    pub fn to_f64(&self) -> Result<Vec<f64>> {
        Ok(match self {
            Values::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Values::F64(v) => v.clone(),
            Values::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Values::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Values::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Values::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Values::U64(v) => v.iter().map(|&x| x as f64).collect(),
            Values::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
            Values::Str(_) => return Err(wrong_type("a numeric", self)),
        })
    }

    /// Integer or boolean elements as i64; floats are refused rather than truncated.
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        Ok(match self {
            Values::I64(v) => v.clone(),
            Values::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Values::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Values::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Values::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Values::Bool(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Values::F32(_) | Values::F64(_) | Values::Str(_) => {
                return Err(wrong_type("an integer", self))
            }
        })
    }

    /// Values of type `to` from f64s, rounding and saturating as a C cast does (NaN → 0 for
    /// integers). FLOAT16 and BFLOAT16 round to their precision and are held as `F32`.
    pub fn from_f64(to: DataType, v: &[f64]) -> Result<Values> {
        Ok(match to {
            DataType::Float => Values::F32(v.iter().map(|&x| x as f32).collect()),
            DataType::Float16 => {
                Values::F32(v.iter().map(|&x| half::f16::from_f64(x).to_f32()).collect())
            }
            DataType::Bfloat16 => Values::F32(
                v.iter()
                    .map(|&x| half::bf16::from_f64(x).to_f32())
                    .collect(),
            ),
            DataType::Double => Values::F64(v.to_vec()),
            DataType::Bool => Values::Bool(v.iter().map(|&x| x != 0.0).collect()),
            DataType::String => {
                return Err(OnnxError::WrongType {
                    expected: "a numeric",
                    found: DataType::String,
                })
            }
            int => Values::from_i64(int, &v.iter().map(|&x| x as i64).collect::<Vec<_>>())?,
        })
    }

    /// Values of type `to` from i64s, wrapping to the width as a C cast does.
    pub fn from_i64(to: DataType, v: &[i64]) -> Result<Values> {
        Ok(match to {
            DataType::Int64 => Values::I64(v.to_vec()),
            DataType::Int32 => Values::I32(v.iter().map(|&x| x as i32).collect()),
            DataType::Int16 => Values::I32(v.iter().map(|&x| i32::from(x as i16)).collect()),
            DataType::Uint16 => Values::I32(v.iter().map(|&x| i32::from(x as u16)).collect()),
            DataType::Uint32 => Values::I64(v.iter().map(|&x| i64::from(x as u32)).collect()),
            DataType::Int8 => Values::I8(v.iter().map(|&x| x as i8).collect()),
            DataType::Uint8 => Values::U8(v.iter().map(|&x| x as u8).collect()),
            DataType::Uint64 => Values::U64(v.iter().map(|&x| x as u64).collect()),
            DataType::Bool => Values::Bool(v.iter().map(|&x| x != 0).collect()),
            float @ (DataType::Float
            | DataType::Float16
            | DataType::Bfloat16
            | DataType::Double) => {
                Values::from_f64(float, &v.iter().map(|&x| x as f64).collect::<Vec<_>>())?
            }
            DataType::String => {
                return Err(OnnxError::WrongType {
                    expected: "a numeric",
                    found: DataType::String,
                })
            }
        })
    }

    /// An empty vector of the same type.
    pub(crate) fn empty_like(&self) -> Values {
        map_values!(self, _v => Vec::new())
    }

    /// Appends `other`, which must hold the same type.
    pub(crate) fn extend_from(&mut self, other: &Values) -> bool {
        match (self, other) {
            (Values::F32(a), Values::F32(b)) => a.extend_from_slice(b),
            (Values::F64(a), Values::F64(b)) => a.extend_from_slice(b),
            (Values::I64(a), Values::I64(b)) => a.extend_from_slice(b),
            (Values::I32(a), Values::I32(b)) => a.extend_from_slice(b),
            (Values::I8(a), Values::I8(b)) => a.extend_from_slice(b),
            (Values::U8(a), Values::U8(b)) => a.extend_from_slice(b),
            (Values::U64(a), Values::U64(b)) => a.extend_from_slice(b),
            (Values::Bool(a), Values::Bool(b)) => a.extend_from_slice(b),
            (Values::Str(a), Values::Str(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }
}

fn wrong_type(expected: &'static str, v: &Values) -> OnnxError {
    OnnxError::WrongType {
        expected,
        found: v.data_type(),
    }
}

/// A dense tensor: its shape and its row-major elements (`values.len() == dims` product).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub dims: Vec<usize>,
    pub values: Values,
}

impl TensorData {
    /// A tensor, checking that the element count matches the shape.
    pub fn new(dims: Vec<usize>, values: Values) -> Result<TensorData> {
        let numel = checked_numel(&dims);
        if numel != Some(values.len()) {
            return Err(OnnxError::Value {
                reason: format!(
                    "shape {dims:?} does not match its {} elements",
                    values.len()
                ),
                fix: "build it with matching shape and data",
            });
        }
        Ok(TensorData { dims, values })
    }

    pub fn f32(dims: Vec<usize>, values: Vec<f32>) -> Result<TensorData> {
        TensorData::new(dims, Values::F32(values))
    }

    pub fn i64(dims: Vec<usize>, values: Vec<i64>) -> Result<TensorData> {
        TensorData::new(dims, Values::I64(values))
    }

    /// A rank-0 int64 tensor.
    pub fn scalar_i64(value: i64) -> TensorData {
        TensorData {
            dims: Vec::new(),
            values: Values::I64(vec![value]),
        }
    }

    /// A rank-1 int64 tensor.
    pub fn vec_i64(values: Vec<i64>) -> TensorData {
        TensorData {
            dims: vec![values.len()],
            values: Values::I64(values),
        }
    }

    pub fn numel(&self) -> usize {
        self.values.len()
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    pub fn data_type(&self) -> DataType {
        self.values.data_type()
    }

    /// The elements as f32, from any numeric type (f64 and large integers round).
    pub fn as_f32(&self) -> Result<Vec<f32>> {
        match &self.values {
            Values::F32(v) => Ok(v.clone()),
            other => Ok(other.to_f64()?.into_iter().map(|x| x as f32).collect()),
        }
    }

    /// The elements as f64, from any numeric type.
    pub fn as_f64(&self) -> Result<Vec<f64>> {
        self.values.to_f64()
    }

    /// The elements as i64, from any integer or boolean type; floats are refused.
    pub fn as_i64(&self) -> Result<Vec<i64>> {
        self.values.to_i64()
    }

    /// The single element of a one-element tensor (any rank) as f32.
    pub fn scalar_f32(&self) -> Result<f32> {
        match self.as_f32()?.as_slice() {
            [x] => Ok(*x),
            _ => Err(self.not_scalar()),
        }
    }

    /// The single element of a one-element tensor (any rank) as i64.
    pub fn scalar_i64_value(&self) -> Result<i64> {
        match self.as_i64()?.as_slice() {
            [x] => Ok(*x),
            _ => Err(self.not_scalar()),
        }
    }

    fn not_scalar(&self) -> OnnxError {
        OnnxError::Value {
            reason: format!("expected one element, found shape {:?}", self.dims),
            fix: "pass a scalar or one-element tensor",
        }
    }
}

/// Product of the dims, `None` on overflow.
pub(crate) fn checked_numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

const RE_EXPORT: &str = "the file is malformed: re-export the model";

/// Decodes one tensor. Every size is checked against the bytes actually present (and the
/// limits) before anything proportional to the declared shape is allocated.
pub(crate) fn tensor_from_proto(
    t: TensorProto,
    label: &str,
    external: &mut ExternalFiles,
    limits: &Limits,
) -> Result<TensorData> {
    let name = if t.name.is_empty() { label } else { &t.name };
    let err = |reason: String, fix: &'static str| OnnxError::Tensor {
        tensor: name.to_string(),
        reason,
        fix,
    };
    if t.segment.is_some() {
        return Err(err(
            "is split into segments (TensorProto.segment), which this reader does not support"
                .into(),
            "save the model with whole tensors",
        ));
    }
    let dtype = DataType::from_code(t.data_type).ok_or_else(|| {
        err(
            format!(
                "has element type {}, which this reader does not support",
                data_type_name(t.data_type)
            ),
            "convert the model to float32 (or float16) before exporting",
        )
    })?;
    let mut dims = Vec::with_capacity(t.dims.len().min(64));
    for &d in &t.dims {
        dims.push(usize::try_from(d).map_err(|_| {
            err(
                format!("has a negative dimension in {:?}", t.dims),
                RE_EXPORT,
            )
        })?);
    }
    let numel = checked_numel(&dims).ok_or_else(|| {
        err(
            format!("dims {:?} overflow when multiplied", t.dims),
            RE_EXPORT,
        )
    })?;
    let nbytes = dtype.size().map(|size| numel.checked_mul(size));
    if let Some(bytes) = nbytes {
        match bytes {
            Some(b) if b as u64 <= limits.max_tensor_bytes => {}
            _ => {
                return Err(err(
                    format!(
                        "declares {numel} {dtype} elements (dims {dims:?}), over the limit of {} \
                         bytes per tensor",
                        limits.max_tensor_bytes
                    ),
                    "raise Limits::max_tensor_bytes if the model is genuine",
                ))
            }
        }
    }

    let values = if t.data_location == proto::DATA_LOCATION_EXTERNAL {
        let Some(Some(nbytes)) = nbytes else {
            return Err(err(
                "is a STRING tensor stored as external data, which ONNX does not allow".into(),
                RE_EXPORT,
            ));
        };
        let bytes = external.read(name, &t.external_data, nbytes)?;
        from_le_bytes(dtype, &bytes)
    } else if let Some(raw) = &t.raw_data {
        let Some(Some(nbytes)) = nbytes else {
            return Err(err(
                "is a STRING tensor with raw_data, which ONNX does not allow".into(),
                RE_EXPORT,
            ));
        };
        if raw.len() != nbytes {
            return Err(err(
                format!(
                    "declares dims {dims:?} of {dtype} ({nbytes} bytes) but raw_data holds {} bytes",
                    raw.len()
                ),
                RE_EXPORT,
            ));
        }
        from_le_bytes(dtype, raw)
    } else {
        from_typed_fields(dtype, &t, numel).map_err(|found| {
            err(
                format!(
                    "declares {numel} {dtype} elements (dims {dims:?}) but holds {found} values"
                ),
                RE_EXPORT,
            )
        })?
    };
    Ok(TensorData { dims, values })
}

/// Decodes little-endian elements; `bytes.len()` is a multiple of the element size.
fn from_le_bytes(dtype: DataType, bytes: &[u8]) -> Values {
    fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        let (chunks, _) = bytes.as_chunks::<N>();
        chunks.iter().map(|c| f(*c)).collect()
    }
    match dtype {
        DataType::Float => Values::F32(le(bytes, f32::from_le_bytes)),
        DataType::Double => Values::F64(le(bytes, f64::from_le_bytes)),
        DataType::Float16 => Values::F32(le(bytes, |b| half::f16::from_le_bytes(b).to_f32())),
        DataType::Bfloat16 => Values::F32(le(bytes, |b| half::bf16::from_le_bytes(b).to_f32())),
        DataType::Int64 => Values::I64(le(bytes, i64::from_le_bytes)),
        DataType::Int32 => Values::I32(le(bytes, i32::from_le_bytes)),
        DataType::Int16 => Values::I32(le(bytes, |b| i32::from(i16::from_le_bytes(b)))),
        DataType::Uint16 => Values::I32(le(bytes, |b| i32::from(u16::from_le_bytes(b)))),
        DataType::Uint32 => Values::I64(le(bytes, |b| i64::from(u32::from_le_bytes(b)))),
        DataType::Uint64 => Values::U64(le(bytes, u64::from_le_bytes)),
        DataType::Int8 => Values::I8(bytes.iter().map(|&b| b as i8).collect()),
        DataType::Uint8 => Values::U8(bytes.to_vec()),
        DataType::Bool => Values::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DataType::String => Values::Str(Vec::new()),
    }
}

/// Decodes the type-specific repeated field; `Err(count)` when it does not hold `numel`
/// values. Which field holds which type follows the comments of `onnx.proto`: `int32_data`
/// carries every type of 16 bits or less, f16/bf16 as their bit patterns.
fn from_typed_fields(
    dtype: DataType,
    t: &TensorProto,
    numel: usize,
) -> std::result::Result<Values, usize> {
    let check = |len: usize| if len == numel { Ok(()) } else { Err(len) };
    let i32s = &t.int32_data;
    Ok(match dtype {
        DataType::Float => {
            check(t.float_data.len())?;
            Values::F32(t.float_data.clone())
        }
        DataType::Double => {
            check(t.double_data.len())?;
            Values::F64(t.double_data.clone())
        }
        DataType::Int64 => {
            check(t.int64_data.len())?;
            Values::I64(t.int64_data.clone())
        }
        DataType::Uint64 => {
            check(t.uint64_data.len())?;
            Values::U64(t.uint64_data.clone())
        }
        DataType::Uint32 => {
            check(t.uint64_data.len())?;
            Values::I64(t.uint64_data.iter().map(|&x| i64::from(x as u32)).collect())
        }
        DataType::String => {
            check(t.string_data.len())?;
            Values::Str(
                t.string_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            )
        }
        _ => {
            check(i32s.len())?;
            match dtype {
                DataType::Int32 => Values::I32(i32s.clone()),
                DataType::Int16 => Values::I32(i32s.iter().map(|&x| i32::from(x as i16)).collect()),
                DataType::Uint16 => {
                    Values::I32(i32s.iter().map(|&x| i32::from(x as u16)).collect())
                }
                DataType::Int8 => Values::I8(i32s.iter().map(|&x| x as i8).collect()),
                DataType::Uint8 => Values::U8(i32s.iter().map(|&x| x as u8).collect()),
                DataType::Bool => Values::Bool(i32s.iter().map(|&x| x != 0).collect()),
                DataType::Float16 => Values::F32(
                    i32s.iter()
                        .map(|&x| half::f16::from_bits(x as u16).to_f32())
                        .collect(),
                ),
                DataType::Bfloat16 => Values::F32(
                    i32s.iter()
                        .map(|&x| half::bf16::from_bits(x as u16).to_f32())
                        .collect(),
                ),
                _ => unreachable!("every other type has its own field above"),
            }
        }
    })
}
