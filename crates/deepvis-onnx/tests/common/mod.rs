//! A tiny builder of ONNX models in code, encoded with the crate's own prost messages.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use deepvis_onnx::bytes::Bytes;
use deepvis_onnx::proto::*;
use prost::Message;

pub const FLOAT: i32 = 1;
pub const UINT8: i32 = 2;
pub const INT8: i32 = 3;
pub const INT32: i32 = 6;
pub const INT64: i32 = 7;
pub const BOOL: i32 = 9;
pub const FLOAT16: i32 = 10;
pub const DOUBLE: i32 = 11;
pub const BFLOAT16: i32 = 16;

pub fn raw_f32(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        raw_data: Some(Bytes::from(
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )),
        ..Default::default()
    }
}

pub fn typed_f32(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

pub fn typed_i64(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: INT64,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

pub fn external(
    name: &str,
    dims: &[i64],
    location: &str,
    offset: u64,
    length: Option<u64>,
) -> TensorProto {
    let mut entries = vec![
        entry("location", location),
        entry("offset", &offset.to_string()),
    ];
    if let Some(length) = length {
        entries.push(entry("length", &length.to_string()));
    }
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        data_location: DATA_LOCATION_EXTERNAL,
        external_data: entries,
        ..Default::default()
    }
}

pub fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    }
}

pub fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            dim_value: *d,
                            dim_param: if d.is_none() {
                                Some("batch".into())
                            } else {
                                None
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: Some(i),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f: Some(f),
        ..Default::default()
    }
}

pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::TENSOR,
        t: Some(t),
        ..Default::default()
    }
}

pub fn model(opset: i64, graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "deepvis-onnx tests".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

pub fn graph(nodes: Vec<NodeProto>, initializers: Vec<TensorProto>) -> GraphProto {
    GraphProto {
        name: "g".into(),
        node: nodes,
        initializer: initializers,
        input: vec![value_info("x", FLOAT, &[None, Some(3), Some(8), Some(8)])],
        output: vec![value_info("y", FLOAT, &[])],
        ..Default::default()
    }
}

/// Writes `m` as `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, m: &ModelProto) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path
}

/// Writes and loads back.
pub fn roundtrip(m: &ModelProto) -> Result<deepvis_onnx::OnnxModel, deepvis_onnx::OnnxError> {
    let dir = tempfile::tempdir().unwrap();
    deepvis_onnx::load(&write(dir.path(), "model.onnx", m))
}

/// The error's message, checked to be a single line that does not say the same clause twice.
pub fn one_line(err: &deepvis_onnx::OnnxError) -> String {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    assert!(
        std::error::Error::source(err).is_none(),
        "error has a source chain: {msg}"
    );
    let clauses: Vec<&str> = msg.split("; ").collect();
    for (i, a) in clauses.iter().enumerate() {
        for b in &clauses[i + 1..] {
            assert_ne!(a, b, "repeated clause in: {msg}");
        }
    }
    msg
}
