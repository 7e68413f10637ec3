use super::strided::{gather, scatter};
use crate::op::{Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// Inputs joined along `axis` (≥ 1: the batch axis is never joined); they agree on every other
/// dim. Each input's gradient is its part of the output gradient.
#[derive(Clone, Debug)]
pub struct Concat {
    pub axis: usize,
}

impl Concat {
    /// Rows before the axis, and each input's extent along the axis times the dims after it
    /// (the length of its contiguous part of one output row).
    fn blocks(&self, inputs: &[&[usize]]) -> (usize, Vec<usize>) {
        let outer = inputs[0][..self.axis].iter().product();
        let parts = inputs
            .iter()
            .map(|s| s[self.axis..].iter().product())
            .collect();
        (outer, parts)
    }
}

impl Operator for Concat {
    fn describe(&self) -> String {
        format!("Concat axis={}", self.axis)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let first = inputs
            .first()
            .ok_or_else(|| EngineError::Shape("concat of no inputs".into()))?;
        if self.axis == 0 || self.axis >= first.len() {
            return Err(EngineError::Shape(format!(
                "concat axis {} must be a non-batch axis of inputs {inputs:?}",
                self.axis
            )));
        }
        let mut out = first.to_vec();
        out[self.axis] = 0;
        for s in inputs {
            let agree = s.len() == first.len()
                && s.iter()
                    .zip(first.iter())
                    .enumerate()
                    .all(|(i, (a, b))| i == self.axis || a == b);
            if !agree {
                return Err(EngineError::Shape(format!(
                    "concat along axis {} of mismatched shapes {inputs:?}",
                    self.axis
                )));
            }
            out[self.axis] += s[self.axis];
        }
        Ok(out)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let out = self.output_shape(&shapes)?;
        let (outer, parts) = self.blocks(&shapes);
        let row = parts.iter().sum::<usize>() as isize;
        let mut y = Tensor::for_overwrite(&out);
        let mut at = 0;
        for (x, &part) in inputs.iter().zip(&parts) {
            scatter(&[outer, part], x.data(), at, &[row, 1], y.data_mut());
            at += part as isize;
        }
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let shapes = saved.input_shapes();
        let out = self.output_shape(shapes)?;
        if grad.shape() != out {
            return Err(EngineError::Shape(format!(
                "concat output gradient has shape {:?}, expected {out:?}",
                grad.shape()
            )));
        }
        let (outer, parts) = self.blocks(shapes);
        let row = parts.iter().sum::<usize>() as isize;
        let mut at = 0;
        let mut grads = Vec::with_capacity(shapes.len());
        for (s, &part) in shapes.iter().zip(&parts) {
            let mut g = Tensor::for_overwrite(s);
            gather(&[outer, part], grad.data(), at, &[row, 1], g.data_mut());
            at += part as isize;
            grads.push(g);
        }
        Ok(grads)
    }

    fn receptive_field(&self) -> Field {
        Field::Merge
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
