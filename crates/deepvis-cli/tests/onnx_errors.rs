//! Bad ONNX input through the binary: each gets one line starting with "error:", a non-zero
//! exit and no panic. The damaged files are made from the committed fixtures in
//! `testdata/onnx` by byte edits that keep the protobuf valid where the test needs it to be.

mod common;

use common::{deepvis, fails_clearly};

use std::path::{Path, PathBuf};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/onnx")
        .join(name)
}

/// `bytes` with every occurrence of `from` replaced by `to` (same length: the protobuf's
/// length prefixes stay right).
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(hits > 0, "{} not found", String::from_utf8_lossy(from));
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

const NORM: [&str; 4] = ["--mean", "0.5", "--std", "0.5"];

#[test]
fn damaged_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(testdata("gray28.ts.onnx")).unwrap();
    let truncated = write(dir.path(), "truncated.onnx", &good[..good.len() / 3]);
    fails_clearly(&["layers", "--model", &truncated], "truncated");
    let text = write(
        dir.path(),
        "notes.onnx",
        b"these are not the weights you are looking for\n",
    );
    fails_clearly(&["layers", "--model", &text], "not an onnx model");
    let missing = dir.path().join("absent.onnx");
    fails_clearly(
        &["layers", "--model", &missing.to_string_lossy()],
        "absent.onnx",
    );
}

#[test]
fn external_data_must_be_present_and_stay_in_the_models_folder() {
    let dir = tempfile::tempdir().unwrap();
    let model = std::fs::read(testdata("gray28.ext.onnx")).unwrap();
    // The model without its data file.
    let alone = write(dir.path(), "gray28.ext.onnx", &model);
    fails_clearly(&["layers", "--model", &alone], "gray28.ext.onnx.data");
    // A location that leaves the folder, with the data where it points.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::copy(
        testdata("gray28.ext.onnx.data"),
        dir.path().join("gray28.ext.onnx.d"),
    )
    .unwrap();
    let escaping = replace_all(&model, b"gray28.ext.onnx.data", b"../gray28.ext.onnx.d");
    let inside = write(&sub, "escaping.onnx", &escaping);
    fails_clearly(&["layers", "--model", &inside], "..");
}

#[test]
fn an_unsupported_op_is_named_only_where_it_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(testdata("mini_resnet.ts.onnx")).unwrap();
    // Every ReLU becomes an op nobody knows ("Relx"): layers before the first one still work.
    let bad = write(
        dir.path(),
        "relx.onnx",
        &replace_all(&good, b"\"\x04Relu", b"\"\x04Relx"),
    );
    let o = deepvis(&["layers", "--model", &bad]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(listing.contains("cannot be computed"), "{listing}");
    assert!(listing.contains("Relx"), "{listing}");
    let first_conv = listing
        .lines()
        .find(|l| l.contains("Conv2d"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let out = dir.path().join("out");
    let mut args = vec![
        "filters",
        "--model",
        &bad,
        "--layer",
        &first_conv,
        "--filters",
        "0",
        "--size",
        "64",
    ];
    args.extend(["--steps", "2", "--quiet", "--out", out.to_str().unwrap()]);
    args.extend(NORM);
    let o = deepvis(&args);
    assert!(
        o.status.success(),
        "a layer before the unknown op: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut args = vec![
        "filters",
        "--model",
        &bad,
        "--layer",
        "layer4",
        "--filters",
        "0",
        "--size",
        "64",
    ];
    args.extend(["--quiet", "--out", out.to_str().unwrap()]);
    args.extend(NORM);
    fails_clearly(&args, "op Relx");
}

#[test]
fn sizes_layers_and_channels() {
    let ppocr = testdata("ppocr_cls.onnx");
    fails_clearly(
        &["layers", "--model", &ppocr.to_string_lossy()],
        "pass --size",
    );
    let gray = testdata("gray28.ts.onnx");
    let gray = gray.to_string_lossy();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_string_lossy().into_owned();
    let mut args = vec![
        "filters", "--model", &gray, "--layer", "layer9", "--out", &out,
    ];
    args.extend(NORM);
    fails_clearly(&args, "unknown layer 'layer9'");
    let o = deepvis(&["layers", "--model", &gray]);
    let listing = String::from_utf8_lossy(&o.stdout);
    let conv = listing
        .lines()
        .find(|l| l.contains("Conv2d"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let mut args = vec![
        "filters",
        "--model",
        &gray,
        "--layer",
        &conv,
        "--filters",
        "500",
        "--out",
        &out,
    ];
    args.extend(NORM);
    fails_clearly(&args, "out of range");
    fails_clearly(
        &[
            "filters", "--model", &gray, "--layer", &conv, "--mean", "x", "--out", &out,
        ],
        "--mean takes numbers",
    );
    fails_clearly(
        &[
            "filters",
            "--model",
            &gray,
            "--layer",
            &conv,
            "--weights",
            &gray,
            "--out",
            &out,
        ],
        "holds its own weights",
    );
}

/// Each cause is said once: wrappers that print their source's text are not followed by the
/// source again (a directory or a corrupt file as weights used to repeat the whole message).
#[test]
fn each_cause_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let out = dir.path().join("out");
    let o = deepvis(&[
        "filters",
        "--model",
        "vgg16",
        "--layer",
        "28",
        "--weights",
        &d,
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    // A directory is refused before it is read (it could be a device that never ends).
    assert_eq!(err.matches("is not a regular file").count(), 1, "{err}");
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(
        &bad,
        [8u8, 0, 0, 0, 0, 0, 0, 0, b'{', b'x', 0, 0, 0, 0, 0, 0],
    )
    .unwrap();
    let o = deepvis(&[
        "filters",
        "--model",
        "vgg16",
        "--layer",
        "28",
        "--weights",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert_eq!(err.matches("corrupt or truncated").count(), 1, "{err}");
    assert_eq!(err.matches("re-download").count(), 1, "{err}");
}

/// An output folder that cannot be made is found before any rendering: with a million steps
/// to do, the command ends at once with the error (it would run for hours otherwise). Nothing
/// can be created under /proc, not even by root.
#[test]
fn an_unwritable_out_is_found_before_rendering() {
    let out = "/proc/deepvis-test-absent/out";
    for args in [
        vec![
            "filters",
            "--layer",
            "_blocks.8",
            "--filters",
            "0",
            "--steps",
            "1000000",
            "--out",
            out,
        ],
        vec![
            "render",
            "--objective",
            "_blocks.8:3",
            "--steps",
            "1000000",
            "--out",
            out,
        ],
    ] {
        fails_clearly(&args, "could not create directory");
    }
}
