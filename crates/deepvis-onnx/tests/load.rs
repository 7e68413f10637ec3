//! Loading models built in code: tensor encodings, graph clean-up, external data and its
//! confinement to the model's folder, and refusal of malformed or hostile files.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use deepvis_onnx::bytes::Bytes;
use deepvis_onnx::proto::{AttributeProto, TensorProto};
use deepvis_onnx::{
    load, load_bytes, load_with, AttrValue, DataType, Dim, Limits, OnnxError, Values,
};

const W: [f32; 6] = [0.5, -1.25, 3.0, f32::MIN_POSITIVE, -0.0, 1e20];

#[test]
fn raw_data_and_typed_fields_decode_to_the_same_floats() {
    let m = model(
        13,
        graph(
            vec![],
            vec![raw_f32("raw", &[2, 3], &W), typed_f32("typed", &[2, 3], &W)],
        ),
    );
    let g = roundtrip(&m).unwrap().graph;
    let raw = &g.initializers["raw"];
    let typed = &g.initializers["typed"];
    assert_eq!(raw.dims, vec![2, 3]);
    assert_eq!(raw, typed);
    assert_eq!(raw.as_f32().unwrap(), W.to_vec());
    assert_eq!(g.initializers.keys().collect::<Vec<_>>(), ["raw", "typed"]);
}

#[test]
fn int32_data_carries_f16_bf16_and_small_integers() {
    let halves = [1.0f32, -0.333, 65504.0, 6e-8];
    let f16_bits: Vec<i32> = halves
        .iter()
        .map(|&x| i32::from(half::f16::from_f32(x).to_bits()))
        .collect();
    let bf16_bits: Vec<i32> = halves
        .iter()
        .map(|&x| i32::from(half::bf16::from_f32(x).to_bits()))
        .collect();
    let t = |name: &str, data_type: i32, int32_data: Vec<i32>| TensorProto {
        name: name.into(),
        dims: vec![int32_data.len() as i64],
        data_type,
        int32_data,
        ..Default::default()
    };
    let f16_raw = TensorProto {
        name: "f16_raw".into(),
        dims: vec![4],
        data_type: FLOAT16,
        raw_data: Some(Bytes::from(
            halves
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect::<Vec<u8>>(),
        )),
        ..Default::default()
    };
    let m = model(
        13,
        graph(
            vec![],
            vec![
                t("f16", FLOAT16, f16_bits),
                t("bf16", BFLOAT16, bf16_bits),
                t("i8", INT8, vec![-128, 127, -1]),
                t("u8", UINT8, vec![0, 255, 7]),
                t("b", BOOL, vec![1, 0, 1]),
                t("i32", INT32, vec![i32::MIN, 5]),
                f16_raw,
                TensorProto {
                    name: "d".into(),
                    dims: vec![2],
                    data_type: DOUBLE,
                    double_data: vec![0.1, -2.0],
                    ..Default::default()
                },
            ],
        ),
    );
    let g = roundtrip(&m).unwrap().graph;
    let want_f16: Vec<f32> = halves
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    let want_bf16: Vec<f32> = halves
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(g.initializers["f16"].values, Values::F32(want_f16.clone()));
    assert_eq!(g.initializers["f16_raw"].values, Values::F32(want_f16));
    assert_eq!(g.initializers["bf16"].values, Values::F32(want_bf16));
    assert_eq!(g.initializers["i8"].values, Values::I8(vec![-128, 127, -1]));
    assert_eq!(g.initializers["u8"].values, Values::U8(vec![0, 255, 7]));
    assert_eq!(
        g.initializers["b"].values,
        Values::Bool(vec![true, false, true])
    );
    assert_eq!(
        g.initializers["i32"].as_i64().unwrap(),
        vec![i64::from(i32::MIN), 5]
    );
    assert_eq!(g.initializers["d"].as_f32().unwrap(), vec![0.1f32, -2.0]);
    assert_eq!(
        g.initializers["i8"].as_f32().unwrap(),
        vec![-128.0, 127.0, -1.0]
    );
    assert!(
        g.initializers["d"].as_i64().is_err(),
        "floats must not silently truncate"
    );
}

