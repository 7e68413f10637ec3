use crate::op::{Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// Element-wise sum of inputs of equal shape (residual connections).
#[derive(Clone, Copy, Debug, Default)]
pub struct Add;

impl Operator for Add {
    fn describe(&self) -> String {
        "Add".into()
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let first = inputs
            .first()
            .ok_or_else(|| EngineError::Shape("add of no inputs".into()))?;
        if inputs.iter().any(|s| s != first) {
            return Err(EngineError::Shape(format!(
                "add of unequal shapes {inputs:?}"
            )));
        }
        Ok(first.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        self.output_shape(&shapes)?;
        let mut y = inputs[0].clone();
        for other in &inputs[1..] {
            y.add_assign(other);
        }
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let mut grads = Vec::with_capacity(saved.input_shapes().len());
        for _ in 1..saved.input_shapes().len() {
            grads.push(grad.clone());
        }
        grads.push(grad);
        Ok(grads)
    }

    fn receptive_field(&self) -> Field {
        Field::Merge
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
