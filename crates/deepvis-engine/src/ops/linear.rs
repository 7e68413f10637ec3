use crate::op::{numel, single, Field, Needs, Operator, Saved};
use crate::{EngineError, Linear, Tensor};
use std::any::Any;

impl Operator for Linear {
    fn describe(&self) -> String {
        "Linear".into()
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        match single("linear", inputs)? {
            [n, f] if *f == self.in_features => Ok(vec![*n, self.out_features]),
            s => Err(EngineError::Shape(format!(
                "linear layer expects [N, {}], got {s:?}",
                self.in_features
            ))),
        }
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        Linear::forward(self, single("linear", inputs)?)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, _saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        Ok(vec![Linear::backward(self, &grad)?])
    }

    fn receptive_field(&self) -> Field {
        Field::Global
    }

    fn flops(&self, _inputs: &[&[usize]], output: &[usize]) -> u64 {
        2 * numel(output) * self.in_features as u64
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
