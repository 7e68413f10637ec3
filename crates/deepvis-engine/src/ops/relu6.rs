use crate::layers::{relu6, relu6_backward_in_place};
use crate::op::{single, Activation, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// min(max(x, 0), 6). Alone its backward pass reads its input (PyTorch's hardtanh_backward);
/// fused with a producer, the pair's output tells the same.
#[derive(Clone, Copy, Debug, Default)]
pub struct Relu6;

impl Operator for Relu6 {
    fn describe(&self) -> String {
        "ReLU6".into()
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Ok(single("relu6", inputs)?.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        Ok(relu6(single("relu6", inputs)?))
    }

    fn backward_needs(&self) -> Needs {
        Needs::INPUTS
    }

    fn backward(&self, saved: &Saved, mut grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        relu6_backward_in_place(saved.input(0)?, &mut grad);
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
        Some(Activation::Relu6)
    }
}
