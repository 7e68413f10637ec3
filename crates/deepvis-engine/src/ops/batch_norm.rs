use crate::layers::{affine_act, affine_act_backward_in_place};
use crate::op::{single, Activation, Field, Needs, Operator, Saved};
use crate::{ChannelAffine, EngineError, Tensor};
use std::any::Any;

/// Eval-mode BatchNorm2d, folded into a per-channel affine map at load time.
impl Operator for ChannelAffine {
    fn describe(&self) -> String {
        "BatchNorm2d".into()
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let s = single("batch norm", inputs)?;
        self.check(s)?;
        Ok(s.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        ChannelAffine::forward(self, single("batch norm", inputs)?)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, _saved: &Saved, mut grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        self.backward_in_place(&mut grad)?;
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

    /// Batch norm → ReLU, ReLU6 or SiLU in one pass (ResNet, MobileNet, EfficientNet-Lite,
    /// EfficientNet): one stream over memory instead of two each way. A ReLU's input need not
    /// be kept, its output tells the same; a SiLU's backward pass recomputes its input from
    /// the batch norm's, which is kept instead.
    fn fuses(&self, _act: Activation) -> bool {
        true
    }

    fn forward_fused(&self, inputs: &[&Tensor], act: Activation) -> Result<Tensor, EngineError> {
        affine_act(self, single("batch norm", inputs)?, act)
    }

    fn backward_fused(
        &self,
        _input_shapes: &[&[usize]],
        mut grad: Tensor,
        kept: &Tensor,
        act: Activation,
    ) -> Result<Vec<Tensor>, EngineError> {
        affine_act_backward_in_place(self, kept, &mut grad, act)?;
        Ok(vec![grad])
    }
}