#[test]
fn initializers_listed_as_inputs_are_weights_not_inputs() {
    let mut g = graph(
        vec![node("Conv", "conv", &["x", "w"], &["y"])],
        vec![raw_f32("w", &[6], &W)],
    );
    g.input.push(value_info("w", FLOAT, &[Some(6)]));
    let model = roundtrip(&model(9, g)).unwrap();
    let names: Vec<&str> = model.graph.inputs.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["x"]);
    let x = &model.graph.inputs[0];
    assert_eq!(x.data_type(), Some(DataType::Float));
    assert_eq!(
        x.dims.as_deref(),
        Some(
            &[
                Dim::Symbolic("batch".into()),
                Dim::Fixed(3),
                Dim::Fixed(8),
                Dim::Fixed(8)
            ][..]
        )
    );
    assert_eq!(x.fixed_dims(), None);
    assert_eq!(model.opset, 9);
    assert_eq!(model.producer, "deepvis-onnx tests");
}

#[test]
fn nodes_keep_attributes_metadata_and_omitted_inputs() {
    let mut n = node("Clip", "", &["x", "", "hi"], &["y"]);
    n.attribute = vec![
        attr_int("k", 3),
        attr_ints("pads", &[1, 1, 2, 2]),
        attr_float("alpha", 0.2),
        attr_int("alpha_int", 1),
    ];
    n.metadata_props = vec![entry("pkg.torch.onnx.name_scopes", "['', 'layer1']")];
    let m = roundtrip(&model(
        13,
        graph(vec![n], vec![typed_f32("hi", &[], &[6.0])]),
    ))
    .unwrap();
    let n = &m.graph.nodes[0];
    assert_eq!(
        n.label(),
        "y",
        "an unnamed node is named by its first output"
    );
    assert_eq!(n.input(0), Some("x"));
    assert_eq!(n.input(1), None);
    assert_eq!(n.input(2), Some("hi"));
    assert_eq!(n.input(3), None);
    assert_eq!(
        n.metadata,
        vec![("pkg.torch.onnx.name_scopes".into(), "['', 'layer1']".into())]
    );
    assert_eq!(n.attr_int("k").unwrap(), Some(3));
    assert_eq!(n.attr_int_or("missing", 7).unwrap(), 7);
    assert_eq!(n.attr_ints("pads").unwrap(), Some(&[1, 1, 2, 2][..]));
    assert_eq!(n.attr_ints_or("strides", &[1, 1]).unwrap(), vec![1, 1]);
    assert_eq!(n.attr_float("alpha").unwrap(), Some(0.2));
    assert_eq!(n.attr_float("alpha_int").unwrap(), Some(1.0));
    let err = n.attr_ints("k").unwrap_err();
    assert_eq!(one_line(&err), "node 'y' (Clip): attribute 'k' is INT, expected INTS; re-export the model with a standard exporter");
    let err = n.attr_int_req("axis").unwrap_err();
    assert!(
        one_line(&err).contains("attribute 'axis' is required but missing"),
        "{err}"
    );

    let constants = |name: &str| m.graph.initializers.get(name);
    assert_eq!(
        n.float_input_or_attr(2, "max", &constants).unwrap(),
        Some(6.0)
    );
    assert_eq!(n.float_input_or_attr(1, "min", &constants).unwrap(), None);
    let err = n.float_input_or_attr(0, "x", &constants).unwrap_err();
    assert!(
        one_line(&err).contains("input 0 ('x') must be a constant but is computed at run time"),
        "{err}"
    );
    assert_eq!(
        n.ints_input_or_attr(5, "pads", &constants).unwrap(),
        Some(vec![1, 1, 2, 2])
    );
}

