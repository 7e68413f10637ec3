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
