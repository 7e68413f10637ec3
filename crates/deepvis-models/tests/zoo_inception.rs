//! Inception v3 against torchvision (`scripts/zoo_fixtures_inception.py`, `testdata/zoo/`):
//! formula weights, forward-hook outputs and input gradients, the module paths a hook fires
//! on, the names of its functional steps, and the auxiliary head's keys dropped at load.

mod common;

use common::{check_formula, check_module_names};
use deepvis_models::weights::{DType, StateDict, StoredTensor};
use deepvis_models::{info, remap_keys, Model, WeightsFrom};

#[test]
fn inception_v3_matches_torchvision() {
    check_formula("inception_v3");
}

#[test]
fn inception_v3_has_torchvisions_module_names() {
    check_module_names("inception_v3", &[]);
    let model = Model::build("inception_v3", WeightsFrom::Random(0)).unwrap();
    for name in [
        "transform_input",
        "Conv2d_1a_3x3.conv",
        "Conv2d_1a_3x3.bn",
        "Conv2d_1a_3x3",
        "maxpool1",
        "maxpool2",
        "Mixed_5b.branch_pool_avg",
        "Mixed_6b.branch_pool_avg",
        "Mixed_7c.branch_pool_avg",
        "Mixed_6a.branch_pool",
        "Mixed_7a.branch_pool",
        "Mixed_7b.branch3x3",
        "Mixed_7b.branch3x3dbl",
        "Mixed_7c.branch3x3dbl_3a",
        "avgpool",
        "dropout",
        "flatten",
        "fc",
    ] {
        model.layer(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(model.has_head);
    let at = |name: &str| model.channels(model.layer(name).unwrap(), 299).unwrap();
    assert_eq!(at("Mixed_5b"), 256);
    assert_eq!(at("Mixed_6a"), 768);
    assert_eq!(at("Mixed_7a"), 1280);
    assert_eq!(at("Mixed_7b.branch3x3"), 768);
    assert_eq!(at("Mixed_7c"), 2048);
    assert_eq!(at("fc"), 1000);
    let entry = info("inception_v3").unwrap();
    assert_eq!(entry.native_size, (299, 299));
    assert_eq!(entry.sequential, None);
    assert_eq!(entry.head_prefix, "fc.");
    // torchvision's state dict without `AuxLogits.*` and `num_batches_tracked`: 23,834,568
    // parameters and 34,432 batch-norm running statistics.
    assert_eq!(Model::parameter_count("inception_v3").unwrap(), 23_869_000);
}

fn tensor(shape: &[usize]) -> StoredTensor {
    let n = shape.iter().product();
    StoredTensor::new(shape.to_vec(), DType::F32, vec![0.5; n])
}

/// The auxiliary head of torchvision's published Inception v3 file is not an error.
#[test]
fn inception_v3_ignores_the_aux_head() {
    let mut dict = StateDict::new();
    dict.insert("AuxLogits.conv0.conv.weight", tensor(&[128, 768, 1, 1]));
    dict.insert("AuxLogits.fc.bias", tensor(&[1000]));
    dict.insert("fc.bias", tensor(&[1000]));
    remap_keys("inception_v3", &mut dict);
    assert_eq!(dict.keys().collect::<Vec<_>>(), ["fc.bias"]);
}
