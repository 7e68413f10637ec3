//! Native zoo architectures against torchvision (`scripts/zoo_fixtures.py`, `testdata/zoo/`):
//! seeded random `features` weights, what forward hooks return at several module paths, and
//! input gradients of channel means.

mod common;

use common::{check_formula, check_module_names, check_zoo_model};
use deepvis_engine::{Conv2d, Linear};
use deepvis_models::weights;
use deepvis_models::{Model, WeightsFrom};
use std::path::PathBuf;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/zoo")
        .join(name)
}

/// A model whose fixture holds its `features` weights (SqueezeNet), against its references.
fn check(name: &str) {
    let path = testdata(&format!("{name}.features.safetensors"));
    let dict = weights::load(&path).unwrap();
    let model = Model::build(name, WeightsFrom::Dict(dict, "fixture")).unwrap();
    assert!(!model.has_head, "the fixture holds the features only");
    check_zoo_model(name, &model);
}

#[test]
fn squeezenet1_1_matches_torchvision() {
    check("squeezenet1_1");
}

#[test]
fn squeezenet1_0_matches_torchvision() {
    check("squeezenet1_0");
}

#[test]
fn the_bare_index_of_a_fire_module_is_the_module_and_errors_count_direct_children() {
    let model = Model::build("squeezenet1_1", WeightsFrom::Random(0)).unwrap();
    let id = model.layer("6").unwrap();
    assert_eq!(model.graph.nodes()[id].name, "features.6");
    let err = model.layer("13").unwrap_err().to_string();
    assert!(err.contains("layers 0..12"), "{err}");
}

/// The formula weights as Rust computes them equal, bit for bit, what the script computed
/// (a convolution's weight and a linear layer's bias, read back from the built graph).
#[test]
fn formula_weights_are_what_the_fixture_script_computes() {
    let refs = weights::load(&testdata("resnet18.ref.safetensors")).unwrap();
    let model = Model::build("resnet18", WeightsFrom::Formula(0)).unwrap();
    let op = |name: &str| &model.graph.nodes()[model.layer(name).unwrap()].op;
    let conv = op("conv1").downcast_ref::<Conv2d>().unwrap();
    assert_eq!(conv.weight, refs.get("formula.conv1.weight").unwrap().data);
    let fc = op("fc").downcast_ref::<Linear>().unwrap();
    assert_eq!(
        fc.bias.as_deref(),
        Some(&refs.get("formula.fc.bias").unwrap().data[..])
    );
}

#[test]
fn resnet18_matches_torchvision() {
    check_formula("resnet18");
}

#[test]
fn resnet50_matches_torchvision() {
    check_formula("resnet50");
}

#[test]
fn resnet18_module_paths_are_layers() {
    check_module_names("resnet18", &[]);
}

#[test]
fn mobilenet_v3_small_module_paths_are_layers() {
    check_module_names("mobilenet_v3_small", &[]);
}

#[test]
fn mobilenet_v2_matches_torchvision() {
    check_formula("mobilenet_v2");
}

#[test]
fn mobilenet_v3_small_matches_torchvision() {
    check_formula("mobilenet_v3_small");
}

#[test]
fn mobilenet_v3_large_matches_torchvision() {
    check_formula("mobilenet_v3_large");
}

/// The ResNets without a fixture (their structure is resnet18's and resnet50's) build, with
/// their head and a node per relu call (two in a basic block, three in a bottleneck).
#[test]
fn the_resnets_without_a_fixture_build_with_their_head() {
    for (name, calls) in [
        ("resnet34", 2),
        ("resnet101", 3),
        ("resnet152", 3),
        ("wide_resnet50_2", 3),
    ] {
        let model = Model::build(name, WeightsFrom::Random(0)).unwrap();
        assert!(model.has_head);
        assert_eq!(
            model.channels(model.layer("fc").unwrap(), 64).unwrap(),
            1000,
            "{name}"
        );
        let last = model
            .layer(&format!("layer4.2.relu#{}", calls - 1))
            .unwrap();
        assert_eq!(model.layer("layer4.2.relu").unwrap(), last, "{name}");
        assert!(
            model.layer(&format!("layer4.2.relu#{calls}")).is_err(),
            "{name}"
        );
    }
}

#[test]
fn resnext50_32x4d_matches_torchvision() {
    check_formula("resnext50_32x4d");
}

/// `deepvis models` reports sizes from the architectures themselves: torchvision's parameter
/// counts for models without batch-norm buffers.
#[test]
fn parameter_counts_are_torchvisions() {
    assert_eq!(Model::parameter_count("vgg16").unwrap(), 138_357_544);
    assert_eq!(Model::parameter_count("squeezenet1_1").unwrap(), 1_235_496);
    assert_eq!(Model::parameter_count("alexnet").unwrap(), 61_100_840);
}
