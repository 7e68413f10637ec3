//! Element-wise arithmetic of two tensors with numpy (multidirectional) broadcasting: between
//! two graph values ([`Binary`]) or a graph value and a constant of the model
//! ([`BinaryConst`]).
//!
//! Both shapes are first collapsed against the output ([`Bcast`]): size-1 output axes drop out
//! and neighbouring axes along which each operand is broadcast (or not) in the same way merge.
//! Every case then becomes rows of the output's last collapsed axis, along which each operand
//! is either a contiguous row or one repeated value: equal shapes are one row, a per-channel
//! scale [N, C, 1, 1] against [N, C, H, W] is N·C rows of H·W against one value each, a bias
//! [C] against [N, L, C] is N·L rows against the same row. The loops over a row vectorize.

use super::unary::{map1, map2, map3, sum1, sum2, sum3, zip0, zip1, zip2, zip3, CHUNK};
use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use rayon::prelude::*;
use std::any::Any;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

/// Two graph inputs: y = a ∘ b.
#[derive(Clone, Debug)]
pub struct Binary(pub BinaryKind);

/// One graph input x and an embedded constant c: y = x ∘ c, or c ∘ x when `constant_first`.
#[derive(Clone, Debug)]
pub struct BinaryConst {
    pub kind: BinaryKind,
    pub constant: Tensor,
    pub constant_first: bool,
}

impl BinaryKind {
    fn name(self) -> &'static str {
        match self {
            BinaryKind::Add => "Add",
            BinaryKind::Sub => "Sub",
            BinaryKind::Mul => "Mul",
            BinaryKind::Div => "Div",
            BinaryKind::Pow => "Pow",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            BinaryKind::Add => "+",
            BinaryKind::Sub => "-",
            BinaryKind::Mul => "*",
            BinaryKind::Div => "/",
            BinaryKind::Pow => "^",
        }
    }

    /// Whether the gradients read the operands' values (Add and Sub do not).
    fn reads_values(self) -> bool {
        !matches!(self, BinaryKind::Add | BinaryKind::Sub)
    }
}

/// The output shape of `a ∘ b` under numpy broadcasting, or an error naming `op`.
fn broadcast_shape(op: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>, EngineError> {
    let r = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i < r - s.len() {
            1
        } else {
            s[i - (r - s.len())]
        }
    };
    (0..r)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(EngineError::Shape(format!(
                "{op}: shapes {a:?} and {b:?} do not broadcast"
            ))),
        })
        .collect()
}

/// Two operand shapes collapsed against their broadcast output (see the module comment).
#[derive(Clone, Debug)]
pub(super) struct Bcast {
    pub(super) out: Vec<usize>,
    /// Collapsed output axes, at least one.
    dims: Vec<usize>,
    /// Element strides of a and b along `dims`: 0 where broadcast, 1 along the last axis
    /// where not.
    sa: Vec<usize>,
    sb: Vec<usize>,
}

/// One operand along one output row: a contiguous row or one repeated value.
#[derive(Clone, Copy)]
enum Src<'a> {
    Row(&'a [f32]),
    Value(f32),
}

impl Bcast {
    pub(super) fn new(op: &str, a: &[usize], b: &[usize]) -> Result<Bcast, EngineError> {
        let out = broadcast_shape(op, a, b)?;
        let r = out.len();
        let strides = |s: &[usize]| {
            let pad = r - s.len();
            let mut st = vec![0; r];
            let mut acc = 1;
            for i in (0..r).rev() {
                let d = if i < pad { 1 } else { s[i - pad] };
                st[i] = if d == 1 { 0 } else { acc };
                acc *= d;
            }
            st
        };
        let (full_a, full_b) = (strides(a), strides(b));
        let (mut dims, mut sa, mut sb) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..r {
            if out[i] == 1 {
                continue;
            }
            let (x, y) = (full_a[i], full_b[i]);
            let same_kind = dims.last().is_some_and(|_| {
                (sa.last() != Some(&0)) == (x != 0) && (sb.last() != Some(&0)) == (y != 0)
            });
            if same_kind {
                // The earlier axis is outer: the merged axis steps like the inner one.
                let k = dims.len() - 1;
                dims[k] *= out[i];
                sa[k] = x;
                sb[k] = y;
            } else {
                dims.push(out[i]);
                sa.push(x);
                sb.push(y);
            }
        }
        if dims.is_empty() {
            dims.push(1);
            sa.push(1);
            sb.push(1);
        }
        Ok(Bcast { out, dims, sa, sb })
    }

