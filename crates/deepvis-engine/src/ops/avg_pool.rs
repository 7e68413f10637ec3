use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{AvgPool2d, EngineError, Tensor};
use std::any::Any;

impl Operator for AvgPool2d {
    fn describe(&self) -> String {
        format!(
            "AvgPool2d {}x{}/{}",
            self.kernel.0, self.kernel.1, self.stride.0
        )
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        AvgPool2d::output_shape(self, single("avg-pool", inputs)?)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        AvgPool2d::forward(self, single("avg-pool", inputs)?)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        Ok(vec![AvgPool2d::backward(
            self,
            saved.input_shape(0),
            &grad,
        )?])
    }

    fn receptive_field(&self) -> Field {
        Field::Window {
            kernel: self.kernel,
            stride: self.stride,
            dilation: (1, 1),
        }
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
