use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// [N, ...] → [N, product(...)], as `torch.flatten(x, 1)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Operator for Flatten {
    fn describe(&self) -> String {
        "Flatten".into()
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        match single("flatten", inputs)? {
            [] => Err(EngineError::Shape("flatten of a scalar".into())),
            [n, rest @ ..] => Ok(vec![*n, rest.iter().product()]),
        }
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("flatten", inputs)?;
        let shape = self.output_shape(&[x.shape()])?;
        x.clone().reshape(shape)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        Ok(vec![grad.reshape(saved.input_shape(0).to_vec())?])
    }

    fn receptive_field(&self) -> Field {
        Field::Global
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