    fn inner(&self) -> usize {
        self.dims[self.dims.len() - 1]
    }

    fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    fn rows(&self) -> usize {
        self.numel() / self.inner().max(1)
    }

    /// Offsets of output row `row` in a and b.
    #[inline]
    fn offsets(&self, row: usize) -> (usize, usize) {
        let (mut r, mut oa, mut ob) = (row, 0, 0);
        for i in (0..self.dims.len() - 1).rev() {
            let idx = r % self.dims[i];
            r /= self.dims[i];
            oa += idx * self.sa[i];
            ob += idx * self.sb[i];
        }
        (oa, ob)
    }

    /// Operand `data` (None: not read, seen as zeros) along the row at `off` with inner
    /// stride `stride`.
    #[inline]
    fn src<'a>(data: Option<&'a [f32]>, off: usize, stride: usize, n: usize) -> Src<'a> {
        match data {
            None => Src::Value(0.0),
            Some(d) if stride == 0 => Src::Value(d[off]),
            Some(d) => Src::Row(&d[off..off + n]),
        }
    }

    fn last(&self) -> (usize, usize) {
        let k = self.dims.len() - 1;
        (self.sa[k], self.sb[k])
    }

    /// Rows per rayon task.
    fn rows_per_task(&self) -> usize {
        CHUNK.div_ceil(self.inner().max(1)).max(1)
    }

    /// out = f(a, b) over the output.
    pub(super) fn forward(
        &self,
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        f: impl Fn(f32, f32) -> f32 + Sync,
    ) {
        if self.numel() == 0 {
            return;
        }
        let n = self.inner();
        let per = self.rows_per_task();
        let (ia, ib) = self.last();
        out.par_chunks_mut(per * n)
            .enumerate()
            .for_each(|(t, chunk)| {
                for (k, o) in chunk.chunks_mut(n).enumerate() {
                    let (oa, ob) = self.offsets(t * per + k);
                    match (Self::src(Some(a), oa, ia, n), Self::src(Some(b), ob, ib, n)) {
                        (Src::Row(x), Src::Row(y)) => map2(o, x, y, &f),
                        (Src::Row(x), Src::Value(y)) => map1(o, x, |x| f(x, y)),
                        (Src::Value(x), Src::Row(y)) => map1(o, y, |y| f(x, y)),
                        (Src::Value(x), Src::Value(y)) => o.fill(f(x, y)),
                    }
                }
            });
    }

    /// g = f(g, a, b) over the output, in place (the gradient of an operand of the output's
    /// shape). `a` or `b` None: not read.
    pub(super) fn grad_in_place(
        &self,
        g: &mut [f32],
        a: Option<&[f32]>,
        b: Option<&[f32]>,
        f: impl Fn(f32, f32, f32) -> f32 + Sync,
    ) {
        if self.numel() == 0 {
            return;
        }
        let n = self.inner();
        let per = self.rows_per_task();
        let (ia, ib) = self.last();
        g.par_chunks_mut(per * n)
            .enumerate()
            .for_each(|(t, chunk)| {
                for (k, g) in chunk.chunks_mut(n).enumerate() {
                    let (oa, ob) = self.offsets(t * per + k);
                    match (Self::src(a, oa, ia, n), Self::src(b, ob, ib, n)) {
                        (Src::Row(x), Src::Row(y)) => zip2(g, x, y, &f),
                        (Src::Row(x), Src::Value(y)) => zip1(g, x, |g, x| f(g, x, y)),
                        (Src::Value(x), Src::Row(y)) => zip1(g, y, |g, y| f(g, x, y)),
                        (Src::Value(x), Src::Value(y)) => zip0(g, |g| f(g, x, y)),
                    }
                }
            });
    }

    /// A fresh output-shaped tensor of f(g, a, b) (the gradient of an operand of the output's
    /// shape, where `g` must stay intact for the other operand).
    fn grad_fresh(
        &self,
        g: &[f32],
        a: Option<&[f32]>,
        b: Option<&[f32]>,
        f: impl Fn(f32, f32, f32) -> f32 + Sync,
    ) -> Tensor {
        let mut o = Tensor::for_overwrite(&self.out);
        if self.numel() == 0 {
            return o;
        }
        let n = self.inner();
        let per = self.rows_per_task();
        let (ia, ib) = self.last();
        o.data_mut()
            .par_chunks_mut(per * n)
            .zip(g.par_chunks(per * n))
            .enumerate()
            .for_each(|(t, (chunk, gc))| {
                for (k, (o, g)) in chunk.chunks_mut(n).zip(gc.chunks(n)).enumerate() {
                    let (oa, ob) = self.offsets(t * per + k);
                    match (Self::src(a, oa, ia, n), Self::src(b, ob, ib, n)) {
                        (Src::Row(x), Src::Row(y)) => map3(o, g, x, y, &f),
                        (Src::Row(x), Src::Value(y)) => map2(o, g, x, |g, x| f(g, x, y)),
                        (Src::Value(x), Src::Row(y)) => map2(o, g, y, |g, y| f(g, x, y)),
                        (Src::Value(x), Src::Value(y)) => map1(o, g, |g| f(g, x, y)),
                    }
                }
            });
        o
    }

    /// Σ f(g, a, b) over the positions where operand `target` (0: a, 1: b) is broadcast: its
    /// gradient, of shape `shape`.
    fn grad_reduced(
        &self,
        target: usize,
        shape: &[usize],
        g: &[f32],
        a: Option<&[f32]>,
        b: Option<&[f32]>,
        f: impl Fn(f32, f32, f32) -> f32 + Sync,
    ) -> Tensor {
        let mut t = Tensor::zeros(shape);
        if self.numel() == 0 {
            return t;
        }
        let n = self.inner();
        let rows = self.rows();
        let (ia, ib) = self.last();
        let it = if target == 0 { ia } else { ib };
        let off_of = |row: usize| {
            let (oa, ob) = self.offsets(row);
            if target == 0 {
                oa
            } else {
                ob
            }
        };
        let row_sum = |row: usize| {
            let (oa, ob) = self.offsets(row);
            let g = &g[row * n..][..n];
            match (Self::src(a, oa, ia, n), Self::src(b, ob, ib, n)) {
                (Src::Row(x), Src::Row(y)) => sum3(g, x, y, &f),
                (Src::Row(x), Src::Value(y)) => sum2(g, x, |g, x| f(g, x, y)),
                (Src::Value(x), Src::Row(y)) => sum2(g, y, |g, y| f(g, x, y)),
                (Src::Value(x), Src::Value(y)) => sum1(g, |g| f(g, x, y)),
            }
        };
        if it == 0 {
            // The target is one value per row: row sums in parallel, then added up in order.
            let sums: Vec<f64> = (0..rows).into_par_iter().map(row_sum).collect();
            let mut acc = vec![0f64; t.numel()];
            for (row, s) in sums.into_iter().enumerate() {
                acc[off_of(row)] += s;
            }
            for (t, s) in t.data_mut().iter_mut().zip(acc) {
                *t = s as f32;
            }
            return t;
        }
        // The target runs along the row and repeats across rows. Accumulates rows into it;
        // in parallel only where one partial copy per task is small beside the output.
        let accumulate = |t: &mut [f32], row: usize| {
            let (oa, ob) = self.offsets(row);
            let off = if target == 0 { oa } else { ob };
            let tr = &mut t[off..off + n];
            let g = &g[row * n..][..n];
            match (Self::src(a, oa, ia, n), Self::src(b, ob, ib, n)) {
                (Src::Row(x), Src::Row(y)) => zip3(tr, g, x, y, |t, g, x, y| t + f(g, x, y)),
                (Src::Row(x), Src::Value(y)) => zip2(tr, g, x, |t, g, x| t + f(g, x, y)),
                (Src::Value(x), Src::Row(y)) => zip2(tr, g, y, |t, g, y| t + f(g, x, y)),
                (Src::Value(x), Src::Value(y)) => zip1(tr, g, |t, g| t + f(g, x, y)),
            }
        };
        let len = t.numel();
        if len * 16 <= self.numel() && rows >= 2 * self.rows_per_task() {
            let per = self.rows_per_task();
            let partials: Vec<Vec<f32>> = (0..rows.div_ceil(per))
                .into_par_iter()
                .map(|task| {
                    let mut p = vec![0f32; len];
                    for row in task * per..((task + 1) * per).min(rows) {
                        accumulate(&mut p, row);
                    }
                    p
                })
                .collect();
            let td = t.data_mut();
            for p in partials {
                zip1(td, &p, |t, p| t + p);
            }
        } else {
            let td = t.data_mut();
            for row in 0..rows {
                accumulate(td, row);
            }
        }
        t
    }
}

