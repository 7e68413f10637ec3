//! Shared by the op test files: seeded tensors and a finite-difference check of any op's input
//! gradient through the `Operator` trait, as the graph calls it.
#![allow(dead_code)]

use deepvis_engine::{Op, Saved, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in [-1, 1).
pub fn random(shape: &[usize], r: &mut ChaCha8Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| r.gen_range(-1.0..1.0)).collect(),
    )
    .unwrap()
}

/// Uniform in ±[0.1, 1): away from the kinks of piecewise ops, where differences are unreliable.
pub fn away_from_zero(shape: &[usize], r: &mut ChaCha8Rng) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            let v: f32 = r.gen_range(0.1..1.0);
            if r.gen_bool(0.5) {
                v
            } else {
                -v
            }
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn forward(op: &Op, inputs: &[Tensor]) -> Tensor {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    op.forward(&refs).expect("forward")
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.data()
        .iter()
        .zip(b.data())
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum()
}

/// The input gradients of `op` at `inputs` for the loss Σ seed·op(inputs), from its backward
/// pass given everything a graph could keep.
pub fn analytic(op: &Op, inputs: &[Tensor], seed: &Tensor) -> Vec<Tensor> {
    let y = forward(op, inputs);
    let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
    let needs = op.backward_needs();
    let saved = Saved::new(
        "op under test",
        shapes,
        inputs.iter().map(|t| needs.inputs.then_some(t)).collect(),
        needs.output.then_some(&y),
    );
    op.backward(&saved, seed.clone()).expect("backward")
}

/// Checks `op`'s backward pass against central differences of Σ seed·op(inputs) with a random
/// seed, at up to `samples` elements of each input (all where fewer), in float32 arithmetic:
/// `tol` is relative to the largest gradient magnitude.
pub fn check_gradient(op: &Op, inputs: &[Tensor], eps: f32, tol: f64, samples: usize) {
    let mut r = rng(99);
    let y = forward(op, inputs);
    let seed = random(y.shape(), &mut r);
    let grads = analytic(op, inputs, &seed);
    assert_eq!(grads.len(), inputs.len(), "{op:?}: one gradient per input");
    for (k, (x, g)) in inputs.iter().zip(&grads).enumerate() {
        assert_eq!(
            g.shape(),
            x.shape(),
            "{op:?}: gradient {k} has its input's shape"
        );
        let scale = g.data().iter().fold(1e-3f64, |m, v| m.max(v.abs() as f64));
        let n = x.numel();
        let picks: Vec<usize> = if n <= samples {
            (0..n).collect()
        } else {
            (0..samples).map(|_| r.gen_range(0..n)).collect()
        };
        for i in picks {
            let mut plus = inputs.to_vec();
            plus[k].data_mut()[i] += eps;
            let mut minus = inputs.to_vec();
            minus[k].data_mut()[i] -= eps;
            let numeric = (dot(&forward(op, &plus), &seed) - dot(&forward(op, &minus), &seed))
                / (2.0 * eps as f64);
            let got = g.data()[i] as f64;
            assert!(
                (numeric - got).abs() <= tol * scale,
                "{op:?}: input {k} element {i}: analytic {got}, numeric {numeric} (scale {scale})"
            );
        }
    }
}
