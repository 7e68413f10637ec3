use super::strided::{gather, scatter, strides};
use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use rayon::prelude::*;
use std::any::Any;

/// What a [`Pad`] puts outside the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// `value`.
    Constant,
    /// The input mirrored about its edge element, which is not repeated (numpy/ONNX
    /// 'reflect'): needs pads smaller than the dim.
    Reflect,
    /// The edge element repeated.
    Edge,
}

/// ONNX Pad with non-negative pads: `pads[i]` is (before, after) for input axis i; the batch
/// axis is not padded. The receptive field is `Pointwise`: each output value is one input
/// value (or a constant), so padding does not widen any value's field.
#[derive(Clone, Debug)]
pub struct Pad {
    pub pads: Vec<(usize, usize)>,
    pub mode: PadMode,
    pub value: f32,
}

impl Pad {
    fn check(&self, s: &[usize]) -> Result<Vec<usize>, EngineError> {
        let fail = |why: &str| {
            EngineError::Shape(format!(
                "pad {:?} ({:?}) of input {s:?}: {why}",
                self.pads, self.mode
            ))
        };
        if s.is_empty() {
            return Err(fail("a scalar has no axes to pad"));
        }
        if self.pads.len() != s.len() {
            return Err(fail("one (before, after) pair per axis is needed"));
        }
        if self.pads.first().is_some_and(|&p| p != (0, 0)) {
            return Err(fail("the batch axis cannot be padded"));
        }
        for (&d, &(b, a)) in s.iter().zip(&self.pads) {
            let padded = b > 0 || a > 0;
            match self.mode {
                PadMode::Reflect if padded && (b >= d || a >= d) => {
                    return Err(fail("reflect pads must be smaller than the dim"))
                }
                PadMode::Edge if padded && d == 0 => return Err(fail("edge pad of an empty axis")),
                _ => {}
            }
        }
        Ok(s.iter()
            .zip(&self.pads)
            .map(|(&d, &(b, a))| d + b + a)
            .collect())
    }

    /// For each output index along an axis of extent `d` padded by (b, a), the input index it
    /// copies (reflect/edge only).
    fn source_map(&self, d: usize, b: usize, a: usize) -> Vec<usize> {
        (0..d + b + a)
            .map(|o| {
                let i = o as isize - b as isize;
                let last = d as isize - 1;
                let j = match self.mode {
                    PadMode::Reflect => {
                        if i < 0 {
                            -i
                        } else if i > last {
                            2 * last - i
                        } else {
                            i
                        }
                    }
                    _ => i.clamp(0, last),
                };
                j as usize
            })
            .collect()
    }

    /// The output offset where the input's first element lands, and the output strides.
    fn interior(&self, out: &[usize]) -> (isize, Vec<isize>) {
        let st = strides(out);
        let base = st
            .iter()
            .zip(&self.pads)
            .map(|(&s, &(b, _))| (s * b) as isize)
            .sum();
        (base, st.into_iter().map(|v| v as isize).collect())
    }
}

impl Operator for Pad {
    fn describe(&self) -> String {
        format!("Pad {:?} {:?}", self.mode, self.pads)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        self.check(single("pad", inputs)?)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("pad", inputs)?;
        let s = x.shape();
        let out = self.check(s)?;
        if self.mode == PadMode::Constant {
            let mut y = Tensor::full(&out, self.value);
            let (base, st) = self.interior(&out);
            scatter(s, x.data(), base, &st, y.data_mut());
            return Ok(y);
        }
        let mut y = Tensor::for_overwrite(&out);
        let maps: Vec<Vec<usize>> = s
            .iter()
            .zip(&self.pads)
            .map(|(&d, &(b, a))| self.source_map(d, b, a))
            .collect();
        let (rank, xs) = (s.len(), strides(s));
        let row = out[rank - 1];
        if row == 0 {
            return Ok(y);
        }
        let last = &maps[rank - 1];
        y.data_mut()
            .par_chunks_mut(row)
            .enumerate()
            .for_each(|(r, yr)| {
                let mut rest = r;
                let mut off = 0;
                for axis in (0..rank - 1).rev() {
                    off += maps[axis][rest % out[axis]] * xs[axis];
                    rest /= out[axis];
                }
                let xr = &x.data()[off..];
                for (v, &j) in yr.iter_mut().zip(last) {
                    *v = xr[j];
                }
            });
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let s = saved.input_shape(0);
        let out = self.check(s)?;
        if grad.shape() != out {
            return Err(EngineError::Shape(format!(
                "pad output gradient has shape {:?}, expected {out:?}",
                grad.shape()
            )));
        }
        if self.mode == PadMode::Constant {
            let mut dx = Tensor::for_overwrite(s);
            let (base, st) = self.interior(&out);
            gather(s, grad.data(), base, &st, dx.data_mut());
            return Ok(vec![dx]);
        }
        // Several output positions copy one input position: accumulate, one batch item per
        // task so that no two tasks add into the same place.
        let maps: Vec<Vec<usize>> = s
            .iter()
            .zip(&self.pads)
            .map(|(&d, &(b, a))| self.source_map(d, b, a))
            .collect();
        let mut dx = Tensor::zeros(s);
        let (rank, xs) = (s.len(), strides(s));
        let (item_in, item_out): (usize, usize) =
            (s[1..].iter().product(), out[1..].iter().product());
        let row = out[rank - 1];
        if item_in == 0 || item_out == 0 {
            return Ok(vec![dx]);
        }
        let last = &maps[rank - 1];
        dx.data_mut()
            .par_chunks_mut(item_in)
            .zip(grad.data().par_chunks(item_out))
            .for_each(|(dxi, gi)| {
                for (r, gr) in gi.chunks(row).enumerate() {
                    let mut rest = r;
                    let mut off = 0;
                    for axis in (1..rank - 1).rev() {
                        off += maps[axis][rest % out[axis]] * xs[axis];
                        rest /= out[axis];
                    }
                    let dr = &mut dxi[off..];
                    for (&g, &j) in gr.iter().zip(last) {
                        dr[j] += g;
                    }
                }
            });
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
