//! EfficientNet-B0, ConvNeXt-Tiny and ShuffleNetV2 x1.0 against torchvision with formula
//! weights (`scripts/zoo_fixtures_effnet_convnext_shufflenet.py`, `testdata/zoo/`): forward-hook
//! outputs, input gradients of channel means, and every hooked module path resolving.

mod common;

use common::{check_formula, check_module_names};
use deepvis_models::{Model, WeightsFrom};

#[test]
fn efficientnet_b0_matches_torchvision() {
    check_formula("efficientnet_b0");
}

#[test]
fn efficientnet_b0_names_every_module() {
    // Blocks without a residual connection (each stage's first) never call stochastic_depth.
    let never: Vec<String> = (1..=7)
        .map(|s| format!("features.{s}.0.stochastic_depth"))
        .collect();
    let never: Vec<&str> = never.iter().map(String::as_str).collect();
    check_module_names("efficientnet_b0", &never);
}

#[test]
fn convnext_tiny_matches_torchvision() {
    check_formula("convnext_tiny");
}

#[test]
fn convnext_tiny_names_every_module() {
    check_module_names("convnext_tiny", &[]);
    let model = Model::build("convnext_tiny", WeightsFrom::Formula(0)).unwrap();
    model.layer("features.3.1.layer_scale").unwrap();
}

#[test]
fn shufflenet_v2_x1_0_matches_torchvision() {
    check_formula("shufflenet_v2_x1_0");
}

#[test]
fn shufflenet_v2_x1_0_names_every_module() {
    // Stride-1 blocks hold an empty `branch1` they never call.
    let mut never = Vec::new();
    for (stage, blocks) in [(2, 4), (3, 8), (4, 4)] {
        for i in 1..blocks {
            never.push(format!("stage{stage}.{i}.branch1"));
        }
    }
    let never: Vec<&str> = never.iter().map(String::as_str).collect();
    check_module_names("shufflenet_v2_x1_0", &never);
    let model = Model::build("shufflenet_v2_x1_0", WeightsFrom::Formula(0)).unwrap();
    for name in ["stage2.1.x1", "stage2.1.x2", "stage2.1.cat", "mean"] {
        model.layer(name).unwrap();
    }
}

/// The render changes the image size every step: the shuffle and the chunking work at any.
#[test]
fn shufflenet_v2_x1_0_runs_at_odd_sizes() {
    let model = Model::build("shufflenet_v2_x1_0", WeightsFrom::Random(0)).unwrap();
    for (h, w) in [(37, 53), (64, 64)] {
        let layers = model.layers_at((h, w)).unwrap();
        assert_eq!(layers.last().unwrap().shape, vec![1, 1000]);
    }
}

/// The formula weights as Rust computes them equal, bit for bit, what the script stored —
/// including ConvNeXt's `layer_scale` (the formula's weight kind, fan-in 1) and a LayerNorm's
/// weight (the batch-norm-weight kind).
#[test]
fn formula_keys_match_the_fixture_script() {
    use deepvis_engine::{BinaryConst, Conv2d, LayerNorm, Linear};
    let check =
        |name: &str, key: &str, node: &str, get: &dyn Fn(&deepvis_engine::Op) -> Vec<f32>| {
            let refs = deepvis_models::weights::load(&common::zoo_testdata(&format!(
                "{name}.ref.safetensors"
            )))
            .unwrap();
            let model = Model::build(name, WeightsFrom::Formula(0)).unwrap();
            let op = &model.graph.nodes()[model.layer(node).unwrap()].op;
            assert_eq!(
                get(op),
                refs.get(&format!("formula.{key}")).unwrap().data,
                "{name} {key}"
            );
        };
    check(
        "efficientnet_b0",
        "features.1.0.block.1.fc1.weight",
        "features.1.0.block.1.fc1",
        &|op| op.downcast_ref::<Conv2d>().unwrap().weight.clone(),
    );
    check(
        "convnext_tiny",
        "features.1.0.layer_scale",
        "features.1.0.layer_scale",
        &|op| {
            op.downcast_ref::<BinaryConst>()
                .unwrap()
                .constant
                .data()
                .to_vec()
        },
    );
    check(
        "convnext_tiny",
        "features.0.1.weight",
        "features.0.1.layer_norm",
        &|op| {
            op.downcast_ref::<LayerNorm>()
                .unwrap()
                .scale
                .clone()
                .unwrap()
        },
    );
    check(
        "shufflenet_v2_x1_0",
        "stage2.0.branch2.3.weight",
        "stage2.0.branch2.3",
        &|op| op.downcast_ref::<Conv2d>().unwrap().weight.clone(),
    );
    check("shufflenet_v2_x1_0", "fc.bias", "fc", &|op| {
        op.downcast_ref::<Linear>().unwrap().bias.clone().unwrap()
    });
}
