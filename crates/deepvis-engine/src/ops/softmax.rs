use super::unary::{exp, map1, map2, sum1, sum2, zip0, zip1, zip2, CHUNK};
use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use rayon::prelude::*;
use std::any::Any;

/// exp(x − max) / Σ exp(x − max) along `axis` (ONNX Softmax from opset 13, PyTorch's
/// softmax(dim)). Its backward pass reads its output only.
#[derive(Clone, Copy, Debug)]
pub struct Softmax {
    pub axis: usize,
}

/// Columns handled together where the axis is not the last: the running max and sum of a
/// block stay in L1 while the block's rows stream past.
const BLOCK: usize = 256;

impl Softmax {
    /// (outer, n, inner): the shape seen as [outer, axis, inner].
    fn split(&self, s: &[usize]) -> Result<(usize, usize, usize), EngineError> {
        if self.axis >= s.len() {
            return Err(EngineError::Shape(format!(
                "Softmax: axis {} of a {}-D input {s:?}",
                self.axis,
                s.len()
            )));
        }
        let outer = s[..self.axis].iter().product();
        let inner = s[self.axis + 1..].iter().product();
        Ok((outer, s[self.axis], inner))
    }
}

impl Operator for Softmax {
    fn describe(&self) -> String {
        format!("Softmax axis {}", self.axis)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let s = single("Softmax", inputs)?;
        self.split(s)?;
        Ok(s.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("Softmax", inputs)?;
        let (_, n, inner) = self.split(x.shape())?;
        let mut y = Tensor::for_overwrite(x.shape());
        if x.numel() == 0 {
            return Ok(y);
        }
        if inner == 1 {
            let per = CHUNK.div_ceil(n).max(1) * n;
            y.data_mut()
                .par_chunks_mut(per)
                .zip(x.data().par_chunks(per))
                .for_each(|(y, x)| {
                    for (y, x) in y.chunks_mut(n).zip(x.chunks(n)) {
                        softmax_row(y, x);
                    }
                });
        } else {
            y.data_mut()
                .par_chunks_mut(n * inner)
                .zip(x.data().par_chunks(n * inner))
                .for_each(|(y, x)| softmax_columns(y, x, n, inner));
        }
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::OUTPUT
    }

    /// dx = y ⊙ (g − Σ g⊙y) along the axis (PyTorch's softmax_backward_data), in place.
    fn backward(&self, saved: &Saved, mut grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let y = saved.output()?;
        let (_, n, inner) = self.split(y.shape())?;
        if grad.shape() != y.shape() {
            return Err(EngineError::Shape(format!(
                "Softmax: gradient {:?} for output {:?}",
                grad.shape(),
                y.shape()
            )));
        }
        if y.numel() == 0 {
            return Ok(vec![grad]);
        }
        if inner == 1 {
            let per = CHUNK.div_ceil(n).max(1) * n;
            grad.data_mut()
                .par_chunks_mut(per)
                .zip(y.data().par_chunks(per))
                .for_each(|(g, y)| {
                    for (g, y) in g.chunks_mut(n).zip(y.chunks(n)) {
                        let d = sum2(g, y, |g, y| g * y) as f32;
                        zip1(g, y, |g, y| y * (g - d));
                    }
                });
        } else {
            grad.data_mut()
                .par_chunks_mut(n * inner)
                .zip(y.data().par_chunks(n * inner))
                .for_each(|(g, y)| {
                    let mut d = [0f32; BLOCK];
                    for c0 in (0..inner).step_by(BLOCK) {
                        let w = BLOCK.min(inner - c0);
                        let d = &mut d[..w];
                        d.fill(0.0);
                        for k in 0..n {
                            let at = k * inner + c0;
                            zip2(d, &g[at..at + w], &y[at..at + w], |d, g, y| d + g * y);
                        }
                        for k in 0..n {
                            let at = k * inner + c0;
                            zip2(&mut g[at..at + w], &y[at..at + w], d, |g, y, d| y * (g - d));
                        }
                    }
                });
        }
        Ok(vec![grad])
    }

    /// Along batch or channels, each position reads only itself; along a spatial axis (of an
    /// NCHW tensor) the whole axis.
    fn receptive_field(&self) -> Field {
        if self.axis <= 1 {
            Field::Pointwise
        } else {
            Field::Global
        }
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Softmax of one contiguous row.
fn softmax_row(y: &mut [f32], x: &[f32]) {
    let m = row_max(x);
    map1(y, x, |x| exp(x - m));
    let r = (1.0 / sum1(y, |y| y)) as f32;
    zip0(y, |y| y * r);
}

/// Max of a row in 16 lanes (a single running max is a serial dependency).
fn row_max(x: &[f32]) -> f32 {
    let (c, tail) = x.as_chunks::<16>();
    let mut acc = [f32::NEG_INFINITY; 16];
    for c in c {
        for l in 0..16 {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Softmax down the columns of an [n, inner] block, BLOCK columns at a time.
fn softmax_columns(y: &mut [f32], x: &[f32], n: usize, inner: usize) {
    let (mut m, mut s) = ([0f32; BLOCK], [0f32; BLOCK]);
    for c0 in (0..inner).step_by(BLOCK) {
        let w = BLOCK.min(inner - c0);
        let (m, s) = (&mut m[..w], &mut s[..w]);
        m.copy_from_slice(&x[c0..c0 + w]);
        for k in 1..n {
            let at = k * inner + c0;
            zip1(m, &x[at..at + w], f32::max);
        }
        s.fill(0.0);
        for k in 0..n {
            let at = k * inner + c0;
            map2(&mut y[at..at + w], &x[at..at + w], m, |x, m| exp(x - m));
            zip1(s, &y[at..at + w], |s, y| s + y);
        }
        zip0(s, |s| 1.0 / s);
        for k in 0..n {
            let at = k * inner + c0;
            zip1(&mut y[at..at + w], s, |y, r| y * r);
        }
    }
}
