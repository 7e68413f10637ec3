//! The decoded model: graph, nodes with typed attributes, value infos, initializers.

use std::path::Path;

use indexmap::IndexMap;
use prost::bytes::Bytes;

use crate::error::{OnnxError, Result};
use crate::external::ExternalFiles;
use crate::proto::{self, attribute_type as at};
use crate::tensor::{tensor_from_proto, DataType, TensorData};
use crate::Limits;

/// A loaded ONNX model.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxModel {
    pub ir_version: i64,
    /// The opset of the default domain (`""` or `"ai.onnx"`): which version of each standard
    /// operator's spec the nodes follow.
    pub opset: i64,
    /// Every `(domain, version)` the model imports, in file order.
    pub opsets: Vec<(String, i64)>,
    pub producer: String,
    pub producer_version: String,
    pub metadata: Vec<(String, String)>,
    /// How many model-local functions (`ModelProto.functions`) the file defines; nodes that
    /// call them cannot be lowered, since their bodies are not decoded.
    pub local_functions: usize,
    pub graph: OnnxGraph,
}

/// The main graph.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OnnxGraph {
    pub name: String,
    /// In file order, which ONNX requires to be topological.
    pub nodes: Vec<OnnxNode>,
    /// The inputs the caller feeds. Initializers that older exporters also list as graph
    /// inputs are left out: they are weights, found in `initializers`.
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// Shape and type hints for intermediate values, as the exporter or shape inference left
    /// them; may be empty or partial.
    pub value_info: Vec<ValueInfo>,
    /// Weights and other constants by name, in file order.
    pub initializers: IndexMap<String, TensorData>,
}

impl OnnxGraph {
    /// The type and shape recorded for a value, looked up in inputs, outputs and value_info.
    pub fn value_info_of(&self, name: &str) -> Option<&ValueInfo> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.value_info)
            .find(|v| v.name == name)
    }

    /// The node whose outputs include `name`.
    pub fn producer_of(&self, name: &str) -> Option<&OnnxNode> {
        if name.is_empty() {
            return None;
        }
        self.nodes
            .iter()
            .find(|n| n.outputs.iter().any(|o| o == name))
    }
}

/// One operator application.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OnnxNode {
    /// May be empty; [`OnnxNode::label`] names the node in messages anyway.
    pub name: String,
    pub op_type: String,
    /// `""` for the standard operators (also written `"ai.onnx"`).
    pub domain: String,
    /// Value names; `""` marks an omitted optional input, and trailing optional inputs may be
    /// missing altogether: read them with [`OnnxNode::input`].
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
    /// `NodeProto.metadata_props`, e.g. `pkg.torch.onnx.name_scopes` from the torch exporter.
    pub metadata: Vec<(String, String)>,
}

/// A value's declared element type and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    /// `TensorProto.DataType` code; 0 when the value is not a tensor or has no type.
    pub elem_type: i32,
    /// `None` when the shape is not recorded at all (rank unknown).
    pub dims: Option<Vec<Dim>>,
}

impl ValueInfo {
    pub fn data_type(&self) -> Option<DataType> {
        DataType::from_code(self.elem_type)
    }

    /// The shape when every dimension is a number.
    pub fn fixed_dims(&self) -> Option<Vec<usize>> {
        self.dims
            .as_ref()?
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                _ => None,
            })
            .collect()
    }
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A named free dimension, such as `"batch_size"`.
    Symbolic(String),
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    /// Lossily decoded UTF-8.
    String(String),
    Tensor(TensorData),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<String>),
    Tensors(Vec<TensorData>),
    /// An encoded `GraphProto` (If/Loop/Scan body), not decoded.
    Graph(Bytes),
    Graphs(Vec<Bytes>),
    /// Sparse tensors and type protos are kept only as their kind.
    SparseTensor,
    SparseTensors,
    TypeProto,
    TypeProtos,
    /// In a function body: stands for the caller's attribute of this name.
    Ref(String),
}

