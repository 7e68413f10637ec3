use super::strided::{gather, scale, strides};
use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use rayon::prelude::*;
use std::any::Any;

/// The mean over `axes` (non-batch, sorted, distinct), keeping them as 1s or dropping them.
/// The receptive field is `Global` where a spatial axis (≥ 2) is reduced — as for a 4-D
/// NCHW input; a channel mean alone keeps positions (`Pointwise`).
#[derive(Clone, Debug)]
pub struct ReduceMean {
    pub axes: Vec<usize>,
    pub keepdims: bool,
}

impl ReduceMean {
    /// Checks the axes against the input, and gives per input axis its stride in the output
    /// (0 for reduced axes), and how many values each mean averages.
    fn plan(&self, s: &[usize]) -> Result<(Vec<usize>, Vec<isize>, usize), EngineError> {
        let valid = !self.axes.is_empty()
            && self.axes.windows(2).all(|p| p[0] < p[1])
            && self.axes[0] >= 1
            && self.axes.last().is_some_and(|&a| a < s.len());
        if !valid {
            return Err(EngineError::Shape(format!(
                "reduce-mean axes {:?} must be sorted, distinct non-batch axes of input {s:?}",
                self.axes
            )));
        }
        let reduced = |i: usize| self.axes.contains(&i);
        let kept: Vec<usize> = (0..s.len())
            .map(|i| if reduced(i) { 1 } else { s[i] })
            .collect();
        let count: usize = self.axes.iter().map(|&a| s[a]).product();
        if count == 0 {
            return Err(EngineError::Shape(format!(
                "reduce-mean over empty axes {:?} of input {s:?}",
                self.axes
            )));
        }
        let ks = strides(&kept);
        let st = (0..s.len())
            .map(|i| if reduced(i) { 0 } else { ks[i] as isize })
            .collect();
        let out = if self.keepdims {
            kept
        } else {
            (0..s.len())
                .filter(|&i| !reduced(i))
                .map(|i| s[i])
                .collect()
        };
        Ok((out, st, count))
    }

    /// Whether the reduced axes are the last ones: each mean is then of one contiguous block.
    fn trailing(&self, rank: usize) -> bool {
        self.axes
            .iter()
            .rev()
            .enumerate()
            .all(|(k, &a)| a == rank - 1 - k)
    }
}

impl Operator for ReduceMean {
    fn describe(&self) -> String {
        format!("ReduceMean {:?}", self.axes)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Ok(self.plan(single("reduce-mean", inputs)?)?.0)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("reduce-mean", inputs)?;
        let s = x.shape();
        let (out, st, count) = self.plan(s)?;
        let inv = 1.0 / count as f32;
        if x.numel() == 0 {
            return Ok(Tensor::zeros(&out));
        }
        if self.trailing(s.len()) {
            let mut y = Tensor::for_overwrite(&out);
            y.data_mut()
                .par_chunks_mut(1024)
                .zip(x.data().par_chunks(1024 * count))
                .for_each(|(yc, xc)| {
                    for (v, block) in yc.iter_mut().zip(xc.chunks(count)) {
                        *v = block.iter().sum::<f32>() * inv;
                    }
                });
            return Ok(y);
        }
        // Otherwise sum each batch item's rows into its output part: one item per task, as
        // rows of one item add into the same outputs.
        let mut y = Tensor::zeros(&out);
        let rank = s.len();
        let (item_in, item_out): (usize, usize) =
            (s[1..].iter().product(), out[1..].iter().product());
        let row = s[rank - 1];
        let inner = st[rank - 1];
        y.data_mut()
            .par_chunks_mut(item_out)
            .zip(x.data().par_chunks(item_in))
            .for_each(|(yi, xi)| {
                for (r, xr) in xi.chunks(row).enumerate() {
                    let mut rest = r;
                    let mut off = 0;
                    for axis in (1..rank - 1).rev() {
                        off += (rest % s[axis]) as isize * st[axis];
                        rest /= s[axis];
                    }
                    let off = off as usize;
                    if inner == 0 {
                        yi[off] += xr.iter().sum::<f32>();
                    } else {
                        yi[off..off + row]
                            .iter_mut()
                            .zip(xr)
                            .for_each(|(v, &a)| *v += a);
                    }
                }
                yi.iter_mut().for_each(|v| *v *= inv);
            });
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let s = saved.input_shape(0);
        let (out, st, count) = self.plan(s)?;
        if grad.shape() != out {
            return Err(EngineError::Shape(format!(
                "reduce-mean output gradient has shape {:?}, expected {out:?}",
                grad.shape()
            )));
        }
        // Every input value gets its mean's gradient / count: a gather with stride 0 along
        // the reduced axes.
        let mut dx = Tensor::for_overwrite(s);
        gather(s, grad.data(), 0, &st, dx.data_mut());
        scale(dx.data_mut(), 1.0 / count as f32);
        Ok(vec![dx])
    }

    fn receptive_field(&self) -> Field {
        if self.axes.iter().any(|&a| a >= 2) {
            Field::Global
        } else {
            Field::Pointwise
        }
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
