//! `torch.save` checkpoints: the zip archive of torch >= 1.6 and the legacy
//! pickle stream of older versions. Both hold a pickled state dict whose
//! tensors point, through persistent ids, at raw storages kept outside the
//! pickle.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;
use std::rc::Rc;

use crate::pickle::{self, PickleError, TensorRef, Value};
use crate::{detect_format, read_file, DType, Format, StateDict, StoredTensor, WeightsError};

/// `0x1950a86a20f9469cfc6c`, the first pickle of every legacy torch file,
/// as little-endian bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// Keys under which training checkpoints commonly nest the model weights.
const WRAPPER_KEYS: [&str; 4] = ["state_dict", "model", "model_state_dict", "net"];

/// Loads a PyTorch checkpoint (zip or legacy format, detected by content).
pub fn load_pth(path: &Path) -> Result<StateDict, WeightsError> {
    let bytes = read_file(path)?;
    match detect_format(&bytes) {
        Some(Format::TorchZip) => load_zip_bytes(&bytes, path),
        Some(Format::TorchLegacy) => load_legacy_bytes(&bytes, path),
        _ => Err(WeightsError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

fn pickle_error(path: &Path, err: PickleError, base: usize) -> WeightsError {
    match err {
        PickleError::Forbidden(global) => WeightsError::ForbiddenGlobal {
            path: path.to_path_buf(),
            global,
        },
        PickleError::Malformed { offset, reason } => WeightsError::corrupt(
            path,
            format!("bad pickle data at byte {}: {reason}", base + offset),
        ),
        PickleError::Unsupported { offset, reason } => {
            WeightsError::unsupported(path, format!("{reason} (pickle byte {})", base + offset))
        }
    }
}

/// A malicious file can make many large tensors view the same storage; cap
/// the total decoded elements relative to the file size. Legitimate files
/// stay far below this even with 1-byte storages and shared weights.
fn element_budget(file_len: usize) -> usize {
    file_len.saturating_mul(2).saturating_add(1 << 24)
}

pub(crate) fn load_zip_bytes(bytes: &[u8], path: &Path) -> Result<StateDict, WeightsError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| WeightsError::corrupt(path, format!("unreadable zip archive ({e})")))?;

    // torch names the top folder after the file it was saved as, so look
    // for `<anything>/data.pkl` and take the shallowest.
    let pkl_name = archive
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.matches('/').count())
        .map(str::to_owned)
        .ok_or_else(|| {
            WeightsError::unsupported(
                path,
                "zip archive without data.pkl, so not a PyTorch checkpoint",
            )
        })?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_owned();

    // Absent in files from torch < 1.10, which were always little-endian.
    if archive
        .index_for_name(&format!("{prefix}byteorder"))
        .is_some()
    {
        let order = read_entry(&mut archive, &format!("{prefix}byteorder"), 64, path)?;
        if order.trim_ascii() != b"little" {
            return Err(WeightsError::unsupported(
                path,
                "the checkpoint was saved on a big-endian machine",
            ));
        }
    }

    // Decompressed bytes may exceed the file size only through compression,
    // which torch never uses; allow some slack but no zip bombs.
    let mut byte_budget = bytes.len().saturating_mul(8).saturating_add(1 << 26);
    let pkl = read_entry(&mut archive, &pkl_name, byte_budget, path)?;
    byte_budget -= pkl.len();

    let unpickled = pickle::unpickle(&pkl).map_err(|e| pickle_error(path, e, 0))?;
    let tensors = collect_tensors(&unpickled.value, path)?;

    // Each storage is read once, used for all tensors viewing it, then
    // dropped, so peak memory stays near file size + decoded tensors.
    let mut by_storage: BTreeMap<String, Vec<(String, Rc<TensorRef>)>> = BTreeMap::new();
    for (name, tensor) in tensors {
        by_storage
            .entry(tensor.storage.key.clone())
            .or_default()
            .push((name, tensor));
    }
    let mut budget = element_budget(bytes.len());
    let mut dict = StateDict::new();
    for (key, views) in by_storage {
        let entry = format!("{prefix}data/{key}");
        if archive.index_for_name(&entry).is_none() {
            let name = views.first().map(|(n, _)| n.as_str()).unwrap_or_default();
            return Err(WeightsError::corrupt(
                path,
                format!("tensor {name} refers to storage {key}, which is missing from the archive"),
            ));
        }
        let data = read_entry(&mut archive, &entry, byte_budget, path)?;
        byte_budget -= data.len();
        for (name, tensor) in views {
            let stored = materialize(&tensor, &data, &mut budget)
                .map_err(|r| WeightsError::corrupt(path, format!("tensor {name}: {r}")))?;
            dict.insert(name, stored);
        }
    }
    Ok(dict)
}