impl AttrValue {
    /// The `AttributeType` name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            AttrValue::Float(_) => "FLOAT",
            AttrValue::Int(_) => "INT",
            AttrValue::String(_) => "STRING",
            AttrValue::Tensor(_) => "TENSOR",
            AttrValue::Floats(_) => "FLOATS",
            AttrValue::Ints(_) => "INTS",
            AttrValue::Strings(_) => "STRINGS",
            AttrValue::Tensors(_) => "TENSORS",
            AttrValue::Graph(_) => "GRAPH",
            AttrValue::Graphs(_) => "GRAPHS",
            AttrValue::SparseTensor => "SPARSE_TENSOR",
            AttrValue::SparseTensors => "SPARSE_TENSORS",
            AttrValue::TypeProto => "TYPE_PROTO",
            AttrValue::TypeProtos => "TYPE_PROTOS",
            AttrValue::Ref(_) => "a reference to a function attribute",
        }
    }
}

/// Generates `attr_X` (`Result<Option<T>>`), `attr_X_or` (owned value, `default` when
/// absent) and `attr_X_req` (an error when absent) for one attribute kind.
macro_rules! getters {
    ($get:ident, $or:ident, $req:ident, $want:literal, $ty:ty, $ret:ty, $conv:expr,
     $pat:pat => $out:expr) => {
        #[doc = concat!("Attribute `name` as ", $want, "; `None` when absent, an error naming \
            the node when it has another type.")]
        pub fn $get(&self, name: &str) -> Result<Option<$ty>> {
            match self.attr(name) {
                None => Ok(None),
                Some($pat) => Ok(Some($out)),
                Some(other) => {
                    Err(self.attr_error(name, format!("is {}, expected {}", other.kind(), $want)))
                }
            }
        }

        #[doc = concat!("Attribute `name` as ", $want, ", or `default` when absent.")]
        pub fn $or(&self, name: &str, default: $ty) -> Result<$ret> {
            let conv = $conv;
            Ok(conv(self.$get(name)?.unwrap_or(default)))
        }

        #[doc = concat!("Attribute `name` as ", $want, "; an error when absent.")]
        pub fn $req(&self, name: &str) -> Result<$ty> {
            self.$get(name)?
                .ok_or_else(|| self.attr_error(name, "is required but missing".into()))
        }
    };
}

impl OnnxNode {
    /// The node's name, or when it has none its first output, for messages.
    pub fn label(&self) -> &str {
        if !self.name.is_empty() {
            &self.name
        } else if let Some(out) = self.outputs.first().filter(|o| !o.is_empty()) {
            out
        } else {
            &self.op_type
        }
    }

    /// Input `index`, `None` when absent or omitted (`""`).
    pub fn input(&self, index: usize) -> Option<&str> {
        self.inputs
            .get(index)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }

    pub(crate) fn attr_error(&self, attr: &str, reason: String) -> OnnxError {
        OnnxError::Attribute {
            node: self.label().to_string(),
            op: self.op_type.clone(),
            attr: attr.to_string(),
            reason,
        }
    }

    pub(crate) fn node_error(&self, reason: String, fix: &'static str) -> OnnxError {
        OnnxError::Node {
            node: self.label().to_string(),
            op: self.op_type.clone(),
            reason,
            fix,
        }
    }

    getters!(attr_int, attr_int_or, attr_int_req, "INT", i64, i64, |v: i64| v,
        AttrValue::Int(i) => *i);
    getters!(attr_ints, attr_ints_or, attr_ints_req, "INTS", &[i64], Vec<i64>,
        <[i64]>::to_vec, AttrValue::Ints(v) => v.as_slice());
    getters!(attr_floats, attr_floats_or, attr_floats_req, "FLOATS", &[f32], Vec<f32>,
        <[f32]>::to_vec, AttrValue::Floats(v) => v.as_slice());
    getters!(attr_string, attr_string_or, attr_string_req, "STRING", &str, String,
        str::to_string, AttrValue::String(v) => v.as_str());
    getters!(attr_strings, attr_strings_or, attr_strings_req, "STRINGS", &[String],
        Vec<String>, <[String]>::to_vec, AttrValue::Strings(v) => v.as_slice());

