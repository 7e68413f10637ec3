//! A small evaluator of standard operators on constant tensors.
//!
//! Exporters leave shape arithmetic in the graph (`Shape → Gather → Unsqueeze → Concat →
//! Reshape` for a flatten, `Range`/`ConstantOfShape` for position tensors). Once the input
//! shape is fixed these are constants, and a lowering folds them with [`eval_constant`] instead
//! of implementing integer tensor ops in the engine. The semantics follow the operator specs
//! (and `onnx/reference`), including opset differences; the tensors are small, so clarity wins
//! over speed: every structural op is an index list fed to [`Values::select`].

use crate::error::{OnnxError, Result};
use crate::model::{AttrValue, OnnxNode};
use crate::tensor::{checked_numel, DataType, TensorData, Values};

/// Largest tensor the folder will produce. Shape subgraphs are tiny; anything this big is a
/// real activation-sized computation that the engine should run, or a hostile file.
pub const MAX_FOLD_ELEMENTS: usize = 1 << 24;

const MALFORMED: &str = "the model is malformed: re-export it";

/// The value of a `Constant` node, from whichever of its `value*` attributes is set.
pub fn constant_value(node: &OnnxNode) -> Result<TensorData> {
    let mut found = None;
    for a in &node.attributes {
        let t = match (&*a.name, &a.value) {
            ("value", AttrValue::Tensor(t)) => t.clone(),
            ("value_float", AttrValue::Float(f)) => TensorData {
                dims: vec![],
                values: Values::F32(vec![*f]),
            },
            ("value_floats", AttrValue::Floats(f)) => TensorData {
                dims: vec![f.len()],
                values: Values::F32(f.clone()),
            },
            ("value_int", AttrValue::Int(i)) => TensorData::scalar_i64(*i),
            ("value_ints", AttrValue::Ints(i)) => TensorData::vec_i64(i.clone()),
            ("value_string", AttrValue::String(s)) => TensorData {
                dims: vec![],
                values: Values::Str(vec![s.clone()]),
            },
            ("value_strings", AttrValue::Strings(s)) => TensorData {
                dims: vec![s.len()],
                values: Values::Str(s.clone()),
            },
            ("sparse_value", _) => {
                return Err(node.node_error(
                    "holds a sparse tensor, which this reader does not support".into(),
                    "re-export the model with dense constants",
                ))
            }
            (name, other) => {
                return Err(node.attr_error(
                    name,
                    format!("is {}, not a value this Constant can hold", other.kind()),
                ))
            }
        };
        if found.replace(t).is_some() {
            return Err(node.node_error("sets more than one value attribute".into(), MALFORMED));
        }
    }
    found.ok_or_else(|| node.node_error("has no value attribute".into(), MALFORMED))
}

/// The output of `Shape` for an input of shape `dims`: the dims from `start` (default 0) to
/// `end` (default: all), negative values counting from the end, clamped to the rank.
pub fn shape_of(dims: &[usize], start: Option<i64>, end: Option<i64>) -> TensorData {
    let rank = dims.len() as i64;
    let clamp = |i: i64| (if i < 0 { i + rank } else { i }).clamp(0, rank) as usize;
    let start = clamp(start.unwrap_or(0));
    let end = clamp(end.unwrap_or(rank));
    let picked = dims
        .get(start..end.max(start))
        .unwrap_or(&[])
        .iter()
        .map(|&d| d as i64)
        .collect();
    TensorData::vec_i64(picked)
}

/// A `Shape` node applied to a value of shape `dims` (which the caller knows even when the
/// value itself is not a constant), reading `start`/`end` (opset 15+).
pub fn eval_shape(node: &OnnxNode, opset: i64, dims: &[usize]) -> Result<TensorData> {
    if opset >= 15 {
        Ok(shape_of(
            dims,
            node.attr_int("start")?,
            node.attr_int("end")?,
        ))
    } else {
        Ok(shape_of(dims, None, None))
    }
}

