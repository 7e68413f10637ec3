//! NumPy `.npy` files (format version 1.0) of little-endian float32 arrays: the raw values of
//! images whose channels a PNG cannot hold (2 channels, or more than 3).

use std::path::Path;

use crate::{write_atomic, OutputError};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The bytes of a C-order float32 `.npy` v1.0 file holding `data` with `shape`.
///
/// # Panics
/// If `data.len()` is not the product of `shape` (a caller bug).
pub fn encode_npy_f32(data: &[f32], shape: &[usize]) -> Vec<u8> {
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "encode_npy_f32: {} values for shape {shape:?}",
        data.len()
    );
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    // A one-element tuple needs its trailing comma in Python's syntax.
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // numpy pads the header with spaces and a newline so the data starts 64-byte aligned.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + 4 * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    let len = u16::try_from(header.len()).expect("npy header over 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes `data` with `shape` to `path` as float32 `.npy`, atomically.
pub fn write_npy_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<(), OutputError> {
    write_atomic(path, &encode_npy_f32(data, shape))
}

/// Reads what [`encode_npy_f32`] writes (C-order little-endian float32, format 1.0–3.0):
/// the shape and the values, or a one-line reason it cannot.
pub fn parse_npy_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    // Messages quote the header; control characters in it are escaped to keep one line.
    parse_npy(bytes).map_err(|m| {
        m.chars()
            .flat_map(|c| {
                let esc: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                esc
            })
            .collect()
    })
}

fn parse_npy(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (len_bytes, start) = match bytes[6] {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(format!("unknown .npy format version {v}")),
    };
    let mut len = 0usize;
    // Found by the fuzzer: a version-2 header needs 12 bytes, more than the 10 checked above.
    let len_field = bytes.get(8..8 + len_bytes).ok_or("truncated .npy header")?;
    for (i, b) in len_field.iter().enumerate() {
        len |= usize::from(*b) << (8 * i);
    }
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(format!(
            "not a C-order little-endian float32 array: {}",
            header.trim().chars().take(200).collect::<String>()
        ));
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or("the .npy header has no shape")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad .npy dimension '{s}'")))
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + len..];
    let count: usize = shape.iter().product();
    if data.len() != 4 * count {
        return Err(format!(
            "the .npy data holds {} bytes, its shape {shape:?} needs {}",
            data.len(),
            4 * count
        ));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_numpys_and_values_round_trip() {
        let data: Vec<f32> = (0..2 * 3 * 5).map(|i| i as f32 * 0.25 - 1.0).collect();
        let bytes = encode_npy_f32(&data, &[2, 3, 5]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0, "data is 64-byte aligned");
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(
            header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 5), }")
        );
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + hlen + 4 * data.len());
        assert_eq!(
            f32::from_le_bytes(bytes[10 + hlen..14 + hlen].try_into().unwrap()),
            -1.0
        );
        let (shape, back) = parse_npy_f32(&bytes).unwrap();
        assert_eq!(shape, vec![2, 3, 5]);
        assert_eq!(back, data);
    }

    #[test]
    fn one_dimension_and_special_values() {
        let data = [f32::NAN, f32::INFINITY, -0.0, 1e-40];
        let bytes = encode_npy_f32(&data, &[4]);
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (4,)"), "{header}");
        let (shape, back) = parse_npy_f32(&bytes).unwrap();
        assert_eq!(shape, vec![4]);
        for (a, b) in back.iter().zip(&data) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    #[test]
    fn written_atomically_and_bad_files_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("sub/filter_0001.npy");
        write_npy_f32(&path, &[1.0, 2.0, 3.0, 4.0], &[1, 2, 2]).expect("write");
        let (shape, v) = parse_npy_f32(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!((shape, v), (vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]));
        assert!(parse_npy_f32(b"garbage").is_err());
        let mut bytes = encode_npy_f32(&[1.0, 2.0], &[2]);
        bytes.pop();
        assert!(parse_npy_f32(&bytes).unwrap_err().contains("needs 8"));
    }
}
