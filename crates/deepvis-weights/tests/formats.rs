mod common;

use common::{f32_bytes, fixture, legacy_file, write_temp, zip_file, Pickle};
use deepvis_weights::{
    detect_format, load, load_bytes, load_pth, load_safetensors, save_safetensors, DType, Format,
    StateDict, StoredTensor, WeightsError,
};
use std::path::Path;

const FLOAT_KEYS: [&str; 8] = [
    "features.0.bias",
    "features.0.weight",
    "features.3.bias",
    "features.3.weight",
    "features.4.bias",
    "features.4.running_mean",
    "features.4.running_var",
    "features.4.weight",
];

fn reference() -> StateDict {
    load_safetensors(&fixture("small.safetensors")).unwrap()
}

#[test]
fn safetensors_fixture_has_the_expected_tensors() {
    let st = reference();
    assert_eq!(st.keys().collect::<Vec<_>>(), FLOAT_KEYS);
    assert_eq!(st.get("features.0.weight").unwrap().shape, [8, 3, 3, 3]);
    assert_eq!(st.get("features.3.weight").unwrap().shape, [16, 8, 3, 3]);
    for (_, t) in st.iter() {
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(t.data.len(), t.numel());
    }
}

fn check_matches_reference(dict: &StateDict) {
    let st = reference();
    for key in FLOAT_KEYS {
        let (a, b) = (dict.get(key).unwrap(), st.get(key).unwrap());
        assert_eq!(a.shape, b.shape, "{key}");
        assert_eq!(a.dtype, DType::F32, "{key}");
        // Bit-exact: both are the same f32 values.
        let bits = |t: &StoredTensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "{key}");
    }
    let nbt = dict.get("features.4.num_batches_tracked").unwrap();
    assert_eq!(nbt.dtype, DType::I64);
    assert!(nbt.shape.is_empty());
    assert_eq!(nbt.data.len(), 1);
    assert!(nbt.data[0] >= 0.0 && nbt.data[0].fract() == 0.0);
    assert_eq!(dict.len(), FLOAT_KEYS.len() + 1);
}

#[test]
fn zip_pth_matches_safetensors() {
    check_matches_reference(&load(&fixture("small_zip.pth")).unwrap());
    check_matches_reference(&load_pth(&fixture("small_zip.pth")).unwrap());
}

#[test]
fn legacy_pth_matches_safetensors() {
    check_matches_reference(&load(&fixture("small_legacy.pth")).unwrap());
    check_matches_reference(&load_pth(&fixture("small_legacy.pth")).unwrap());
}

#[test]
fn format_is_detected_by_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    for (src, fake_name, format) in [
        ("small_zip.pth", "weights.safetensors", Format::TorchZip),
        ("small_legacy.pth", "weights.bin", Format::TorchLegacy),
        ("small.safetensors", "weights.pth", Format::Safetensors),
    ] {
        let bytes = std::fs::read(fixture(src)).unwrap();
        assert_eq!(detect_format(&bytes), Some(format), "{src}");
        let path = write_temp(&dir, fake_name, &bytes);
        let dict = load(&path).unwrap();
        assert!(dict.contains_key("features.0.weight"), "{src}");
    }
    // load_pth refuses safetensors rather than misreading it.
    let err = load_pth(&fixture("small.safetensors")).unwrap_err();
    assert!(matches!(err, WeightsError::UnknownFormat { .. }), "{err}");
}

/// A 3x4 storage [0..12) viewed as its transpose and as an offset row,
/// sharing one storage, in both container formats.
fn strided_pickle(legacy: bool) -> Vec<u8> {
    let mut p = Pickle::new();
    p.global("collections", "OrderedDict").op(b")R(");
    p.str("t")
        .tensor("FloatStorage", "0", 12, 0, &[4, 3], &[1, 4], legacy);
    p.str("row")
        .tensor("FloatStorage", "0", 12, 4, &[4], &[1], legacy);
    p.str("col")
        .tensor("FloatStorage", "0", 12, 2, &[3, 1], &[4, 1], legacy);
    p.str("_metadata").op(b"}u").stop()
}

