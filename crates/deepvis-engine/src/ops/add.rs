use crate::layers::{add_pair, relu_backward_in_place, relu_backward_in_place_and_copy};
use crate::op::{Activation, Field, Needs, Operator, Saved};
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
        self.sum(inputs, false)
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

    /// A residual sum and the ReLU after it (ResNet's `out += identity; relu(out)`) in one
    /// pass each way: the sum is never written, and the ReLU's mask is applied once for all
    /// inputs.
    fn fuses(&self, act: Activation) -> bool {
        act == Activation::Relu
    }

    fn forward_fused(&self, inputs: &[&Tensor], _act: Activation) -> Result<Tensor, EngineError> {
        self.sum(inputs, true)
    }

    fn backward_fused(
        &self,
        input_shapes: &[&[usize]],
        mut grad: Tensor,
        y: &Tensor,
        _act: Activation,
    ) -> Result<Vec<Tensor>, EngineError> {
        if y.shape() != grad.shape() {
            return Err(EngineError::Shape(format!(
                "add + relu: gradient {:?} for output {:?}",
                grad.shape(),
                y.shape()
            )));
        }
        let mut grads = Vec::with_capacity(input_shapes.len());
        if input_shapes.len() > 1 {
            grads.push(relu_backward_in_place_and_copy(y, &mut grad));
        } else {
            relu_backward_in_place(y, &mut grad);
        }
        grads.extend((2..input_shapes.len()).map(|_| grad.clone()));
        grads.push(grad);
        Ok(grads)
    }
}

impl Add {
    /// The sum of one or more tensors of one shape, through a ReLU with `relu`: the first pair
    /// in one parallel pass (a copy and then an add were two serial ones), any others added
    /// after.
    fn sum(&self, inputs: &[&Tensor], relu: bool) -> Result<Tensor, EngineError> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        self.output_shape(&shapes)?;
        Ok(match inputs {
            [] => return Err(EngineError::Shape("add of no inputs".into())),
            [x] => {
                if relu {
                    crate::relu(x)
                } else {
                    (*x).clone()
                }
            }
            [a, b] => add_pair(a, b, relu),
            [a, b, rest @ ..] => {
                let mut y = add_pair(a, b, false);
                for other in rest {
                    y.add_assign(other);
                }
                if relu {
                    crate::relu(&y)
                } else {
                    y
                }
            }
        })
    }
}
