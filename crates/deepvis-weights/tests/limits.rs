//! Resource limits: files that declare far more than they hold (10^12-element tensors, pickles
//! nested a million deep, zip entries of terabytes) must be refused with one clear line,
//! quickly and before anything proportional to the declared size is allocated. "Quickly" is
//! the observable proxy for "allocated nothing large": touching 4 TB, or even zeroing 4 GB,
//! takes far longer than the bound asserted here.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{f32_bytes, legacy_file, Pickle};
use deepvis_weights::load_bytes;

const TERA: usize = 1_000_000_000_000;

fn refused(bytes: &[u8], name: &str) -> String {
    let start = Instant::now();
    let err = load_bytes(bytes, Path::new(name)).expect_err(name);
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "{name}: took {elapsed:?}, as if the declared size were touched"
    );
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{name}: multi-line message: {msg}");
    assert!(
        msg.contains(name),
        "{name}: message does not name the file: {msg}"
    );
    msg
}

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn safetensors_header_declaring_a_tera_element_tensor_is_refused() {
    let data = [0u8; 16];
    // Shape of 10^12 elements over 16 bytes of data.
    let h = r#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,16]}}"#;
    let msg = refused(&safetensors(h, &data), "shape.safetensors");
    assert!(msg.contains("corrupt or truncated"), "{msg}");
    // Offsets claiming 4 TB of data.
    let h = r#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#;
    let msg = refused(&safetensors(h, &data), "offsets.safetensors");
    assert!(msg.contains("corrupt or truncated"), "{msg}");
    // Dimensions whose product overflows.
    let h =
        r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#;
    refused(&safetensors(h, &data), "overflow.safetensors");
    // A header length of 2^62 bytes: not even recognised as safetensors, no allocation.
    let mut bytes = (1u64 << 62).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let msg = refused(&bytes, "header.safetensors");
    assert!(msg.contains("format not recognized"), "{msg}");
}

fn tensor_pickle(numel: usize, shape: &[usize], stride: &[usize], legacy: bool) -> Vec<u8> {
    let mut p = Pickle::new();
    p.op(b"}").str("w");
    p.tensor("FloatStorage", "0", numel, 0, shape, stride, legacy);
    p.op(b"s").stop()
}

#[test]
fn pickle_declaring_a_tera_element_storage_or_shape_is_refused() {
    let storage = f32_bytes([1.0, 2.0, 3.0, 4.0]);
    let shape = [1_000_000, 1_000_000];
    let stride = [1_000_000, 1];
    // Storage and shape both claim 10^12 elements; the file holds 4.
    let zip = common::zip_file(
        &tensor_pickle(TERA, &shape, &stride, false),
        &[("0", &storage)],
    );
    let msg = refused(&zip, "tera_zip.pth");
    assert!(msg.contains("tensor w"), "{msg}");
    let legacy = legacy_file(
        &tensor_pickle(TERA, &shape, &stride, true),
        &[("0", TERA as u64, &storage)],
    );
    let msg = refused(&legacy, "tera_legacy.pth");
    assert!(msg.contains("storage 0 is larger than"), "{msg}");
    // Storage honest, shape lying: 10^12 elements broadcast over 4 (stride 0) would pass a
    // bounds check; the element budget stops it.
    let zip = common::zip_file(
        &tensor_pickle(4, &shape, &[0, 0], false),
        &[("0", &storage)],
    );
    let msg = refused(&zip, "broadcast.pth");
    assert!(
        msg.contains("more elements than the file could contain"),
        "{msg}"
    );
}