#[test]
fn constant_nodes_stay_nodes_and_give_their_values() {
    let with = |attrs: Vec<AttributeProto>| {
        let mut n = node("Constant", "c", &[], &["c"]);
        n.attribute = attrs;
        n
    };
    let floats = AttributeProto {
        name: "value_floats".into(),
        r#type: deepvis_onnx::proto::attribute_type::FLOATS,
        floats: vec![1.5, 2.5],
        ..Default::default()
    };
    let nodes = vec![
        with(vec![attr_tensor(
            "value",
            typed_i64("", &[2, 2], &[1, 2, 3, 4]),
        )]),
        with(vec![attr_int("value_int", -3)]),
        with(vec![attr_ints("value_ints", &[4, 5])]),
        with(vec![attr_float("value_float", 0.5)]),
        with(vec![floats]),
        with(vec![
            attr_int("value_int", 1),
            attr_float("value_float", 0.5),
        ]),
        with(vec![]),
    ];
    let m = roundtrip(&model(13, graph(nodes, vec![]))).unwrap();
    let v: Vec<_> = m
        .graph
        .nodes
        .iter()
        .map(deepvis_onnx::constant_value)
        .collect();
    let t = v[0].as_ref().unwrap();
    assert_eq!(
        (t.dims.clone(), t.as_i64().unwrap()),
        (vec![2, 2], vec![1, 2, 3, 4])
    );
    let t = v[1].as_ref().unwrap();
    assert_eq!((t.dims.clone(), t.as_i64().unwrap()), (vec![], vec![-3]));
    assert_eq!(v[2].as_ref().unwrap().dims, vec![2]);
    assert_eq!(v[3].as_ref().unwrap().values, Values::F32(vec![0.5]));
    assert_eq!(v[4].as_ref().unwrap().values, Values::F32(vec![1.5, 2.5]));
    assert!(one_line(v[5].as_ref().unwrap_err()).contains("more than one value"));
    assert!(one_line(v[6].as_ref().unwrap_err()).contains("has no value attribute"));
    assert_eq!(m.graph.nodes.len(), 7);
    assert!(matches!(
        m.graph.nodes[0].attr("value"),
        Some(AttrValue::Tensor(_))
    ));
}

fn floats_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn external_data_is_read_from_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0xAAu8; 100];
    data.extend(floats_le(&W));
    data.extend(floats_le(&[9.0, 8.0]));
    std::fs::write(dir.path().join("model.onnx.data"), &data).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/more.bin"), floats_le(&[7.0])).unwrap();
    let m = model(
        13,
        graph(
            vec![],
            vec![
                external("a", &[2, 3], "model.onnx.data", 100, Some(24)),
                external("b", &[2], "./model.onnx.data", 124, None),
                external("c", &[1], "sub/more.bin", 0, Some(4)),
            ],
        ),
    );
    let path = write(dir.path(), "model.onnx", &m);
    let g = load(&path).unwrap().graph;
    assert_eq!(g.initializers["a"].as_f32().unwrap(), W.to_vec());
    assert_eq!(g.initializers["b"].as_f32().unwrap(), vec![9.0, 8.0]);
    assert_eq!(g.initializers["c"].as_f32().unwrap(), vec![7.0]);

    // In memory with no folder there is nowhere to read from; with the folder it works.
    let bytes = std::fs::read(&path).unwrap();
    let err = load_bytes(&bytes, Path::new("mem.onnx"), None).unwrap_err();
    assert!(
        one_line(&err).contains("read from memory with no folder"),
        "{err}"
    );
    assert!(load_bytes(&bytes, Path::new("mem.onnx"), Some(dir.path())).is_ok());
}

/// Loads a model whose single initializer `w` has this external location, from `dir`.
fn load_external(
    dir: &Path,
    location: &str,
    dims: &[i64],
    offset: u64,
    length: Option<u64>,
) -> OnnxError {
    let m = model(
        13,
        graph(vec![], vec![external("w", dims, location, offset, length)]),
    );
    let err = load(&write(dir, "model.onnx", &m)).unwrap_err();
    one_line(&err);
    err
}

#[test]
fn external_data_outside_the_folder_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    let secret = root.path().join("secret.bin");
    std::fs::write(&secret, floats_le(&W)).unwrap();

    let err = load_external(&dir, "../secret.bin", &[6], 0, None).to_string();
    assert!(
        err.contains("'../secret.bin', which is outside the model's folder"),
        "{err}"
    );
    assert!(
        err.contains("external data must be a file in the folder of model.onnx"),
        "{err}"
    );

    let abs = secret.display().to_string();
    let err = load_external(&dir, &abs, &[6], 0, None).to_string();
    assert!(err.contains("which is an absolute path"), "{err}");

    let err = load_external(&dir, "sub/../../secret.bin", &[6], 0, None).to_string();
    assert!(err.contains("outside the model's folder"), "{err}");

    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&secret, dir.join("link.bin")).unwrap();
        let err = load_external(&dir, "link.bin", &[6], 0, None).to_string();
        assert!(
            err.contains("resolves to") && err.contains("outside the model's folder"),
            "{err}"
        );
        std::os::unix::fs::symlink(root.path(), dir.join("up")).unwrap();
        let err = load_external(&dir, "up/secret.bin", &[6], 0, None).to_string();
        assert!(err.contains("outside the model's folder"), "{err}");
    }
}

