use crate::EngineError;

/// A dense float32 tensor in row-major order; 4-D tensors are NCHW.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, EngineError> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(EngineError::Shape(format!(
                "shape {shape:?} needs {numel} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    pub fn full(shape: &[usize], value: f32) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![value; shape.iter().product()],
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// (n, c, h, w) of a 4-D tensor.
    pub fn dims4(&self) -> Result<(usize, usize, usize, usize), EngineError> {
        match self.shape[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => Err(EngineError::Shape(format!(
                "expected a 4-D NCHW tensor, got shape {:?}",
                self.shape
            ))),
        }
    }

    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Self, EngineError> {
        let numel: usize = shape.iter().product();
        if numel != self.data.len() {
            return Err(EngineError::Shape(format!(
                "cannot reshape {:?} to {shape:?}",
                self.shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// The `index`-th item along the batch axis, as a tensor with batch 1.
    pub fn batch_item(&self, index: usize) -> Tensor {
        let per = self.numel() / self.shape[0];
        let mut shape = self.shape.clone();
        shape[0] = 1;
        Tensor {
            shape,
            data: self.data[index * per..(index + 1) * per].to_vec(),
        }
    }

    pub fn add_assign(&mut self, other: &Tensor) {
        debug_assert_eq!(self.shape, other.shape);
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += *b;
        }
    }
}
