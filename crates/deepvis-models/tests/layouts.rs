//! Our architectures take exactly torchvision's state-dict keys and shapes (from
//! `tests/data/torchvision_layouts.json`, written by `scripts/torchvision_layouts.py`), and
//! loading reports missing, unexpected and mis-shaped keys by name.

use deepvis_models::weights::{DType, StateDict, StoredTensor};
use deepvis_models::{Model, ModelError, WeightsFrom};

fn layouts() -> serde_json::Map<String, serde_json::Value> {
    let text = include_str!("data/torchvision_layouts.json");
    serde_json::from_str::<serde_json::Value>(text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn dict_of(entries: &[serde_json::Value]) -> StateDict {
    let mut d = StateDict::new();
    for e in entries {
        let key = e[0].as_str().unwrap();
        let shape: Vec<usize> = e[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let n = shape.iter().product();
        let dtype = if key.ends_with("num_batches_tracked") {
            DType::I64
        } else {
            DType::F32
        };
        // Variances of 1 keep batch norm finite; values do not matter here.
        d.insert(key, StoredTensor::new(shape, dtype, vec![1.0; n]));
    }
    d
}

#[test]
fn every_torchvision_layout_loads_strictly() {
    for (name, entries) in layouts() {
        let entries = entries.as_array().unwrap();
        let dict = dict_of(entries);
        let model = Model::build(&name, WeightsFrom::Dict(dict, "layout"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(model.has_head, "{name}");
        // Every conv of torchvision's `features` is a node of the same name.
        for e in entries {
            let key = e[0].as_str().unwrap();
            if let Some(module) = key.strip_suffix(".weight") {
                assert!(
                    model.graph.find(module).is_some(),
                    "{name}: no node {module}"
                );
            }
        }
        // The classifier ends in 1000 logits at 224 px.
        let shapes = model.layers(224).unwrap();
        assert_eq!(shapes.last().unwrap().shape, vec![1, 1000], "{name}");

        // One key fewer, one more, one mis-shaped: each error names the key. (One model is
        // enough: the check is shared, and VGG dicts are 0.5 GB each.)
        if name != "alexnet" {
            continue;
        }
        let victim = entries[2][0].as_str().unwrap();
        let mut missing = dict_of(entries);
        missing.remove(victim);
        match Model::build(&name, WeightsFrom::Dict(missing, "f")) {
            Err(ModelError::MissingKey { key, .. }) => assert_eq!(key, victim),
            other => panic!("{name}: expected a missing key, got {:?}", other.err()),
        }
        let mut extra = dict_of(entries);
        extra.insert(
            "features.99.weight",
            StoredTensor::new(vec![1], DType::F32, vec![0.0]),
        );
        let err = Model::build(&name, WeightsFrom::Dict(extra, "f"))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("unexpected key 'features.99.weight'"),
            "{err}"
        );
        let mut bad = dict_of(entries);
        bad.insert(victim, StoredTensor::new(vec![7], DType::F32, vec![0.0; 7]));
        let err = Model::build(&name, WeightsFrom::Dict(bad, "f"))
            .err()
            .unwrap();
        assert!(
            matches!(err, ModelError::ShapeMismatch { .. }) && err.to_string().contains(victim),
            "{err}"
        );
    }
}

#[test]
fn features_only_checkpoints_load_without_the_classifier() {
    let layouts = layouts();
    let entries: Vec<_> = layouts["vgg16"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e[0].as_str().unwrap().starts_with("features."))
        .cloned()
        .collect();
    let dict = dict_of(&entries);
    let model = Model::build("vgg16", WeightsFrom::Dict(dict, "f")).unwrap();
    assert!(!model.has_head);
    let err = model.layer("classifier.6").unwrap_err().to_string();
    assert!(err.contains("classifier"), "{err}");
}

#[test]
fn layers_are_addressed_by_name_or_features_index() {
    let model = Model::build("vgg16", WeightsFrom::Random(1)).unwrap();
    let by_index = model.layer("28").unwrap();
    assert_eq!(model.graph.nodes()[by_index].name, "features.28");
    assert_eq!(model.layer("features.28").unwrap(), by_index);
    assert!(model.is_conv(by_index), "features.28 is conv5_3");
    assert_eq!(model.channels(by_index, 224).unwrap(), 512);
    let err = model.layer("31").unwrap_err().to_string();
    assert!(
        err.contains("out of range") && err.contains("0..30"),
        "{err}"
    );
    assert!(model.layer("features.x").is_err());

    let eff = Model::build("efficientnet_lite0", WeightsFrom::Random(1)).unwrap();
    assert_eq!(
        eff.channels(eff.layer("_blocks.8").unwrap(), 224).unwrap(),
        112
    );
    assert_eq!(
        eff.channels(eff.layer("_conv_head").unwrap(), 224).unwrap(),
        1280
    );
    assert!(
        eff.layer("28").is_err(),
        "EfficientNet has no `features` Sequential"
    );
    assert!(matches!(
        Model::build("resnet9000", WeightsFrom::Random(0)),
        Err(ModelError::UnknownModel(_))
    ));
}
