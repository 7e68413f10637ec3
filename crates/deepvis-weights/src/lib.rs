//! Reading pretrained CNN weights into a plain state dict, without executing
//! any code from the file, plus a cached model downloader.
//!
//! Supported inputs, detected by content rather than file extension:
//! - PyTorch checkpoints written by `torch.save` (zip format of torch >= 1.6
//!   and the legacy pickle-stream format of older versions);
//! - safetensors files.
//!
//! PyTorch checkpoints are Python pickles. They are decoded by a small
//! data-only pickle machine that only understands the handful of globals a
//! state dict needs; anything else is refused with
//! [`WeightsError::ForbiddenGlobal`].

mod dtype;
mod error;
mod pickle;
mod pth;
mod safetensors;
mod state_dict;

pub mod download;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use crate::dtype::DType;
pub use crate::error::WeightsError;
pub use crate::pth::load_pth;
pub use crate::safetensors::{load_safetensors, save_safetensors};
pub use crate::state_dict::{StateDict, StoredTensor};

/// The container formats [`load`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` zip archive (torch >= 1.6).
    TorchZip,
    /// `torch.save` legacy pickle stream (torch < 1.6, or
    /// `_use_new_zipfile_serialization=False`).
    TorchLegacy,
    /// safetensors.
    Safetensors,
}

/// Loads a weights file, choosing the reader from the file's first bytes.
pub fn load(path: &Path) -> Result<StateDict, WeightsError> {
    let bytes = read_file(path)?;
    load_bytes(&bytes, path)
}

/// Loads weights already in memory. `path` is only used in error messages.
pub fn load_bytes(bytes: &[u8], path: &Path) -> Result<StateDict, WeightsError> {
    match detect_format(bytes) {
        Some(Format::TorchZip) => pth::load_zip_bytes(bytes, path),
        Some(Format::TorchLegacy) => pth::load_legacy_bytes(bytes, path),
        Some(Format::Safetensors) => safetensors::load_safetensors_bytes(bytes, path),
        None => Err(WeightsError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// Guesses the container format from the leading bytes (magic numbers).
pub fn detect_format(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Some(Format::TorchZip);
    }
    // Legacy torch files start with a protocol-2 pickle of the magic number;
    // other protocols are accepted so that plain pickles get a precise error
    // (e.g. a forbidden global) instead of "unknown format".
    if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        return Some(Format::TorchLegacy);
    }
    if bytes.len() >= 9 && bytes[8] == b'{' {
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[..8]);
        let header_len = u64::from_le_bytes(len);
        if header_len >= 2 && header_len <= (bytes.len() as u64 - 8) {
            return Some(Format::Safetensors);
        }
    }
    None
}

/// Hex-encoded SHA-256 of a file, streamed so large weights need no extra memory.
pub fn sha256_file(path: &Path) -> Result<String, WeightsError> {
    use sha2::{Digest, Sha256};
    let mut file = open_file(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn open_file(path: &Path) -> Result<File, WeightsError> {
    File::open(path).map_err(|source| io_error(path, source))
}

/// Reads a whole regular file. Devices and pipes are refused: `/dev/zero` or `/dev/urandom`
/// given by mistake would otherwise be read until memory runs out.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, WeightsError> {
    let mut file = open_file(path)?;
    let meta = file.metadata().map_err(|source| io_error(path, source))?;
    if !meta.is_file() {
        return Err(WeightsError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut out)
        .map_err(|source| io_error(path, source))?;
    Ok(out)
}

fn io_error(path: &Path, source: std::io::Error) -> WeightsError {
    if source.kind() == std::io::ErrorKind::NotFound {
        WeightsError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        WeightsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// so readers never observe a half-written file and a crash leaves the old
/// file intact.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    let write_err = |source| WeightsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        write_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        ))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(source));
    }
    Ok(())
}
