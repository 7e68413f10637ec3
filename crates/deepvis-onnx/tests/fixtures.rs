//! Cross-checks against files written by other tools: the reference `onnx` Python package
//! (tests/data, made by tests/data/make_fixtures.py) and real PyTorch / PaddlePaddle exports
//! (testdata/onnx at the workspace root).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use deepvis_onnx::{
    constant_value, eval_constant, eval_shape, load, AttrValue, Dim, OnnxModel, TensorData, Values,
};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/onnx")
        .join(name)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn python_written_tensors_match_numpy() {
    let m = load(&data("types.onnx")).unwrap();
    let expected = json(&data("types.expected.json"));
    let expected = expected.as_object().unwrap();
    assert_eq!(m.graph.initializers.len(), expected.len());
    for (name, want) in expected {
        let t = &m.graph.initializers[name.as_str()];
        let dims: Vec<usize> = want["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.dims, dims, "{name}");
        let want: Vec<f64> = want["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = t.as_f64().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(&want) {
            // f32 values went through JSON as f64 and back exactly; int64 -2^40 too.
            assert!(
                g == w || (g - w).abs() <= 1e-6 * w.abs(),
                "{name}: {got:?} != {want:?}"
            );
        }
    }
    // Typed-field and raw_data encodings of each type agree exactly, widened type included.
    for stem in [
        "f32", "f16", "f64", "i64", "i32", "i8", "u8", "i16", "u16", "bool", "u32",
    ] {
        let (raw, typed) = (
            &m.graph.initializers[&format!("{stem}_raw")],
            &m.graph.initializers[&format!("{stem}_typed")],
        );
        assert_eq!(raw, typed, "{stem}");
    }
    assert!(matches!(
        m.graph.initializers["u32_raw"].values,
        Values::I64(_)
    ));
    assert!(matches!(
        m.graph.initializers["f16_raw"].values,
        Values::F32(_)
    ));
    assert_eq!(m.graph.initializers["scalar"].dims, Vec::<usize>::new());

    assert_eq!(m.opset, 17);
    assert_eq!(
        m.opsets,
        vec![(String::new(), 17), ("test.domain".to_string(), 1)]
    );
    assert_eq!(m.producer, "make_fixtures.py");
    assert_eq!(
        m.metadata,
        vec![("purpose".to_string(), "deepvis-onnx test".to_string())]
    );
    let inputs: Vec<&str> = m.graph.inputs.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        inputs,
        ["x"],
        "the initializer listed as an input is dropped"
    );
    assert_eq!(
        m.graph.inputs[0].dims,
        Some(vec![
            Dim::Symbolic("batch".into()),
            Dim::Fixed(3),
            Dim::Unknown
        ])
    );
    assert_eq!(m.graph.outputs[0].fixed_dims(), Some(vec![1, 3]));

    let custom = &m.graph.nodes[2];
    assert_eq!(
        (
            custom.op_type.as_str(),
            custom.domain.as_str(),
            custom.name.as_str()
        ),
        ("Custom", "test.domain", "custom0")
    );
    assert_eq!(custom.inputs, ["x", "", "f32_raw"]);
    assert_eq!(custom.attr_int("i").unwrap(), Some(3));
    assert_eq!(custom.attr_float("f").unwrap(), Some(0.25));
    assert_eq!(custom.attr_string("s").unwrap(), Some("hello"));
    assert_eq!(custom.attr_ints("ints").unwrap(), Some(&[1, -2, 3][..]));
    assert_eq!(custom.attr_floats("floats").unwrap(), Some(&[1.5, 2.5][..]));
    assert_eq!(
        custom.attr_strings("strings").unwrap(),
        Some(&["a".to_string(), "bc".to_string()][..])
    );
    assert_eq!(
        custom.attr_tensor("t").unwrap().unwrap().as_f32().unwrap(),
        vec![4.0, 5.0]
    );
    assert_eq!(
        custom.metadata,
        vec![(
            "pkg.torch.onnx.name_scopes".to_string(),
            "['', 'layer1', 'layer1.0']".to_string()
        )]
    );
    assert_eq!(
        constant_value(&m.graph.nodes[0]).unwrap(),
        TensorData::vec_i64(vec![1, 2, 3])
    );
    assert_eq!(
        constant_value(&m.graph.nodes[1]).unwrap().values,
        Values::F32(vec![0.5, -1.0])
    );
}

