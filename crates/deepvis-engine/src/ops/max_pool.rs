use crate::op::{single, CodedBackward, Field, Needs, Operator, Saved};
use crate::{EngineError, MaxPool2d, Tensor};
use std::any::Any;

impl Operator for MaxPool2d {
    fn describe(&self) -> String {
        format!(
            "MaxPool2d {}x{}/{}",
            self.kernel.0, self.kernel.1, self.stride.0
        )
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        MaxPool2d::output_shape(self, single("max-pool", inputs)?)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        MaxPool2d::forward(self, single("max-pool", inputs)?)
    }

    fn backward_needs(&self) -> Needs {
        Needs::INPUTS
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        Ok(vec![MaxPool2d::backward(self, saved.input(0)?, &grad)?])
    }

    fn receptive_field(&self) -> Field {
        Field::Window {
            kernel: self.kernel,
            stride: self.stride,
            dilation: self.dilation,
        }
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    /// 2×2 pools keep one code byte per window (which element won, and whether it was
    /// positive) instead of their input: a quarter of the input's bytes over four.
    fn coded(&self) -> Option<&dyn CodedBackward> {
        Some(self)
    }
}

impl CodedBackward for MaxPool2d {
    fn applies(&self, input_shape: &[usize]) -> bool {
        self.folds_relu(input_shape)
    }

    fn forward_coded(&self, x: &Tensor) -> Result<(Tensor, Vec<u8>), EngineError> {
        match self.forward_with_codes(x)? {
            (y, Some(codes)) => Ok((y, codes)),
            (_, None) => Err(EngineError::Graph(format!(
                "max-pool has no codes for input {:?}",
                x.shape()
            ))),
        }
    }

    fn backward_coded(
        &self,
        input_shape: &[usize],
        codes: &[u8],
        grad: &Tensor,
        through_relu: bool,
    ) -> Result<Tensor, EngineError> {
        self.backward_from_codes(input_shape, codes, grad, through_relu)
    }
}