/// y = f(a, b) for one kind.
fn forward_kind(kind: BinaryKind, bc: &Bcast, a: &[f32], b: &[f32], out: &mut [f32]) {
    match kind {
        BinaryKind::Add => bc.forward(a, b, out, |a, b| a + b),
        BinaryKind::Sub => bc.forward(a, b, out, |a, b| a - b),
        BinaryKind::Mul => bc.forward(a, b, out, |a, b| a * b),
        BinaryKind::Div => bc.forward(a, b, out, |a, b| a / b),
        BinaryKind::Pow => bc.forward(a, b, out, f32::powf),
    }
}

/// Binds `$f` to the gradient of operand `$target` (0: a, 1: b) as a function f(g, a, b), to
/// be summed over broadcast positions, and evaluates `$body` with it: PyTorch's formulas, as
/// closures the compiler inlines into the loops. Pow follows pow_backward_self and
/// pow_backward_exponent: ∂/∂a is 0 where b = 0, ∂/∂b is 0 where a = 0 and b ≥ 0; elsewhere
/// the plain formulas, which give NaN for ∂/∂b where a < 0 (ln a) and −∞ at a = 0, b < 0, as
/// PyTorch's do.
macro_rules! with_grad_fn {
    ($kind:expr, $target:expr, |$f:ident| $body:expr) => {
        match ($kind, $target) {
            (BinaryKind::Add, _) | (BinaryKind::Sub, 0) => {
                let $f = |g: f32, _: f32, _: f32| g;
                $body
            }
            (BinaryKind::Sub, _) => {
                let $f = |g: f32, _: f32, _: f32| -g;
                $body
            }
            (BinaryKind::Mul, 0) => {
                let $f = |g: f32, _: f32, b: f32| g * b;
                $body
            }
            (BinaryKind::Mul, _) => {
                let $f = |g: f32, a: f32, _: f32| g * a;
                $body
            }
            (BinaryKind::Div, 0) => {
                let $f = |g: f32, _: f32, b: f32| g / b;
                $body
            }
            (BinaryKind::Div, _) => {
                let $f = |g: f32, a: f32, b: f32| -g * ((a / b) / b);
                $body
            }
            (BinaryKind::Pow, 0) => {
                let $f = |g: f32, a: f32, b: f32| {
                    if b == 0.0 {
                        0.0
                    } else {
                        g * (b * a.powf(b - 1.0))
                    }
                };
                $body
            }
            (BinaryKind::Pow, _) => {
                let $f = |g: f32, a: f32, b: f32| {
                    if a == 0.0 && b >= 0.0 {
                        0.0
                    } else {
                        g * (a.powf(b) * a.ln())
                    }
                };
                $body
            }
        }
    };
}

