use super::strided::{gather, strides};
use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use rayon::prelude::*;
use std::any::Any;

/// Output axis i is input axis `perm[i]`; the batch axis stays first (`perm[0] == 0`). The
/// receptive field is `Pointwise`: the channel-last layouts (ConvNeXt's, ViT's) move the
/// channel axis but keep each spatial position's values together.
#[derive(Clone, Debug)]
pub struct Transpose {
    pub perm: Vec<usize>,
}

/// Side of the square tiles of the blocked 2-D transpose: a tile's rows and columns both stay
/// in L1.
const TILE: usize = 32;

impl Transpose {
    fn check(&self, s: &[usize]) -> Result<(), EngineError> {
        let mut seen = vec![false; s.len()];
        let valid = self.perm.len() == s.len()
            && self.perm.first() == Some(&0)
            && self
                .perm
                .iter()
                .all(|&p| p < s.len() && !std::mem::replace(&mut seen[p], true));
        if valid {
            Ok(())
        } else {
            Err(EngineError::Shape(format!(
                "transpose perm {:?} is not a batch-first permutation of input {s:?}",
                self.perm
            )))
        }
    }

    /// Where the permutation is a rotation of the non-batch axes ([0, k, …, r-1, 1, …, k-1],
    /// as NCHW→NHWC [0,2,3,1] and back [0,3,1,2]), each batch item is a 2-D transpose of
    /// [A, B] with A the product of input dims 1..k and B of dims k..r: their (A, B).
    fn rotation(&self, s: &[usize]) -> Option<(usize, usize)> {
        let r = s.len();
        let k = *self.perm.get(1)?;
        let rotated = k > 1 && (1..r).all(|i| self.perm[i] == (k + i - 2) % (r - 1) + 1);
        rotated.then(|| (s[1..k].iter().product(), s[k..].iter().product()))
    }

    fn permute(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let s = x.shape();
        self.check(s)?;
        let out: Vec<usize> = self.perm.iter().map(|&p| s[p]).collect();
        let mut y = Tensor::for_overwrite(&out);
        if let Some((a, b)) = self.rotation(s) {
            transpose2d(x.data(), y.data_mut(), a, b);
        } else {
            let st = strides(s);
            let st: Vec<isize> = self.perm.iter().map(|&p| st[p] as isize).collect();
            gather(&out, x.data(), 0, &st, y.data_mut());
        }
        Ok(y)
    }

    fn inverse(&self) -> Transpose {
        let mut inv = vec![0; self.perm.len()];
        for (i, &p) in self.perm.iter().enumerate() {
            inv[p] = i;
        }
        Transpose { perm: inv }
    }
}

/// Each consecutive [a, b] matrix of `src` into a [b, a] matrix of `dst`, in tiles, parallel
/// over tile rows of the output.
fn transpose2d(src: &[f32], dst: &mut [f32], a: usize, b: usize) {
    let item = a * b;
    if item == 0 {
        return;
    }
    dst.par_chunks_mut(item)
        .zip(src.par_chunks(item))
        .for_each(|(d, s)| {
            d.par_chunks_mut(TILE * a)
                .enumerate()
                .for_each(|(t, rows)| {
                    let j0 = t * TILE;
                    let nj = rows.len() / a;
                    for i0 in (0..a).step_by(TILE) {
                        let i1 = (i0 + TILE).min(a);
                        for jj in 0..nj {
                            let row = &mut rows[jj * a..(jj + 1) * a];
                            for i in i0..i1 {
                                row[i] = s[i * b + j0 + jj];
                            }
                        }
                    }
                });
        });
}

impl Operator for Transpose {
    fn describe(&self) -> String {
        format!("Transpose {:?}", self.perm)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let s = single("transpose", inputs)?;
        self.check(s)?;
        Ok(self.perm.iter().map(|&p| s[p]).collect())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        self.permute(single("transpose", inputs)?)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let out = self.output_shape(&[saved.input_shape(0)])?;
        if grad.shape() != out {
            return Err(EngineError::Shape(format!(
                "transpose output gradient has shape {:?}, expected {out:?}",
                grad.shape()
            )));
        }
        Ok(vec![self.inverse().permute(&grad)?])
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
