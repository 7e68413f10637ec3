//! Element-wise and dense layers: per-channel affine (eval-mode batch norm), ReLU, ReLU6, linear.

use crate::gemm::{matmul, MatMut, MatRef};
use crate::op::Activation;
use crate::ops::exp;
use crate::simd::simd_fn;
use crate::{EngineError, Tensor};
use rayon::prelude::*;

/// y = x·scale[c] + shift[c] per channel: batch norm in eval mode, folded once at load time.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelAffine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl ChannelAffine {
    /// Eval-mode BatchNorm2d from its parameters and running statistics.
    pub fn from_batch_norm(
        weight: &[f32],
        bias: &[f32],
        mean: &[f32],
        var: &[f32],
        eps: f32,
    ) -> Self {
        let scale: Vec<f32> = weight
            .iter()
            .zip(var)
            .map(|(w, v)| w / (v + eps).sqrt())
            .collect();
        let shift = bias
            .iter()
            .zip(mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        ChannelAffine { scale, shift }
    }

    pub(crate) fn check(&self, s: &[usize]) -> Result<(usize, usize), EngineError> {
        if s.len() < 2 || s[1] != self.scale.len() {
            return Err(EngineError::Shape(format!(
                "batch norm over {} channels got input {s:?}",
                self.scale.len()
            )));
        }
        Ok((s[1], s[2..].iter().product()))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let (c, plane) = self.check(x.shape())?;
        let mut y = Tensor::for_overwrite(x.shape());
        per_plane(y.data_mut(), x.data(), plane, |i, out, src| {
            let (a, b) = (self.scale[i % c], self.shift[i % c]);
            map1(out, src, |x| x * a + b);
        });
        Ok(y)
    }

    /// `backward` into the gradient itself.
    pub fn backward_in_place(&self, grad: &mut Tensor) -> Result<(), EngineError> {
        let (c, plane) = self.check(grad.shape())?;
        per_plane_in_place(grad.data_mut(), plane, |i, g| {
            let a = self.scale[i % c];
            map_inplace(g, |g| g * a);
        });
        Ok(())
    }

    pub fn backward(&self, grad_out: &Tensor) -> Result<Tensor, EngineError> {
        let (c, plane) = self.check(grad_out.shape())?;
        let mut dx = Tensor::for_overwrite(grad_out.shape());
        per_plane(dx.data_mut(), grad_out.data(), plane, |i, out, g| {
            let a = self.scale[i % c];
            map1(out, g, |g| g * a);
        });
        Ok(dx)
    }
}

const CHUNK: usize = 1 << 14;

/// `f(plane index, out plane, src plane)` over whole planes, several per rayon task: one task
/// per 7×7 plane would cost more in hand-offs than the arithmetic.
fn per_plane(
    out: &mut [f32],
    src: &[f32],
    plane: usize,
    f: impl Fn(usize, &mut [f32], &[f32]) + Sync,
) {
    let plane = plane.max(1);
    let per = CHUNK.div_ceil(plane);
    out.par_chunks_mut(per * plane)
        .zip(src.par_chunks(per * plane))
        .enumerate()
        .for_each(|(t, (o, s))| {
            for (i, (o, s)) in o.chunks_mut(plane).zip(s.chunks(plane)).enumerate() {
                f(t * per + i, o, s);
            }
        });
}

/// `f(plane index, plane)` over whole planes of `data`, several per rayon task (as `per_plane`).
fn per_plane_in_place(data: &mut [f32], plane: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let plane = plane.max(1);
    let per = CHUNK.div_ceil(plane);
    data.par_chunks_mut(per * plane)
        .enumerate()
        .for_each(|(t, d)| {
            for (i, d) in d.chunks_mut(plane).enumerate() {
                f(t * per + i, d);
            }
        });
}

#[inline(always)]
fn map2_generic(o: &mut [f32], a: &[f32], b: &[f32], f: &impl Fn(f32, f32) -> f32) {
    for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
        *o = f(*a, *b);
    }
}