#[test]
fn missing_or_short_external_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_external(dir.path(), "model.onnx.data", &[6], 0, None).to_string();
    assert!(
        err.starts_with("tensor 'w': external data file 'model.onnx.data' is missing from"),
        "{err}"
    );
    assert!(
        err.ends_with("; keep model.onnx.data next to model.onnx"),
        "{err}"
    );

    std::fs::write(dir.path().join("model.onnx.data"), floats_le(&W[..5])).unwrap();
    let err = load_external(dir.path(), "model.onnx.data", &[6], 0, None).to_string();
    assert!(
        err.contains("needs bytes 0..24 of 'model.onnx.data', which has only 20 bytes"),
        "{err}"
    );
    assert!(err.contains("copy model.onnx.data again in full"), "{err}");

    let err = load_external(dir.path(), "model.onnx.data", &[2], 16, None).to_string();
    assert!(err.contains("needs bytes 16..24"), "{err}");
    let err = load_external(dir.path(), "model.onnx.data", &[2], u64::MAX - 2, None).to_string();
    assert!(err.contains("which has only 20 bytes"), "{err}");
    let err = load_external(dir.path(), "model.onnx.data", &[2], 0, Some(12)).to_string();
    assert!(
        err.contains("declares 12 bytes of external data, but its dims and type need 8"),
        "{err}"
    );

    std::fs::create_dir(dir.path().join("folder")).unwrap();
    let err = load_external(dir.path(), "folder", &[2], 0, None).to_string();
    assert!(err.contains("is missing from"), "{err}");
}

