//! Shared by the binary's test files: running `deepvis`, and what a clear failure is.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the binary with an empty download cache and without `DEEPVIS_OFFLINE` from outside.
pub fn deepvis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deepvis"))
        .args(args)
        .env(
            "DEEPVIS_CACHE",
            std::env::temp_dir().join("deepvis-test-empty-cache"),
        )
        .env_remove("DEEPVIS_OFFLINE")
        .output()
        .expect("the binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    o
}

/// A committed ONNX fixture (`testdata/onnx/NAME`).
pub fn onnx_fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/onnx")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A clear failure: non-zero exit, one line starting with "error:" (besides `note:` lines that
/// say what was assumed) containing `expect`, no panic.
pub fn fails_clearly(args: &[&str], expect: &str) {
    let o = deepvis(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note: "))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {err}");
    assert!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "{args:?}: '{expect}' not in: {err}"
    );
}
