use super::binary::Bcast;
use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// x where x > 0, slope·x elsewhere, with a learned slope broadcast to x by numpy rules in
/// one direction (ONNX PRelu): PyTorch exports [C, 1, 1] against NCHW; a slope [C] lines up
/// with x's last axis, not its channels. Only x gets a gradient.
#[derive(Clone, Debug)]
pub struct PRelu {
    pub slope: Tensor,
}

impl PRelu {
    /// The broadcast of x against the slope, which must leave x's shape unchanged.
    fn bcast(&self, x: &[usize]) -> Result<Bcast, EngineError> {
        let bc = Bcast::new("PRelu", x, self.slope.shape())?;
        if bc.out != x {
            return Err(EngineError::Shape(format!(
                "PRelu: slope {:?} does not broadcast to input {x:?}",
                self.slope.shape()
            )));
        }
        Ok(bc)
    }
}

impl Operator for PRelu {
    fn describe(&self) -> String {
        if self.slope.numel() == 1 {
            format!("PReLU {}", self.slope.data()[0])
        } else {
            format!("PReLU {:?}", self.slope.shape())
        }
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let x = single("PRelu", inputs)?;
        self.bcast(x)?;
        Ok(x.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("PRelu", inputs)?;
        let bc = self.bcast(x.shape())?;
        let mut y = Tensor::for_overwrite(x.shape());
        bc.forward(x.data(), self.slope.data(), y.data_mut(), |x, s| {
            if x > 0.0 {
                x
            } else {
                s * x
            }
        });
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::INPUTS
    }

    /// PyTorch's prelu backward: the gradient where x > 0, slope·gradient elsewhere.
    fn backward(&self, saved: &Saved, mut grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let x = saved.input(0)?;
        let bc = self.bcast(x.shape())?;
        if grad.shape() != x.shape() {
            return Err(EngineError::Shape(format!(
                "PRelu: gradient {:?} for input {:?}",
                grad.shape(),
                x.shape()
            )));
        }
        bc.grad_in_place(
            grad.data_mut(),
            Some(x.data()),
            Some(self.slope.data()),
            |g, x, s| if x > 0.0 { g } else { g * s },
        );
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
}
