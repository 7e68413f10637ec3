//! Tensor data stored outside the model file (`data_location = EXTERNAL`).
//!
//! The `location` of external data is written by whoever made the file, so it is untrusted:
//! only files inside the model's own folder are read, checked after resolving symlinks, so a
//! model cannot make this reader open `/etc/shadow` or `../../secret`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::error::{OnnxError, Result};
use crate::proto::StringStringEntryProto;

/// The external files of one model, each opened once.
pub(crate) struct ExternalFiles {
    model: PathBuf,
    base: Option<PathBuf>,
    canonical_base: Option<PathBuf>,
    open: HashMap<PathBuf, (File, u64)>,
}

impl ExternalFiles {
    /// `model` names the model in messages; `base` is the folder external data is read
    /// from, `None` for a model that has no folder (then external data is refused).
    pub fn new(model: &Path, base: Option<&Path>) -> Self {
        ExternalFiles {
            model: model.to_path_buf(),
            base: base.map(Path::to_path_buf),
            canonical_base: None,
            open: HashMap::new(),
        }
    }

    fn model_name(&self) -> String {
        self.model.file_name().map_or_else(
            || self.model.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Reads the `nbytes` bytes of one tensor's external data.
    pub fn read(
        &mut self,
        tensor: &str,
        entries: &[StringStringEntryProto],
        nbytes: usize,
    ) -> Result<Vec<u8>> {
        let err = |reason: String, fix: String| OnnxError::ExternalData {
            tensor: tensor.to_string(),
            reason,
            fix,
        };
        let re_export = || "the file is malformed: re-export the model".to_string();
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for e in entries {
            let number = || {
                e.value.trim().parse::<u64>().map_err(|_| {
                    err(
                        format!(
                            "has external data {} '{}', not a byte count",
                            e.key, e.value
                        ),
                        re_export(),
                    )
                })
            };
            match e.key.as_str() {
                "location" => location = Some(e.value.as_str()),
                "offset" => offset = number()?,
                "length" => length = Some(number()?),
                // "checksum" (SHA-1 of the whole file) is optional and not checked: a
                // corrupted weight file still loads, as with onnxruntime.
                _ => {}
            }
        }
        let Some(location) = location.filter(|l| !l.is_empty()) else {
            return Err(err(
                "is marked as external data but names no location".into(),
                re_export(),
            ));
        };
        let model = self.model_name();
        let inside = || {
            format!("external data must be a file in the folder of {model}: re-save the model with onnx.save(..., save_as_external_data=True, location=\"{model}.data\")")
        };
        let Some(base) = self.base.clone() else {
            return Err(err(
                format!("is stored in external file '{location}', but the model was read from memory with no folder"),
                "load the model from its file (deepvis_onnx::load) or pass its folder".into(),
            ));
        };
        let rel = Path::new(location);
        // Checked on the text as well as on components, so a Windows-style absolute path is
        // refused on Unix too.
        if rel.has_root()
            || location.starts_with(['/', '\\'])
            || location.as_bytes().get(1) == Some(&b':')
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            let what = if location.contains("..") {
                "outside the model's folder"
            } else {
                "an absolute path"
            };
            return Err(err(
                format!("names external data file '{location}', which is {what}"),
                inside(),
            ));
        }
        let canonical_base = match &self.canonical_base {
            Some(c) => c.clone(),
            None => {
                let c = base.canonicalize().map_err(|e| OnnxError::Io {
                    path: base.clone(),
                    reason: e.to_string(),
                })?;
                self.canonical_base = Some(c.clone());
                c
            }
        };
        let missing = || {
            err(
                format!(
                    "external data file '{location}' is missing from {}",
                    base.display()
                ),
                format!("keep {location} next to {model}"),
            )
        };
        let path = base.join(rel).canonicalize().map_err(|_| missing())?;
        if !path.starts_with(&canonical_base) {
            return Err(err(
                format!(
                    "external data file '{location}' resolves to {}, outside the model's folder",
                    path.display()
                ),
                inside(),
            ));
        }
        if !self.open.contains_key(&path) {
            let io = |e: std::io::Error| OnnxError::Io {
                path: path.clone(),
                reason: e.to_string(),
            };
            let file = File::open(&path).map_err(io)?;
            let meta = file.metadata().map_err(io)?;
            if !meta.is_file() {
                return Err(missing());
            }
            self.open.insert(path.clone(), (file, meta.len()));
        }
        let Some((file, len)) = self.open.get_mut(&path) else {
            return Err(missing());
        };
        if let Some(length) = length {
            if length != nbytes as u64 {
                return Err(err(
                    format!("declares {length} bytes of external data, but its dims and type need {nbytes}"),
                    re_export(),
                ));
            }
        }
        let end = offset.checked_add(nbytes as u64).filter(|&end| end <= *len);
        if end.is_none() {
            return Err(err(
                format!(
                    "needs bytes {offset}..{} of '{location}', which has only {len} bytes",
                    offset.saturating_add(nbytes as u64)
                ),
                format!("copy {location} again in full, next to {model}; it is truncated or belongs to another model"),
            ));
        }
        let mut buf = vec![0u8; nbytes];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| OnnxError::Io {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(buf)
    }
}