    // An INT where a FLOAT is expected is accepted: exporters occasionally write `alpha=1`.
    getters!(attr_float, attr_float_or, attr_float_req, "FLOAT", f32, f32, |v: f32| v,
        v @ (AttrValue::Float(_) | AttrValue::Int(_)) => float_of(v));

    /// Attribute `name` as a TENSOR; `None` when absent.
    pub fn attr_tensor(&self, name: &str) -> Result<Option<&TensorData>> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Tensor(t)) => Ok(Some(t)),
            Some(other) => {
                Err(self.attr_error(name, format!("is {}, expected TENSOR", other.kind())))
            }
        }
    }

    /// Attribute `name` as a TENSOR; an error when absent.
    pub fn attr_tensor_req(&self, name: &str) -> Result<&TensorData> {
        self.attr_tensor(name)?
            .ok_or_else(|| self.attr_error(name, "is required but missing".into()))
    }

    /// The constant value of input `index`, `None` when the input is absent or omitted.
    /// `constants` looks a value name up among initializers and already-folded values; an
    /// input it does not know is computed at run time, which is an error here.
    pub fn constant_input<'a>(
        &self,
        index: usize,
        constants: &dyn Fn(&str) -> Option<&'a TensorData>,
    ) -> Result<Option<&'a TensorData>> {
        let Some(name) = self.input(index) else {
            return Ok(None);
        };
        constants(name).map(Some).ok_or_else(|| {
            self.node_error(
                format!("input {index} ('{name}') must be a constant but is computed at run time"),
                "export the model with a fixed input shape and constant folding \
                 (torch.onnx.export(..., do_constant_folding=True)) or simplify it with onnxsim",
            )
        })
    }

    /// A list of integers that, depending on the opset, is attribute `attr` (older opsets) or
    /// the constant input `index` (newer ones): Squeeze/Unsqueeze `axes` (input from 13),
    /// Split `split` (13), Pad `pads` (11), Reduce* `axes` (ReduceSum 13, the others 18),
    /// Slice `starts`/`ends`/`axes`/`steps` (10), Resize/Upsample `scales`... Reading whichever
    /// is present means the lowering does not need the opset table. `None` when neither is.
    pub fn ints_input_or_attr<'a>(
        &self,
        index: usize,
        attr: &str,
        constants: &dyn Fn(&str) -> Option<&'a TensorData>,
    ) -> Result<Option<Vec<i64>>> {
        if let Some(t) = self.constant_input(index, constants)? {
            return t.as_i64().map(Some).map_err(|e| {
                self.node_error(
                    format!("input {index} ({attr}): {}", e.cause()),
                    "re-export the model",
                )
            });
        }
        Ok(self.attr_ints(attr)?.map(<[i64]>::to_vec))
    }

    /// A float that is attribute `attr` in older opsets and the constant input `index` in
    /// newer ones (Clip `min`/`max`: inputs 1 and 2 from opset 11). `None` when neither is
    /// present.
    pub fn float_input_or_attr<'a>(
        &self,
        index: usize,
        attr: &str,
        constants: &dyn Fn(&str) -> Option<&'a TensorData>,
    ) -> Result<Option<f32>> {
        if let Some(t) = self.constant_input(index, constants)? {
            return t.scalar_f32().map(Some).map_err(|e| {
                self.node_error(
                    format!("input {index} ({attr}): {}", e.cause()),
                    "re-export the model",
                )
            });
        }
        self.attr_float(attr)
    }
}

fn float_of(v: &AttrValue) -> f32 {
    match v {
        AttrValue::Float(f) => *f,
        AttrValue::Int(i) => *i as f32,
        _ => f32::NAN,
    }
}

