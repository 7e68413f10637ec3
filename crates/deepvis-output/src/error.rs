//! The single error type for everything this crate writes or reads.

use std::io;
use std::path::PathBuf;

/// Errors from writing or reading output files.
///
/// Every message is one line that names the file and, where the cause is
/// something the user can fix (full disk, permissions), says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A filesystem operation failed.
    #[error("could not {action} {}: {source}{}", path.display(), io_hint(source))]
    Io {
        /// What was being done, e.g. "write" or "create directory".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Encoding an image to PNG failed (not an I/O problem: the bytes are
    /// built in memory before anything touches the disk).
    #[error("could not encode PNG for {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },

    /// An input image could not be decoded.
    #[error("could not read image {}: {} (use a valid PNG or JPEG file)", path.display(), one_line(source))]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },

    /// The manifest exists but is not valid JSON of the expected shape.
    #[error(
        "manifest {} is corrupt: {source} (move or delete it to start a fresh run in that directory)",
        path.display()
    )]
    CorruptManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A shard's manifest part is of another model or other weights than the
    /// folder's manifest.
    #[error(
        "manifest part {} holds results of model '{model}' or other weights than the folder's manifest; move it out of that folder",
        path.display()
    )]
    ForeignPart { path: PathBuf, model: String },

    /// Serializing the manifest failed; only possible with unusual settings
    /// values (e.g. maps with non-string keys).
    #[error("could not serialize manifest for {}: {source}", path.display())]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl OutputError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        OutputError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Decoders' messages may span lines (zune-jpeg's do); ours are one line.
fn one_line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Advice for the I/O failures a user can act on. `ErrorKind::StorageFull`
/// needs Rust 1.83 and the workspace supports 1.80, so disk-full is
/// recognized by OS error code instead.
fn io_hint(e: &io::Error) -> &'static str {
    // ENOSPC (28) / EDQUOT (122 on Linux, 69 on macOS) on Unix;
    // ERROR_HANDLE_DISK_FULL (39) / ERROR_DISK_FULL (112) on Windows.
    let disk_full: &[i32] = if cfg!(windows) {
        &[39, 112]
    } else if cfg!(target_os = "macos") {
        &[28, 69]
    } else {
        &[28, 122]
    };
    if e.raw_os_error().is_some_and(|c| disk_full.contains(&c)) {
        return " (disk full or quota exceeded: free some space or choose another output directory)";
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            " (permission denied: check write access or choose another output directory)"
        }
        io::ErrorKind::NotFound => " (check that the path exists)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_path() {
        let e = OutputError::io(
            "write",
            "/some/dir/out.png",
            io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        );
        let msg = e.to_string();
        assert!(msg.contains("/some/dir/out.png"), "{msg}");
        assert!(msg.contains("permission denied"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn disk_full_gets_a_hint() {
        let code = if cfg!(windows) { 112 } else { 28 };
        let e = OutputError::io("write", "x.png", io::Error::from_raw_os_error(code));
        assert!(e.to_string().contains("disk full"), "{e}");
    }
}