/// Whether the gradient of operand `target` is the output gradient itself.
fn passes_through(kind: BinaryKind, target: usize) -> bool {
    kind == BinaryKind::Add || (kind == BinaryKind::Sub && target == 0)
}

/// The gradients of the operands listed in `targets` (0: a, 1: b), in that order. `a`/`b`
/// are None where not kept. At most one gradient, one of the output's size, takes over
/// `grad`'s storage; it is computed last. An operand of the output's size is broadcast along
/// no axis ([C, H, W] against [1, C, H, W]): its gradient is the output's, reshaped.
#[allow(clippy::too_many_arguments)]
fn backward_kind(
    kind: BinaryKind,
    bc: &Bcast,
    shapes: [&[usize]; 2],
    targets: &[usize],
    a: Option<&[f32]>,
    b: Option<&[f32]>,
    mut grad: Tensor,
) -> Result<Vec<Tensor>, EngineError> {
    let full = |t: usize| shapes[t].iter().product::<usize>() == bc.numel();
    // The one gradient that may overwrite `grad`: the last full-sized target.
    let in_place = targets.iter().rposition(|&t| full(t));
    let mut out: Vec<Option<Tensor>> = (0..targets.len()).map(|_| None).collect();
    for (i, &t) in targets.iter().enumerate() {
        if Some(i) == in_place {
            continue;
        }
        let g = grad.data();
        out[i] = Some(with_grad_fn!(kind, t, |f| if full(t) {
            if passes_through(kind, t) {
                grad.clone()
            } else {
                bc.grad_fresh(g, a, b, f)
            }
            .reshape(shapes[t].to_vec())?
        } else {
            bc.grad_reduced(t, shapes[t], g, a, b, f)
        }));
    }
    if let Some(i) = in_place {
        let t = targets[i];
        if !passes_through(kind, t) {
            with_grad_fn!(kind, t, |f| bc.grad_in_place(grad.data_mut(), a, b, f));
        }
        out[i] = Some(grad.reshape(shapes[t].to_vec())?);
    }
    Ok(out.into_iter().flatten().collect())
}