/// Turns the decoded protobuf into the public types, decoding every tensor.
pub(crate) fn convert_model(
    m: proto::ModelProto,
    path: &Path,
    external: &mut ExternalFiles,
    limits: &Limits,
) -> Result<OnnxModel> {
    let opsets: Vec<(String, i64)> = m
        .opset_import
        .iter()
        .map(|o| (o.domain.clone(), o.version))
        .collect();
    let model_err = |reason: String, fix: &'static str| OnnxError::Model {
        path: path.to_path_buf(),
        reason,
        fix,
    };
    let opset = opsets
        .iter()
        .find(|(d, _)| d.is_empty() || d == "ai.onnx")
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            model_err(
                "imports no opset of the standard domain (ai.onnx)".into(),
                "re-export it with a standard exporter",
            )
        })?;
    let Some(graph) = m.graph else {
        return Err(OnnxError::NotOnnx {
            path: path.to_path_buf(),
            reason: "it has no graph".into(),
        });
    };
    let graph = convert_graph(graph, path, external, limits)?;
    Ok(OnnxModel {
        ir_version: m.ir_version,
        opset,
        opsets,
        producer: m.producer_name,
        producer_version: m.producer_version,
        metadata: pairs(m.metadata_props),
        local_functions: m.functions.len(),
        graph,
    })
}

fn pairs(entries: Vec<proto::StringStringEntryProto>) -> Vec<(String, String)> {
    entries.into_iter().map(|e| (e.key, e.value)).collect()
}

fn convert_graph(
    g: proto::GraphProto,
    path: &Path,
    external: &mut ExternalFiles,
    limits: &Limits,
) -> Result<OnnxGraph> {
    let model_err = |reason: String, fix: &'static str| OnnxError::Model {
        path: path.to_path_buf(),
        reason,
        fix,
    };
    if g.node.len() as u64 > limits.max_nodes {
        return Err(OnnxError::TooLarge {
            path: path.to_path_buf(),
            reason: format!(
                "{} nodes, over the limit of {}",
                g.node.len(),
                limits.max_nodes
            ),
        });
    }
    if !g.sparse_initializer.is_empty() {
        return Err(model_err(
            format!(
                "has {} sparse initializers, which this reader does not support",
                g.sparse_initializer.len()
            ),
            "re-export the model with dense weights",
        ));
    }
    let mut initializers = IndexMap::with_capacity(g.initializer.len());
    for (i, t) in g.initializer.into_iter().enumerate() {
        if t.name.is_empty() {
            return Err(model_err(
                format!("initializer #{i} has no name"),
                "the file is malformed: re-export the model",
            ));
        }
        let name = t.name.clone();
        let data = tensor_from_proto(t, &name, external, limits)?;
        if initializers.insert(name.clone(), data).is_some() {
            return Err(model_err(
                format!("has two initializers named '{name}'"),
                "the file is malformed: re-export the model",
            ));
        }
    }
    let mut nodes = Vec::with_capacity(g.node.len());
    for n in g.node {
        nodes.push(convert_node(n, external, limits)?);
    }
    let inputs = g
        .input
        .into_iter()
        .filter(|v| !initializers.contains_key(&v.name))
        .map(value_info)
        .collect();
    Ok(OnnxGraph {
        name: g.name,
        nodes,
        inputs,
        outputs: g.output.into_iter().map(value_info).collect(),
        value_info: g.value_info.into_iter().map(value_info).collect(),
        initializers,
    })
}

fn value_info(v: proto::ValueInfoProto) -> ValueInfo {
    let tensor = v.r#type.and_then(|t| t.tensor_type);
    let (elem_type, dims) = match tensor {
        None => (0, None),
        Some(t) => (
            t.elem_type,
            t.shape.map(|s| {
                s.dim
                    .into_iter()
                    .map(|d| match (d.dim_value, d.dim_param) {
                        (Some(n), _) if n >= 0 => Dim::Fixed(n as usize),
                        (None, Some(p)) if !p.is_empty() => Dim::Symbolic(p),
                        _ => Dim::Unknown,
                    })
                    .collect()
            }),
        ),
    };
    ValueInfo {
        name: v.name,
        elem_type,
        dims,
    }
}

