//! Element-wise and dense layers: per-channel affine (eval-mode batch norm), ReLU, ReLU6, linear.

use crate::gemm::{matmul, MatMut, MatRef};
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

    fn check(&self, s: &[usize]) -> Result<(usize, usize), EngineError> {
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
        y.data_mut()
            .par_chunks_mut(plane)
            .zip(x.data().par_chunks(plane))
            .enumerate()
            .for_each(|(i, (p, s))| {
                let (a, b) = (self.scale[i % c], self.shift[i % c]);
                p.iter_mut().zip(s).for_each(|(v, x)| *v = *x * a + b);
            });
        Ok(y)
    }

    pub fn backward(&self, grad_out: &Tensor) -> Result<Tensor, EngineError> {
        let (c, plane) = self.check(grad_out.shape())?;
        let mut dx = Tensor::for_overwrite(grad_out.shape());
        dx.data_mut()
            .par_chunks_mut(plane)
            .zip(grad_out.data().par_chunks(plane))
            .enumerate()
            .for_each(|(i, (p, g))| {
                let a = self.scale[i % c];
                p.iter_mut().zip(g).for_each(|(v, g)| *v = *g * a);
            });
        Ok(dx)
    }
}

const CHUNK: usize = 1 << 14;

/// out[i] = f(a[i], b[i]) over equal-length slices, in parallel chunks, into a fresh tensor.
fn map2(shape: &[usize], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Tensor {
    let mut out = Tensor::for_overwrite(shape);
    out.data_mut()
        .par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .zip(b.par_chunks(CHUNK))
        .for_each(|((o, a), b)| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = f(*a, *b);
            }
        });
    out
}

pub fn relu(x: &Tensor) -> Tensor {
    map2(x.shape(), x.data(), x.data(), |v, _| v.max(0.0))
}

/// PyTorch's threshold_backward: the gradient passes where the output is positive.
pub fn relu_backward(output: &Tensor, grad_out: &Tensor) -> Tensor {
    debug_assert_eq!(output.shape(), grad_out.shape());
    map2(grad_out.shape(), grad_out.data(), output.data(), |g, y| {
        if y <= 0.0 {
            0.0
        } else {
            g
        }
    })
}

pub fn relu6(x: &Tensor) -> Tensor {
    map2(x.shape(), x.data(), x.data(), |v, _| v.clamp(0.0, 6.0))
}

/// PyTorch's hardtanh_backward: the gradient passes where 0 < x < 6 strictly.
pub fn relu6_backward(input: &Tensor, grad_out: &Tensor) -> Tensor {
    debug_assert_eq!(input.shape(), grad_out.shape());
    map2(grad_out.shape(), grad_out.data(), input.data(), |g, x| {
        if x > 0.0 && x < 6.0 {
            g
        } else {
            0.0
        }
    })
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
