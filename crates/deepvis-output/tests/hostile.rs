//! Damaged and hostile inputs to the image and .npy readers: one-line errors, no panics.

use std::path::Path;

use deepvis_output::{decode_rgb, load_rgb, parse_npy_f32};

fn jpeg_seed() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deepvis-fuzz/corpus/image/baseline.jpg");
    std::fs::read(p).unwrap()
}

/// Found by the fuzzer: zune-jpeg's "Not enough bytes" message ends in a newline, which made
/// ours two lines.
#[test]
fn truncated_jpegs_give_one_line_errors() {
    let jpeg = jpeg_seed();
    assert!(decode_rgb(&jpeg, Path::new("ok.jpg")).is_ok());
    for cut in [jpeg.len() / 3, jpeg.len() / 2, jpeg.len() - 3, 30] {
        let Err(e) = decode_rgb(&jpeg[..cut], Path::new("cut.jpg")) else {
            continue;
        };
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{cut}: {msg:?}");
        assert!(msg.starts_with("could not read image cut.jpg: "), "{msg}");
        assert!(msg.ends_with("(use a valid PNG or JPEG file)"), "{msg}");
    }
}

/// Found by the fuzzer: the header was echoed verbatim, newlines and all.
#[test]
fn npy_headers_are_echoed_on_one_line() {
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f8',\n 'fortran_order': False, 'shape': (2,), }\n";
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 16]);
    let msg = parse_npy_f32(&bytes).unwrap_err();
    assert!(!msg.contains('\n'), "{msg:?}");
    assert!(msg.contains("'<f8',\\n 'fortran_order'"), "{msg}");
    // A version-2 header whose length field is cut off.
    let msg = parse_npy_f32(b"\x93NUMPY\x02\x00\x10\x00").unwrap_err();
    assert_eq!(msg, "truncated .npy header");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2\n3,), }";
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let msg = parse_npy_f32(&bytes).unwrap_err();
    assert!(!msg.contains('\n') && msg.contains("2\\n3"), "{msg:?}");
}

/// `/dev/zero` has no end: reading it whole would exhaust memory.
#[test]
fn devices_and_directories_are_refused_not_read() {
    for p in ["/dev/zero", "/tmp"] {
        if !Path::new(p).exists() {
            continue;
        }
        let msg = load_rgb(Path::new(p)).unwrap_err().to_string();
        assert!(msg.contains("not a regular file"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}
