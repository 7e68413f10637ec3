//! Builders for hand-made `torch.save`-style files, so tests can cover
//! layouts the fixtures do not (strided views, wrappers, hostile sizes).

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A protocol-2 pickle written opcode by opcode.
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 0x02])
    }

    pub fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    pub fn int(&mut self, v: i32) -> &mut Self {
        self.0.push(b'J');
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Any non-negative integer, as LONG1 when it does not fit BININT.
    pub fn uint(&mut self, v: usize) -> &mut Self {
        match i32::try_from(v) {
            Ok(small) => self.int(small),
            Err(_) => {
                self.0.extend_from_slice(&[0x8a, 9]);
                self.0.extend_from_slice(&(v as u64).to_le_bytes());
                self.0.push(0);
                self
            }
        }
    }

    pub fn ints(&mut self, vs: &[usize]) -> &mut Self {
        self.op(b"(");
        for &v in vs {
            self.uint(v);
        }
        self.op(b"t")
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
    /// with a persistent id; `legacy` adds the (empty) view metadata.
    #[allow(clippy::too_many_arguments)]
    pub fn tensor(
        &mut self,
        storage_type: &str,
        key: &str,
        numel: usize,
        offset: usize,
        shape: &[usize],
        stride: &[usize],
        legacy: bool,
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        self.op(b"(").str("storage").global("torch", storage_type);
        self.str(key).str("cpu").uint(numel);
        if legacy {
            self.op(b"N");
        }
        self.op(b"tQ").uint(offset).ints(shape).ints(stride);
        self.op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")R");
        self.op(b"tR")
    }

    pub fn stop(&mut self) -> Vec<u8> {
        self.0.push(b'.');
        self.0.clone()
    }
}

pub const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Header pickles of a legacy file: magic, protocol version, sys_info.
pub fn legacy_header() -> Vec<u8> {
    let mut out = vec![0x80, 0x02, 0x8a, 0x0a];
    out.extend_from_slice(&LEGACY_MAGIC);
    out.push(b'.');
    out.extend_from_slice(b"\x80\x02M\xe9\x03.");
    out.extend_from_slice(
        &Pickle::new()
            .op(b"}")
            .str("little_endian")
            .op(b"\x88s")
            .stop(),
    );
    out
}

/// A legacy file: header, `state_dict` pickle, key list, then storages.
pub fn legacy_file(state_dict: &[u8], storages: &[(&str, u64, &[u8])]) -> Vec<u8> {
    let mut out = legacy_header();
    out.extend_from_slice(state_dict);
    let mut keys = Pickle::new();
    keys.op(b"](");
    for (k, _, _) in storages {
        keys.str(k);
    }
    keys.op(b"e");
    out.extend_from_slice(&keys.stop());
    for (_, count, bytes) in storages {
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// A torch >= 1.6 zip checkpoint with the given pickle and storages.
pub fn zip_file(state_dict: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(state_dict).unwrap();
    zip.start_file("archive/byteorder", opts).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, bytes) in storages {
        zip.start_file(format!("archive/data/{key}"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.start_file("archive/version", opts).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap().into_inner()
}

pub fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

pub fn write_temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}