// The default target has only SSE2: at 4 lanes these loops are bound by instructions rather
// than by memory.
simd_fn!(
    /// o[i] = f(a[i], b[i]), vectorized as wide as the CPU allows.
    fn map2_slices = map2_generic(o: &mut [f32], a: &[f32], b: &[f32], f: &impl Fn(f32, f32) -> f32)
);

#[inline(always)]
fn map1(o: &mut [f32], a: &[f32], f: impl Fn(f32) -> f32) {
    map2_slices(o, a, a, &|x, _| f(x))
}

/// The activation a convolution applies where it adds its bias (`Operator::fuses`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Clamp {
    #[default]
    None,
    /// max(v, 0), as the ReLU op (NaN becomes 0).
    Relu,
    /// clamp(v, 0, 6), as the ReLU6 op (NaN stays NaN).
    Relu6,
}

impl Clamp {
    pub fn of(act: Activation) -> Option<Clamp> {
        match act {
            Activation::Relu => Some(Clamp::Relu),
            Activation::Relu6 => Some(Clamp::Relu6),
            Activation::Silu => None,
        }
    }
}

/// y += bias[channel] over [.., channels, plane] data, then `clamp`, in one pass.
pub(crate) fn bias_act(
    y: &mut [f32],
    plane: usize,
    channels: usize,
    bias: Option<&[f32]>,
    clamp: Clamp,
) {
    let plane = plane.max(1);
    let per = CHUNK.div_ceil(plane);
    y.par_chunks_mut(per * plane)
        .enumerate()
        .for_each(|(t, o)| {
            for (i, p) in o.chunks_mut(plane).enumerate() {
                bias_act_row(p, bias.map_or(0.0, |b| b[(t * per + i) % channels]), clamp);
            }
        });
}

/// v + b, then `clamp`, over one row, vectorized as wide as the CPU allows.
pub(crate) fn bias_act_row(p: &mut [f32], b: f32, clamp: Clamp) {
    match clamp {
        Clamp::None => map_inplace(p, |v| v + b),
        Clamp::Relu => map_inplace(p, |v| (v + b).max(0.0)),
        Clamp::Relu6 => map_inplace(p, |v| (v + b).clamp(0.0, 6.0)),
    }
}

#[inline(always)]
fn map_inplace_generic(o: &mut [f32], f: &impl Fn(f32) -> f32) {
    for v in o.iter_mut() {
        *v = f(*v);
    }
}

simd_fn!(fn map_inplace_simd = map_inplace_generic(o: &mut [f32], f: &impl Fn(f32) -> f32));

#[inline(always)]
fn map_inplace(o: &mut [f32], f: impl Fn(f32) -> f32) {
    map_inplace_simd(o, &f)
}

/// act(x·scale[c] + shift[c]) in one pass: batch norm and the ReLU, ReLU6 or SiLU after it.
/// Each value is computed by the same operations, in the same order, as the two ops apart.
pub(crate) fn affine_act(
    a: &ChannelAffine,
    x: &Tensor,
    act: Activation,
) -> Result<Tensor, EngineError> {
    let (c, plane) = a.check(x.shape())?;
    let mut y = Tensor::for_overwrite(x.shape());
    per_plane(y.data_mut(), x.data(), plane, |i, out, src| {
        let (s, b) = (a.scale[i % c], a.shift[i % c]);
        match act {
            Activation::Relu => map1(out, src, |x| (x * s + b).max(0.0)),
            Activation::Relu6 => map1(out, src, |x| (x * s + b).clamp(0.0, 6.0)),
            Activation::Silu => map1(out, src, |x| {
                let t = x * s + b;
                t / (1.0 + exp(-t))
            }),
        }
    });
    Ok(y)
}