fn convert_node(
    n: proto::NodeProto,
    external: &mut ExternalFiles,
    limits: &Limits,
) -> Result<OnnxNode> {
    let mut node = OnnxNode {
        name: n.name,
        op_type: n.op_type,
        domain: n.domain,
        inputs: n.input,
        outputs: n.output,
        attributes: Vec::with_capacity(n.attribute.len()),
        metadata: pairs(n.metadata_props),
    };
    for a in n.attribute {
        let name = a.name.clone();
        let value = attr_value(a, &node, external, limits)?;
        node.attributes.push(Attribute { name, value });
    }
    Ok(node)
}

fn attr_value(
    a: proto::AttributeProto,
    node: &OnnxNode,
    external: &mut ExternalFiles,
    limits: &Limits,
) -> Result<AttrValue> {
    if !a.ref_attr_name.is_empty() {
        return Ok(AttrValue::Ref(a.ref_attr_name));
    }
    let kind = if a.r#type != at::UNDEFINED {
        a.r#type
    } else {
        // IR version 1 had no `type`: the field in use tells.
        match () {
            _ if a.f.is_some() => at::FLOAT,
            _ if a.i.is_some() => at::INT,
            _ if a.s.is_some() => at::STRING,
            _ if a.t.is_some() => at::TENSOR,
            _ if a.g.is_some() => at::GRAPH,
            _ if !a.floats.is_empty() => at::FLOATS,
            _ if !a.ints.is_empty() => at::INTS,
            _ if !a.strings.is_empty() => at::STRINGS,
            _ if !a.tensors.is_empty() => at::TENSORS,
            _ if !a.graphs.is_empty() => at::GRAPHS,
            _ => return Err(node.attr_error(&a.name, "has no type and no value".into())),
        }
    };
    let label = format!("{}.{}", node.label(), a.name);
    let text = |s: Vec<u8>| String::from_utf8_lossy(&s).into_owned();
    Ok(match kind {
        at::FLOAT => AttrValue::Float(a.f.unwrap_or(0.0)),
        at::INT => AttrValue::Int(a.i.unwrap_or(0)),
        at::STRING => AttrValue::String(text(a.s.unwrap_or_default())),
        at::TENSOR => match a.t {
            Some(t) => AttrValue::Tensor(tensor_from_proto(t, &label, external, limits)?),
            None => return Err(node.attr_error(&a.name, "is a TENSOR with no tensor".into())),
        },
        at::GRAPH => match a.g {
            Some(g) => AttrValue::Graph(g),
            None => return Err(node.attr_error(&a.name, "is a GRAPH with no graph".into())),
        },
        at::FLOATS => AttrValue::Floats(a.floats),
        at::INTS => AttrValue::Ints(a.ints),
        at::STRINGS => AttrValue::Strings(a.strings.into_iter().map(text).collect()),
        at::TENSORS => {
            let mut out = Vec::with_capacity(a.tensors.len());
            for (i, t) in a.tensors.into_iter().enumerate() {
                out.push(tensor_from_proto(
                    t,
                    &format!("{label}[{i}]"),
                    external,
                    limits,
                )?);
            }
            AttrValue::Tensors(out)
        }
        at::GRAPHS => AttrValue::Graphs(a.graphs),
        at::SPARSE_TENSOR => AttrValue::SparseTensor,
        at::SPARSE_TENSORS => AttrValue::SparseTensors,
        at::TYPE_PROTO => AttrValue::TypeProto,
        at::TYPE_PROTOS => AttrValue::TypeProtos,
        other => {
            return Err(node.attr_error(&a.name, format!("has unknown attribute type {other}")))
        }
    })
}
