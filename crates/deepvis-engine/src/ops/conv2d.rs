use crate::layers::Clamp;
use crate::op::{numel, single, Activation, Field, Needs, Operator, Saved};
use crate::{ChannelAffine, Conv2d, EngineError, Op, Tensor};
use std::any::Any;

impl Operator for Conv2d {
    fn describe(&self) -> String {
        let kind = if self.groups == 1 {
            "Conv2d".to_string()
        } else if self.groups == self.in_channels && self.groups == self.out_channels {
            "Conv2d depthwise".to_string()
        } else {
            format!("Conv2d groups={}", self.groups)
        };
        format!(
            "{kind} {}x{}/{}",
            self.kernel.0, self.kernel.1, self.stride.0
        )
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Conv2d::output_shape(self, single("conv2d", inputs)?)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        Conv2d::forward(self, single("conv2d", inputs)?)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        Ok(vec![Conv2d::backward(self, saved.input_shape(0), &grad)?])
    }

    fn backward_accumulate(
        &self,
        saved: &Saved,
        grad: &mut Tensor,
        acc: &mut Tensor,
    ) -> Result<bool, EngineError> {
        Conv2d::backward_accumulate(self, saved.input_shape(0), grad, None, acc)
    }

    fn backward_fused_accumulate(
        &self,
        input_shape: &[usize],
        grad: &mut Tensor,
        y: &Tensor,
        act: Activation,
        acc: &mut Tensor,
    ) -> Result<bool, EngineError> {
        Conv2d::backward_accumulate(self, input_shape, grad, Some((y, clamp(act)?)), acc)
    }

    fn receptive_field(&self) -> Field {
        Field::Window {
            kernel: self.kernel,
            stride: self.stride,
            dilation: self.dilation,
        }
    }

    fn flops(&self, _inputs: &[&[usize]], output: &[usize]) -> u64 {
        2 * numel(output) * (self.in_channels / self.groups * self.kernel.0 * self.kernel.1) as u64
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    /// A ReLU or ReLU6 is applied where the bias is added (ResNet, VGG; MobileNetV2 and
    /// EfficientNet-Lite once their batch norms are folded in), and the pair's backward pass
    /// masks the gradient from the pair's output (Winograd as it transforms it).
    fn fuses(&self, act: Activation) -> bool {
        Clamp::of(act).is_some()
    }

    fn forward_fused(&self, inputs: &[&Tensor], act: Activation) -> Result<Tensor, EngineError> {
        self.forward_clamped(single("conv2d", inputs)?, clamp(act)?)
    }

    fn backward_fused(
        &self,
        input_shapes: &[&[usize]],
        mut grad: Tensor,
        y: &Tensor,
        act: Activation,
    ) -> Result<Vec<Tensor>, EngineError> {
        let input_shape = single("conv2d", input_shapes)?;
        Ok(vec![self.backward_clamped(
            input_shape,
            &mut grad,
            y,
            clamp(act)?,
        )?])
    }

    fn fold_affine(&self, affine: &ChannelAffine) -> Option<Op> {
        self.then_affine(affine).map(Op::new)
    }

    fn select_outputs(&self, channels: &[usize]) -> Option<Result<Op, EngineError>> {
        (self.groups == 1).then(|| Conv2d::select_outputs(self, channels).map(|c| Op::from_arc(c)))
    }
}

/// The clamp for an activation the planner fused (`fuses` accepted it).
fn clamp(act: Activation) -> Result<Clamp, EngineError> {
    Clamp::of(act).ok_or_else(|| EngineError::Graph(format!("conv2d does not fuse {act:?}")))
}
