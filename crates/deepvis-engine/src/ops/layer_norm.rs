use super::unary::{map1, map2, map3, sum1, sum2, sum3, zip1, zip2, CHUNK};
use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use rayon::prelude::*;
use std::any::Any;

/// ONNX LayerNormalization: each row of the trailing axes from `axis` on is normalized by its
/// mean and biased variance, then scaled and shifted per element of that row (`scale` and
/// `bias` hold the trailing shape, flattened). Statistics accumulate in f64; the backward pass
/// recomputes them from the input rather than keeping them.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub axis: usize,
    pub eps: f32,
    pub scale: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

impl LayerNorm {
    /// (rows, row length) of an input of shape `s`.
    fn split(&self, s: &[usize]) -> Result<(usize, usize), EngineError> {
        if self.axis >= s.len() {
            return Err(EngineError::Shape(format!(
                "LayerNorm: axis {} of a {}-D input {s:?}",
                self.axis,
                s.len()
            )));
        }
        let n: usize = s[self.axis..].iter().product();
        for (what, p) in [("scale", &self.scale), ("bias", &self.bias)] {
            if let Some(p) = p {
                if p.len() != n {
                    return Err(EngineError::Shape(format!(
                        "LayerNorm: {what} of {} values for rows of {n} (input {s:?}, axis {})",
                        p.len(),
                        self.axis
                    )));
                }
            }
        }
        Ok((s[..self.axis].iter().product(), n))
    }

    /// (mean, 1/√(var + eps)) of one row.
    fn stats(&self, x: &[f32]) -> (f32, f32) {
        let n = x.len() as f64;
        let mean = sum1(x, |x| x) / n;
        let m = mean as f32;
        let var = sum1(x, |x| (x - m) * (x - m)) / n;
        (m, (1.0 / (var + self.eps as f64).sqrt()) as f32)
    }

    fn rows_per_task(n: usize) -> usize {
        CHUNK.div_ceil(n.max(1)).max(1)
    }
}

impl Operator for LayerNorm {
    fn describe(&self) -> String {
        format!("LayerNorm axis {}", self.axis)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let s = single("LayerNorm", inputs)?;
        self.split(s)?;
        Ok(s.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("LayerNorm", inputs)?;
        let (_, n) = self.split(x.shape())?;
        let mut y = Tensor::for_overwrite(x.shape());
        if x.numel() == 0 {
            return Ok(y);
        }
        let per = Self::rows_per_task(n) * n;
        y.data_mut()
            .par_chunks_mut(per)
            .zip(x.data().par_chunks(per))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_mut(n).zip(x.chunks(n)) {
                    let (m, r) = self.stats(x);
                    match (&self.scale, &self.bias) {
                        (Some(s), Some(b)) => map3(y, x, s, b, |x, s, b| (x - m) * r * s + b),
                        (Some(s), None) => map2(y, x, s, |x, s| (x - m) * r * s),
                        (None, Some(b)) => map2(y, x, b, |x, b| (x - m) * r + b),
                        (None, None) => map1(y, x, |x| (x - m) * r),
                    }
                }
            });
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::INPUTS
    }

    /// With x̂ = (x − μ)·r and ĝ = g·scale: dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), in place.
    fn backward(&self, saved: &Saved, mut grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let x = saved.input(0)?;
        let (_, n) = self.split(x.shape())?;
        if grad.shape() != x.shape() {
            return Err(EngineError::Shape(format!(
                "LayerNorm: gradient {:?} for input {:?}",
                grad.shape(),
                x.shape()
            )));
        }
        if x.numel() == 0 {
            return Ok(vec![grad]);
        }
        let per = Self::rows_per_task(n) * n;
        let nf = n as f64;
        grad.data_mut()
            .par_chunks_mut(per)
            .zip(x.data().par_chunks(per))
            .for_each(|(g, x)| {
                for (g, x) in g.chunks_mut(n).zip(x.chunks(n)) {
                    let (m, r) = self.stats(x);
                    match &self.scale {
                        Some(s) => {
                            let a = (sum2(g, s, |g, s| g * s) / nf) as f32;
                            let b = (sum3(g, s, x, |g, s, x| g * s * ((x - m) * r)) / nf) as f32;
                            zip2(g, x, s, |g, x, s| r * (g * s - a - (x - m) * r * b));
                        }
                        None => {
                            let a = (sum1(g, |g| g) / nf) as f32;
                            let b = (sum2(g, x, |g, x| g * ((x - m) * r)) / nf) as f32;
                            zip1(g, x, |g, x| r * (g - a - (x - m) * r * b));
                        }
                    }
                }
            });
        Ok(vec![grad])
    }

    /// A row spans the trailing axes, spatial ones included for an NCHW input.
    fn receptive_field(&self) -> Field {
        Field::Global
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
