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
            let x = x.data();
            par_columns(y.data_mut(), n, inner, |base, ys| {
                softmax_columns(ys, x, base, inner)
            });
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
            let y = y.data();
            par_columns(grad.data_mut(), n, inner, |base, gs| {
                let width = gs.first().map_or(0, |s| s.len());
                let mut d = [0f32; BLOCK];
                for c0 in (0..width).step_by(BLOCK) {
                    let w = BLOCK.min(width - c0);
                    let d = &mut d[..w];
                    d.fill(0.0);
                    for (k, g) in gs.iter().enumerate() {
                        let y = &y[base + k * inner + c0..][..w];
                        zip2(d, &g[c0..c0 + w], y, |d, g, y| d + g * y);
                    }
                    for (k, g) in gs.iter_mut().enumerate() {
                        let y = &y[base + k * inner + c0..][..w];
                        zip2(&mut g[c0..c0 + w], y, d, |g, y, d| y * (g - d));
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

/// Calls `f(offset, rows)` over column ranges of each [n, inner] slab of `data`, in parallel:
/// `rows` holds the n row segments of one range, `offset` is where its first lies in `data`.
/// Ranges rather than whole slabs make tasks of one large slab (a batch of 1) as well as of
/// many small ones.
fn par_columns(
    data: &mut [f32],
    n: usize,
    inner: usize,
    f: impl Fn(usize, &mut [&mut [f32]]) + Sync,
) {
    let slab = n * inner;
    // Columns per task: about CHUNK values, whole blocks.
    let width = (CHUNK / n.max(1)).max(BLOCK) / BLOCK * BLOCK;
    if inner <= width {
        // Whole slabs, several per task.
        let per = CHUNK.div_ceil(slab.max(1)).max(1);
        data.par_chunks_mut(per * slab)
            .enumerate()
            .for_each(|(t, chunk)| {
                let mut rows = Vec::with_capacity(n);
                for (i, s) in chunk.chunks_mut(slab).enumerate() {
                    rows.clear();
                    rows.extend(s.chunks_mut(inner));
                    f((t * per + i) * slab, &mut rows);
                }
            });
        return;
    }
    let ranges = inner.div_ceil(width);
    let mut tasks: Vec<(usize, Vec<&mut [f32]>)> = Vec::new();
    for (o, s) in data.chunks_mut(slab).enumerate() {
        let first = tasks.len();
        tasks.extend((0..ranges).map(|r| (o * slab + r * width, Vec::with_capacity(n))));
        for row in s.chunks_mut(inner) {
            for (r, seg) in row.chunks_mut(width).enumerate() {
                tasks[first + r].1.push(seg);
            }
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(offset, mut rows)| f(offset, &mut rows));
}

/// Softmax down the columns of row segments `ys` (of one slab), BLOCK columns at a time; the
/// input's segment k starts at `x[base + k·inner]`.
fn softmax_columns(ys: &mut [&mut [f32]], x: &[f32], base: usize, inner: usize) {
    let width = ys.first().map_or(0, |s| s.len());
    let (mut m, mut s) = ([0f32; BLOCK], [0f32; BLOCK]);
    for c0 in (0..width).step_by(BLOCK) {
        let w = BLOCK.min(width - c0);
        let (m, s) = (&mut m[..w], &mut s[..w]);
        let xs = |k: usize| &x[base + k * inner + c0..][..w];
        m.copy_from_slice(xs(0));
        for k in 1..ys.len() {
            zip1(m, xs(k), f32::max);
        }
        s.fill(0.0);
        for (k, y) in ys.iter_mut().enumerate() {
            let y = &mut y[c0..c0 + w];
            map2(y, xs(k), m, |x, m| exp(x - m));
            zip1(s, y, |s, y| s + y);
        }
        zip0(s, |s| 1.0 / s);
        for y in ys.iter_mut() {
            zip1(&mut y[c0..c0 + w], s, |y, r| y * r);
        }
    }
}
