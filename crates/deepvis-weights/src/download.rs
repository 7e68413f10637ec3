//! Cached, hash-checked downloads of pretrained weights.
//!
//! torchvision names its files `name-<hashprefix>.pth`, where the prefix is
//! the start of the file's SHA-256; that prefix is what makes a cached file
//! trustworthy without going to the network.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::one_line;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot download {url}: {reason}; pass an http(s) URL that ends in a file name, or pass --weights FILE")]
    BadUrl { url: String, reason: String },

    #[error("could not download {url}: {reason}; check the network or pass --weights FILE")]
    Network { url: String, reason: String },

    #[error("could not download {url}: the server answered HTTP {status}; check the URL or pass --weights FILE")]
    Http { url: String, status: u16 },

    #[error("download of {url} was corrupt (sha256 hash mismatch: expected prefix {expected}, got {got}); retry, or download the file yourself and pass --weights FILE")]
    HashMismatch {
        url: String,
        expected: String,
        got: String,
    },

    #[error("could not write {}: {source}; check that the cache directory is writable or set DEEPVIS_CACHE to another one", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where downloads are cached: `$DEEPVIS_CACHE`, else
/// `$XDG_CACHE_HOME/deepvis`, else `~/.cache/deepvis`.
pub fn default_cache_dir() -> PathBuf {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("DEEPVIS_CACHE") {
        return dir;
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return dir.join("deepvis");
    }
    if let Some(home) = env("HOME").or_else(|| env("USERPROFILE")) {
        return home.join(".cache").join("deepvis");
    }
    std::env::temp_dir().join("deepvis-cache")
}

/// The file name a URL will be cached under: its last path segment.
pub fn file_name_from_url(url: &str) -> Result<String, DownloadError> {
    let bad = |reason: &str| DownloadError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("only http and https URLs are supported"))?;
    let without_query = rest.split(['?', '#']).next().unwrap_or_default();
    let Some((_host, path)) = without_query.split_once('/') else {
        return Err(bad("the URL has no file name"));
    };
    let name = path.rsplit('/').next().unwrap_or_default();
    // The name becomes a path in the cache directory, so nothing that could
    // escape it or confuse the filesystem is accepted.
    let safe = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if !safe {
        return Err(bad("the URL does not end in a plain file name"));
    }
    Ok(name.to_string())
}

/// The SHA-256 prefix embedded in a torchvision-style name
/// (`vgg16-397923af.pth` → `397923af`): at least 8 lowercase hex digits
/// between a `-` and a `.`.
pub fn hash_prefix(file_name: &str) -> Option<&str> {
    file_name.match_indices('-').rev().find_map(|(i, _)| {
        let rest = &file_name[i + 1..];
        let end = rest.find('.')?;
        let candidate = &rest[..end];
        let hex = candidate.len() >= 8
            && candidate
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        hex.then_some(candidate)
    })
}

/// Returns the cached copy of `url`, downloading it first if it is missing
/// or does not match the hash prefix in its name.
pub fn fetch(url: &str, cache_dir: &Path, progress: bool) -> Result<PathBuf, DownloadError> {
    let name = file_name_from_url(url)?;
    let expected = hash_prefix(&name);
    let final_path = cache_dir.join(&name);

    if final_path.is_file() {
        match expected {
            None => return Ok(final_path),
            Some(prefix) => {
                // An unreadable or stale cache entry is simply downloaded again.
                if let Ok(digest) = crate::sha256_file(&final_path) {
                    if digest.starts_with(prefix) {
                        return Ok(final_path);
                    }
                }
            }
        }
    }

    std::fs::create_dir_all(cache_dir).map_err(|source| DownloadError::Io {
        path: cache_dir.to_path_buf(),
        source,
    })?;
    let part_path = cache_dir.join(format!("{name}.part"));
    let result = download_to(url, &part_path, progress).and_then(|digest| match expected {
        Some(prefix) if !digest.starts_with(prefix) => Err(DownloadError::HashMismatch {
            url: url.to_string(),
            expected: prefix.to_string(),
            got: digest,
        }),
        _ => Ok(()),
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part_path);
        return Err(e);
    }
    std::fs::rename(&part_path, &final_path).map_err(|source| {
        let _ = std::fs::remove_file(&part_path);
        DownloadError::Io {
            path: final_path.clone(),
            source,
        }
    })?;
    Ok(final_path)
}

/// Streams `url` into `dest`, returning the hex SHA-256 of what was written.
fn download_to(url: &str, dest: &Path, progress: bool) -> Result<String, DownloadError> {
    let network = |reason: String| DownloadError::Network {
        url: url.to_string(),
        reason: one_line(reason),
    };
    let io_err = |source| DownloadError::Io {
        path: dest.to_path_buf(),
        source,
    };

    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(status, _)) => {
            return Err(DownloadError::Http {
                url: url.to_string(),
                status,
            })
        }
        Err(ureq::Error::Transport(t)) => return Err(network(t.to_string())),
    };
    let total: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse().ok());

    let bar = progress.then(|| progress_bar(total, dest));
    let mut reader = response.into_reader();
    let mut writer = BufWriter::new(File::create(dest).map_err(io_err)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(network(format!(
                    "connection failed after {received} bytes: {e}"
                )))
            }
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).map_err(io_err)?;
        received += n as u64;
        if let Some(bar) = &bar {
            bar.set_position(received);
        }
    }
    if let Some(total) = total {
        if received != total {
            return Err(network(format!(
                "the connection closed after {received} of {total} bytes"
            )));
        }
    }
    let file = writer.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(crate::hex(&hasher.finalize()))
}

fn progress_bar(total: Option<u64>, dest: &Path) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressStyle};
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".part").to_string())
        .unwrap_or_default();
    let (bar, template) = match total {
        Some(len) => (
            ProgressBar::new(len),
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{msg} {spinner} {bytes} {bytes_per_sec}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("downloading {name}"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes() {
        let name = file_name_from_url("https://download.pytorch.org/models/vgg16-397923af.pth");
        assert_eq!(name.unwrap(), "vgg16-397923af.pth");
        assert_eq!(hash_prefix("vgg16-397923af.pth"), Some("397923af"));
        assert_eq!(
            hash_prefix("efficientnet-lite0-57934424.pth"),
            Some("57934424")
        );
        assert_eq!(hash_prefix("resnet50.pth"), None);
        assert_eq!(hash_prefix("model-abc.pth"), None);
        assert_eq!(hash_prefix("model-ABCDEF12.pth"), None);
        assert_eq!(
            file_name_from_url("http://h/x/y-0123abcd.pth?token=1#f").unwrap(),
            "y-0123abcd.pth"
        );
        for bad in [
            "ftp://h/x.pth",
            "https://host",
            "https://host/",
            "https://host/dir/",
            "https://host/..",
            "https://host/a%2F..%2Fb",
        ] {
            assert!(file_name_from_url(bad).is_err(), "{bad}");
        }
    }
}