/// The input gradient of `affine_act` from `kept`: for a ReLU or ReLU6 the pair's output y
/// (a ReLU passes the gradient where y > 0, as PyTorch's does, from its output; a ReLU6 where
/// 0 < y < 6, which is where its input lay strictly inside (0, 6)); for a SiLU, whose
/// derivative needs its input, the batch norm's input x (`Activation::needs_input`).
pub(crate) fn affine_act_backward_in_place(
    a: &ChannelAffine,
    kept: &Tensor,
    grad: &mut Tensor,
    act: Activation,
) -> Result<(), EngineError> {
    let (c, plane) = a.check(grad.shape())?;
    let kept = kept.data();
    per_plane_in_place(grad.data_mut(), plane, |i, g| {
        let (s, b) = (a.scale[i % c], a.shift[i % c]);
        let v = &kept[i * plane..][..plane];
        match act {
            Activation::Relu => zip_in_place_slices(g, v, &|g, y| relu_grad(g * s, y)),
            Activation::Relu6 => zip_in_place_slices(g, v, &|g, y| relu6_grad(g * s, y)),
            // SiLU's backward, then the batch norm's: the same operations as the ops apart.
            Activation::Silu => zip_in_place_slices(g, v, &|g, x| {
                let t = x * s + b;
                let sg = 1.0 / (1.0 + exp(-t));
                (g * sg * (1.0 + t * (1.0 - sg))) * s
            }),
        }
    });
    Ok(())
}

#[inline(always)]
fn zip_in_place_generic(o: &mut [f32], b: &[f32], f: &impl Fn(f32, f32) -> f32) {
    for (o, b) in o.iter_mut().zip(b) {
        *o = f(*o, *b);
    }
}

simd_fn!(
    /// o[i] = f(o[i], b[i]), vectorized as wide as the CPU allows.
    fn zip_in_place_slices = zip_in_place_generic(o: &mut [f32], b: &[f32], f: &impl Fn(f32, f32) -> f32)
);

/// a[i] = f(a[i], b[i]) in parallel chunks. The backward passes overwrite the gradient they
/// own: writing a fresh tensor instead costs a third stream of memory traffic (its cache lines
/// are read before they are written).
fn zip_in_place(a: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    a.par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .for_each(|(a, b)| zip_in_place_slices(a, b, &f));
}

/// `relu_backward` into the gradient itself.
pub fn relu_backward_in_place(output: &Tensor, grad: &mut Tensor) {
    debug_assert_eq!(output.shape(), grad.shape());
    zip_in_place(grad.data_mut(), output.data(), relu_grad);
}

/// `relu6_backward` into the gradient itself.
pub fn relu6_backward_in_place(input: &Tensor, grad: &mut Tensor) {
    debug_assert_eq!(input.shape(), grad.shape());
    zip_in_place(grad.data_mut(), input.data(), relu6_grad);
}

