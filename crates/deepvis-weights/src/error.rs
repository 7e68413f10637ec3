use std::path::PathBuf;

/// Why a weights file could not be read or written. Every message is a
/// single line that names the file and says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights file {} does not exist; check the path or download the weights first", path.display())]
    NotFound { path: PathBuf },

    #[error("could not read {}: {source}; check that the file is readable", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} is not a regular file (it is a directory, device or pipe); give the path of a weights file", path.display())]
    NotAFile { path: PathBuf },

    #[error("could not write {}: {source}; check that the directory exists and is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: format not recognized; expected a PyTorch checkpoint (.pth/.pt saved by torch.save) or a .safetensors file", path.display())]
    UnknownFormat { path: PathBuf },

    #[error("{} references the Python global `{global}`: it is not a plain state dict and will not be executed; re-save it with torch.save(model.state_dict(), ...) or convert it to safetensors", path.display())]
    ForbiddenGlobal { path: PathBuf, global: String },

    #[error("{} is corrupt or truncated: {reason}; re-download or re-export the file", path.display())]
    Corrupt { path: PathBuf, reason: String },

    #[error("{} cannot be used: {reason}; re-save it as a plain state dict (torch.save(model.state_dict(), ...)) or as safetensors", path.display())]
    Unsupported { path: PathBuf, reason: String },

    #[error("cannot save {}: {reason}", path.display())]
    InvalidArgument { path: PathBuf, reason: String },
}

impl WeightsError {
    pub(crate) fn corrupt(path: &std::path::Path, reason: impl Into<String>) -> Self {
        WeightsError::Corrupt {
            path: path.to_path_buf(),
            reason: one_line(reason.into()),
        }
    }

    pub(crate) fn unsupported(path: &std::path::Path, reason: impl Into<String>) -> Self {
        WeightsError::Unsupported {
            path: path.to_path_buf(),
            reason: one_line(reason.into()),
        }
    }
}

/// Error text from dependencies may span lines; messages here must not.
pub(crate) fn one_line(s: String) -> String {
    if s.contains(['\n', '\r']) {
        s.split(['\n', '\r'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        s
    }
}
