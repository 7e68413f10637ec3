use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// Dropout in eval mode, and any other pass-through.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl Operator for Identity {
    fn describe(&self) -> String {
        "Identity".into()
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Ok(single("identity", inputs)?.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        Ok(single("identity", inputs)?.clone())
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, _saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        Ok(vec![grad])
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

    fn passes_through(&self) -> bool {
        true
    }
}