/// Evaluates a standard-domain node whose inputs are all known. `inputs[i]` is the value of
/// `node.inputs[i]`, `None` for an omitted optional input. Returns one tensor per output (only
/// Split has several). An operator the folder does not implement gives
/// [`OnnxError::Unsupported`].
pub fn eval_constant(
    node: &OnnxNode,
    opset: i64,
    inputs: &[Option<&TensorData>],
) -> Result<Vec<TensorData>> {
    let unsupported = || OnnxError::Unsupported {
        op: node.op_type.clone(),
        node: node.label().to_string(),
        opset,
    };
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return Err(unsupported());
    }
    let e = Eval {
        node,
        opset,
        inputs,
    };
    if node.op_type == "Split" {
        return e.split();
    }
    let out = match node.op_type.as_str() {
        "Identity" => e.input(0)?.clone(),
        "Constant" => constant_value(node)?,
        "Shape" => eval_shape(node, opset, &e.input(0)?.dims)?,
        "Size" => TensorData::scalar_i64(e.input(0)?.numel() as i64),
        "Gather" => e.gather()?,
        "Concat" => e.concat()?,
        "Reshape" => e.reshape()?,
        "Flatten" => e.flatten()?,
        "Unsqueeze" => e.unsqueeze()?,
        "Squeeze" => e.squeeze()?,
        "Transpose" => e.transpose()?,
        "Slice" => e.slice()?,
        "Expand" => e.expand()?,
        "Tile" => e.tile()?,
        "Range" => e.range()?,
        "ConstantOfShape" => e.constant_of_shape()?,
        "Cast" => {
            let to = node.attr_int_req("to")?;
            let to = DataType::from_code(to as i32).ok_or_else(|| {
                node.attr_error(
                    "to",
                    format!(
                        "is {}, which the folder cannot produce",
                        crate::tensor::data_type_name(to as i32)
                    ),
                )
            })?;
            e.cast(e.input(0)?, to)?
        }
        "CastLike" => e.cast(e.input(0)?, e.input(1)?.data_type())?,
        "Add" => e.arith(i64::checked_add, |a, b| a + b)?,
        "Sub" => e.arith(i64::checked_sub, |a, b| a - b)?,
        "Mul" => e.arith(i64::checked_mul, |a, b| a * b)?,
        // Integer Div truncates toward zero (C semantics, as onnx/reference does), which is
        // Rust's `/`; division by zero is an error rather than a panic.
        "Div" => e.arith(i64::checked_div, |a, b| a / b)?,
        "Mod" => {
            if node.attr_int_or("fmod", 0)? == 0 {
                // Python's %: the result takes the divisor's sign.
                e.arith(
                    |a, b| {
                        a.checked_rem(b).map(|r| {
                            if r != 0 && (r < 0) != (b < 0) {
                                r + b
                            } else {
                                r
                            }
                        })
                    },
                    |a, b| a - b * (a / b).floor(),
                )?
            } else {
                e.arith(i64::checked_rem, |a, b| a % b)?
            }
        }
        "Pow" => e.pow()?,
        "Max" => e.variadic(|a, b| Some(a.max(b)), f64::max)?,
        "Min" => e.variadic(|a, b| Some(a.min(b)), f64::min)?,
        "Sum" => e.variadic(i64::checked_add, |a, b| a + b)?,
        "Equal" => e.compare(|o| o.is_eq())?,
        "Less" => e.compare(|o| o.is_lt())?,
        "LessOrEqual" => e.compare(|o| o.is_le())?,
        "Greater" => e.compare(|o| o.is_gt())?,
        "GreaterOrEqual" => e.compare(|o| o.is_ge())?,
        "Not" => e.logic1()?,
        "And" => e.logic2(|a, b| a & b)?,
        "Or" => e.logic2(|a, b| a | b)?,
        "Xor" => e.logic2(|a, b| a ^ b)?,
        "Where" => e.where_()?,
        "Neg" => e.unary(|x| x.checked_neg(), |x| -x)?,
        "Abs" => e.unary(|x| x.checked_abs(), f64::abs)?,
        "Floor" => e.unary(Some, f64::floor)?,
        "Ceil" => e.unary(Some, f64::ceil)?,
        "Round" => e.unary(Some, f64::round_ties_even)?,
        "Sqrt" => e.unary_float(f64::sqrt)?,
        "Reciprocal" => e.unary_float(|x| 1.0 / x)?,
        "Sign" => e.unary(
            |x| Some(x.signum()),
            |x| if x == 0.0 { 0.0 } else { x.signum() },
        )?,
        "ReduceSum" => e.reduce(13, Reduce::Sum)?,
        "ReduceProd" => e.reduce(18, Reduce::Prod)?,
        "ReduceMin" => e.reduce(18, Reduce::Min)?,
        "ReduceMax" => e.reduce(18, Reduce::Max)?,
        "ReduceMean" => e.reduce(18, Reduce::Mean)?,
        _ => return Err(unsupported()),
    };
    Ok(vec![out])
}

#[derive(Clone, Copy)]
enum Reduce {
    Sum,
    Prod,
    Min,
    Max,
    Mean,
}

struct Eval<'n, 'i> {
    node: &'n OnnxNode,
    opset: i64,
    inputs: &'i [Option<&'i TensorData>],
}

/// Numbers to compute on: integers exactly as i64, floats as f64 (exact for f32 and f16
/// operands; one f64 operation rounded to f32 equals the f32 operation for + - * / sqrt).
enum Num {
    I(Vec<i64>),
    F(Vec<f64>),
}

impl<'n, 'i> Eval<'n, 'i> {
    fn bad(&self, reason: String) -> OnnxError {
        self.node.node_error(reason, MALFORMED)
    }

