use crate::gemm::{matmul, MatMut, MatRef};
use crate::op::{numel, single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// y[..., m] = x[..., k] · W + bias: ONNX MatMul with a constant right operand (and the Add of
/// a Gemm-like bias), over the last axis of an input of rank ≥ 2. `weight` is W row-major
/// [k, m]. The receptive field is `Global`, as for `Linear` (on a channel-last activation it
/// is in fact pointwise, but the op cannot tell which layout it is given).
#[derive(Clone, Debug)]
pub struct MatMulConst {
    pub k: usize,
    pub m: usize,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl MatMulConst {
    fn check(&self, s: &[usize]) -> Result<usize, EngineError> {
        if self.weight.len() != self.k * self.m || self.k == 0 || self.m == 0 {
            return Err(EngineError::Shape(format!(
                "matmul weight has {} values, expected k {} × m {}",
                self.weight.len(),
                self.k,
                self.m
            )));
        }
        if let Some(b) = &self.bias {
            if b.len() != self.m {
                return Err(EngineError::Shape(format!(
                    "matmul bias has {} values, expected {}",
                    b.len(),
                    self.m
                )));
            }
        }
        match s {
            [_, .., last] if s.len() >= 2 && *last == self.k => {
                Ok(s.iter().product::<usize>() / self.k)
            }
            _ => Err(EngineError::Shape(format!(
                "matmul expects [N, ..., {}], got {s:?}",
                self.k
            ))),
        }
    }
}

impl Operator for MatMulConst {
    fn describe(&self) -> String {
        format!("MatMul {}→{}", self.k, self.m)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let s = single("matmul", inputs)?;
        self.check(s)?;
        let mut out = s.to_vec();
        if let Some(last) = out.last_mut() {
            *last = self.m;
        }
        Ok(out)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("matmul", inputs)?;
        let rows = self.check(x.shape())?;
        let out = self.output_shape(&[x.shape()])?;
        let (k, m) = (self.k, self.m);
        // The GEMM overwrites every element (no accumulation).
        let mut y = Tensor::for_overwrite(&out);
        // SAFETY: x is [rows, k], W is [k, m] and y is [rows, m], all owned and distinct.
        unsafe {
            matmul(
                rows,
                m,
                k,
                MatMut {
                    ptr: y.data_mut().as_mut_ptr(),
                    rs: m as isize,
                    cs: 1,
                },
                false,
                MatRef {
                    ptr: x.data().as_ptr(),
                    rs: k as isize,
                    cs: 1,
                },
                MatRef {
                    ptr: self.weight.as_ptr(),
                    rs: m as isize,
                    cs: 1,
                },
                gemm::Parallelism::Rayon(0),
            )
        };
        if let Some(b) = &self.bias {
            use rayon::prelude::*;
            y.data_mut().par_chunks_mut(m * 256).for_each(|c| {
                c.chunks_mut(m)
                    .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b))
            });
        }
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let input = saved.input_shape(0);
        let rows = self.check(input)?;
        let out = self.output_shape(&[input])?;
        if grad.shape() != out {
            return Err(EngineError::Shape(format!(
                "matmul output gradient has shape {:?}, expected {out:?}",
                grad.shape()
            )));
        }
        let (k, m) = (self.k, self.m);
        let mut dx = Tensor::for_overwrite(input);
        // dx = grad · Wᵀ: Wᵀ is W read with swapped strides.
        // SAFETY: grad is [rows, m], Wᵀ is [m, k] and dx is [rows, k], owned and distinct.
        unsafe {
            matmul(
                rows,
                k,
                m,
                MatMut {
                    ptr: dx.data_mut().as_mut_ptr(),
                    rs: k as isize,
                    cs: 1,
                },
                false,
                MatRef {
                    ptr: grad.data().as_ptr(),
                    rs: m as isize,
                    cs: 1,
                },
                MatRef {
                    ptr: self.weight.as_ptr(),
                    rs: 1,
                    cs: m as isize,
                },
                gemm::Parallelism::Rayon(0),
            )
        };
        Ok(vec![dx])
    }

    fn receptive_field(&self) -> Field {
        Field::Global
    }

    fn flops(&self, _inputs: &[&[usize]], output: &[usize]) -> u64 {
        2 * numel(output) * self.k as u64
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
