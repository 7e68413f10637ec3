use super::strided::{gather, scatter};
use crate::op::{numel, single, Field, Needs, Operator, Saved};
use crate::{Conv2d, ConvCache, EngineError, Padding, Tensor};
use rayon::prelude::*;
use std::any::Any;

/// A transposed 2-D convolution (PyTorch ConvTranspose2d, ONNX ConvTranspose), output extent
/// (H−1)·s − pt − pb + d·(k−1) + op + 1 per axis.
///
/// Its forward pass is the input gradient of the ordinary convolution whose weight is this
/// one's read as [out = in_channels, in = out_channels/groups, kh, kw] (the same array), and
/// its input gradient is that convolution's forward pass: both reuse the tuned `Conv2d`
/// kernels. The receptive field is reported as a window of the kernel at stride 1: an upper
/// bound (a transposed conv reads about k/s inputs per output, and `Field` cannot express the
/// finer output grid).
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    /// top, left, bottom, right
    pub pads: (usize, usize, usize, usize),
    pub output_padding: (usize, usize),
    /// [in, out/groups, kh, kw], PyTorch/ONNX layout.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// How one axis maps onto the ordinary convolution: its bottom padding, and how many
/// trailing output rows lie beyond what the convolution covers (they receive only the bias).
#[derive(Clone, Copy, Debug)]
struct AxisPlan {
    conv_after: usize,
    extra: usize,
}

impl ConvTranspose2d {
    /// The convolution has to map an input of the transposed conv's output extent (less
    /// `extra`) back to exactly H: with t = op − pb, bottom padding pb − op when t < 0;
    /// otherwise no padding, and the last rows, which no input reaches, left out. Any count
    /// in (t − s, t] works; t − t mod s is the least, so that it is 0 (no copy) unless
    /// op ≥ s, which only dilation allows.
    fn axis(stride: usize, after: usize, output_padding: usize) -> AxisPlan {
        if output_padding < after {
            AxisPlan {
                conv_after: after - output_padding,
                extra: 0,
            }
        } else {
            let t = output_padding - after;
            AxisPlan {
                conv_after: 0,
                extra: t - t % stride,
            }
        }
    }

    fn plans(&self) -> (AxisPlan, AxisPlan) {
        (
            Self::axis(self.stride.0, self.pads.2, self.output_padding.0),
            Self::axis(self.stride.1, self.pads.3, self.output_padding.1),
        )
    }

    /// The ordinary convolution this is the transpose of. Built per call: the op's fields are
    /// public and fixed, so it has nowhere to keep one (see the report on caching).
    fn conv(&self) -> Result<Conv2d, EngineError> {
        let (ph, pw) = self.plans();
        let conv = Conv2d {
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            kernel: self.kernel,
            stride: self.stride,
            dilation: self.dilation,
            groups: self.groups,
            padding: Padding::Explicit {
                top: self.pads.0,
                bottom: ph.conv_after,
                left: self.pads.1,
                right: pw.conv_after,
            },
            weight: self.weight.clone(),
            bias: None,
            cache: ConvCache::default(),
        };
        conv.validate()
            .map_err(|e| EngineError::Shape(format!("conv-transpose {}: {e}", self.describe())))?;
        Ok(conv)
    }

