//! Forward-only inference (`Graph::infer`, what `deepvis examples` runs) gives the values of the
//! training-style forward pass, whose values the parity tests check against PyTorch.

use deepvis_engine::Tensor;
use deepvis_models::{Model, WeightsFrom};

fn input(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::new(shape.to_vec(), data).expect("tensor")
}

#[test]
fn infer_equals_forward() {
    let lite = Model::bundled("efficientnet_lite0").expect("bundled");
    let vgg = Model::build("vgg11", WeightsFrom::Random(3)).expect("vgg11");
    for (model, layers, size) in [
        (&lite, &["_blocks.3", "_blocks.15", "_fc"][..], 64),
        // Max pools run coded in training passes and plainly here.
        (&vgg, &["features.5", "features.20"][..], 48),
    ] {
        let x = input(&[2, 3, size, size]);
        for &l in layers {
            let id = model.layer(l).expect("layer");
            let full = model.graph.forward(x.clone(), id).expect("forward");
            let inferred = model.graph.infer(x.clone(), id).expect("infer");
            assert_eq!(inferred.shape(), full.output().shape(), "{l}");
            assert_eq!(inferred.data(), full.output().data(), "{l}");
        }
    }
}

/// Objectives that are only evaluated (robust scores, start and end values) trace forward only:
/// the same values as the training-style pass, several targets and a channel selection
/// included, and a refusal, not a wrong gradient, if a backward pass is asked of it.
#[test]
fn evaluate_targets_equals_forward_and_refuses_a_gradient() {
    let vgg = Model::build("vgg11", WeightsFrom::Random(5)).expect("vgg11");
    let x = input(&[2, 3, 48, 48]);
    let (a, b) = (
        vgg.layer("features.5").expect("layer"),
        vgg.layer("features.13").expect("layer"),
    );
    let full = vgg
        .graph
        .forward_multi(x.clone(), &[a, b])
        .expect("forward");
    let only = vgg
        .graph
        .evaluate_targets(x.clone(), &[a, b], None)
        .expect("evaluate");
    for id in [a, b] {
        assert_eq!(
            only.value(id).unwrap().data(),
            full.value(id).unwrap().data()
        );
    }
    let channels = [3, 17];
    let full = vgg
        .graph
        .forward_channels(x.clone(), &[b], &channels)
        .expect("forward");
    let only = vgg
        .graph
        .evaluate_targets(x.clone(), &[b], Some(&channels))
        .expect("evaluate");
    assert_eq!(only.output().data(), full.output().data());
    let seed = Tensor::zeros(only.output().shape());
    let err = vgg.graph.backward(&only, seed).unwrap_err().to_string();
    assert!(err.contains("kept nothing for a gradient"), "{err}");
}
