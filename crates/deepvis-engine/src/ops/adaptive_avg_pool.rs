use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{AdaptiveAvgPool2d, EngineError, Tensor};
use std::any::Any;

impl Operator for AdaptiveAvgPool2d {
    fn describe(&self) -> String {
        format!("AdaptiveAvgPool2d {}x{}", self.output.0, self.output.1)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        AdaptiveAvgPool2d::output_shape(self, single("adaptive avg-pool", inputs)?)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        AdaptiveAvgPool2d::forward(self, single("adaptive avg-pool", inputs)?)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        Ok(vec![AdaptiveAvgPool2d::backward(
            self,
            saved.input_shape(0),
            &grad,
        )?])
    }

    fn backward_accumulate(
        &self,
        saved: &Saved,
        grad: &mut Tensor,
        acc: &mut Tensor,
    ) -> Result<bool, EngineError> {
        AdaptiveAvgPool2d::backward_add(self, saved.input_shape(0), grad, acc)?;
        Ok(true)
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
