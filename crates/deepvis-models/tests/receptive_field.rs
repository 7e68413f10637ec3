//! Receptive fields against the published values for VGG16 (Araujo et al., "Computing
//! Receptive Fields of Convolutional Neural Networks", Distill 2019, and the usual
//! conv-arithmetic tables) and AlexNet.

use deepvis_models::{Model, WeightsFrom};

fn field(model: &Model, layer: &str) -> Option<usize> {
    model.graph.receptive_field(model.layer(layer).unwrap())
}

#[test]
fn vgg16_receptive_fields() {
    let m = Model::build("vgg16", WeightsFrom::Random(1)).unwrap();
    // conv1_1, conv1_2, pool1, conv2_1, conv3_3, conv4_3, conv5_3, pool5.
    for (layer, rf) in [
        ("features.0", 3),
        ("features.2", 5),
        ("features.4", 6),
        ("features.5", 10),
        ("features.14", 40),
        ("features.21", 92),
        ("features.28", 196),
        ("features.30", 212),
    ] {
        assert_eq!(field(&m, layer), Some(rf), "{layer}");
    }
    // The ReLU after a conv sees what the conv sees.
    assert_eq!(field(&m, "features.29"), Some(196));
    // Through the adaptive pool and the classifier every output sees the whole image.
    assert_eq!(field(&m, "classifier.6"), None);
    assert_eq!(m.graph.receptive_field(usize::MAX), None);
}

#[test]
fn alexnet_receptive_fields() {
    let m = Model::build("alexnet", WeightsFrom::Random(1)).unwrap();
    // conv1 11/4 (pad 2), pool 3/2, conv2 5: 11, 19, 51; conv5 → 163, pool5 → 195.
    assert_eq!(field(&m, "features.0"), Some(11));
    assert_eq!(field(&m, "features.2"), Some(19));
    assert_eq!(field(&m, "features.3"), Some(51));
    assert_eq!(field(&m, "features.10"), Some(163));
    assert_eq!(field(&m, "features.12"), Some(195));
}

#[test]
fn efficientnet_residual_blocks_take_the_wider_branch() {
    let m = Model::build("efficientnet_lite0", WeightsFrom::Random(1)).unwrap();
    // Stem 3×3/2 → 3 px; block 0 depthwise 3×3 at jump 2 → 7 px. Residual adds must not
    // shrink the field below that of the block's own path.
    let stem = field(&m, "_conv_stem.act").unwrap();
    assert_eq!(stem, 3);
    let b0 = field(&m, "_blocks.0").unwrap();
    assert_eq!(b0, 7);
    let mut last = b0;
    for i in 1..16 {
        let f = field(&m, &format!("_blocks.{i}")).unwrap();
        assert!(f >= last, "_blocks.{i}: {f} < {last}");
        last = f;
    }
    assert_eq!(field(&m, "_fc"), None);
}
