use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use std::any::Any;

/// One output dim of a [`Reshape`]: ONNX's 0 (`Keep`: the input's dim at the same index),
/// a positive size, or -1 (`Infer`: whatever makes the element counts agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReshapeDim {
    Keep,
    Fixed(usize),
    Infer,
}

/// A new shape over the same values (row-major). The batch axis is always `Keep`, since the
/// renderer's batch is not the exported one; spatial dims are best `Keep` or `Infer` too, as
/// the input size changes from step to step. The receptive field is `Global`: a reshape may
/// move values between positions, and which ones it keeps in place is not known statically.
#[derive(Clone, Debug)]
pub struct Reshape {
    pub dims: Vec<ReshapeDim>,
}

impl Operator for Reshape {
    fn describe(&self) -> String {
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| match d {
                ReshapeDim::Keep => "0".into(),
                ReshapeDim::Fixed(n) => n.to_string(),
                ReshapeDim::Infer => "-1".into(),
            })
            .collect();
        format!("Reshape [{}]", dims.join(", "))
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let s = single("reshape", inputs)?;
        let fail =
            |why: &str| EngineError::Shape(format!("reshape of {s:?} to {:?}: {why}", self.dims));
        if self.dims.first() != Some(&ReshapeDim::Keep) {
            return Err(fail("the batch axis must be kept"));
        }
        let mut out = Vec::with_capacity(self.dims.len());
        let mut infer = None;
        for (i, d) in self.dims.iter().enumerate() {
            out.push(match *d {
                ReshapeDim::Keep => *s
                    .get(i)
                    .ok_or_else(|| fail("keeps a dim the input lacks"))?,
                ReshapeDim::Fixed(0) => return Err(fail("a fixed dim of 0")),
                ReshapeDim::Fixed(n) => n,
                ReshapeDim::Infer => {
                    if infer.replace(i).is_some() {
                        return Err(fail("more than one inferred dim"));
                    }
                    1
                }
            });
        }
        let total: usize = s.iter().product();
        let known: usize = out.iter().product();
        if let Some(i) = infer {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(fail("no inferred size fits the element count"));
            }
            out[i] = total / known;
        } else if known != total {
            return Err(fail("element counts differ"));
        }
        Ok(out)
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("reshape", inputs)?;
        let shape = self.output_shape(&[x.shape()])?;
        x.clone().reshape(shape)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        Ok(vec![grad.reshape(saved.input_shape(0).to_vec())?])
    }

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
