//! ONNX models lowered to the engine, against PyTorch (forward hooks and autograd) and
//! onnxruntime references made by `scripts/onnx_fixtures.py` (`testdata/onnx/`): activations at
//! several layers, addressed by PyTorch module path and by ONNX value name, and input
//! gradients of channel means.

mod common;

use common::{channel_mean_grad, rel_err, tensor};
use deepvis_engine::Tensor;
use deepvis_models::onnx::{load, InputSpec};
use deepvis_models::weights;
use serde_json::Value;
use std::path::PathBuf;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/onnx")
        .join(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(testdata(name)).unwrap()).unwrap()
}

/// Every module of the fixture, for one exporter's file: its activation (by module path, or by
/// the ONNX value name where a folded batch norm left the module no node of its own), and the
/// input gradients of the cases.
fn check_torch_export(model: &str, exporter: &str) {
    let meta = json(&format!("{model}.json"));
    let file = meta["files"][exporter].as_str().unwrap();
    let refs = weights::load(&testdata(&format!("{model}.safetensors"))).unwrap();
    let loaded =
        load(&testdata(file), &InputSpec::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let m = &loaded.model;
    let input = tensor(&refs, "input");
    let mut by_path = 0;
    for module in meta["modules"].as_array().unwrap() {
        let module = module.as_str().unwrap();
        let id = match m.layer(module) {
            Ok(id) => {
                by_path += 1;
                id
            }
            Err(_) => {
                let value = meta["onnx_values"][module][exporter][0]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}: {module} has no value name"));
                m.layer(value)
                    .unwrap_or_else(|e| panic!("{file}: {module} as {value}: {e}"))
            }
        };
        let want = tensor(&refs, &format!("act.{module}"));
        let trace = m.graph.forward(input.clone(), id).unwrap();
        let err = rel_err(trace.output(), &want);
        eprintln!("{file} act {module}: rel err {err:.2e}");
        assert!(
            err < 1e-4,
            "{file}: {module} differs from PyTorch by {err:.2e}"
        );
    }
    // Module paths name most layers (folded batch norms may have none of their own).
    assert!(
        by_path * 2 > meta["modules"].as_array().unwrap().len(),
        "{file}: only {by_path} module paths resolved"
    );
    for case in meta["cases"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let c = case["channel"].as_u64().unwrap() as usize;
        let id = m.layer(key).unwrap();
        let got = channel_mean_grad(m, &input, id, c);
        let want = tensor(&refs, &format!("grad.{key}.c{c}"));
        let err = rel_err(&got, &want);
        eprintln!("{file} grad {key} c{c}: rel err {err:.2e}");
        assert!(
            err < 1e-3,
            "{file}: gradient of {key}:{c} differs by {err:.2e}"
        );
    }
}

#[test]
fn mini_resnet_matches_pytorch_with_both_exporters() {
    check_torch_export("mini_resnet", "ts");
    check_torch_export("mini_resnet", "dynamo");
}

#[test]
fn squeezenet_matches_pytorch_with_both_exporters() {
    check_torch_export("squeezenet1_1", "ts");
    check_torch_export("squeezenet1_1", "dynamo");
}

#[test]
fn mobilenet_v3_small_matches_pytorch_with_both_exporters() {
    check_torch_export("mobilenet_v3_small", "ts");
    check_torch_export("mobilenet_v3_small", "dynamo");
}

#[test]
fn a_grayscale_model_with_unfused_batch_norm_matches_pytorch() {
    check_torch_export("gray28", "ts");
    check_torch_export("gray28", "dynamo");
}

#[test]
fn a_non_square_model_matches_pytorch() {
    check_torch_export("wide48x192", "ts");
    check_torch_export("wide48x192", "dynamo");
}

/// A real trained network shipped as ONNX by a PyPI package (PaddleOCR's direction classifier,
/// from rapidocr-onnxruntime): inner activations against onnxruntime.
#[test]
fn a_trained_paddle_cnn_matches_onnxruntime() {
    let meta = json("ppocr_cls.json");
    let refs = weights::load(&testdata("ppocr_cls.safetensors")).unwrap();
    let spec = InputSpec {
        size: Some((48, 192)),
        normalization: None,
    };
    let loaded = load(&testdata("ppocr_cls.onnx"), &spec).unwrap();
    let m = &loaded.model;
    let input = tensor(&refs, "input");
    for (value, _) in meta["acts"].as_object().unwrap() {
        let id = m.layer(value).unwrap_or_else(|e| panic!("{value}: {e}"));
        let trace = m.graph.forward(input.clone(), id).unwrap();
        let err = rel_err(trace.output(), &tensor(&refs, &format!("act.{value}")));
        eprintln!("ppocr_cls act {value}: rel err {err:.2e}");
        assert!(err < 1e-4, "{value} differs from onnxruntime by {err:.2e}");
    }
    let out = meta["graph_output"].as_str().unwrap();
    let id = m.layer(out).unwrap();
    let trace = m.graph.forward(input, id).unwrap();
    let err = rel_err(trace.output(), &tensor(&refs, "output"));
    assert!(err < 1e-4, "output differs from onnxruntime by {err:.2e}");
}

#[test]
fn external_data_gives_the_same_network() {
    let a = load(&testdata("gray28.ext.onnx"), &InputSpec::default()).unwrap();
    let b = load(&testdata("gray28.ts.onnx"), &InputSpec::default()).unwrap();
    let x = Tensor::full(&[1, 1, 28, 28], 0.3);
    let ya = a
        .model
        .graph
        .forward(x.clone(), a.model.graph.last())
        .unwrap();
    let yb = b.model.graph.forward(x, b.model.graph.last()).unwrap();
    assert_eq!(ya.output().data(), yb.output().data());
}