fn scalar_value(c: &Tensor) -> Option<f32> {
    (c.numel() == 1).then(|| c.data()[0])
}

impl Operator for Binary {
    fn describe(&self) -> String {
        self.0.name().into()
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        match inputs {
            [a, b] => broadcast_shape(self.0.name(), a, b),
            _ => Err(EngineError::Shape(format!(
                "{} takes two inputs, got {}",
                self.0.name(),
                inputs.len()
            ))),
        }
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let [a, b] = inputs else {
            return Err(EngineError::Shape(format!(
                "{} takes two inputs, got {}",
                self.0.name(),
                inputs.len()
            )));
        };
        let bc = Bcast::new(self.0.name(), a.shape(), b.shape())?;
        let mut y = Tensor::for_overwrite(&bc.out);
        forward_kind(self.0, &bc, a.data(), b.data(), y.data_mut());
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        if self.0.reads_values() {
            Needs::INPUTS
        } else {
            Needs::NOTHING
        }
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let name = self.0.name();
        let (sa, sb) = (saved.input_shape(0), saved.input_shape(1));
        let bc = Bcast::new(name, sa, sb)?;
        check_grad(name, &bc, &grad)?;
        let (a, b) = if self.0.reads_values() {
            (
                Some(kept(name, saved.input(0)?, sa)?),
                Some(kept(name, saved.input(1)?, sb)?),
            )
        } else {
            (None, None)
        };
        backward_kind(self.0, &bc, [sa, sb], &[0, 1], a, b, grad)
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

fn check_grad(op: &str, bc: &Bcast, grad: &Tensor) -> Result<(), EngineError> {
    if grad.shape() != bc.out.as_slice() {
        return Err(EngineError::Shape(format!(
            "{op}: gradient {:?} for output {:?}",
            grad.shape(),
            bc.out
        )));
    }
    Ok(())
}

fn kept<'a>(op: &str, t: &'a Tensor, shape: &[usize]) -> Result<&'a [f32], EngineError> {
    if t.shape() != shape {
        return Err(EngineError::Shape(format!(
            "{op}: kept input {:?} for input shape {shape:?}",
            t.shape()
        )));
    }
    Ok(t.data())
}

impl BinaryConst {
    fn name(&self) -> String {
        format!("{} constant", self.kind.name())
    }

