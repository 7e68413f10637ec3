//! Hostile, damaged and foreign inputs must give errors, never panics,
//! huge allocations or code execution.

mod common;

use common::{f32_bytes, fixture, legacy_file, legacy_header, write_temp, zip_file, Pickle};
use deepvis_weights::{load, load_bytes, WeightsError};
use proptest::prelude::*;
use std::path::Path;

fn assert_one_line(err: &WeightsError) {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
}

/// `os.system('echo pwned')`, the classic malicious pickle.
fn os_system_pickle() -> Vec<u8> {
    Pickle::new()
        .global("os", "system")
        .str("echo pwned > /tmp/deepvis-pwned")
        .op(b"\x85R")
        .stop()
}

#[test]
fn malicious_global_is_refused_in_every_container() {
    let dir = tempfile::tempdir().unwrap();
    let raw = os_system_pickle();
    let mut legacy = legacy_header();
    legacy.extend_from_slice(&raw);
    for (name, bytes) in [
        ("raw.pth", raw.clone()),
        ("legacy.pth", legacy),
        ("zip.pth", zip_file(&raw, &[])),
    ] {
        let path = write_temp(&dir, name, &bytes);
        let err = load(&path).unwrap_err();
        match &err {
            WeightsError::ForbiddenGlobal { global, .. } => assert_eq!(global, "os.system"),
            other => panic!("{name}: expected ForbiddenGlobal, got {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("os.system") && msg.contains("will not be executed"),
            "{msg}"
        );
        assert!(msg.contains(name), "{msg}");
        assert_one_line(&err);
    }
}

#[test]
fn other_dangerous_globals_are_refused() {
    for (module, name) in [
        ("builtins", "eval"),
        ("__builtin__", "getattr"),
        ("posix", "system"),
        ("subprocess", "Popen"),
        ("torch.nn.modules.conv", "Conv2d"),
        ("torch.storage", "_load_from_bytes"),
    ] {
        let p = Pickle::new().global(module, name).op(b")R").stop();
        let err = load_bytes(&p, Path::new("evil.pth")).unwrap_err();
        assert!(
            matches!(&err, WeightsError::ForbiddenGlobal { global, .. } if *global == format!("{module}.{name}")),
            "{module}.{name}: {err}"
        );
    }
    // Protocol 4 STACK_GLOBAL is checked the same way.
    let p = b"\x80\x04\x95\x1b\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04exec\x94\x93\x94.";
    let err = load_bytes(p, Path::new("evil.pth")).unwrap_err();
    assert!(matches!(err, WeightsError::ForbiddenGlobal { .. }), "{err}");
}

#[test]
fn truncated_files_give_errors() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["small_zip.pth", "small_legacy.pth", "small.safetensors"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 1, 10, 1] {
            let path = write_temp(&dir, name, &bytes[..cut]);
            let err = load(&path).unwrap_err();
            assert_one_line(&err);
        }
    }
}

#[test]
fn foreign_files_are_not_recognized() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        (
            "notes.pth",
            &b"These are not the weights you are looking for.\n"[..],
        ),
        ("empty.pth", b""),
        ("image.safetensors", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ] {
        let path = write_temp(&dir, name, bytes);
        let err = load(&path).unwrap_err();
        assert!(
            matches!(err, WeightsError::UnknownFormat { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("not recognized"), "{err}");
        assert_one_line(&err);
    }
    // A zip that is not a checkpoint.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("readme.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    std::io::Write::write_all(&mut zip, b"hello").unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    let err = load_bytes(&bytes, Path::new("other.zip")).unwrap_err();
    assert!(matches!(err, WeightsError::Unsupported { .. }), "{err}");
}

#[test]
fn missing_file_names_the_path() {
    let path = Path::new("/nonexistent/dir/resnet50-0676ba61.pth");
    let err = load(path).unwrap_err();
    assert!(matches!(err, WeightsError::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/dir/resnet50-0676ba61.pth"),
        "{err}"
    );
}

#[test]
fn lying_sizes_are_rejected_without_huge_allocations() {
    let tensor_pickle = |numel: usize, shape: &[usize], stride: &[usize], legacy: bool| {
        let mut p = Pickle::new();
        p.op(b"}").str("w");
        p.tensor("FloatStorage", "0", numel, 0, shape, stride, legacy);
        p.op(b"s").stop()
    };
    let storage = f32_bytes([1.0, 2.0, 3.0, 4.0]);
    let path = Path::new("liar.pth");

    // Legacy storage whose element count exceeds the file.
    for count in [5, u64::MAX / 4, u64::MAX] {
        let file = legacy_file(
            &tensor_pickle(4, &[4], &[1], true),
            &[("0", count, &storage)],
        );
        let err = load_bytes(&file, path).unwrap_err();
        assert!(
            matches!(err, WeightsError::Corrupt { .. }),
            "{count}: {err}"
        );
    }
    // Tensor views larger than their storage, in both formats.
    for (shape, stride) in [
        (&[5][..], &[1][..]),
        (&[1 << 40][..], &[1][..]),
        (&[1 << 30, 1 << 30][..], &[0, 0][..]),
        (&[2, 2][..], &[1 << 40, 1][..]),
    ] {
        let file = legacy_file(
            &tensor_pickle(4, shape, stride, true),
            &[("0", 4, &storage)],
        );
        assert!(load_bytes(&file, path).is_err(), "{shape:?}");
        let file = zip_file(&tensor_pickle(4, shape, stride, false), &[("0", &storage)]);
        assert!(load_bytes(&file, path).is_err(), "{shape:?}");
    }
    // A storage that the archive does not contain.
    let file = zip_file(&tensor_pickle(4, &[4], &[1], false), &[]);
    let err = load_bytes(&file, path).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn non_state_dict_pickles_are_errors() {
    let path = Path::new("odd.pth");
    for body in [
        Pickle::new().op(b"]").stop(),
        Pickle::new().op(b"}").str("a").int(1).op(b"s").stop(),
        Pickle::new().int(7).stop(),
    ] {
        let mut file = legacy_header();
        file.extend_from_slice(&body);
        file.extend_from_slice(&Pickle::new().op(b"]").stop());
        let err = load_bytes(&file, path).unwrap_err();
        assert!(matches!(err, WeightsError::Unsupported { .. }), "{err}");
    }
}

fn mutate(bytes: &[u8], cut: usize, flips: &[(usize, u8)]) -> Vec<u8> {
    let mut out = bytes[..cut.min(bytes.len())].to_vec();
    for &(pos, mask) in flips {
        if !out.is_empty() {
            let i = pos % out.len();
            out[i] ^= mask;
        }
    }
    out
}

fn fixtures() -> Vec<Vec<u8>> {
    ["small_zip.pth", "small_legacy.pth", "small.safetensors"]
        .iter()
        .map(|n| std::fs::read(fixture(n)).unwrap())
        .collect()
}

#[test]
fn every_truncation_point_is_handled() {
    for bytes in fixtures() {
        for cut in 0..bytes.len() {
            let _ = load_bytes(&bytes[..cut], Path::new("cut.pth"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_fixtures_never_panic(
        which in 0usize..3,
        cut in any::<usize>(),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..8),
    ) {
        let files = fixtures();
        let bytes = &files[which];
        let mutated = mutate(bytes, bytes.len() - cut % (bytes.len() / 4 + 1), &flips);
        if let Err(e) = load_bytes(&mutated, Path::new("fuzz.pth")) {
            prop_assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn random_pickles_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut p = vec![0x80, 0x02];
        p.extend_from_slice(&body);
        let _ = load_bytes(&p, Path::new("random.pth"));
    }
}
