//! A user's own network from an ONNX file: the reader's graph (`deepvis-onnx`) lowered to the
//! engine's ops, with shape subgraphs folded for the fixed input shape, and every value
//! addressable by its ONNX name and by the PyTorch module path it came from.
//!
//! Only what can be lowered is: a node whose op is not supported, or that reads such a node,
//! leaves its outputs unavailable with the reason, and asking for one of them gives that
//! reason. So a detector whose head is full of dynamic-shape ops still lets its backbone be
//! visualized.

mod lower;

use crate::{ModelError, ModelInfo, Normalization, IMAGENET};
use deepvis_engine::{Graph, NodeId};
use deepvis_onnx::names::{module_output_map, node_scope, ScopedNode};
use deepvis_onnx::{Dim, OnnxModel, TensorData};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

pub(crate) use lower::lower_node;

/// What a lowered ONNX value is.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    /// Computed by an engine node (its output), with its shape at the lowering input shape.
    Node(NodeId),
    /// Known before run time: initializers, `Constant` nodes, folded shape arithmetic.
    Const(TensorData),
    /// Not computable here; the reason, said once.
    Unavailable(String),
}

/// The lowering's state: the graph so far, the shape of every node at the lowering input,
/// and what each ONNX value name is.
pub(crate) struct Lowering {
    pub graph: Graph,
    pub shapes: Vec<Vec<usize>>,
    pub values: HashMap<String, Value>,
    pub opset: i64,
}

impl Lowering {
    pub fn shape(&self, id: NodeId) -> &[usize] {
        &self.shapes[id]
    }

    /// Pushes an engine node computing `op` from `inputs`, named `name`, and records its
    /// shape (checking that the op accepts its inputs).
    pub fn push(
        &mut self,
        name: &str,
        op: impl Into<deepvis_engine::Op>,
        inputs: &[NodeId],
    ) -> Result<NodeId, String> {
        let op = op.into();
        let ins: Vec<&[usize]> = inputs.iter().map(|&i| &self.shapes[i][..]).collect();
        let shape = op.output_shape(&ins).map_err(|e| e.to_string())?;
        let id = self.graph.push(name, op, inputs);
        self.shapes.push(shape);
        Ok(id)
    }

    pub fn constant(&self, name: &str) -> Option<&TensorData> {
        match self.values.get(name) {
            Some(Value::Const(t)) => Some(t),
            _ => None,
        }
    }
}

/// How the user says the network wants its input, where the file cannot tell.
#[derive(Clone, Debug, Default)]
pub struct InputSpec {
    /// Height and width, for inputs whose size is not fixed in the graph.
    pub size: Option<(usize, usize)>,
    pub normalization: Option<Normalization>,
}

/// The loaded network and what the lowering learnt about it.
pub struct OnnxLoaded {
    pub model: crate::Model,
    /// [C, H, W] of the input the lowering used.
    pub input: [usize; 3],
    /// Values that could not be lowered, with the reason (for `layers` to say).
    pub unavailable: Vec<(String, String)>,
    /// Whether the normalization was assumed rather than given.
    pub normalization_assumed: bool,
}

/// Loads `path` and lowers it for an input of `spec`'s size (or the graph's own).
pub fn load(path: &Path, spec: &InputSpec) -> Result<OnnxLoaded, ModelError> {
    let model = deepvis_onnx::load(path).map_err(|e| ModelError::Onnx(e.to_string()))?;
    lower_model(&model, path, spec)
}

/// [`load`] of a model already in memory (external data refused); `origin` names it in errors.
pub fn load_bytes(bytes: &[u8], origin: &Path, spec: &InputSpec) -> Result<OnnxLoaded, ModelError> {
    let model = deepvis_onnx::load_bytes(bytes, origin, None)
        .map_err(|e| ModelError::Onnx(e.to_string()))?;
    lower_model(&model, origin, spec)
}

