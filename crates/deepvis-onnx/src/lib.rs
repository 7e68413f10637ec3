//! A pure-Rust reader of ONNX model files.
//!
//! [`load`] decodes a `.onnx` file into an [`OnnxModel`]: the main graph's nodes with typed
//! attributes, its inputs and outputs with their declared shapes, and every initializer
//! decoded into a [`TensorData`] — from `raw_data`, from the typed repeated fields, or from
//! external data files next to the model. [`eval_constant`] folds the small shape-computation
//! subgraphs exporters leave in (Shape → Gather → Concat → Reshape and the like) once the input
//! shape is fixed, so a later lowering only sees constant shapes.
//!
//! The protobuf is decoded by `prost` from message types written in `proto.rs`; no `protoc`
//! is needed. Files are untrusted: before decoding, a scan of the wire format bounds the node
//! count and the decoded size; every tensor's declared size is checked against the bytes
//! actually present before anything is allocated for it; external data is read only from the
//! model's own folder. All of it fails with one-line [`OnnxError`]s.
//!
//! Not supported: sparse initializers, segmented tensors, complex, 8-bit float and 4/2-bit
//! element types (refused with an error naming the tensor), and sub-graphs of control-flow
//! nodes (kept as opaque bytes in [`AttrValue::Graph`]).

mod error;
mod eval;
mod external;
mod model;
pub mod names;
pub mod proto;
mod scan;
mod tensor;

use std::path::Path;

use prost::bytes::Bytes;
use prost::Message;

pub use crate::error::{one_line, OnnxError};
pub use crate::eval::{constant_value, eval_constant, eval_shape, shape_of};
pub use crate::model::{AttrValue, Attribute, Dim, OnnxGraph, OnnxModel, OnnxNode, ValueInfo};
pub use crate::tensor::{data_type_name, DataType, TensorData, Values};
pub use prost::bytes;

/// Resource limits checked before allocating, so that a hostile or corrupt file fails with an
/// error instead of exhausting memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nodes in the main graph. The default, 200 000, is ten times the largest transformer
    /// exports seen (CNNs have hundreds to a few thousand); a million-node graph would take
    /// gigabytes once lowered to engine ops.
    pub max_nodes: u64,
    /// Bytes of any one tensor, as declared by its dims and element type.
    pub max_tensor_bytes: u64,
    /// Estimated bytes of the decoded protobuf structures, not counting `raw_data` (which is
    /// sliced from the file buffer, not copied).
    pub max_decoded_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: 200_000,
            max_tensor_bytes: 4 << 30,
            max_decoded_bytes: 2 << 30,
        }
    }
}

/// Loads an ONNX model file; external data is read from the file's folder.
pub fn load(path: &Path) -> Result<OnnxModel, OnnxError> {
    load_with(path, &Limits::default())
}

/// [`load`] with explicit limits.
pub fn load_with(path: &Path, limits: &Limits) -> Result<OnnxModel, OnnxError> {
    let io = |reason: String| OnnxError::Io {
        path: path.to_path_buf(),
        reason,
    };
    // Devices and pipes (`/dev/zero`) would be read until memory runs out.
    let mut file = std::fs::File::open(path).map_err(|e| io(e.to_string()))?;
    let meta = file.metadata().map_err(|e| io(e.to_string()))?;
    if !meta.is_file() {
        return Err(io(
            "it is not a regular file (a directory, device or pipe)".into()
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| io(e.to_string()))?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    decode(Bytes::from(bytes), path, Some(folder), limits)
}

/// Loads a model already in memory. `origin` names it in messages; external data is read
/// from `base_dir`, and refused when it is `None`.
pub fn load_bytes(
    bytes: &[u8],
    origin: &Path,
    base_dir: Option<&Path>,
) -> Result<OnnxModel, OnnxError> {
    load_bytes_with(bytes, origin, base_dir, &Limits::default())
}

/// [`load_bytes`] with explicit limits.
pub fn load_bytes_with(
    bytes: &[u8],
    origin: &Path,
    base_dir: Option<&Path>,
    limits: &Limits,
) -> Result<OnnxModel, OnnxError> {
    decode(Bytes::copy_from_slice(bytes), origin, base_dir, limits)
}

fn decode(
    bytes: Bytes,
    path: &Path,
    base_dir: Option<&Path>,
    limits: &Limits,
) -> Result<OnnxModel, OnnxError> {
    decode_inner(bytes, path, base_dir, limits).map_err(OnnxError::one_line)
}

fn decode_inner(
    bytes: Bytes,
    path: &Path,
    base_dir: Option<&Path>,
    limits: &Limits,
) -> Result<OnnxModel, OnnxError> {
    let not_onnx = |reason: String| OnnxError::NotOnnx {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(what) = sniff(&bytes) {
        return Err(not_onnx(what.into()));
    }
    let scan = scan::scan_model(&bytes).map_err(not_onnx)?;
    if scan.nodes > limits.max_nodes {
        return Err(OnnxError::TooLarge {
            path: path.to_path_buf(),
            reason: format!(
                "its graph has {} nodes, over the limit of {}",
                scan.nodes, limits.max_nodes
            ),
        });
    }
    if scan.decoded_bytes > limits.max_decoded_bytes {
        return Err(OnnxError::TooLarge {
            path: path.to_path_buf(),
            reason: format!(
                "its structure would take about {} MiB to decode, over the limit of {} MiB",
                scan.decoded_bytes >> 20,
                limits.max_decoded_bytes >> 20
            ),
        });
    }
    // prost's own messages name the message path of the fault, e.g.
    // "failed to decode Protobuf message: GraphProto.node: NodeProto.name: invalid string
    // value: data is not UTF-8 encoded".
    let model = proto::ModelProto::decode(bytes).map_err(|e| not_onnx(e.to_string()))?;
    if model.graph.is_none() && model.opset_import.is_empty() && model.ir_version == 0 {
        return Err(not_onnx("it has no graph, opset or IR version".into()));
    }
    let mut external = external::ExternalFiles::new(path, base_dir);
    model::convert_model(model, path, &mut external, limits)
}

/// Recognizes the weight formats most often passed by mistake, for a clearer message than a
/// protobuf parse error.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Some("it is a zip archive (a PyTorch .pth checkpoint?)");
    }
    if bytes.len() > 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        return Some("it is a Python pickle (a legacy PyTorch checkpoint?)");
    }
    let header = bytes
        .get(..8)
        .map(|h| u64::from_le_bytes(h.try_into().unwrap_or([0; 8])));
    if header.is_some_and(|n| n > 0 && n < 100_000_000) && bytes.get(8) == Some(&b'{') {
        return Some("it is a safetensors file");
    }
    None
}
