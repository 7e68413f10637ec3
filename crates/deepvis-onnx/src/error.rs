use std::path::PathBuf;

use crate::tensor::DataType;

/// Everything that can go wrong reading or folding an ONNX model.
///
/// Every message is one line that names the cause once and what to do once. No variant wraps
/// another error as a `source`: the cause is already in the text, so error reporters that walk
/// source chains do not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read {}: {reason}; check that the path exists and is readable", path.display())]
    Io { path: PathBuf, reason: String },

    #[error(
        "{} is not an ONNX model or is truncated: {reason}; re-export it \
         (torch.onnx.export or onnx.save) and copy it again",
        path.display()
    )]
    NotOnnx { path: PathBuf, reason: String },

    #[error(
        "{} is too large to load: {reason}; this reader refuses it rather than run out of \
         memory (see deepvis_onnx::Limits)",
        path.display()
    )]
    TooLarge { path: PathBuf, reason: String },

    #[error("{}: {reason}; {fix}", path.display())]
    Model {
        path: PathBuf,
        reason: String,
        fix: &'static str,
    },

    #[error("tensor '{tensor}': {reason}; {fix}")]
    Tensor {
        tensor: String,
        reason: String,
        fix: &'static str,
    },

    /// External data that is missing, short, or names a file outside the model's folder.
    #[error("tensor '{tensor}': {reason}; {fix}")]
    ExternalData {
        tensor: String,
        reason: String,
        fix: String,
    },

    #[error("node '{node}' ({op}): attribute '{attr}' {reason}; re-export the model with a standard exporter")]
    Attribute {
        node: String,
        op: String,
        attr: String,
        reason: String,
    },

    #[error("node '{node}' ({op}): {reason}; {fix}")]
    Node {
        node: String,
        op: String,
        reason: String,
        fix: &'static str,
    },

    #[error(
        "cannot evaluate {op} (node '{node}', opset {opset}) on constants: the constant folder \
         does not implement it; simplify the model first (e.g. onnxsim) or export it with a \
         fixed input shape"
    )]
    Unsupported {
        op: String,
        node: String,
        opset: i64,
    },

    #[error("{reason}; {fix}")]
    Value { reason: String, fix: &'static str },

    #[error("expected {expected} tensor, found {found}; use a tensor of the expected type")]
    WrongType {
        expected: &'static str,
        found: DataType,
    },
}

/// Escapes control characters: names in a file can hold any, and a message must stay one line.
fn escape_controls(s: &mut String) {
    if s.chars().any(char::is_control) {
        *s = one_line(s);
    }
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`), for messages that quote names
/// read from a model file.
pub fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

impl OnnxError {
    /// The same error with control characters in the file's names (and anything else quoted
    /// from the file) escaped.
    pub(crate) fn one_line(mut self) -> Self {
        use OnnxError::*;
        match &mut self {
            Io { reason, .. } | NotOnnx { reason, .. } | TooLarge { reason, .. } => {
                escape_controls(reason)
            }
            Model { reason, .. } | Value { reason, .. } => escape_controls(reason),
            Tensor { tensor, reason, .. } => {
                escape_controls(tensor);
                escape_controls(reason);
            }
            ExternalData {
                tensor,
                reason,
                fix,
            } => {
                escape_controls(tensor);
                escape_controls(reason);
                escape_controls(fix);
            }
            Attribute {
                node,
                op,
                attr,
                reason,
            } => {
                for s in [node, op, attr, reason] {
                    escape_controls(s);
                }
            }
            Node {
                node, op, reason, ..
            } => {
                for s in [node, op, reason] {
                    escape_controls(s);
                }
            }
            Unsupported { op, node, .. } => {
                escape_controls(op);
                escape_controls(node);
            }
            WrongType { .. } => {}
        }
        self
    }

    /// The cause without the advice, for wrapping a value-level error into a node-level one
    /// that gives its own advice (so that a message never carries two fixes).
    pub(crate) fn cause(&self) -> String {
        match self {
            OnnxError::WrongType { expected, found } => {
                format!("expected {expected} tensor, found {found}")
            }
            OnnxError::Value { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

pub type Result<T, E = OnnxError> = std::result::Result<T, E>;