#[test]
fn truncated_and_garbage_files_are_not_onnx() {
    let m = model(
        13,
        graph(
            vec![node("Relu", "r", &["x"], &["y"])],
            vec![raw_f32("w", &[6], &W)],
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(write(dir.path(), "full.onnx", &m)).unwrap();
    for cut in [full.len() - 1, full.len() / 2, 3] {
        let path = dir.path().join("cut.onnx");
        std::fs::write(&path, &full[..cut]).unwrap();
        let err = one_line(&load(&path).unwrap_err());
        assert!(
            err.contains("cut.onnx is not an ONNX model or is truncated: "),
            "{err}"
        );
        assert!(
            err.ends_with("; re-export it (torch.onnx.export or onnx.save) and copy it again"),
            "{err}"
        );
    }
    // Deterministic pseudo-random bytes.
    let mut state = 0x9E3779B97F4A7C15u64;
    for len in [1usize, 17, 4096] {
        let noise: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let path = dir.path().join("noise.onnx");
        std::fs::write(&path, &noise).unwrap();
        let err = one_line(&load(&path).unwrap_err());
        assert!(
            err.contains("is not an ONNX model or is truncated")
                || err.contains("imports no opset"),
            "{err}"
        );
    }
    let path = dir.path().join("weights.pth");
    std::fs::write(&path, b"PK\x03\x04\x14\x00\x00\x00\x08\x00").unwrap();
    let err = one_line(&load(&path).unwrap_err());
    assert!(
        err.contains("truncated: it is a zip archive (a PyTorch .pth checkpoint?); re-export"),
        "{err}"
    );
    let path = dir.path().join("empty.onnx");
    std::fs::write(&path, b"").unwrap();
    assert!(one_line(&load(&path).unwrap_err()).contains("the file is empty"));
    let err = one_line(&load(&dir.path().join("absent.onnx")).unwrap_err());
    assert!(err.starts_with("cannot read "), "{err}");
}

#[test]
fn huge_declared_tensors_are_refused_before_allocating() {
    let t = |dims: Vec<i64>| TensorProto {
        name: "huge".into(),
        dims,
        data_type: FLOAT,
        raw_data: Some(Bytes::from(vec![0u8; 16])),
        ..Default::default()
    };
    let start = Instant::now();
    // 10^12 elements: 4 TB declared, 16 bytes present.
    let err = one_line(
        &roundtrip(&model(
            13,
            graph(vec![], vec![t(vec![1_000_000, 1_000_000])]),
        ))
        .unwrap_err(),
    );
    assert!(
        err.contains("tensor 'huge': declares 1000000000000 FLOAT elements"),
        "{err}"
    );
    // Under the size limit but more than is present.
    let err =
        one_line(&roundtrip(&model(13, graph(vec![], vec![t(vec![1000, 1000])]))).unwrap_err());
    assert!(
        err.contains("(4000000 bytes) but raw_data holds 16 bytes"),
        "{err}"
    );
    // Typed fields: counts are compared, nothing is allocated from the dims.
    let typed = TensorProto {
        float_data: vec![1.0; 4],
        raw_data: None,
        ..t(vec![1 << 20, 1 << 20])
    };
    let err = one_line(&roundtrip(&model(13, graph(vec![], vec![typed]))).unwrap_err());
    assert!(err.contains("declares"), "{err}");
    let typed = TensorProto {
        float_data: vec![1.0; 4],
        raw_data: None,
        ..t(vec![1000, 3])
    };
    let err = one_line(&roundtrip(&model(13, graph(vec![], vec![typed]))).unwrap_err());
    assert!(
        err.contains("declares 3000 FLOAT elements (dims [1000, 3]) but holds 4 values"),
        "{err}"
    );
    let err = one_line(
        &roundtrip(&model(
            13,
            graph(vec![], vec![t(vec![1 << 40, 1 << 40, 1 << 40])]),
        ))
        .unwrap_err(),
    );
    assert!(err.contains("overflow"), "{err}");
    let err = one_line(&roundtrip(&model(13, graph(vec![], vec![t(vec![-4])]))).unwrap_err());
    assert!(err.contains("negative dimension"), "{err}");
    assert!(
        start.elapsed().as_secs_f64() < 1.0,
        "refusals must not touch the declared sizes"
    );

    // A genuine tensor over a lowered limit.
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "m.onnx",
        &model(13, graph(vec![], vec![raw_f32("w", &[6], &W)])),
    );
    let limits = Limits {
        max_tensor_bytes: 16,
        ..Limits::default()
    };
    let err = one_line(&load_with(&path, &limits).unwrap_err());
    assert!(
        err.contains("over the limit of 16 bytes per tensor; raise Limits::max_tensor_bytes"),
        "{err}"
    );
}

#[test]
fn node_count_and_decoded_size_are_bounded_before_decoding() {
    let nodes = vec![node("Relu", "", &[], &[]); 2000];
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "m.onnx", &model(13, graph(nodes, vec![])));
    let limits = Limits {
        max_nodes: 1000,
        ..Limits::default()
    };
    let err = one_line(&load_with(&path, &limits).unwrap_err());
    assert!(
        err.contains(
            "m.onnx is too large to load: its graph has 2000 nodes, over the limit of 1000"
        ),
        "{err}"
    );
    let limits = Limits {
        max_decoded_bytes: 100_000,
        ..Limits::default()
    };
    let err = one_line(&load_with(&path, &limits).unwrap_err());
    assert!(err.contains("would take about"), "{err}");
    assert_eq!(load(&path).unwrap().graph.nodes.len(), 2000);
}

#[test]
fn unsupported_encodings_are_named() {
    let fp8 = TensorProto {
        name: "q".into(),
        dims: vec![1],
        data_type: 17,
        raw_data: Some(Bytes::from(vec![0u8])),
        ..Default::default()
    };
    let err = one_line(&roundtrip(&model(13, graph(vec![], vec![fp8]))).unwrap_err());
    assert!(
        err.contains(
            "tensor 'q': has element type FLOAT8E4M3FN, which this reader does not support"
        ),
        "{err}"
    );
    let seg = TensorProto {
        segment: Some(Bytes::from_static(b"\x08\x00")),
        ..typed_f32("s", &[1], &[1.0])
    };
    let err = one_line(&roundtrip(&model(13, graph(vec![], vec![seg]))).unwrap_err());
    assert!(err.contains("segments"), "{err}");
    let mut g = graph(vec![], vec![]);
    g.sparse_initializer.push(Bytes::from_static(b""));
    let err = one_line(&roundtrip(&model(13, g)).unwrap_err());
    assert!(err.contains("sparse initializers"), "{err}");
    let mut m = model(
        13,
        graph(
            vec![],
            vec![typed_f32("a", &[1], &[1.0]), typed_f32("a", &[1], &[2.0])],
        ),
    );
    let err = one_line(&roundtrip(&m).unwrap_err());
    assert!(err.contains("two initializers named 'a'"), "{err}");
    m.opset_import[0].domain = "com.microsoft".into();
    m.graph.as_mut().unwrap().initializer.pop();
    let err = one_line(&roundtrip(&m).unwrap_err());
    assert!(
        err.contains("imports no opset of the standard domain"),
        "{err}"
    );
}