fn check_strided(dict: &StateDict) {
    let t = dict.get("t").unwrap();
    assert_eq!(t.shape, [4, 3]);
    assert_eq!(t.data, [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    assert_eq!(dict.get("row").unwrap().data, [4., 5., 6., 7.]);
    assert_eq!(dict.get("col").unwrap().data, [2., 6., 10.]);
    assert!(!dict.contains_key("_metadata"));
}

#[test]
fn strided_views_sharing_a_storage() {
    let storage = f32_bytes((0..12).map(|i| i as f32));
    let path = Path::new("mem.pth");
    let zip = zip_file(&strided_pickle(false), &[("0", &storage)]);
    check_strided(&load_bytes(&zip, path).unwrap());
    let legacy = legacy_file(&strided_pickle(true), &[("0", 12, &storage)]);
    check_strided(&load_bytes(&legacy, path).unwrap());
}

#[test]
fn legacy_view_metadata_selects_a_window() {
    // ('storage', FloatStorage, root, 'cpu', 12, ('view', 6, 6)): a tensor
    // on elements 6..12 of the root storage.
    let mut p = Pickle::new();
    p.op(b"}").str("w");
    p.global("torch._utils", "_rebuild_tensor").op(b"(");
    p.op(b"(").str("storage").global("torch", "FloatStorage");
    p.str("root")
        .str("cpu")
        .int(12)
        .op(b"(")
        .str("view")
        .int(6)
        .int(6)
        .op(b"t");
    p.op(b"tQ").int(1).ints(&[2]).ints(&[2]).op(b"tR");
    p.op(b"s");
    let storage = f32_bytes((0..12).map(|i| i as f32));
    let file = legacy_file(&p.stop(), &[("root", 12, &storage)]);
    let dict = load_bytes(&file, Path::new("view.pth")).unwrap();
    assert_eq!(dict.get("w").unwrap().data, [7., 9.]);
}

#[test]
fn checkpoint_wrappers_parameters_and_other_dtypes() {
    // {'epoch': 3, 'state_dict': {'module.w': Parameter(half), 'flag': bool}}
    let mut p = Pickle::new();
    p.op(b"}(").str("epoch").int(3).str("state_dict").op(b"}(");
    p.str("module.w")
        .global("torch._utils", "_rebuild_parameter")
        .op(b"(");
    p.tensor("HalfStorage", "0", 3, 0, &[3], &[1], false);
    p.op(b"\x88")
        .global("collections", "OrderedDict")
        .op(b")Rt");
    // The parameter's BUILD state (e.g. requires_grad) is ignored.
    p.op(b"R}b");
    p.str("flag")
        .tensor("BoolStorage", "1", 2, 0, &[2], &[1], false);
    p.str("name").str("resnet").op(b"uu");
    let halfs: Vec<u8> = [1.5f32, -2.0, 0.25]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let file = zip_file(&p.stop(), &[("0", &halfs), ("1", &[1, 0])]);
    let mut dict = load_bytes(&file, Path::new("ckpt.pth")).unwrap();
    assert_eq!(dict.len(), 2);
    assert_eq!(dict.strip_prefix("module."), 1);
    let w = dict.get("w").unwrap();
    assert_eq!(
        (w.dtype, w.data.as_slice()),
        (DType::F16, &[1.5, -2.0, 0.25][..])
    );
    let flag = dict.get("flag").unwrap();
    assert_eq!(
        (flag.dtype, flag.data.as_slice()),
        (DType::Bool, &[1.0, 0.0][..])
    );
}

#[test]
fn save_safetensors_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let original = load(&fixture("small_zip.pth")).unwrap();

    let path = dir.path().join("out.safetensors");
    save_safetensors(&original, &path, DType::F32).unwrap();
    let back = load(&path).unwrap();
    assert_eq!(back, original);
    let nbt = back.get("features.4.num_batches_tracked").unwrap();
    assert_eq!(nbt.dtype, DType::I64);

    let path16 = dir.path().join("out16.safetensors");
    save_safetensors(&original, &path16, DType::F16).unwrap();
    let back16 = load_safetensors(&path16).unwrap();
    for (key, t) in original.iter() {
        let h = back16.get(key).unwrap();
        assert_eq!(h.shape, t.shape);
        let expected = if t.dtype.is_float() {
            DType::F16
        } else {
            DType::I64
        };
        assert_eq!(h.dtype, expected);
        for (a, b) in t.data.iter().zip(&h.data) {
            assert!(
                (a - b).abs() <= 1e-3 * a.abs().max(1.0),
                "{key}: {a} vs {b}"
            );
        }
    }

    // Overwriting is atomic and leaves no temporary files behind.
    save_safetensors(&original, &path, DType::F32).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["out.safetensors", "out16.safetensors"]);
}

#[test]
fn save_safetensors_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let mut dict = StateDict::new();
    dict.insert("a", StoredTensor::new(vec![2], DType::F32, vec![1.0, 2.0]));
    let err = save_safetensors(&dict, &path, DType::I8).unwrap_err();
    assert!(matches!(err, WeightsError::InvalidArgument { .. }), "{err}");
    dict.insert("b", StoredTensor::new(vec![3], DType::F32, vec![1.0]));
    assert!(save_safetensors(&dict, &path, DType::F32).is_err());
    assert!(!path.exists());
    let missing_dir = dir.path().join("no/such/dir/x.safetensors");
    dict.remove("b");
    let err = save_safetensors(&dict, &missing_dir, DType::F32).unwrap_err();
    assert!(matches!(err, WeightsError::Write { .. }), "{err}");
}

#[test]
fn sha256_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(&dir, "abc.txt", b"abc");
    assert_eq!(
        deepvis_weights::sha256_file(&path).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(deepvis_weights::sha256_file(&dir.path().join("missing")).is_err());
}

#[test]
fn protocol_4_opcodes_and_duplicate_keys() {
    // STACK_GLOBAL, FRAME, MEMOIZE and SHORT_BINUNICODE as written by
    // torch.save(..., pickle_protocol=4); the key "w" is set twice and, as in
    // Python, the later value wins.
    let mut p = Pickle(b"\x80\x04\x95\x00\x01\x00\x00\x00\x00\x00\x00".to_vec());
    p.op(b"\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94(");
    p.op(b"\x8c\x01w\x94");
    p.tensor("FloatStorage", "0", 4, 0, &[2], &[1], false);
    p.op(b"\x8c\x01wh\x00\x8c\x01v\x94"); // memo lookups work on MEMOIZE'd slots
    p.op(b"0"); // drop the extra strings again
    p.op(b"0");
    p.tensor("FloatStorage", "0", 4, 2, &[2], &[1], false);
    p.op(b"u");
    let storage = f32_bytes([1.0, 2.0, 3.0, 4.0]);
    let file = zip_file(&p.stop(), &[("0", &storage)]);
    let dict = load_bytes(&file, Path::new("p4.pth")).unwrap();
    assert_eq!(dict.len(), 1);
    assert_eq!(dict.get("w").unwrap().data, [3.0, 4.0]);
}
