//! An exclusive advisory lock on a file beside the manifest, held around every
//! read-modify-write of `manifest.json`.
//!
//! Why a lock and not only atomic writes: each writer replaces the whole
//! manifest, so two processes that each read it, add their filters and write
//! it back lose whichever write lands first (seen with `filters 0..6` and
//! `filters 6..12` into one folder: the manifest listed only 0–5). Under the
//! lock a writer re-reads the manifest, adds its own records and writes it
//! back, so every finished filter stays recorded whatever the number of
//! writers. `flock` works on local filesystems and on NFSv4 (the Linux client
//! maps it to a byte-range lock); where a cluster filesystem cannot lock
//! (Lustre without `-o flock`), sharded runs do not need it: each shard
//! writes only its own manifest part (see [`crate::PARTS_DIR`]).

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::OutputError;

/// Held until dropped: closing the file releases the lock, also when the
/// process dies, so a killed run never leaves a folder locked.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until this process holds the lock on `path` (created if absent).
    pub fn exclusive(path: &Path) -> Result<FileLock, OutputError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| OutputError::io("create directory", dir, e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| OutputError::io("open lock file", path, e))?;
        lock(&file).map_err(|e| OutputError::io("lock", path, e))?;
        Ok(FileLock { _file: file })
    }
}

#[cfg(unix)]
fn lock(file: &File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock on a file descriptor this function borrows for the call; no memory is
        // passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(not(unix))]
fn lock(_file: &File) -> std::io::Result<()> {
    // No advisory lock here: concurrent writers into one folder are only safe as shards.
    Ok(())
}