/// Reads a whole zip entry, refusing entries larger than `limit` bytes.
fn read_entry(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    limit: usize,
    path: &Path,
) -> Result<Vec<u8>, WeightsError> {
    let bad = |e: String| WeightsError::corrupt(path, format!("zip entry {name}: {e}"));
    let mut file = archive.by_name(name).map_err(|e| bad(e.to_string()))?;
    let size = usize::try_from(file.size()).unwrap_or(usize::MAX);
    if size > limit {
        return Err(bad(format!(
            "claims {size} bytes, more than the file can hold"
        )));
    }
    let mut out = Vec::with_capacity(size);
    // `take` guards against entries that decompress to more than they claim.
    (&mut file)
        .take(size as u64)
        .read_to_end(&mut out)
        .map_err(|e| bad(e.to_string()))?;
    if out.len() != size {
        return Err(bad(format!("holds {} of {size} bytes", out.len())));
    }
    Ok(out)
}

pub(crate) fn load_legacy_bytes(bytes: &[u8], path: &Path) -> Result<StateDict, WeightsError> {
    let mut pos = 0usize;
    let next_pickle = |pos: &mut usize| {
        let rest = bytes.get(*pos..).unwrap_or_default();
        let u = pickle::unpickle(rest).map_err(|e| pickle_error(path, e, *pos))?;
        *pos += u.end;
        Ok::<_, WeightsError>(u)
    };

    let magic = next_pickle(&mut pos)?.value;
    if !matches!(&magic, Value::BigInt(b) if **b == LEGACY_MAGIC) {
        return Err(WeightsError::unsupported(
            path,
            "a Python pickle without the PyTorch magic number, so not a torch.save checkpoint",
        ));
    }
    match next_pickle(&mut pos)?.value {
        Value::Int(LEGACY_PROTOCOL_VERSION) => {}
        Value::Int(v) => {
            return Err(WeightsError::unsupported(
                path,
                format!("legacy checkpoint protocol version {v}"),
            ))
        }
        other => {
            return Err(WeightsError::corrupt(
                path,
                format!("protocol version is a {}", other.type_name()),
            ))
        }
    }
    if let Value::Dict(sys_info) = next_pickle(&mut pos)?.value {
        let big_endian = sys_info
            .items
            .iter()
            .any(|(k, v)| k.as_str() == Some("little_endian") && matches!(v, Value::Bool(false)));
        if big_endian {
            return Err(WeightsError::unsupported(
                path,
                "the checkpoint was saved on a big-endian machine",
            ));
        }
    }
    let root = next_pickle(&mut pos)?;
    let keys = next_pickle(&mut pos)?.value;
    let Value::List(keys) = keys else {
        return Err(WeightsError::corrupt(
            path,
            format!("storage key list is a {}", keys.type_name()),
        ));
    };

    let mut dtypes: HashMap<&str, DType> = HashMap::new();
    for s in &root.storages {
        if let Some(prev) = dtypes.insert(&s.key, s.dtype) {
            if prev != s.dtype {
                return Err(WeightsError::corrupt(
                    path,
                    format!("storage {} is used with two element types", s.key),
                ));
            }
        }
    }

    // Storage bytes follow the pickles in key-list order, each prefixed with
    // its element count; the dtype (hence byte size) is only known from the
    // pickled tensors.
    let mut raw: HashMap<String, &[u8]> = HashMap::new();
    for key in &keys.items {
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => {
                return Err(WeightsError::corrupt(
                    path,
                    format!("storage key is a {}", other.type_name()),
                ))
            }
        };
        let dtype = *dtypes.get(key.as_str()).ok_or_else(|| {
            WeightsError::corrupt(path, format!("storage {key} is listed but never used"))
        })?;
        let header = bytes
            .get(pos..pos.saturating_add(8))
            .and_then(|h| <[u8; 8]>::try_from(h).ok())
            .ok_or_else(|| {
                WeightsError::corrupt(path, format!("file ends before storage {key}"))
            })?;
        pos += 8;
        let remaining = bytes.len() - pos;
        let nbytes = usize::try_from(u64::from_le_bytes(header))
            .ok()
            .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
            .filter(|&n| n <= remaining)
            .ok_or_else(|| {
                WeightsError::corrupt(
                    path,
                    format!("storage {key} is larger than the {remaining} bytes left in the file"),
                )
            })?;
        raw.insert(key, &bytes[pos..pos + nbytes]);
        pos += nbytes;
    }

    let tensors = collect_tensors(&root.value, path)?;
    let mut budget = element_budget(bytes.len());
    let mut dict = StateDict::new();
    for (name, tensor) in tensors {
        let key = &tensor.storage.key;
        let data = raw.get(key.as_str()).ok_or_else(|| {
            WeightsError::corrupt(
                path,
                format!("tensor {name} refers to storage {key}, which is not in the file"),
            )
        })?;
        let stored = materialize(&tensor, data, &mut budget)
            .map_err(|r| WeightsError::corrupt(path, format!("tensor {name}: {r}")))?;
        dict.insert(name, stored);
    }
    Ok(dict)
}