    fn input(&self, i: usize) -> Result<&'i TensorData> {
        self.opt(i)
            .ok_or_else(|| self.bad(format!("input {i} is missing")))
    }

    fn opt(&self, i: usize) -> Option<&'i TensorData> {
        self.inputs.get(i).copied().flatten()
    }

    fn ints(&self, i: usize) -> Result<Vec<i64>> {
        self.input(i)?
            .as_i64()
            .map_err(|e| self.bad(format!("input {i}: {}", e.cause())))
    }

    /// Integer list from input `i` when given, else from attribute `attr` (the form of
    /// older opsets).
    fn ints_input_or_attr(&self, i: usize, attr: &str) -> Result<Option<Vec<i64>>> {
        if self.opt(i).is_some() {
            return self.ints(i).map(Some);
        }
        Ok(self.node.attr_ints(attr)?.map(<[i64]>::to_vec))
    }

    fn num(&self, t: &TensorData) -> Result<Num> {
        let err = |e: OnnxError| self.bad(e.cause());
        if t.data_type().is_float() {
            t.as_f64().map(Num::F).map_err(err)
        } else {
            t.as_i64().map(Num::I).map_err(err)
        }
    }

    fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if (0..r).contains(&a) {
            Ok(a as usize)
        } else {
            Err(self.bad(format!("axis {axis} is out of range for rank {rank}")))
        }
    }

    fn numel(&self, dims: &[usize]) -> Result<usize> {
        checked_numel(dims)
            .filter(|&n| n <= MAX_FOLD_ELEMENTS)
            .ok_or_else(|| {
                self.node.node_error(
                    format!("would produce a tensor of shape {dims:?}, too large to fold"),
                    "export the model with a fixed input shape",
                )
            })
    }

    /// A tensor of shape `dims` whose element at each position is `src`'s element at the
    /// flat index `f(position)`.
    fn build(
        &self,
        src: &Values,
        dims: Vec<usize>,
        f: impl FnMut(&[usize]) -> usize,
    ) -> Result<TensorData> {
        let n = self.numel(&dims)?;
        let idx = map_indices(&dims, n, f);
        Ok(TensorData {
            values: src.select(&idx),
            dims,
        })
    }

    fn dims_from(&self, shape: &[i64], what: &str) -> Result<Vec<usize>> {
        shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| self.bad(format!("{what} {shape:?} has a negative dimension")))
    }

    fn broadcast(&self, shapes: &[&[usize]]) -> Result<Vec<usize>> {
        let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut out = vec![1usize; rank];
        for s in shapes {
            for (j, &d) in s.iter().enumerate() {
                let o = &mut out[rank - s.len() + j];
                if *o == 1 {
                    *o = d;
                } else if d != 1 && d != *o {
                    return Err(self.bad(format!("shapes {shapes:?} do not broadcast")));
                }
            }
        }
        Ok(out)
    }

    fn gather(&self) -> Result<TensorData> {
        let data = self.input(0)?;
        let indices = self.ints(1)?;
        let idx_dims = &self.input(1)?.dims;
        let axis = self.axis(self.node.attr_int_or("axis", 0)?, data.rank())?;
        let n = data.dims[axis];
        let mut resolved = Vec::with_capacity(indices.len());
        for &i in &indices {
            let j = if i < 0 { i + n as i64 } else { i };
            if !(0..n as i64).contains(&j) {
                return Err(self.bad(format!(
                    "index {i} is out of range for axis {axis} of size {n}"
                )));
            }
            resolved.push(j as usize);
        }
        let mut dims = data.dims[..axis].to_vec();
        dims.extend_from_slice(idx_dims);
        dims.extend_from_slice(&data.dims[axis + 1..]);
        let inner: usize = data.dims[axis + 1..].iter().product();
        let q = idx_dims.len();
        let idx_strides = strides(idx_dims);
        self.build(&data.values, dims, |pos| {
            let outer = flat(&pos[..axis], &data.dims[..axis]);
            let k: usize = pos[axis..axis + q]
                .iter()
                .zip(&idx_strides)
                .map(|(p, s)| p * s)
                .sum();
            let rest = flat(&pos[axis + q..], &data.dims[axis + 1..]);
            (outer * n + resolved[k]) * inner + rest
        })
    }

    fn concat(&self) -> Result<TensorData> {
        let parts: Vec<&TensorData> = (0..self.inputs.len()).filter_map(|i| self.opt(i)).collect();
        let first = parts
            .first()
            .ok_or_else(|| self.bad("has no inputs".into()))?;
        let axis = self.axis(self.node.attr_int_req("axis")?, first.rank())?;
        let mut all = first.values.empty_like();
        let mut dims = first.dims.clone();
        dims[axis] = 0;
        // For each output position along `axis`: which part, and that part's offset in `all`.
        let mut along = Vec::new();
        for (p, t) in parts.iter().enumerate() {
            let same = t.rank() == first.rank()
                && t.dims
                    .iter()
                    .zip(&first.dims)
                    .enumerate()
                    .all(|(j, (a, b))| j == axis || a == b);
            if !same {
                return Err(self.bad(format!(
                    "inputs of shapes {:?} and {:?} cannot be concatenated on axis {axis}",
                    first.dims, t.dims
                )));
            }
            let offset = all.len();
            if !all.extend_from(&t.values) {
                return Err(self.bad("inputs have different element types".into()));
            }
            for k in 0..t.dims[axis] {
                along.push((p, offset, k));
            }
            dims[axis] += t.dims[axis];
        }
        self.build(&all, dims, |pos| {
            let (p, offset, k) = along[pos[axis]];
            let mut local = pos.to_vec();
            local[axis] = k;
            offset + flat(&local, &parts[p].dims)
        })
    }

    fn reshape(&self) -> Result<TensorData> {
        let data = self.input(0)?;
        let shape = if self.opset >= 5 {
            self.ints(1)?
        } else {
            self.node.attr_ints_req("shape")?.to_vec()
        };
        let allow_zero = self.opset >= 14 && self.node.attr_int_or("allowzero", 0)? != 0;
        let mut dims = Vec::with_capacity(shape.len());
        let mut infer = None;
        for (i, &s) in shape.iter().enumerate() {
            dims.push(match s {
                0 if !allow_zero => *data.dims.get(i).ok_or_else(|| {
                    self.bad(format!(
                        "shape {shape:?} copies dimension {i} of a rank-{} input",
                        data.rank()
                    ))
                })?,
                -1 if infer.is_none() => {
                    infer = Some(i);
                    1
                }
                s if s >= 0 => s as usize,
                _ => return Err(self.bad(format!("shape {shape:?} is not a valid target shape"))),
            });
        }
        let known =
            checked_numel(&dims).ok_or_else(|| self.bad(format!("shape {shape:?} overflows")))?;
        if let Some(i) = infer {
            if known == 0 || data.numel() % known != 0 {
                return Err(self.bad(format!(
                    "cannot infer the -1 in {shape:?} for {} elements",
                    data.numel()
                )));
            }
            dims[i] = data.numel() / known;
        } else if known != data.numel() {
            return Err(self.bad(format!("cannot reshape {:?} to {shape:?}", data.dims)));
        }
        Ok(TensorData {
            dims,
            values: data.values.clone(),
        })
    }

    fn flatten(&self) -> Result<TensorData> {
        let data = self.input(0)?;
        let r = data.rank() as i64;
        let axis = self.node.attr_int_or("axis", 1)?;
        let axis = if axis < 0 { axis + r } else { axis };
        if !(0..=r).contains(&axis) {
            return Err(self.bad(format!("axis {axis} is out of range for rank {r}")));
        }
        let (a, b) = data.dims.split_at(axis as usize);
        Ok(TensorData {
            dims: vec![a.iter().product(), b.iter().product()],
            values: data.values.clone(),
        })
    }

    fn unsqueeze(&self) -> Result<TensorData> {
        let data = self.input(0)?;
        let axes = self
            .ints_input_or_attr(1, "axes")?
            .ok_or_else(|| self.bad("has no axes".into()))?;
        let rank = data.rank() + axes.len();
        let mut is_new = vec![false; rank];
        for &a in &axes {
            let a = self.axis(a, rank)?;
            if std::mem::replace(&mut is_new[a], true) {
                return Err(self.bad(format!("axes {axes:?} repeat an axis")));
            }
        }
        let mut old = data.dims.iter();
        let dims = is_new
            .iter()
            .map(|&new| {
                if new {
                    1
                } else {
                    old.next().copied().unwrap_or(1)
                }
            })
            .collect();
        Ok(TensorData {
            dims,
            values: data.values.clone(),
        })
    }

    fn squeeze(&self) -> Result<TensorData> {
        let data = self.input(0)?;
        let dims = match self.ints_input_or_attr(1, "axes")? {
            None => data.dims.iter().copied().filter(|&d| d != 1).collect(),
            Some(axes) => {
                let mut drop = vec![false; data.rank()];
                for &a in &axes {
                    let a = self.axis(a, data.rank())?;
                    if data.dims[a] != 1 {
                        return Err(
                            self.bad(format!("cannot squeeze axis {a} of size {}", data.dims[a]))
                        );
                    }
                    drop[a] = true;
                }
                data.dims
                    .iter()
                    .zip(&drop)
                    .filter(|(_, &d)| !d)
                    .map(|(&x, _)| x)
                    .collect()
            }
        };
        Ok(TensorData {
            dims,
            values: data.values.clone(),
        })
    }

    fn transpose(&self) -> Result<TensorData> {
        let data = self.input(0)?;
        let r = data.rank();
        let perm = match self.node.attr_ints("perm")? {
            Some(p) => p
                .iter()
                .map(|&a| self.axis(a, r))
                .collect::<Result<Vec<_>>>()?,
            None => (0..r).rev().collect(),
        };
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
            return Err(self.bad(format!("perm {perm:?} is not a permutation of rank {r}")));
        }
        let st = strides(&data.dims);
        let dims = perm.iter().map(|&a| data.dims[a]).collect();
        self.build(&data.values, dims, |pos| {
            pos.iter().zip(&perm).map(|(p, &a)| p * st[a]).sum()
        })
    }

    fn slice(&self) -> Result<TensorData> {
        let data = self.input(0)?;
        let (starts, ends, axes, steps) = if self.opset >= 10 {
            let axes = if self.opt(3).is_some() {
                Some(self.ints(3)?)
            } else {
                None
            };
            let steps = if self.opt(4).is_some() {
                Some(self.ints(4)?)
            } else {
                None
            };
            (self.ints(1)?, self.ints(2)?, axes, steps)
        } else {
            (
                self.node.attr_ints_req("starts")?.to_vec(),
                self.node.attr_ints_req("ends")?.to_vec(),
                self.node.attr_ints("axes")?.map(<[i64]>::to_vec),
                None,
            )
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err(self.bad("starts, ends, axes and steps differ in length".into()));
        }
        let mut first = vec![0i64; data.rank()];
        let mut step = vec![1i64; data.rank()];
        let mut dims = data.dims.clone();
        let mut seen = vec![false; data.rank()];
        for i in 0..starts.len() {
            let a = self.axis(axes[i], data.rank())?;
            if std::mem::replace(&mut seen[a], true) {
                return Err(self.bad(format!("axes {axes:?} repeat an axis")));
            }
            let (s, e) = slice_range(starts[i], ends[i], steps[i], data.dims[a] as i64)
                .ok_or_else(|| self.bad("has a step of 0".into()))?;
            let k = i128::from(steps[i]);
            let count = if k > 0 {
                (e - s + k - 1).div_euclid(k)
            } else {
                (s - e - k - 1).div_euclid(-k)
            };
            first[a] = s as i64;
            step[a] = steps[i];
            dims[a] = count.max(0) as usize;
        }
        let st = strides(&data.dims);
        self.build(&data.values, dims, |pos| {
            pos.iter()
                .enumerate()
                .map(|(j, &p)| (first[j] + p as i64 * step[j]) as usize * st[j])
                .sum()
        })
    }

    /// Split: sizes from input 1 (opset 13+) or the `split` attribute, else equal parts, one
    /// per output (`num_outputs` from opset 18; the last part may be smaller).
    fn split(&self) -> Result<Vec<TensorData>> {
        let data = self.input(0)?;
        let axis = self.axis(self.node.attr_int_or("axis", 0)?, data.rank())?;
        let n = data.dims[axis];
        let sizes = match self.ints_input_or_attr(1, "split")? {
            Some(sizes) => self.dims_from(&sizes, "split")?,
            None => {
                let parts = match self.node.attr_int("num_outputs")? {
                    Some(k) => usize::try_from(k).unwrap_or(0),
                    None => self.node.outputs.len(),
                };
                if parts == 0 {
                    return Err(self.bad("splits into no outputs".into()));
                }
                let chunk = n.div_ceil(parts);
                (0..parts)
                    .map(|i| chunk.min(n.saturating_sub(i * chunk)))
                    .collect()
            }
        };
        if sizes.iter().try_fold(0usize, |a, &b| a.checked_add(b)) != Some(n) {
            return Err(self.bad(format!("split sizes {sizes:?} do not add up to {n}")));
        }
        let st = strides(&data.dims);
        let mut start = 0;
        let mut out = Vec::with_capacity(sizes.len());
        for size in sizes {
            let mut dims = data.dims.clone();
            dims[axis] = size;
            out.push(self.build(&data.values, dims, |pos| {
                pos.iter()
                    .enumerate()
                    .map(|(j, &p)| (if j == axis { p + start } else { p }) * st[j])
                    .sum()
            })?);
            start += size;
        }
        Ok(out)
    }

    fn expand(&self) -> Result<TensorData> {
        let data = self.input(0)?;
        let shape = self.dims_from(&self.ints(1)?, "shape")?;
        let dims = self.broadcast(&[&data.dims, &shape])?;
        self.build(&data.values, dims.clone(), |pos| {
            broadcast_index(pos, &data.dims)
        })
    }

    fn tile(&self) -> Result<TensorData> {
        let data = self.input(0)?;
        let reps = self.dims_from(&self.ints(1)?, "repeats")?;
        if reps.len() != data.rank() {
            return Err(self.bad(format!(
                "repeats {reps:?} do not match rank {}",
                data.rank()
            )));
        }
        let dims: Vec<usize> = data
            .dims
            .iter()
            .zip(&reps)
            .map(|(d, r)| d.saturating_mul(*r))
            .collect();
        let st = strides(&data.dims);
        self.build(&data.values, dims, |pos| {
            pos.iter()
                .enumerate()
                .map(|(j, &p)| (p % data.dims[j]) * st[j])
                .sum()
        })
    }

    fn range(&self) -> Result<TensorData> {
        let (start, limit, delta) = (self.input(0)?, self.input(1)?, self.input(2)?);
        let dtype = start.data_type();
        match (self.num(start)?, self.num(limit)?, self.num(delta)?) {
            (Num::I(s), Num::I(l), Num::I(d)) => {
                let (s, l, d) = (scalar(self, &s)?, scalar(self, &l)?, scalar(self, &d)?);
                if d == 0 {
                    return Err(self.bad("has a delta of 0".into()));
                }
                let (s, l, d) = (i128::from(s), i128::from(l), i128::from(d));
                let n = ((l - s + d - d.signum()) / d).max(0);
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                self.numel(&[n])?;
                let v: Vec<i64> = (0..n as i128).map(|i| (s + i * d) as i64).collect();
                self.values(vec![n], Values::from_i64(dtype, &v))
            }
            (Num::F(s), Num::F(l), Num::F(d)) => {
                let (s, l, d) = (scalar(self, &s)?, scalar(self, &l)?, scalar(self, &d)?);
                let n = ((l - s) / d).ceil();
                if !n.is_finite() {
                    return Err(self.bad(format!("Range({s}, {l}, {d}) has no finite length")));
                }
                let n = n.max(0.0).min(usize::MAX as f64) as usize;
                self.numel(&[n])?;
                let v: Vec<f64> = (0..n).map(|i| s + i as f64 * d).collect();
                self.values(vec![n], Values::from_f64(dtype, &v))
            }
            _ => Err(self.bad("start, limit and delta differ in type".into())),
        }
    }

    fn constant_of_shape(&self) -> Result<TensorData> {
        let dims = self.dims_from(&self.ints(0)?, "shape")?;
        let value = match self.node.attr_tensor("value")? {
            Some(v) if v.numel() == 1 => v.values.clone(),
            Some(v) => return Err(self.bad(format!("value has {} elements, not 1", v.numel()))),
            None => Values::F32(vec![0.0]),
        };
        self.build(&value, dims, |_| 0)
    }

    fn cast(&self, x: &TensorData, to: DataType) -> Result<TensorData> {
        let values = match (&x.values, to) {
            (v, to) if v.data_type() == to => Ok(v.clone()),
            (Values::Str(_), _) | (_, DataType::String) => {
                return Err(self.bad("casts between strings and numbers are not folded".into()))
            }
            _ => match self.num(x)? {
                Num::F(v) => Values::from_f64(to, &v),
                Num::I(v) => Values::from_i64(to, &v),
            },
        };
        self.values(x.dims.clone(), values)
    }

    fn values(&self, dims: Vec<usize>, values: Result<Values>) -> Result<TensorData> {
        let values = values.map_err(|e| self.bad(e.cause()))?;
        Ok(TensorData { dims, values })
    }

    /// Elementwise op on two broadcast inputs of the same type; the integer op returns `None`
    /// on overflow or division by zero.
    fn arith(
        &self,
        fi: impl Fn(i64, i64) -> Option<i64>,
        ff: impl Fn(f64, f64) -> f64,
    ) -> Result<TensorData> {
        self.binary(self.input(0)?, self.input(1)?, &fi, &ff)
    }

    fn binary(
        &self,
        a: &TensorData,
        b: &TensorData,
        fi: &dyn Fn(i64, i64) -> Option<i64>,
        ff: &dyn Fn(f64, f64) -> f64,
    ) -> Result<TensorData> {
        if a.data_type() != b.data_type() {
            return Err(self.bad(format!(
                "inputs are {} and {}, not one type",
                a.data_type(),
                b.data_type()
            )));
        }
        let dims = self.broadcast(&[&a.dims, &b.dims])?;
        let n = self.numel(&dims)?;
        let ia = map_indices(&dims, n, |p| broadcast_index(p, &a.dims));
        let ib = map_indices(&dims, n, |p| broadcast_index(p, &b.dims));
        let values = match (self.num(a)?, self.num(b)?) {
            (Num::F(x), Num::F(y)) => {
                let v: Vec<f64> = ia.iter().zip(&ib).map(|(&i, &j)| ff(x[i], y[j])).collect();
                Values::from_f64(a.data_type(), &v)
            }
            (Num::I(x), Num::I(y)) => {
                let mut v = Vec::with_capacity(n);
                for (&i, &j) in ia.iter().zip(&ib) {
                    v.push(fi(x[i], y[j]).ok_or_else(|| {
                        self.bad(format!(
                            "{} {} {} overflows or divides by zero",
                            x[i], self.node.op_type, y[j]
                        ))
                    })?);
                }
                Values::from_i64(a.data_type(), &v)
            }
            _ => unreachable!("both inputs have the same type"),
        };
        self.values(dims, values)
    }

    fn variadic(
        &self,
        fi: impl Fn(i64, i64) -> Option<i64>,
        ff: impl Fn(f64, f64) -> f64,
    ) -> Result<TensorData> {
        let mut acc = self.input(0)?.clone();
        for i in 1..self.inputs.len() {
            acc = self.binary(&acc, self.input(i)?, &fi, &ff)?;
        }
        Ok(acc)
    }

    fn pow(&self) -> Result<TensorData> {
        let (a, b) = (self.input(0)?, self.input(1)?);
        // Pow allows an exponent of another type; compute in the base's domain.
        let b = self.cast(b, a.data_type())?;
        self.binary(
            a,
            &b,
            &|x, y| u32::try_from(y).ok().and_then(|y| x.checked_pow(y)),
            &f64::powf,
        )
    }

    fn compare(&self, f: impl Fn(std::cmp::Ordering) -> bool) -> Result<TensorData> {
        let (a, b) = (self.input(0)?, self.input(1)?);
        let dims = self.broadcast(&[&a.dims, &b.dims])?;
        let n = self.numel(&dims)?;
        let ia = map_indices(&dims, n, |p| broadcast_index(p, &a.dims));
        let ib = map_indices(&dims, n, |p| broadcast_index(p, &b.dims));
        let v = match (self.num(a)?, self.num(b)?) {
            (Num::I(x), Num::I(y)) => ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| f(x[i].cmp(&y[j])))
                .collect(),
            (x, y) => {
                let (x, y) = (to_f64(x), to_f64(y));
                // NaN compares false to everything, as in IEEE and numpy.
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| x[i].partial_cmp(&y[j]).is_some_and(&f))
                    .collect()
            }
        };
        Ok(TensorData {
            dims,
            values: Values::Bool(v),
        })
    }

    fn bools(&self, i: usize) -> Result<Vec<bool>> {
        match &self.input(i)?.values {
            Values::Bool(v) => Ok(v.clone()),
            other => Err(self.bad(format!("input {i} is {}, expected BOOL", other.data_type()))),
        }
    }

    fn logic1(&self) -> Result<TensorData> {
        let v = self.bools(0)?.into_iter().map(|b| !b).collect();
        Ok(TensorData {
            dims: self.input(0)?.dims.clone(),
            values: Values::Bool(v),
        })
    }

    fn logic2(&self, f: impl Fn(bool, bool) -> bool) -> Result<TensorData> {
        let (a, b) = (self.input(0)?, self.input(1)?);
        let (x, y) = (self.bools(0)?, self.bools(1)?);
        let dims = self.broadcast(&[&a.dims, &b.dims])?;
        let n = self.numel(&dims)?;
        let ia = map_indices(&dims, n, |p| broadcast_index(p, &a.dims));
        let ib = map_indices(&dims, n, |p| broadcast_index(p, &b.dims));
        let v = ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect();
        Ok(TensorData {
            dims,
            values: Values::Bool(v),
        })
    }

    fn where_(&self) -> Result<TensorData> {
        let (c, x, y) = (self.input(0)?, self.input(1)?, self.input(2)?);
        let cond = self.bools(0)?;
        let dims = self.broadcast(&[&c.dims, &x.dims, &y.dims])?;
        let mut both = x.values.clone();
        if !both.extend_from(&y.values) {
            return Err(self.bad("X and Y have different element types".into()));
        }
        let nx = x.numel();
        self.build(&both, dims, |p| {
            if cond[broadcast_index(p, &c.dims)] {
                broadcast_index(p, &x.dims)
            } else {
                nx + broadcast_index(p, &y.dims)
            }
        })
    }

    fn unary(
        &self,
        fi: impl Fn(i64) -> Option<i64>,
        ff: impl Fn(f64) -> f64,
    ) -> Result<TensorData> {
        let x = self.input(0)?;
        let values = match self.num(x)? {
            Num::F(v) => {
                Values::from_f64(x.data_type(), &v.into_iter().map(ff).collect::<Vec<_>>())
            }
            Num::I(v) => {
                let out = v
                    .into_iter()
                    .map(|a| {
                        fi(a).ok_or_else(|| {
                            self.bad(format!("{} of {a} overflows", self.node.op_type))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Values::from_i64(x.data_type(), &out)
            }
        };
        self.values(x.dims.clone(), values)
    }

    fn unary_float(&self, f: impl Fn(f64) -> f64) -> Result<TensorData> {
        let x = self.input(0)?;
        if !x.data_type().is_float() {
            return Err(self.bad(format!("input is {}, expected a float type", x.data_type())));
        }
        self.unary(Some, f)
    }

    /// `axes_input_from`: the opset from which `axes` is an input rather than an attribute.
    fn reduce(&self, axes_input_from: i64, op: Reduce) -> Result<TensorData> {
        let data = self.input(0)?;
        let axes = if self.opset >= axes_input_from {
            if self.opt(1).is_some() {
                Some(self.ints(1)?)
            } else {
                None
            }
        } else {
            self.node.attr_ints("axes")?.map(<[i64]>::to_vec)
        };
        let keep = self.node.attr_int_or("keepdims", 1)? != 0;
        let noop = self.node.attr_int_or("noop_with_empty_axes", 0)? != 0;
        let r = data.rank();
        let mut reduced = vec![false; r];
        match axes.as_deref() {
            None | Some([]) if noop => return Ok(data.clone()),
            None | Some([]) => reduced.iter_mut().for_each(|x| *x = true),
            Some(axes) => {
                for &a in axes {
                    reduced[self.axis(a, r)?] = true;
                }
            }
        }
        let kept: Vec<usize> = data
            .dims
            .iter()
            .zip(&reduced)
            .map(|(&d, &red)| if red { 1 } else { d })
            .collect();
        let out_n = self.numel(&kept)?;
        let st_out = strides(&kept);
        let target: Vec<usize> = map_indices(&data.dims, data.numel(), |p| {
            p.iter()
                .zip(&reduced)
                .zip(&st_out)
                .map(|((&i, &red), &s)| if red { 0 } else { i * s })
                .sum()
        });
        let count = (data.numel() / out_n.max(1)) as f64;
        let values = match self.num(data)? {
            Num::F(v) => {
                let init = match op {
                    Reduce::Sum | Reduce::Mean => 0.0,
                    Reduce::Prod => 1.0,
                    Reduce::Min => f64::INFINITY,
                    Reduce::Max => f64::NEG_INFINITY,
                };
                let mut acc = vec![init; out_n];
                for (x, &t) in v.iter().zip(&target) {
                    acc[t] = match op {
                        Reduce::Sum | Reduce::Mean => acc[t] + x,
                        Reduce::Prod => acc[t] * x,
                        Reduce::Min => acc[t].min(*x),
                        Reduce::Max => acc[t].max(*x),
                    };
                }
                if matches!(op, Reduce::Mean) {
                    acc.iter_mut().for_each(|a| *a /= count);
                }
                Values::from_f64(data.data_type(), &acc)
            }
            Num::I(v) => {
                let init = match op {
                    Reduce::Sum | Reduce::Mean => 0,
                    Reduce::Prod => 1,
                    Reduce::Min => i64::MAX,
                    Reduce::Max => i64::MIN,
                };
                let mut acc = vec![init; out_n];
                for (&x, &t) in v.iter().zip(&target) {
                    acc[t] = match op {
                        Reduce::Sum | Reduce::Mean => acc[t].wrapping_add(x),
                        Reduce::Prod => acc[t].wrapping_mul(x),
                        Reduce::Min => acc[t].min(x),
                        Reduce::Max => acc[t].max(x),
                    };
                }
                if matches!(op, Reduce::Mean) {
                    acc.iter_mut().for_each(|a| *a = (*a as f64 / count) as i64);
                }
                Values::from_i64(data.data_type(), &acc)
            }
        };
        let dims = if keep {
            kept
        } else {
            data.dims
                .iter()
                .zip(&reduced)
                .filter(|(_, &red)| !red)
                .map(|(&d, _)| d)
                .collect()
        };
        self.values(dims, values)
    }
}

fn scalar<T: Copy>(e: &Eval<'_, '_>, v: &[T]) -> Result<T> {
    match v {
        [x] => Ok(*x),
        _ => Err(e.bad(format!("expects scalars, found {} elements", v.len()))),
    }
}

fn to_f64(n: Num) -> Vec<f64> {
    match n {
        Num::F(v) => v,
        Num::I(v) => v.into_iter().map(|x| x as f64).collect(),
    }
}

/// The clamped first index and end of a Slice along an axis of size `dim`, per the Slice-13
/// spec; `None` for a zero step.
fn slice_range(start: i64, end: i64, step: i64, dim: i64) -> Option<(i128, i128)> {
    if step == 0 {
        return None;
    }
    let (dim, mut s, mut e) = (i128::from(dim), i128::from(start), i128::from(end));
    if s < 0 {
        s += dim;
    }
    if e < 0 {
        e += dim;
    }
    if step > 0 {
        Some((s.clamp(0, dim), e.clamp(0, dim)))
    } else {
        // Written as max-then-min: for an empty axis (dim - 1 = -1) clamp would panic.
        Some((s.max(0).min(dim - 1), e.max(-1).min(dim - 1)))
    }
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Flat row-major index of `pos` in `dims`.
fn flat(pos: &[usize], dims: &[usize]) -> usize {
    pos.iter().zip(dims).fold(0, |acc, (&p, &d)| acc * d + p)
}

/// Flat index in a tensor of shape `dims` broadcast to the output position `pos` (whose rank
/// is at least `dims.len()`).
fn broadcast_index(pos: &[usize], dims: &[usize]) -> usize {
    let off = pos.len() - dims.len();
    pos[off..]
        .iter()
        .zip(dims)
        .fold(0, |acc, (&p, &d)| acc * d + if d == 1 { 0 } else { p })
}

/// `f` of every position of a tensor of shape `dims` with `n` elements, in row-major order.
fn map_indices(dims: &[usize], n: usize, mut f: impl FnMut(&[usize]) -> usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    let mut pos = vec![0usize; dims.len()];
    for _ in 0..n {
        out.push(f(&pos));
        for d in (0..dims.len()).rev() {
            pos[d] += 1;
            if pos[d] < dims[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    out
}