#[test]
fn pickle_nested_a_million_deep_is_an_error_not_a_stack_overflow() {
    const DEEP: usize = 1_000_000;
    // A million nested lists: EMPTY_LIST pushed 10^6 times, each APPENDed into the one below.
    let mut lists = vec![0x80, 0x02];
    lists.extend(std::iter::repeat_n(b']', DEEP));
    lists.extend(std::iter::repeat_n(b'a', DEEP - 1));
    lists.push(b'.');
    // A tuple wrapped in a tuple 10^6 times (TUPLE1).
    let mut tuples = vec![0x80, 0x02, b')'];
    tuples.extend(std::iter::repeat_n(0x85, DEEP));
    tuples.push(b'.');
    // A million MARKs then a million TUPLEs: depth through the mark stack.
    let mut marks = vec![0x80, 0x02];
    marks.extend(std::iter::repeat_n(b'(', DEEP));
    marks.extend(std::iter::repeat_n(b't', DEEP));
    marks.push(b'.');
    for (name, bytes) in [
        ("lists.pth", lists),
        ("tuples.pth", tuples),
        ("marks.pth", marks),
    ] {
        // Run on a small stack: recursion proportional to depth would overflow it.
        let msg = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || refused(&bytes, name))
            .unwrap()
            .join()
            .unwrap_or_else(|_| panic!("{name}: panicked"));
        assert!(msg.contains("nested more than 100 deep"), "{name}: {msg}");
    }
}

/// A stored (uncompressed) zip64 checkpoint whose `data.pkl` entry is declared `declared` bytes
/// long in both the local and central headers.
fn zip_declaring(pickle: &[u8], declared: u64) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    let mut bytes = zip.finish().unwrap().into_inner();
    // Patch every 64-bit size field equal to the true length (zip64 extra fields hold both
    // sizes; a stored entry has them equal) with the declared one.
    let real = (pickle.len() as u64).to_le_bytes();
    let mut patched = 0;
    let mut i = 0;
    while i + 8 <= bytes.len() {
        if bytes[i..i + 8] == real {
            bytes[i..i + 8].copy_from_slice(&declared.to_le_bytes());
            patched += 1;
            i += 8;
        } else {
            i += 1;
        }
    }
    assert!(patched >= 2, "zip64 size fields not found");
    bytes
}

#[test]
fn zip_entries_declaring_or_inflating_to_terabytes_are_bounded() {
    // A 1031-byte pickle (a length unlikely to appear elsewhere in the archive).
    let mut pickle = Pickle::new();
    pickle.op(b"}").str(&"k".repeat(1016)).int(1).op(b"s");
    let pickle = pickle.stop();
    assert_eq!(pickle.len(), 1031);
    for declared in [1u64 << 40, 1 << 50, u64::MAX / 2] {
        let bytes = zip_declaring(&pickle, declared);
        let msg = refused(&bytes, "tera_entry.pth");
        assert!(
            msg.contains("more than the file can hold") || msg.contains("unreadable zip"),
            "{declared}: {msg}"
        );
    }

    // A deflate bomb: 256 MiB of zeros (about 250 KB compressed) declared as 1 KiB. Reading
    // stops at the declared size, so the bomb never inflates.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    zip.start_file("archive/data.pkl", opts).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        zip.write_all(&zeros).unwrap();
    }
    let mut bytes = zip.finish().unwrap().into_inner();
    let real = (256u64 << 20).to_le_bytes();
    let declared = 1024u64.to_le_bytes();
    let mut patched = 0;
    for i in 0..bytes.len().saturating_sub(8) {
        if bytes[i..i + 8] == real {
            bytes[i..i + 8].copy_from_slice(&declared);
            patched += 1;
        }
    }
    assert!(patched >= 2, "zip64 size fields not found");
    let msg = refused(&bytes, "bomb.pth");
    // The 1 KiB read is zeros: not a pickle.
    assert!(msg.contains("pickle"), "{msg}");

    // The same bomb declared honestly (256 MiB from a ~250 KB file) is over the budget of
    // 8 × file size + 64 MiB.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("archive/data.pkl", opts).unwrap();
    for _ in 0..256 {
        zip.write_all(&zeros).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
    let msg = refused(&bytes, "honest_bomb.pth");
    assert!(msg.contains("more than the file can hold"), "{msg}");
}

#[test]
fn devices_and_directories_are_refused_not_read() {
    for p in ["/dev/zero", "/dev/urandom", "/tmp"] {
        if !Path::new(p).exists() {
            continue;
        }
        let start = Instant::now();
        let msg = deepvis_weights::load(Path::new(p)).unwrap_err().to_string();
        assert!(
            msg == format!("{p} is not a regular file (it is a directory, device or pipe); give the path of a weights file"),
            "{msg}"
        );
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