    fn check(&self, s: &[usize]) -> Result<[usize; 4], EngineError> {
        if let Some(b) = &self.bias {
            if b.len() != self.out_channels {
                return Err(EngineError::Shape(format!(
                    "conv-transpose bias has {} values, expected {}",
                    b.len(),
                    self.out_channels
                )));
            }
        }
        let (kh, kw) = self.kernel;
        let g = self.groups;
        let valid = kh > 0
            && kw > 0
            && self.stride.0 > 0
            && self.stride.1 > 0
            && self.dilation.0 > 0
            && self.dilation.1 > 0
            && g > 0
            && self.in_channels.is_multiple_of(g)
            && self.out_channels.is_multiple_of(g)
            && self.weight.len() == self.in_channels * (self.out_channels / g) * kh * kw;
        if !valid {
            return Err(EngineError::Shape(format!(
                "conv-transpose {}→{} groups {g} kernel {:?} stride {:?} dilation {:?} with {} weights is malformed",
                self.in_channels, self.out_channels, self.kernel, self.stride, self.dilation, self.weight.len()
            )));
        }
        let [n, c, h, w] = s[..] else {
            return Err(EngineError::Shape(format!(
                "conv-transpose expects NCHW input, got {s:?}"
            )));
        };
        if c != self.in_channels || h == 0 || w == 0 {
            return Err(EngineError::Shape(format!(
                "conv-transpose expects [N, {}, H, W], got {s:?}",
                self.in_channels
            )));
        }
        let extent = |x: usize, s: usize, d: usize, k: usize, lo: usize, hi: usize, op: usize| {
            let full = (x - 1) * s + d * k.saturating_sub(1) + op + 1;
            full.checked_sub(lo + hi).filter(|&e| e > 0)
        };
        let oh = extent(
            h,
            self.stride.0,
            self.dilation.0,
            self.kernel.0,
            self.pads.0,
            self.pads.2,
            self.output_padding.0,
        );
        let ow = extent(
            w,
            self.stride.1,
            self.dilation.1,
            self.kernel.1,
            self.pads.1,
            self.pads.3,
            self.output_padding.1,
        );
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok([n, self.out_channels, oh, ow]),
            _ => Err(EngineError::Shape(format!(
                "conv-transpose of {s:?} with pads {:?} has an empty output",
                self.pads
            ))),
        }
    }
}

impl Operator for ConvTranspose2d {
    fn describe(&self) -> String {
        format!(
            "ConvTranspose2d {}x{}/{}",
            self.kernel.0, self.kernel.1, self.stride.0
        )
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Ok(self.check(single("conv-transpose", inputs)?)?.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("conv-transpose", inputs)?;
        let out = self.check(x.shape())?;
        let (ph, pw) = self.plans();
        let core = [out[0], out[1], out[2] - ph.extra, out[3] - pw.extra];
        let body = self.conv()?.backward(&core, x)?;
        let mut y = if core == out {
            body
        } else {
            let mut y = Tensor::zeros(&out);
            let row = out[3] as isize;
            scatter(
                &core,
                body.data(),
                0,
                &[
                    (out[1] * out[2] * out[3]) as isize,
                    (out[2] * out[3]) as isize,
                    row,
                    1,
                ],
                y.data_mut(),
            );
            y
        };
        if let Some(b) = &self.bias {
            let (c, plane) = (out[1], out[2] * out[3]);
            y.data_mut()
                .par_chunks_mut(plane)
                .enumerate()
                .for_each(|(i, p)| p.iter_mut().for_each(|v| *v += b[i % c]));
        }
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let input = saved.input_shape(0);
        let out = self.check(input)?;
        if grad.shape() != out {
            return Err(EngineError::Shape(format!(
                "conv-transpose output gradient has shape {:?}, expected {out:?}",
                grad.shape()
            )));
        }
        let (ph, pw) = self.plans();
        let core = [out[0], out[1], out[2] - ph.extra, out[3] - pw.extra];
        let conv = self.conv()?;
        let dx = if core == out {
            conv.forward(&grad)?
        } else {
            let mut g = Tensor::for_overwrite(&core);
            gather(
                &core,
                grad.data(),
                0,
                &[
                    (out[1] * out[2] * out[3]) as isize,
                    (out[2] * out[3]) as isize,
                    out[3] as isize,
                    1,
                ],
                g.data_mut(),
            );
            conv.forward(&g)?
        };
        Ok(vec![dx])
    }

    fn receptive_field(&self) -> Field {
        Field::Window {
            kernel: self.kernel,
            stride: (1, 1),
            dilation: self.dilation,
        }
    }

    fn flops(&self, inputs: &[&[usize]], _output: &[usize]) -> u64 {
        let per_input =
            (self.out_channels / self.groups.max(1) * self.kernel.0 * self.kernel.1) as u64;
        inputs.first().map_or(0, |s| 2 * numel(s) * per_input)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
