//! Shared by the parity tests: fixture tensors and the error measure.
#![allow(dead_code)]

use deepvis_engine::Tensor;
use deepvis_models::weights::{self, StateDict};
use deepvis_models::{Model, WeightsFrom};

pub fn tensor(dict: &StateDict, key: &str) -> Tensor {
    let t = dict
        .get(key)
        .unwrap_or_else(|| panic!("fixture lacks {key}"));
    Tensor::new(t.shape.clone(), t.data.clone()).unwrap()
}

/// Largest absolute difference relative to the largest reference magnitude.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let scale = want.data().iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = got
        .data()
        .iter()
        .zip(want.data())
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale.max(1e-12)
}

/// Relative L2 norm of the difference.
pub fn rel_l2(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let sq = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = sq(&mut got
        .data()
        .iter()
        .zip(want.data())
        .map(|(a, b)| *a as f64 - *b as f64));
    diff / sq(&mut want.data().iter().map(|&v| v as f64)).max(1e-30)
}

/// The input gradient of the mean of channel `c` of `layer`, through the graph.
pub fn channel_mean_grad(
    model: &deepvis_models::Model,
    x: &Tensor,
    layer: usize,
    c: usize,
) -> Tensor {
    channel_mean_grad_with(model, x, &[layer], c)
}

/// `channel_mean_grad` with every convolution before `layer` asked for too, which keeps each
/// from taking in the batch norm after it: the ops as PyTorch runs them.
pub fn channel_mean_grad_unfolded(
    model: &deepvis_models::Model,
    x: &Tensor,
    layer: usize,
    c: usize,
) -> Tensor {
    let mut targets: Vec<usize> = (1..layer).filter(|&i| model.is_conv(i)).collect();
    targets.push(layer);
    channel_mean_grad_with(model, x, &targets, c)
}

/// `channel_mean_grad` of the last of `targets`, the others asked for too.
fn channel_mean_grad_with(
    model: &deepvis_models::Model,
    x: &Tensor,
    targets: &[usize],
    c: usize,
) -> Tensor {
    let trace = model.graph.forward_multi(x.clone(), targets).unwrap();
    let shape = trace.output().shape().to_vec();
    let plane: usize = shape[2..].iter().product();
    let mut seed = Tensor::zeros(&shape);
    seed.data_mut()[c * plane..(c + 1) * plane].fill(1.0 / plane as f32);
    model.graph.backward(&trace, seed).unwrap()
}

pub fn zoo_testdata(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/zoo")
        .join(name)
}

/// A model with `WeightsFrom::Formula(0)` weights against its torchvision fixture (the
/// script loads the same formula into the torchvision model): forward-hook outputs, input
/// gradients of channel means, and the formula's values for the keys the fixture stores.
pub fn check_formula(name: &str) {
    check_zoo_model(name, &Model::build(name, WeightsFrom::Formula(0)).unwrap());
}

/// `model` against `testdata/zoo/NAME.ref.safetensors`: the activations and input gradients
/// that `NAME.json` lists.
pub fn check_zoo_model(name: &str, model: &Model) {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(zoo_testdata(&format!("{name}.json"))).unwrap(),
    )
    .unwrap();
    let refs = weights::load(&zoo_testdata(&format!("{name}.ref.safetensors"))).unwrap();
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
        let want = tensor(&refs, &format!("grad.{key}.c{c}"));
        // The ops as PyTorch runs them, no batch norm folded: checked element by element.
        let got = channel_mean_grad_unfolded(model, &x, id, c);
        let err = rel_err(&got, &want);
        eprintln!("{name} grad {key} c{c}: rel err {err:.2e}");
        assert!(err < 1e-3, "{name} grad {key}:{c}: {err:.2e}");
        // The pass a render runs folds batch norms into the convolutions before them, which
        // rounds differently; where a ReLU's input lies within rounding of zero that flips the
        // unit and changes the gradient in its receptive field (measured: GoogLeNet
        // `inception4e` 5e-3 and DenseNet `transition3` 8e-3 of the largest element). So the
        // whole gradient is held to the relative L2 norm; a wrong fold gives errors of order 1.
        let folded = channel_mean_grad(model, &x, id, c);
        let (err, l2) = (rel_err(&folded, &want), rel_l2(&folded, &want));
        eprintln!("{name} grad {key} c{c} folded: rel err {err:.2e}, relative L2 {l2:.2e}");
        assert!(
            l2 < 1e-2,
            "{name} grad {key}:{c} folded: relative L2 {l2:.2e}"
        );
    }
}

/// Every module path of torchvision's `named_modules()` that a forward hook fires on resolves
/// to a layer; a module called k > 1 times has `name#0`…`name#(k-1)` and the bare name is the
/// last call.
pub fn check_module_names(name: &str, never_called: &[&str]) {
    let list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(zoo_testdata(&format!("{name}.modules.json"))).unwrap(),
    )
    .unwrap();
    let model = Model::build(name, WeightsFrom::Formula(0)).unwrap();
    for (m, calls) in list["calls"].as_object().unwrap() {
        let calls = calls.as_u64().unwrap() as usize;
        if calls == 0 {
            assert!(
                never_called.contains(&m.as_str()),
                "{name}: {m} is never called"
            );
            continue;
        }
        let id = model
            .layer(m)
            .unwrap_or_else(|e| panic!("{name}: module {m}: {e}"));
        if calls > 1 {
            for k in 0..calls {
                model.layer(&format!("{m}#{k}")).unwrap();
            }
            assert_eq!(
                id,
                model.layer(&format!("{m}#{}", calls - 1)).unwrap(),
                "{m}"
            );
            assert!(model.layer(&format!("{m}#{calls}")).is_err(), "{m}");
        }
    }
}
