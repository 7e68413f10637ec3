//! Shared by the parity tests: fixture tensors and the error measure.
#![allow(dead_code)]

use deepvis_engine::Tensor;
use deepvis_models::weights::StateDict;

pub fn tensor(dict: &StateDict, key: &str) -> Tensor {
    let t = dict
        .get(key)
        .unwrap_or_else(|| panic!("fixture lacks {key}"));
    Tensor::new(t.shape.clone(), t.data.clone()).unwrap()
}

/// Largest absolute difference relative to the largest reference magnitude.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let scale = want.data().iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = got
        .data()
        .iter()
        .zip(want.data())
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale.max(1e-12)
}

/// The input gradient of the mean of channel `c` of `layer`, through the graph.
pub fn channel_mean_grad(
    model: &deepvis_models::Model,
    x: &Tensor,
    layer: usize,
    c: usize,
) -> Tensor {
    let trace = model.graph.forward(x.clone(), layer).unwrap();
    let shape = trace.output().shape().to_vec();
    let plane: usize = shape[2..].iter().product();
    let mut seed = Tensor::zeros(&shape);
    seed.data_mut()[c * plane..(c + 1) * plane].fill(1.0 / plane as f32);
    model.graph.backward(&trace, seed).unwrap()
}
