use crate::op::{Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// The network input: node 0 of every graph. The executor sets its value; it is never run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Input;

impl Operator for Input {
    fn describe(&self) -> String {
        "Input".into()
    }

    fn output_shape(&self, _inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Err(EngineError::Graph(
            "the input node has no computed shape".into(),
        ))
    }

    fn forward(&self, _inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        Err(EngineError::Graph("the input node is not computed".into()))
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, _saved: &Saved, _grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        Err(EngineError::Graph(
            "the input node has no backward pass".into(),
        ))
    }

    fn receptive_field(&self) -> Field {
        Field::Pointwise
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
