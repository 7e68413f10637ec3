use crate::layers::{relu, relu_backward_in_place};
use crate::op::{single, Activation, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// max(x, 0). Its backward pass reads its output (PyTorch's threshold_backward), so a
/// producer that computes it in its own pass (`Operator::fuses`) need not keep its input.
#[derive(Clone, Copy, Debug, Default)]
pub struct Relu;

impl Operator for Relu {
    fn describe(&self) -> String {
        "ReLU".into()
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Ok(single("relu", inputs)?.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        Ok(relu(single("relu", inputs)?))
    }

    fn backward_needs(&self) -> Needs {
        Needs::OUTPUT
    }

    fn backward(&self, saved: &Saved, mut grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        relu_backward_in_place(saved.output()?, &mut grad);
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

    fn activation(&self) -> Option<Activation> {
        Some(Activation::Relu)
    }
}