/// Finds the tensors of the state dict: the top-level dict itself, or one
/// nested under a common wrapper key of a training checkpoint. Entries that
/// are not tensors (`_metadata`, epoch counters, ...) are skipped.
fn collect_tensors(
    root: &Value,
    path: &Path,
) -> Result<Vec<(String, Rc<TensorRef>)>, WeightsError> {
    let Value::Dict(top) = root else {
        return Err(WeightsError::unsupported(
            path,
            format!(
                "the checkpoint holds a {} instead of a dict of tensors",
                root.type_name()
            ),
        ));
    };
    // A Python dict keeps the last value set for a key, whatever its type.
    let tensors_of = |items: &[(Value, Value)]| -> Vec<(String, Rc<TensorRef>)> {
        let last: BTreeMap<&str, &Value> = items
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?, v)))
            .collect();
        last.into_iter()
            .filter_map(|(k, v)| match v {
                Value::Tensor(t) => Some((k.to_string(), t.clone())),
                _ => None,
            })
            .collect()
    };
    let direct = tensors_of(&top.items);
    if !direct.is_empty() {
        return Ok(direct);
    }
    for wrapper in WRAPPER_KEYS {
        let nested = top.items.iter().rev().find_map(|(k, v)| match v {
            Value::Dict(d) if k.as_str() == Some(wrapper) => Some(d),
            _ => None,
        });
        if let Some(nested) = nested {
            let found = tensors_of(&nested.items);
            if !found.is_empty() {
                return Ok(found);
            }
        }
    }
    Err(WeightsError::unsupported(
        path,
        "no tensors found at the top level or under 'state_dict'/'model'",
    ))
}

