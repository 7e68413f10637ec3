//! Native zoo architectures against torchvision (`scripts/zoo_fixtures.py`, `testdata/zoo/`):
//! seeded random `features` weights, what forward hooks return at several module paths, and
//! input gradients of channel means.

mod common;

use common::{channel_mean_grad, rel_err, tensor};
use deepvis_models::weights;
use deepvis_models::{Model, WeightsFrom};
use std::path::PathBuf;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/zoo")
        .join(name)
}

fn check(name: &str) {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(testdata(&format!("{name}.json"))).unwrap())
            .unwrap();
    let path = testdata(&format!("{name}.features.safetensors"));
    let dict = weights::load(&path).unwrap();
    let model = Model::build(name, WeightsFrom::Dict(dict, "fixture")).unwrap();
    assert!(!model.has_head, "the fixture holds the features only");
    let refs = weights::load(&testdata(&format!("{name}.ref.safetensors"))).unwrap();
    let x = tensor(&refs, "input");
    for m in meta["modules"].as_array().unwrap() {
        let m = m.as_str().unwrap();
        let id = model.layer(m).unwrap();
        let trace = model.graph.forward(x.clone(), id).unwrap();
        let err = rel_err(trace.output(), &tensor(&refs, &format!("act.{m}")));
        eprintln!("{name} act {m}: rel err {err:.2e}");
        assert!(err < 1e-4, "{name} {m}: {err:.2e}");
    }
    for case in meta["cases"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let c = case["channel"].as_u64().unwrap() as usize;
        let id = model.layer(key).unwrap();
        let got = channel_mean_grad(&model, &x, id, c);
        let err = rel_err(&got, &tensor(&refs, &format!("grad.{key}.c{c}")));
        eprintln!("{name} grad {key} c{c}: rel err {err:.2e}");
        assert!(err < 1e-3, "{name} grad {key}:{c}: {err:.2e}");
    }
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