/// Runs every node of an eval_opsetN.onnx file through the folder and compares with the
/// reference evaluator's output stored as `expected:OUTPUT`.
fn check_eval_cases(file: &str) -> usize {
    let m = load(&data(file)).unwrap();
    let mut checked = 0;
    for node in &m.graph.nodes {
        let inputs: Vec<Option<&TensorData>> = node
            .inputs
            .iter()
            .map(|name| (!name.is_empty()).then(|| &m.graph.initializers[name.as_str()]))
            .collect();
        let out = eval_constant(node, m.opset, &inputs).unwrap_or_else(|e| panic!("{file}: {e}"));
        let want = &m.graph.initializers[format!("expected:{}", node.outputs[0]).as_str()];
        let got = &out[0];
        let case = format!("{file} {} {:?}", node.name, node.attributes);
        assert_eq!(got.dims, want.dims, "{case}");
        assert_eq!(got.data_type(), want.data_type(), "{case}");
        match (&got.values, &want.values) {
            (Values::F32(g), Values::F32(w)) => {
                for (a, b) in g.iter().zip(w) {
                    assert!(
                        a == b || (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                        "{case}: {g:?} != {w:?}"
                    );
                }
            }
            (g, w) => assert_eq!(g, w, "{case}"),
        }
        checked += 1;
    }
    checked
}

#[test]
fn constant_folder_matches_the_reference_evaluator() {
    assert_eq!(check_eval_cases("eval_opset13.onnx"), 52);
    assert_eq!(check_eval_cases("eval_opset11.onnx"), 5);
    assert_eq!(check_eval_cases("eval_opset9.onnx"), 2);
    assert_eq!(check_eval_cases("eval_opset18.onnx"), 6);
}

fn op_types(m: &OnnxModel) -> Vec<String> {
    let mut ops: Vec<String> = m.graph.nodes.iter().map(|n| n.op_type.clone()).collect();
    ops.sort();
    ops.dedup();
    ops
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn real_pytorch_exports_load() {
    for name in [
        "gray28",
        "mini_resnet",
        "mobilenet_v3_small",
        "squeezenet1_1",
        "wide48x192",
    ] {
        let meta = json(&testdata(&format!("{name}.json")));
        let shape: Vec<usize> = meta["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        for exporter in ["ts", "dynamo"] {
            let file = format!("{name}.{exporter}.onnx");
            let m = load(&testdata(&file)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                m.opset,
                meta["opsets"][exporter]["ai.onnx"].as_i64().unwrap(),
                "{file}"
            );
            assert_eq!(op_types(&m), strings(&meta["op_types"][exporter]), "{file}");
            assert_eq!(m.graph.inputs.len(), 1, "{file}: weights are not inputs");
            assert_eq!(m.graph.inputs[0].name, "input", "{file}");
            assert_eq!(
                m.graph.inputs[0].fixed_dims(),
                Some(shape.clone()),
                "{file}"
            );
            assert_eq!(m.graph.outputs[0].name, "output", "{file}");
            // Every node input is a graph input, an initializer or an earlier node's output.
            let mut known: std::collections::HashSet<&str> =
                m.graph.initializers.keys().map(String::as_str).collect();
            known.insert("input");
            for n in &m.graph.nodes {
                for i in n.inputs.iter().filter(|i| !i.is_empty()) {
                    assert!(
                        known.contains(i.as_str()),
                        "{file}: {} reads unknown {i}",
                        n.label()
                    );
                }
                known.extend(n.outputs.iter().map(String::as_str));
            }
            let conv = m.graph.nodes.iter().find(|n| n.op_type == "Conv").unwrap();
            let w = &m.graph.initializers[conv.inputs[1].as_str()];
            assert_eq!(w.rank(), 4, "{file}");
            assert!(w.as_f32().unwrap().iter().all(|x| x.is_finite()), "{file}");
            if exporter == "dynamo" {
                assert!(
                    m.graph.nodes.iter().any(|n| n
                        .metadata
                        .iter()
                        .any(|(k, _)| k == "pkg.torch.onnx.name_scopes")),
                    "{file}: the dynamo exporter's scopes are read"
                );
            }
        }
    }
}

#[test]
fn external_data_export_equals_the_inline_one() {
    let inline = load(&testdata("gray28.ts.onnx")).unwrap();
    let ext = load(&testdata("gray28.ext.onnx")).unwrap();
    assert!(!ext.graph.initializers.is_empty());
    assert_eq!(inline.graph.initializers, ext.graph.initializers);
    assert_eq!(inline.graph.nodes, ext.graph.nodes);
}

/// PaddleOCR's classifier flattens with Shape → Cast → Slice → Cast → Concat → Reshape; with
/// the input shape fixed, the shape of `pool2d_10.tmp_0` is known (1×200×1×1, per the fixture's
/// JSON) and the whole chain folds to the Reshape target.
#[test]
fn paddle_shape_chain_folds() {
    let m = load(&testdata("ppocr_cls.onnx")).unwrap();
    let meta = json(&testdata("ppocr_cls.json"));
    assert_eq!(m.opset, 11);
    assert_eq!(op_types(&m), strings(&meta["op_types"]));
    assert!(
        m.graph.initializers.is_empty(),
        "paddle2onnx stores weights as Constant nodes"
    );
    let mut known: HashMap<String, TensorData> = HashMap::new();
    for n in m.graph.nodes.iter().filter(|n| n.op_type == "Constant") {
        known.insert(n.outputs[0].clone(), constant_value(n).unwrap());
    }
    let conv = m.graph.nodes.iter().find(|n| n.op_type == "Conv").unwrap();
    assert_eq!(known[&conv.inputs[1]].rank(), 4);

    let pool_dims = [1usize, 200, 1, 1];
    let mut folded = 0;
    for n in &m.graph.nodes {
        let value = if n.op_type == "Shape" && n.inputs[0] == "pool2d_10.tmp_0" {
            eval_shape(n, m.opset, &pool_dims).unwrap()
        } else if n.op_type != "Constant"
            && n.inputs
                .iter()
                .all(|i| i.is_empty() || known.contains_key(i))
        {
            let inputs: Vec<Option<&TensorData>> = n.inputs.iter().map(|i| known.get(i)).collect();
            eval_constant(n, m.opset, &inputs).unwrap().remove(0)
        } else {
            continue;
        };
        known.insert(n.outputs[0].clone(), value);
        folded += 1;
    }
    let reshape = m
        .graph
        .nodes
        .iter()
        .find(|n| n.outputs[0] == "reshape2_0.tmp_0")
        .unwrap();
    let target = &known[&reshape.inputs[1]];
    assert_eq!(target.as_i64().unwrap(), vec![1, 200]);
    assert!(folded >= 5, "{folded}");
    // The HardSigmoid attributes read through the typed getters.
    let hs = m
        .graph
        .nodes
        .iter()
        .find(|n| n.op_type == "HardSigmoid")
        .unwrap();
    assert!(hs.attr_float("alpha").unwrap().is_some());
    assert!(matches!(hs.attr("alpha"), Some(AttrValue::Float(_))));
}