#[test]
fn corrupted_models_never_panic() {
    let mut n = node("Conv", "conv", &["x", "w"], &["y"]);
    n.attribute = vec![
        attr_ints("pads", &[1, 1, 1, 1]),
        attr_tensor("t", typed_i64("", &[2], &[1, 2])),
    ];
    n.metadata_props = vec![entry("k", "v")];
    let m = model(
        13,
        graph(
            vec![n],
            vec![raw_f32("w", &[2, 3], &W), typed_i64("s", &[3], &[1, -1, 2])],
        ),
    );
    let good = prost::Message::encode_to_vec(&m);
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..3000 {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[i] ^= 1 << (next() % 8),
                1 => bytes[i] = next() as u8,
                _ => bytes.truncate(i.max(1)),
            }
        }
        match load_bytes(&bytes, Path::new("fuzz.onnx"), None) {
            Ok(_) => ok += 1,
            Err(e) => {
                one_line(&e);
                failed += 1;
            }
        }
    }
    assert!(failed > 100 && ok > 10, "ok {ok}, failed {failed}");
}

#[test]
fn a_million_node_graph_is_refused_before_decoding() {
    // Encoded by hand: 10^6 copies of the 8-byte `node { op_type: "Relu" }`, appended to a
    // model as a second `graph` field (protobuf merges repeated occurrences of a message field,
    // so the nodes join the model's graph). Building NodeProto structs would cost the test
    // hundreds of MB.
    let mut bytes = prost::Message::encode_to_vec(&model(13, graph(vec![], vec![])));
    let nodes: Vec<u8> = [0x0a, 0x06, 0x22, 0x04, b'R', b'e', b'l', b'u'].repeat(1_000_000);
    bytes.push(0x3a);
    let mut len = nodes.len() as u64;
    while len >= 0x80 {
        bytes.push((len as u8) | 0x80);
        len >>= 7;
    }
    bytes.push(len as u8);
    bytes.extend_from_slice(&nodes);
    let start = Instant::now();
    let err = one_line(&load_bytes(&bytes, Path::new("million.onnx"), None).unwrap_err());
    assert!(
        err.contains(
            "million.onnx is too large to load: its graph has 1000000 nodes, over the limit of 200000"
        ),
        "{err}"
    );
    assert!(
        start.elapsed().as_secs_f64() < 1.0,
        "refused after {:?}: was the graph decoded?",
        start.elapsed()
    );
}

#[test]
fn devices_and_directories_are_refused_not_read() {
    for p in ["/dev/zero", "/tmp"] {
        if !Path::new(p).exists() {
            continue;
        }
        let err = one_line(&load(Path::new(p)).unwrap_err());
        assert_eq!(
            err,
            format!("cannot read {p}: it is not a regular file (a directory, device or pipe); check that the path exists and is readable")
        );
    }
}

/// Found by the fuzzer: a tensor name holding a newline made a two-line message.
#[test]
fn names_with_control_characters_are_escaped_in_messages() {
    let t = TensorProto {
        name: "bad\nname\r".into(),
        dims: vec![3, 4],
        data_type: FLOAT,
        raw_data: Some(Bytes::from(vec![0u8; 36])),
        ..Default::default()
    };
    let err = one_line(&roundtrip(&model(13, graph(vec![], vec![t]))).unwrap_err());
    assert!(
        err.starts_with("tensor 'bad\\nname\\r': declares dims [3, 4] of FLOAT (48 bytes) but raw_data holds 36 bytes"),
        "{err}"
    );
}
