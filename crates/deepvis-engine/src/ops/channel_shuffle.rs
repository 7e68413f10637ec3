use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// ShuffleNet's channel shuffle of an [N, C, H, W] input at any H, W: the view
/// [N, g, C/g, H, W], axes 1 and 2 swapped, viewed back as [N, C, H, W]. Output channel
/// `j·g + i` is input channel `i·(C/g) + j`; the gradient is the inverse permutation.
#[derive(Clone, Debug)]
pub struct ChannelShuffle {
    pub groups: usize,
}

impl ChannelShuffle {
    /// The input channel that output channel `o` reads, for `c` channels.
    fn source(&self, o: usize, c: usize) -> usize {
        let per = c / self.groups;
        (o % self.groups) * per + o / self.groups
    }

    /// Copies planes of `plane` values: `to[…, o, …] = from[…, source(o), …]`, or the
    /// reverse when `inverse`.
    fn permute(&self, shape: &[usize], from: &[f32], to: &mut [f32], inverse: bool) {
        let (n, c) = (shape[0], shape[1]);
        let plane: usize = shape[2..].iter().product();
        for b in 0..n {
            for o in 0..c {
                let s = self.source(o, c);
                let (dst, src) = if inverse { (s, o) } else { (o, s) };
                let d = (b * c + dst) * plane;
                let f = (b * c + src) * plane;
                to[d..d + plane].copy_from_slice(&from[f..f + plane]);
            }
        }
    }
}

impl Operator for ChannelShuffle {
    fn describe(&self) -> String {
        format!("ChannelShuffle groups={}", self.groups)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let s = single("channel shuffle", inputs)?;
        if s.len() < 2 || self.groups == 0 || s[1] % self.groups != 0 {
            return Err(EngineError::Shape(format!(
                "channel shuffle in {} groups needs [N, C, …] with C divisible by them, got {s:?}",
                self.groups
            )));
        }
        Ok(s.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("channel shuffle", inputs)?;
        let out = self.output_shape(&[x.shape()])?;
        let mut y = Tensor::for_overwrite(&out);
        self.permute(&out, x.data(), y.data_mut(), false);
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let shape = self.output_shape(&[saved.input_shape(0)])?;
        if grad.shape() != shape {
            return Err(EngineError::Shape(format!(
                "channel shuffle output gradient has shape {:?}, expected {shape:?}",
                grad.shape()
            )));
        }
        let mut g = Tensor::for_overwrite(&shape);
        self.permute(&shape, grad.data(), g.data_mut(), true);
        Ok(vec![g])
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