fn input_dims(
    model: &OnnxModel,
    path: &Path,
    spec: &InputSpec,
) -> Result<(String, [usize; 3]), ModelError> {
    let err = |m: String| ModelError::Onnx(format!("{}: {m}", path.display()));
    let inputs: Vec<_> = model.graph.inputs.iter().collect();
    let input =
        match inputs[..] {
            [one] => one,
            [] => return Err(err("the graph has no input".into())),
            _ => {
                return Err(err(format!(
                "the graph has {} inputs ({}); deepvis visualizes networks with one image input",
                inputs.len(),
                inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            )))
            }
        };
    let dims = input.dims.as_ref().ok_or_else(|| {
        err(format!(
            "input '{}' has no declared shape; re-export it with a fixed input shape",
            input.name
        ))
    })?;
    if dims.len() != 4 {
        return Err(err(format!(
            "input '{}' has rank {}; deepvis needs an image input [N, C, H, W]",
            input.name,
            dims.len()
        )));
    }
    let fixed = |d: &Dim| match d {
        Dim::Fixed(n) if *n > 0 => Some(*n),
        _ => None,
    };
    if let Some(n) = fixed(&dims[0]) {
        if n != 1 {
            return Err(err(format!(
                "input '{}' has a fixed batch of {n}; export it with batch 1 or a dynamic batch",
                input.name
            )));
        }
    }
    let c = fixed(&dims[1]).ok_or_else(|| {
        err(format!(
            "input '{}' has no fixed channel count; re-export it with one",
            input.name
        ))
    })?;
    // A size fixed in the graph is the one its shapes are folded for; the engine's ops still
    // run at other sizes where the network allows (convolutional layers do).
    let (h, w) = match (fixed(&dims[2]), fixed(&dims[3]), spec.size) {
        (Some(h), Some(w), _) => (h, w),
        (_, _, Some(size)) => size,
        _ => {
            return Err(err(format!(
                "input '{}' has a dynamic size; pass --size (e.g. --size 224 or --size 48x192)",
                input.name
            )))
        }
    };
    Ok((input.name.clone(), [c, h, w]))
}

fn lower_model(model: &OnnxModel, path: &Path, spec: &InputSpec) -> Result<OnnxLoaded, ModelError> {
    let (input_name, [c, h, w]) = input_dims(model, path, spec)?;
    let mut lw = Lowering {
        graph: Graph::new(),
        shapes: vec![vec![1, c, h, w]],
        values: HashMap::new(),
        opset: model.opset,
    };
    for (name, t) in &model.graph.initializers {
        lw.values.insert(name.clone(), Value::Const(t.clone()));
    }
    lw.values.insert(input_name, Value::Node(0));
    for node in &model.graph.nodes {
        lower_node(&mut lw, node);
    }

    // Names: every lowered value by its ONNX name (the engine node's own), plus module paths.
    let scoped: Vec<ScopedNode> = model
        .graph
        .nodes
        .iter()
        .map(|n| {
            let scopes = n
                .metadata
                .iter()
                .find(|(k, _)| k == "pkg.torch.onnx.name_scopes")
                .map(|(_, v)| v.as_str());
            let scope = node_scope(&n.name, scopes);
            ScopedNode {
                scope: scope.as_ref().map(|s| s.path.clone()),
                call: scope.map_or(0, |s| s.call),
                inputs: n.inputs.clone(),
                outputs: n.outputs.clone(),
            }
        })
        .collect();
    let outputs: Vec<String> = model.graph.outputs.iter().map(|o| o.name.clone()).collect();
    let mut aliases = Vec::new();
    let mut unavailable: Vec<(String, String)> = lw
        .values
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Unavailable(why) => Some((k.clone(), why.clone())),
            _ => None,
        })
        .collect();
    for (key, value) in module_output_map(&scoped, &outputs) {
        match lw.values.get(&value) {
            Some(Value::Node(id)) if *id != 0 && lw.graph.nodes()[*id].name != key => {
                aliases.push((key, *id));
            }
            Some(Value::Unavailable(why)) => unavailable.push((key, why.clone())),
            _ => {}
        }
    }
    unavailable.sort();

    // The class head: the graph's output, where it is [1, K] and the last node.
    let logits = outputs.first().and_then(|o| match lw.values.get(o) {
        Some(Value::Node(id)) if lw.shapes[*id].len() == 2 && *id == lw.graph.last() => Some(*id),
        _ => None,
    });
    let file_name = path
        .file_name()
        .map_or_else(|| "model".to_string(), |f| f.to_string_lossy().into_owned());
    let name = file_name
        .strip_suffix(".onnx")
        .unwrap_or(&file_name)
        .to_string();
    let (normalization, assumed) = match &spec.normalization {
        Some(n) => (n.clone(), false),
        None => (IMAGENET, true),
    };
    let info = ModelInfo {
        name: Cow::Owned(name),
        description: Cow::Owned(format!(
            "{} (ONNX, opset {}, from {})",
            file_name,
            model.opset,
            if model.producer.is_empty() {
                "an unnamed producer"
            } else {
                &model.producer
            }
        )),
        url: None,
        bundled: false,
        normalization,
        native_size: (h, w),
        channels: c,
        sequential: None,
        head_prefix: Cow::Borrowed(""),
        build: None,
    };
    Ok(OnnxLoaded {
        model: crate::Model {
            info,
            graph: lw.graph,
            has_head: logits.is_some(),
            aliases,
            unavailable: unavailable.clone(),
            source: Some(path.display().to_string()),
        },
        input: [c, h, w],
        unavailable,
        normalization_assumed: assumed,
    })
}
