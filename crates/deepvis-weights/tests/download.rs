//! Download tests against a loopback HTTP server started by each test;
//! nothing leaves 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use deepvis_weights::download::{default_cache_dir, fetch, DownloadError};
use sha2::{Digest, Sha256};

const PAYLOAD: &[u8] = b"pretend these are 64 bytes of pretrained convolution weights....";

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves `PAYLOAD` for any path under `/files/`, 404 otherwise, and counts
/// requests.
struct Server {
    base: String,
    requests: Arc<AtomicUsize>,
}

fn serve() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = respond(stream);
        }
    });
    Server { base, requests }
}

fn respond(mut stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let (status, body): (&str, &[u8]) = if path.starts_with("/files/") {
        ("200 OK", PAYLOAD)
    } else {
        ("404 Not Found", b"not found")
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn downloads_verifies_and_caches() {
    let server = serve();
    let cache = tempfile::tempdir().unwrap();
    let name = format!("tiny-{}.pth", &sha_hex(PAYLOAD)[..8]);
    let url = format!("{}/files/{name}", server.base);

    let path = fetch(&url, cache.path(), false).unwrap();
    assert_eq!(path, cache.path().join(&name));
    assert_eq!(std::fs::read(&path).unwrap(), PAYLOAD);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    assert_eq!(dir_entries(cache.path()), [name.as_str()]);

    // Cached and matching its hash: no second request.
    let again = fetch(&url, cache.path(), true).unwrap();
    assert_eq!(again, path);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    // A damaged cache entry is downloaded again.
    std::fs::write(&path, b"garbage").unwrap();
    fetch(&url, cache.path(), false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), PAYLOAD);
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[test]
fn hash_mismatch_is_an_error_and_leaves_nothing() {
    let server = serve();
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{}/files/tiny-deadbeef.pth", server.base);
    let err = fetch(&url, cache.path(), false).unwrap_err();
    match &err {
        DownloadError::HashMismatch { expected, got, .. } => {
            assert_eq!(expected, "deadbeef");
            assert_eq!(got, &sha_hex(PAYLOAD));
        }
        other => panic!("expected HashMismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("hash mismatch") && msg.contains("deadbeef"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    assert!(dir_entries(cache.path()).is_empty());
}

#[test]
fn http_error_status_is_reported() {
    let server = serve();
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{}/missing/vgg16-397923af.pth", server.base);
    let err = fetch(&url, cache.path(), false).unwrap_err();
    assert!(
        matches!(err, DownloadError::Http { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("404"));
    assert!(dir_entries(cache.path()).is_empty());
}

#[test]
fn connection_refused_is_reported() {
    // Bind then drop to get a loopback port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/files/tiny-12345678.pth");
    let err = fetch(&url, cache.path(), false).unwrap_err();
    assert!(matches!(err, DownloadError::Network { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("check the network") && !msg.contains('\n'),
        "{msg}"
    );
    assert!(dir_entries(cache.path()).is_empty());
}

#[test]
fn file_without_hash_prefix_is_cached_as_is() {
    let server = serve();
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{}/files/plain.safetensors", server.base);
    let path = fetch(&url, cache.path(), false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), PAYLOAD);
    fetch(&url, cache.path(), false).unwrap();
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_urls_are_rejected_without_network() {
    let cache = tempfile::tempdir().unwrap();
    for url in ["ftp://127.0.0.1/x.pth", "http://127.0.0.1/", "not a url"] {
        let err = fetch(url, cache.path(), false).unwrap_err();
        assert!(matches!(err, DownloadError::BadUrl { .. }), "{url}: {err}");
    }
}

#[test]
fn cache_dir_is_absolute_or_env_derived() {
    // Only checks the shape; the environment is shared with other tests.
    let dir = default_cache_dir();
    assert!(
        dir.ends_with("deepvis")
            || dir.ends_with("deepvis-cache")
            || std::env::var_os("DEEPVIS_CACHE").is_some()
    );
}