/// Copies a (possibly strided) view of a storage into a contiguous f32 tensor.
fn materialize(t: &TensorRef, storage: &[u8], budget: &mut usize) -> Result<StoredTensor, String> {
    let dtype = t.storage.dtype;
    let es = dtype.size_in_bytes();
    let storage = match t.storage.view {
        None => storage,
        Some((offset, len)) => offset
            .checked_add(len)
            .and_then(|end| storage.get(offset.checked_mul(es)?..end.checked_mul(es)?))
            .ok_or_else(|| format!("storage view {offset}+{len} lies outside its storage"))?,
    };
    let available = storage.len() / es;

    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("element count overflows")?;
    *budget = budget
        .checked_sub(numel)
        .ok_or("tensors hold more elements than the file could contain")?;

    let mut data = Vec::with_capacity(numel);
    if numel == 0 {
        return Ok(StoredTensor::new(t.shape.clone(), dtype, data));
    }
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &s)| {
            acc.checked_add((d - 1).checked_mul(s)?)
        })
        .filter(|&last| last < available)
        .ok_or_else(|| format!("view exceeds its storage of {available} elements"))?;

    if is_contiguous(&t.shape, &t.stride) {
        // `last` was bounds-checked above and equals offset + numel - 1 here.
        dtype.decode_into(&storage[t.offset * es..(last + 1) * es], &mut data);
    } else {
        let ndim = t.shape.len();
        let mut index = vec![0usize; ndim];
        let mut pos = t.offset;
        for _ in 0..numel {
            data.push(
                dtype
                    .decode_one(storage, pos)
                    .ok_or("view exceeds its storage")?,
            );
            // Odometer over the multi-index; wrapping arithmetic because a
            // size-1 dimension may carry an arbitrary stride.
            for d in (0..ndim).rev() {
                index[d] += 1;
                pos = pos.wrapping_add(t.stride[d]);
                if index[d] < t.shape[d] {
                    break;
                }
                pos = pos.wrapping_sub(t.stride[d].wrapping_mul(t.shape[d]));
                index[d] = 0;
            }
        }
    }
    Ok(StoredTensor::new(t.shape.clone(), dtype, data))
}

fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::StorageRef;

    fn tensor(numel: usize, offset: usize, shape: &[usize], stride: &[usize]) -> TensorRef {
        TensorRef {
            storage: Rc::new(StorageRef {
                key: "0".into(),
                dtype: DType::F32,
                numel,
                view: None,
            }),
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn storage(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    #[test]
    fn strided_views_are_gathered() {
        let s = storage(12);
        let mut budget = 1000;
        // Transpose of a 3x4 matrix starting at 0.
        let t = materialize(&tensor(12, 0, &[4, 3], &[1, 4]), &s, &mut budget).unwrap();
        assert_eq!(t.data, [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        // Offset, contiguous.
        let t = materialize(&tensor(12, 5, &[2, 2], &[2, 1]), &s, &mut budget).unwrap();
        assert_eq!(t.data, [5., 6., 7., 8.]);
        // 0-d scalar.
        let t = materialize(&tensor(12, 11, &[], &[]), &s, &mut budget).unwrap();
        assert_eq!(t.data, [11.]);
        // Size-1 dimension with an absurd stride is harmless.
        let t = materialize(&tensor(12, 1, &[1, 3], &[usize::MAX, 2]), &s, &mut budget).unwrap();
        assert_eq!(t.data, [1., 3., 5.]);
        // Empty tensor.
        let t = materialize(&tensor(12, 0, &[0, 3], &[3, 1]), &s, &mut budget).unwrap();
        assert!(t.data.is_empty());
    }

    #[test]
    fn out_of_bounds_and_oversized_views_are_rejected() {
        let s = storage(12);
        let mut budget = 1000;
        assert!(materialize(&tensor(12, 10, &[3], &[1]), &s, &mut budget).is_err());
        assert!(materialize(&tensor(12, 0, &[2, 2], &[usize::MAX, 1]), &s, &mut budget).is_err());
        assert!(materialize(&tensor(12, 0, &[usize::MAX, 2], &[0, 0]), &s, &mut budget).is_err());
        // Broadcast views within bounds still count against the budget.
        let mut small = 10;
        assert!(materialize(&tensor(12, 0, &[100], &[0]), &s, &mut small).is_err());
    }
}
