//! Crash-safe file replacement: every file this crate writes goes through
//! [`write_atomic`], so an interrupted run leaves either the old file or the
//! new one, never a truncated mix (important because runs are resumable and
//! the manifest is re-read on the next start).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::OutputError;

/// Marker embedded in temporary file names, so leftovers from a killed
/// process are recognizable.
pub(crate) const TEMP_MARKER: &str = ".deepvis-tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically.
///
/// Creates missing parent directories, writes to a uniquely named temporary
/// file in the same directory (same filesystem, so the rename is atomic),
/// fsyncs it, and renames it over `path`. On failure the temporary file is
/// removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| {
            OutputError::io(
                "write",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| OutputError::io("create directory", &dir, e))?;

    let (tmp_path, mut file) = create_temp(&dir, &file_name)?;
    let result = write_contents(&file_name, &mut file, bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| OutputError::io("write", path, e))
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp_path, path).map_err(|e| OutputError::io("replace", path, e))
        });
    if let Err(e) = result {
        // Best effort: the original error is what the user needs to see.
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    sync_dir(&dir);
    Ok(())
}

/// Writes `bytes` into the temporary file, honouring two test hooks (not for normal use):
/// `DEEPVIS_FAULT_WRITE=NAME[,NAME…]` stops the write of a file of that name half way with
/// ENOSPC, as on a full disk, to check that a failed write leaves no truncated file and says
/// why; `DEEPVIS_FAULT_SLOW_WRITE=MS` pauses every write half way for MS milliseconds, so
/// that a test's SIGKILL lands inside writes.
fn write_contents(file_name: &str, file: &mut File, bytes: &[u8]) -> io::Result<()> {
    let half = bytes.len() / 2;
    if let Some(names) = std::env::var_os("DEEPVIS_FAULT_WRITE") {
        if names.to_string_lossy().split(',').any(|n| n == file_name) {
            file.write_all(&bytes[..half])?;
            const ENOSPC: i32 = 28;
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
    }
    if let Some(ms) = std::env::var("DEEPVIS_FAULT_SLOW_WRITE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        file.write_all(&bytes[..half])?;
        file.flush()?;
        std::thread::sleep(std::time::Duration::from_millis(ms));
        return file.write_all(&bytes[half..]);
    }
    file.write_all(bytes)
}

/// Opens a fresh temp file with `create_new`, so two writers (threads or
/// processes) targeting the same file can never share a temp file.
fn create_temp(dir: &Path, file_name: &str) -> Result<(PathBuf, File), OutputError> {
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{file_name}{TEMP_MARKER}{pid}.{n}.{nanos}"));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(OutputError::io("create temporary file", &tmp, e)),
        }
    }
    Err(OutputError::io(
        "create temporary file in",
        dir,
        last_err.unwrap_or_else(|| io::Error::other("temporary names exhausted")),
    ))
}

/// Persists the rename itself on Unix; without it a power loss right after
/// the rename can resurrect the old directory entry. Not possible (and not
/// needed) on Windows, and failure only weakens durability, so it is ignored.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn creates_parents_and_leaves_no_temp_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("a/b/out.txt");
        write_atomic(&target, b"hello").expect("write");
        assert_eq!(fs::read(&target).expect("read"), b"hello");
        assert_eq!(entries(&tmp.path().join("a/b")), vec!["out.txt"]);
    }

    #[test]
    fn replaces_existing_content() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("out.txt");
        write_atomic(&target, b"a much longer first version").expect("write 1");
        write_atomic(&target, b"short").expect("write 2");
        assert_eq!(fs::read(&target).expect("read"), b"short");
        assert_eq!(entries(tmp.path()), vec!["out.txt"]);
    }

    #[test]
    fn failure_leaves_no_temp_file_and_names_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A directory where the file should go makes the rename fail.
        let target = tmp.path().join("occupied");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("keep"), b"x").expect("fill dir");
        let err = write_atomic(&target, b"data").expect_err("rename over dir must fail");
        assert!(err.to_string().contains("occupied"), "{err}");
        assert_eq!(entries(tmp.path()), vec!["occupied"]);
    }

    #[test]
    fn concurrent_writers_do_not_collide() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("shared.txt");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let target = &target;
                s.spawn(move || write_atomic(target, &[i; 64]).expect("write"));
            }
        });
        let got = fs::read(&target).expect("read");
        assert_eq!(got.len(), 64);
        assert!(
            got.iter().all(|&b| b == got[0]),
            "content must come from one writer"
        );
        assert_eq!(entries(tmp.path()), vec!["shared.txt"]);
    }
}

/// Creates `dir` (and its parents) and proves that files can be written in it, so that a run
/// whose output cannot be saved fails before any rendering rather than after hours of it.
pub fn ensure_writable_dir(dir: &Path) -> Result<(), OutputError> {
    fs::create_dir_all(dir).map_err(|e| OutputError::io("create directory", dir, e))?;
    let probe = dir.join(format!(".deepvis-write-test-{}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| OutputError::io("write in", dir, e))?;
    // The probe is ours alone (the name carries the process id); failing to remove it is
    // harmless and not worth failing the run for.
    let _ = fs::remove_file(&probe);
    Ok(())
}
