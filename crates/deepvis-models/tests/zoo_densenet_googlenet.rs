//! DenseNet and GoogLeNet against torchvision (`scripts/zoo_fixtures_densenet_googlenet.py`,
//! `testdata/zoo/`): formula weights, forward-hook outputs and input gradients, the module
//! paths a hook fires on, and the key remapping of torchvision's published files.

mod common;

use common::{check_formula, check_module_names};
use deepvis_models::weights::{DType, StateDict, StoredTensor};
use deepvis_models::{remap_keys, Model, ModelError, WeightsFrom};

#[test]
fn densenet121_matches_torchvision() {
    check_formula("densenet121");
}

#[test]
fn googlenet_matches_torchvision() {
    check_formula("googlenet");
}

#[test]
fn densenet121_has_torchvisions_module_names() {
    check_module_names("densenet121", &[]);
    let model = Model::build("densenet121", WeightsFrom::Random(0)).unwrap();
    for name in [
        "features.denseblock1.denselayer1.cat",
        "features.denseblock4.denselayer16.cat",
        "features",
        "relu",
        "avgpool",
        "flatten",
    ] {
        model.layer(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn googlenet_has_torchvisions_module_names() {
    check_module_names("googlenet", &[]);
    let model = Model::build("googlenet", WeightsFrom::Random(0)).unwrap();
    for name in [
        "transform_input",
        "conv1.conv",
        "conv1.bn",
        "flatten",
        "inception5b.branch4.0",
    ] {
        model.layer(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn the_other_densenets_build_with_a_1000_wide_head() {
    for (name, features) in [
        ("densenet161", 2208),
        ("densenet169", 1664),
        ("densenet201", 1920),
    ] {
        let model = Model::build(name, WeightsFrom::Random(0)).unwrap();
        assert!(model.has_head);
        let fc = model.layer("classifier").unwrap();
        assert_eq!(model.channels(fc, 64).unwrap(), 1000, "{name}");
        let norm5 = model.layer("features.norm5").unwrap();
        assert_eq!(model.channels(norm5, 64).unwrap(), features, "{name}");
    }
}

fn tensor(shape: &[usize]) -> StoredTensor {
    let n = shape.iter().product();
    StoredTensor::new(shape.to_vec(), DType::F32, vec![0.5; n])
}

/// torchvision's published DenseNet files name `norm1` `norm.1` (and `relu.2`, `conv.1`, …),
/// as `_load_state_dict` renames them.
#[test]
fn old_densenet_keys_are_renamed_on_load() {
    let mut dict = StateDict::new();
    let old = [
        "features.denseblock1.denselayer1.norm.1.weight",
        "features.denseblock1.denselayer1.norm.1.running_var",
        "features.denseblock1.denselayer1.conv.1.weight",
        "features.denseblock3.denselayer12.norm.2.bias",
        "features.denseblock3.denselayer12.conv.2.weight",
    ];
    for k in old {
        dict.insert(k, tensor(&[2]));
    }
    let kept = [
        "features.denseblock1.denselayer1.norm.1.num_batches_tracked",
        "features.transition1.norm.weight",
        "features.norm5.weight",
        "classifier.weight",
    ];
    for k in kept {
        dict.insert(k, tensor(&[2]));
    }
    let before = dict.clone();
    remap_keys("resnet18", &mut dict);
    assert_eq!(dict, before, "other models' keys are left alone");
    remap_keys("densenet121", &mut dict);
    let mut keys: Vec<&str> = dict.keys().collect();
    keys.sort();
    let mut want = vec![
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer1.norm1.running_var",
        "features.denseblock1.denselayer1.conv1.weight",
        "features.denseblock3.denselayer12.norm2.bias",
        "features.denseblock3.denselayer12.conv2.weight",
    ];
    want.extend(kept);
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(
        dict.get("features.denseblock1.denselayer1.norm1.weight"),
        before.get("features.denseblock1.denselayer1.norm.1.weight")
    );

    // Through `Model::build`: a renamed key is found, so the first missing key is another.
    let mut dict = StateDict::new();
    dict.insert("features.conv0.weight", tensor(&[64, 3, 7, 7]));
    for p in ["weight", "bias", "running_mean", "running_var"] {
        dict.insert(format!("features.norm0.{p}"), tensor(&[64]));
        dict.insert(
            format!("features.denseblock1.denselayer1.norm.1.{p}"),
            tensor(&[64]),
        );
    }
    match Model::build("densenet121", WeightsFrom::Dict(dict, "test")) {
        Err(ModelError::MissingKey { key, .. }) => {
            assert_eq!(key, "features.denseblock1.denselayer1.conv1.weight")
        }
        other => panic!("expected a missing conv1 weight, got {:?}", other.err()),
    }
}

/// The auxiliary heads of torchvision's published GoogLeNet file are not an error.
#[test]
fn googlenet_ignores_aux_heads() {
    let mut dict = StateDict::new();
    dict.insert("aux1.conv.conv.weight", tensor(&[128, 512, 1, 1]));
    dict.insert("aux2.fc2.bias", tensor(&[1000]));
    dict.insert("fc.bias", tensor(&[1000]));
    remap_keys("googlenet", &mut dict);
    assert_eq!(dict.keys().collect::<Vec<_>>(), ["fc.bias"]);
}