/// out[i] = f(a[i], b[i]) over equal-length slices, in parallel chunks, into a fresh tensor.
fn map2(shape: &[usize], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Tensor {
    let mut out = Tensor::for_overwrite(shape);
    out.data_mut()
        .par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .zip(b.par_chunks(CHUNK))
        .for_each(|((o, a), b)| map2_slices(o, a, b, &f));
    out
}

#[inline(always)]
fn relu_backward_twice_generic(g: &mut [f32], copy: &mut [f32], y: &[f32]) {
    for ((g, c), y) in g.iter_mut().zip(copy.iter_mut()).zip(y) {
        let v = relu_grad(*g, *y);
        *g = v;
        *c = v;
    }
}

simd_fn!(fn relu_backward_twice_simd = relu_backward_twice_generic(g: &mut [f32], copy: &mut [f32], y: &[f32]));

/// `relu_backward_in_place`, also writing the result to a second tensor in the same pass: the
/// gradient of a residual sum + ReLU goes to both summands, and a copy made afterwards read it
/// all again.
pub(crate) fn relu_backward_in_place_and_copy(y: &Tensor, grad: &mut Tensor) -> Tensor {
    debug_assert_eq!(y.shape(), grad.shape());
    let mut copy = Tensor::for_overwrite(grad.shape());
    grad.data_mut()
        .par_chunks_mut(CHUNK)
        .zip(copy.data_mut().par_chunks_mut(CHUNK))
        .zip(y.data().par_chunks(CHUNK))
        .for_each(|((g, c), y)| relu_backward_twice_simd(g, c, y));
    copy
}

/// a + b, and with `relu` max(a + b, 0) (a residual sum and the ReLU after it), in one pass.
pub(crate) fn add_pair(a: &Tensor, b: &Tensor, relu: bool) -> Tensor {
    debug_assert_eq!(a.shape(), b.shape());
    if relu {
        map2(a.shape(), a.data(), b.data(), |a, b| (a + b).max(0.0))
    } else {
        map2(a.shape(), a.data(), b.data(), |a, b| a + b)
    }
}

pub fn relu(x: &Tensor) -> Tensor {
    map2(x.shape(), x.data(), x.data(), |v, _| v.max(0.0))
}

/// PyTorch's threshold_backward: the gradient passes where the output is positive.
pub fn relu_backward(output: &Tensor, grad_out: &Tensor) -> Tensor {
    debug_assert_eq!(output.shape(), grad_out.shape());
    map2(grad_out.shape(), grad_out.data(), output.data(), relu_grad)
}

/// The gradient `g` through a ReLU whose output is `y`.
#[inline(always)]
fn relu_grad(g: f32, y: f32) -> f32 {
    if y <= 0.0 {
        0.0
    } else {
        g
    }
}

/// The gradient `g` through a ReLU6 at `x` (its input, or its output: both lie strictly
/// inside (0, 6) at the same places).
#[inline(always)]
fn relu6_grad(g: f32, x: f32) -> f32 {
    if x > 0.0 && x < 6.0 {
        g
    } else {
        0.0
    }
}

pub fn relu6(x: &Tensor) -> Tensor {
    map2(x.shape(), x.data(), x.data(), |v, _| v.clamp(0.0, 6.0))
}

/// PyTorch's hardtanh_backward: the gradient passes where 0 < x < 6 strictly.
pub fn relu6_backward(input: &Tensor, grad_out: &Tensor) -> Tensor {
    debug_assert_eq!(input.shape(), grad_out.shape());
    map2(grad_out.shape(), grad_out.data(), input.data(), relu6_grad)
}

/// y = x·Wᵀ + b over the last axis; input [N, in], weight [out, in] (PyTorch's layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    fn rows(&self, s: &[usize]) -> Result<usize, EngineError> {
        match s {
            [n, f] if *f == self.in_features => Ok(*n),
            _ => Err(EngineError::Shape(format!(
                "linear layer expects [N, {}], got {s:?}",
                self.in_features
            ))),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let n = self.rows(x.shape())?;
        let mut y = Tensor::zeros(&[n, self.out_features]);
        let (i, o) = (self.in_features, self.out_features);
        // SAFETY: all three matrices are owned slices of exactly these sizes.
        unsafe {
            matmul(
                n,
                o,
                i,
                MatMut {
                    ptr: y.data_mut().as_mut_ptr(),
                    rs: o as isize,
                    cs: 1,
                },
                false,
                MatRef {
                    ptr: x.data().as_ptr(),
                    rs: i as isize,
                    cs: 1,
                },
                MatRef {
                    ptr: self.weight.as_ptr(),
                    rs: 1,
                    cs: i as isize,
                },
                gemm::Parallelism::Rayon(0),
            )
        };
        if let Some(b) = &self.bias {
            y.data_mut()
                .chunks_mut(o)
                .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        }
        Ok(y)
    }

    pub fn backward(&self, grad_out: &Tensor) -> Result<Tensor, EngineError> {
        let (i, o) = (self.in_features, self.out_features);
        let n = match grad_out.shape() {
            [n, f] if *f == o => *n,
            s => {
                return Err(EngineError::Shape(format!(
                    "linear output gradient {s:?} is not [N, {o}]"
                )))
            }
        };
        let mut dx = Tensor::zeros(&[n, i]);
        // SAFETY: as in `forward`.
        unsafe {
            matmul(
                n,
                i,
                o,
                MatMut {
                    ptr: dx.data_mut().as_mut_ptr(),
                    rs: i as isize,
                    cs: 1,
                },
                false,
                MatRef {
                    ptr: grad_out.data().as_ptr(),
                    rs: o as isize,
                    cs: 1,
                },
                MatRef {
                    ptr: self.weight.as_ptr(),
                    rs: i as isize,
                    cs: 1,
                },
                gemm::Parallelism::Rayon(0),
            )
        };
        Ok(dx)
    }
}
