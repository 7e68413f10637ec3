//! safetensors reading and writing.

use std::collections::HashMap;
use std::path::Path;

use ::safetensors::tensor::{Dtype, TensorView};
use ::safetensors::SafeTensors;

use crate::{read_file, write_atomically, DType, StateDict, StoredTensor, WeightsError};

/// Loads a safetensors file, converting every tensor to f32.
pub fn load_safetensors(path: &Path) -> Result<StateDict, WeightsError> {
    let bytes = read_file(path)?;
    load_safetensors_bytes(&bytes, path)
}

pub(crate) fn load_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<StateDict, WeightsError> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| WeightsError::corrupt(path, format!("invalid safetensors data: {e}")))?;
    let mut dict = StateDict::new();
    for (name, view) in file.iter() {
        let dtype = from_safetensors_dtype(view.dtype()).ok_or_else(|| {
            WeightsError::unsupported(
                path,
                format!("tensor {name} has element type {:?}", view.dtype()),
            )
        })?;
        let mut data = Vec::with_capacity(view.data().len() / dtype.size_in_bytes());
        dtype.decode_into(view.data(), &mut data);
        dict.insert(name, StoredTensor::new(view.shape().to_vec(), dtype, data));
    }
    Ok(dict)
}

fn from_safetensors_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Writes `dict` as safetensors. Float tensors are stored as `dtype` (F32,
/// F16 or BF16); integer and bool tensors (e.g. `num_batches_tracked`) are
/// kept, as I64. The file is replaced atomically.
pub fn save_safetensors(dict: &StateDict, path: &Path, dtype: DType) -> Result<(), WeightsError> {
    let invalid = |reason: String| WeightsError::InvalidArgument {
        path: path.to_path_buf(),
        reason,
    };
    let float_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        other => {
            return Err(invalid(format!(
                "float tensors can be stored as F32, F16 or BF16, not {other}; choose one of those"
            )))
        }
    };

    let mut encoded: Vec<(&str, Dtype, &[usize], Vec<u8>)> = Vec::with_capacity(dict.len());
    for (name, t) in dict.iter() {
        if t.data.len() != t.numel() {
            return Err(invalid(format!(
                "tensor {name} has {} values but its shape {:?} needs {}; fix the tensor before saving",
                t.data.len(),
                t.shape,
                t.numel()
            )));
        }
        let (st_dtype, bytes) = if t.dtype.is_float() {
            let bytes = match float_dtype {
                Dtype::F16 => t
                    .data
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => t
                    .data
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => t.data.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            };
            (float_dtype, bytes)
        } else {
            let bytes = t
                .data
                .iter()
                .flat_map(|&v| (v as i64).to_le_bytes())
                .collect();
            (Dtype::I64, bytes)
        };
        encoded.push((name, st_dtype, &t.shape, bytes));
    }

    let mut views = Vec::with_capacity(encoded.len());
    for (name, st_dtype, shape, bytes) in &encoded {
        let view = TensorView::new(*st_dtype, shape.to_vec(), bytes)
            .map_err(|e| invalid(format!("tensor {name}: {e}")))?;
        views.push((*name, view));
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let bytes = ::safetensors::serialize(views, &metadata)
        .map_err(|e| invalid(format!("could not encode safetensors: {e}")))?;
    write_atomically(path, &bytes)
}