    /// (a, b) shapes with x's in its place.
    fn operands<'a>(&'a self, x: &'a [usize]) -> (&'a [usize], &'a [usize]) {
        if self.constant_first {
            (self.constant.shape(), x)
        } else {
            (x, self.constant.shape())
        }
    }

    /// Which operand x is.
    fn target(&self) -> usize {
        if self.constant_first {
            1
        } else {
            0
        }
    }
}

impl Operator for BinaryConst {
    fn describe(&self) -> String {
        let c = match scalar_value(&self.constant) {
            Some(v) => format!("{v}"),
            None => format!("{:?}", self.constant.shape()),
        };
        let s = self.kind.symbol();
        if self.constant_first {
            format!("{} ({c} {s} x)", self.kind.name())
        } else {
            format!("{} (x {s} {c})", self.kind.name())
        }
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let x = single(&self.name(), inputs)?;
        let (a, b) = self.operands(x);
        broadcast_shape(&self.name(), a, b)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let name = self.name();
        let x = single(&name, inputs)?;
        let (sa, sb) = self.operands(x.shape());
        let bc = Bcast::new(&name, sa, sb)?;
        let mut y = Tensor::for_overwrite(&bc.out);
        let (a, b) = if self.constant_first {
            (self.constant.data(), x.data())
        } else {
            (x.data(), self.constant.data())
        };
        let out = y.data_mut();
        // x², x³, √x, 1/x: the powers models raise to (variance, GELU's cube, rsqrt) without
        // a powf call per element.
        match (self.kind, self.constant_first, scalar_value(&self.constant)) {
            (BinaryKind::Pow, false, Some(1.0)) => bc.forward(a, b, out, |x, _| x),
            (BinaryKind::Pow, false, Some(2.0)) => bc.forward(a, b, out, |x, _| x * x),
            (BinaryKind::Pow, false, Some(3.0)) => bc.forward(a, b, out, |x, _| x * x * x),
            (BinaryKind::Pow, false, Some(0.5)) => bc.forward(a, b, out, |x, _| x.sqrt()),
            (BinaryKind::Pow, false, Some(-1.0)) => bc.forward(a, b, out, |x, _| 1.0 / x),
            _ => forward_kind(self.kind, &bc, a, b, out),
        }
        Ok(y)
    }

    /// Only the gradient of x: x ∘ c needs x for Pow (c ∘ x also for Div, Pow); a product or
    /// quotient by the constant needs nothing kept.
    fn backward_needs(&self) -> Needs {
        match (self.kind, self.constant_first) {
            (BinaryKind::Add | BinaryKind::Sub | BinaryKind::Mul, _) => Needs::NOTHING,
            (BinaryKind::Div, false) => Needs::NOTHING,
            (BinaryKind::Div | BinaryKind::Pow, _) => Needs::INPUTS,
        }
    }

    fn backward(&self, saved: &Saved, mut grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let name = self.name();
        let xs = saved.input_shape(0);
        let (sa, sb) = self.operands(xs);
        let bc = Bcast::new(&name, sa, sb)?;
        check_grad(&name, &bc, &grad)?;
        let x = if self.backward_needs().inputs {
            Some(kept(&name, saved.input(0)?, xs)?)
        } else {
            None
        };
        let c = Some(self.constant.data());
        let (a, b) = if self.constant_first { (c, x) } else { (x, c) };
        let t = self.target();
        if self.kind == BinaryKind::Pow && !self.constant_first && xs == bc.out.as_slice() {
            // PyTorch's e·x^(e−1), written out for the common exponents.
            match scalar_value(&self.constant) {
                Some(1.0) => return Ok(vec![grad]),
                Some(2.0) => {
                    bc.grad_in_place(grad.data_mut(), a, b, |g, x, _| g * (2.0 * x));
                    return Ok(vec![grad]);
                }
                Some(3.0) => {
                    bc.grad_in_place(grad.data_mut(), a, b, |g, x, _| g * (3.0 * (x * x)));
                    return Ok(vec![grad]);
                }
                _ => {}
            }
        }
        let mut g = backward_kind(self.kind, &bc, [sa, sb], &[t], a, b, grad)?;
        Ok(vec![g.remove(0)])
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
