use super::strided::{gather, scatter, strides};
use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// One axis of a [`Slice`], as ONNX Slice gives it: resolved against the input's actual
/// extent at run time, since the network's input size changes from step to step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceAxis {
    pub axis: usize,
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

/// Where a sliced axis starts in the input, its length, and its step.
#[derive(Clone, Copy, Debug)]
struct Resolved {
    start: usize,
    len: usize,
    step: i64,
}

impl SliceAxis {
    /// ONNX Slice semantics: negative start/end count from the end; then, for a positive step,
    /// both clamp to [0, dim]; for a negative one, start clamps to [0, dim-1] and end to
    /// [-1, dim-1] (so i64::MIN reaches the first element and i64::MAX the last).
    fn resolve(&self, dim: usize) -> Resolved {
        let d = dim as i64;
        if d == 0 {
            return Resolved {
                start: 0,
                len: 0,
                step: self.step,
            };
        }
        let wrap = |v: i64| if v < 0 { v + d } else { v };
        let (start, end) = (wrap(self.start), wrap(self.end));
        let (start, span) = if self.step > 0 {
            let (s, e) = (start.clamp(0, d), end.clamp(0, d));
            (s, e - s)
        } else {
            let (s, e) = (start.clamp(0, d - 1), end.clamp(-1, d - 1));
            (s, s - e)
        };
        let len = (span.max(0) as u64).div_ceil(self.step.unsigned_abs());
        Resolved {
            start: start as usize,
            len: len as usize,
            step: self.step,
        }
    }
}

/// ONNX Slice over non-batch axes, with start/end resolved against the input at run time.
/// An empty result is an error: in a CNN it means the input got smaller than the exported
/// graph assumed. The receptive field is `Pointwise`: an output value is one input value, so a
/// spatial crop leaves the field of each value as it was.
#[derive(Clone, Debug)]
pub struct Slice {
    pub axes: Vec<SliceAxis>,
}

impl Slice {
    /// Output shape, and the input offset and per-output-axis input strides that map an output
    /// position to its input element.
    fn plan(&self, s: &[usize]) -> Result<(Vec<usize>, isize, Vec<isize>), EngineError> {
        let mut out = s.to_vec();
        let mut strides: Vec<isize> = strides(s).into_iter().map(|v| v as isize).collect();
        let mut base = 0isize;
        let mut seen = vec![false; s.len()];
        for a in &self.axes {
            if a.axis == 0 || a.axis >= s.len() || a.step == 0 {
                return Err(EngineError::Shape(format!(
                    "slice of axis {} step {} is not a valid non-batch slice of {s:?}",
                    a.axis, a.step
                )));
            }
            if std::mem::replace(&mut seen[a.axis], true) {
                return Err(EngineError::Shape(format!(
                    "slice names axis {} twice (input {s:?})",
                    a.axis
                )));
            }
            let r = a.resolve(s[a.axis]);
            if r.len == 0 {
                return Err(EngineError::Shape(format!(
                    "slice [{}:{}:{}] of axis {} is empty for input {s:?}",
                    a.start, a.end, a.step, a.axis
                )));
            }
            base += r.start as isize * strides[a.axis];
            // With one element the step is never taken (and may be huge: i64::MAX).
            if r.len > 1 {
                strides[a.axis] *= r.step as isize;
            }
            out[a.axis] = r.len;
        }
        Ok((out, base, strides))
    }
}

impl Operator for Slice {
    fn describe(&self) -> String {
        let axes: Vec<String> = self
            .axes
            .iter()
            .map(|a| format!("{}:[{}:{}:{}]", a.axis, a.start, a.end, a.step))
            .collect();
        format!("Slice {}", axes.join(" "))
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Ok(self.plan(single("slice", inputs)?)?.0)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("slice", inputs)?;
        let (out, base, strides) = self.plan(x.shape())?;
        let mut y = Tensor::for_overwrite(&out);
        gather(&out, x.data(), base, &strides, y.data_mut());
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let input = saved.input_shape(0);
        let (out, base, strides) = self.plan(input)?;
        if grad.shape() != out {
            return Err(EngineError::Shape(format!(
                "slice output gradient has shape {:?}, expected {out:?}",
                grad.shape()
            )));
        }
        let mut dx = Tensor::zeros(input);
        scatter(&out, grad.data(), base, &strides, dx.data_mut());
        Ok(vec![dx])
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
