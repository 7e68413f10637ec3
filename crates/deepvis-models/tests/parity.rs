//! Activations and input gradients against PyTorch references in `../shared/fixtures`.

mod common;

use deepvis_engine::Tensor;
use deepvis_models::weights::{self, StateDict};
use deepvis_models::{Model, WeightsFrom};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name);
    assert!(
        p.exists(),
        "reference fixture {} is missing: the tests need ../shared beside the repository",
        p.display()
    );
    p
}

fn tensor(dict: &StateDict, key: &str) -> Tensor {
    let t = dict
        .get(key)
        .unwrap_or_else(|| panic!("fixture lacks {key}"));
    Tensor::new(t.shape.clone(), t.data.clone()).unwrap()
}

/// Largest absolute difference relative to the largest reference magnitude.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let scale = want.data().iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = got
        .data()
        .iter()
        .zip(want.data())
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale.max(1e-12)
}

/// Input gradients through deep ReLU stacks: a unit whose pre-activation lies within ~1e-7 of
/// a ReLU/ReLU6 threshold (EfficientNet `_blocks.5._act0` c16 at (25, 14) is −1.8e-7 here) can
/// switch sides under a different summation order, which changes the gradient in that unit's
/// receptive field only, and at 96 px a `features.28` unit sees the whole image. So where such a
/// unit exists (measured: VGG `features.14` — a `features.10` pre-activation lies 1.3e-7 of the
/// layer maximum from zero, and Winograd rounding flips it — `features.28`, and EfficientNet
/// `_blocks.8`, `_conv_head`, `_fc`, and `_blocks.2` once batch norms are folded),
/// the whole gradient must agree to 3e-2 in relative L2 norm, and elsewhere every element to
/// 1e-4 of the largest. A wrong op gives relative L2 errors of order 1.
fn assert_grad_close(got: &Tensor, want: &Tensor, what: &str, strict: bool) {
    let scale = want.data().iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let close = got
        .data()
        .iter()
        .zip(want.data())
        .filter(|(a, b)| ((**a - **b) as f64).abs() <= 1e-4 * scale)
        .count();
    let frac = close as f64 / got.numel() as f64;
    let l2 = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = l2(&mut got
        .data()
        .iter()
        .zip(want.data())
        .map(|(a, b)| (*a - *b) as f64));
    let rel_l2 = diff / l2(&mut want.data().iter().map(|v| *v as f64));
    eprintln!(
        "{what}: max rel err {:.2e}, {:.4}% within 1e-4, relative L2 {rel_l2:.2e}",
        rel_err(got, want),
        100.0 * frac
    );
    if strict {
        assert!(
            rel_err(got, want) < 1e-4,
            "{what}: max relative error {:.2e}",
            rel_err(got, want)
        );
    }
    assert!(
        rel_l2 < 3e-2,
        "{what}: {:.4}% within 1e-4, relative L2 {rel_l2:.2e}",
        100.0 * frac
    );
}

/// The layer's output for `input` agrees with PyTorch's to 1e-4 of its largest value.
fn assert_activation_close(model: &Model, input: &Tensor, layer: &str, want: &Tensor) {
    let id = model.layer(layer).unwrap();
    let got = model
        .graph
        .forward(input.clone(), id)
        .unwrap()
        .output()
        .clone();
    let err = rel_err(&got, want);
    eprintln!("{} act {layer}: rel err {err:.2e}", model.info.name);
    assert!(err < 1e-4, "{layer}: {err}");
}

/// d mean(output[0, c]) / d input, as in the fixtures; with `only_c`, from a pass that computes
/// only channel c of the layer (`Graph::forward_channels`).
fn channel_grad(
    model: &Model,
    layer: &str,
    input: &Tensor,
    c: usize,
    only_c: bool,
) -> (f32, Tensor) {
    let id = model.layer(layer).unwrap();
    let trace = if only_c {
        let t = model
            .graph
            .forward_channels(input.clone(), &[id], &[c])
            .unwrap();
        if model.is_conv(id) {
            assert_eq!(t.computed_channels(id), Some(&[c][..]), "{layer}");
        }
        t
    } else {
        model.graph.forward(input.clone(), id).unwrap()
    };
    let out = trace.output();
    let plane: usize = out.shape()[2..].iter().product();
    let mut g = Tensor::zeros(out.shape());
    g.data_mut()[c * plane..(c + 1) * plane].fill(1.0 / plane as f32);
    let value = out.data()[c * plane..(c + 1) * plane].iter().sum::<f32>() / plane as f32;
    (value, model.graph.backward(&trace, g).unwrap())
}

#[test]
fn vgg16_matches_pytorch() {
    let dict = weights::load(&fixture("vgg16_features_random.safetensors")).unwrap();
    let model = Model::build("vgg16", WeightsFrom::Dict(dict, "fixture")).unwrap();
    assert!(
        !model.has_head,
        "the fixture holds the feature extractor only"
    );
    let golden = weights::load(&fixture("vgg16_golden.safetensors")).unwrap();
    let input = tensor(&golden, "input_normalized");
    for layer in [4, 5, 9, 16, 21, 28, 30] {
        assert_activation_close(
            &model,
            &input,
            &layer.to_string(),
            &tensor(&golden, &format!("act.features.{layer}")),
        );
    }
    let cases: serde_json_free::Cases = serde_json_free::cases(&fixture("vgg16_golden.json"));
    for (layer, c, value) in cases {
        for only_c in [false, true] {
            let (v, g) = channel_grad(&model, &format!("features.{layer}"), &input, c, only_c);
            assert!(
                ((v - value) as f64).abs() < 1e-4 * (1.0 + value.abs() as f64),
                "objective {v} vs {value}"
            );
            assert_grad_close(
                &g,
                &tensor(&golden, &format!("grad.features.{layer}.c{c}")),
                &format!("vgg16 grad features.{layer} c{c} (only channel {c}: {only_c})"),
                layer < 14,
            );
        }
    }
}

#[test]
fn efficientnet_lite0_bundled_matches_pytorch() {
    let model = Model::bundled("efficientnet_lite0").unwrap();
    assert!(model.has_head);
    let golden = weights::load(&fixture("efficientnet_lite0_golden.safetensors")).unwrap();
    let input = tensor(&golden, "input_normalized");
    // The fixture's `_conv_stem` and `_conv_head` are after batch norm and ReLU6 (see
    // ../shared/README.md): deepvis's `_conv_stem.act` and `_conv_head.act`.
    let node = |key: &str| match key {
        "_conv_stem" | "_conv_head" => format!("{key}.act"),
        _ => key.to_string(),
    };
    for key in [
        "_conv_stem",
        "_blocks.0",
        "_blocks.3",
        "_blocks.8",
        "_blocks.15",
        "_conv_head",
        "_fc",
    ] {
        assert_activation_close(
            &model,
            &input,
            &node(key),
            &tensor(&golden, &format!("act.{key}")),
        );
    }
    for (key, c) in [
        ("_blocks.2", 5),
        ("_blocks.8", 33),
        ("_conv_head", 100),
        ("_fc", 285),
    ] {
        let (_, g) = if key == "_fc" {
            let id = model.layer(key).unwrap();
            let trace = model.graph.forward(input.clone(), id).unwrap();
            let mut g = Tensor::zeros(trace.output().shape());
            g.data_mut()[c] = 1.0;
            (0.0, model.graph.backward(&trace, g).unwrap())
        } else {
            channel_grad(&model, &node(key), &input, c, true)
        };
        let want = tensor(&golden, &format!("grad.{key}.c{c}"));
        assert_grad_close(&g, &want, &format!("efficientnet grad {key} c{c}"), false);
        if key == "_blocks.2" {
            // Batch norms folded into the convolutions before them round differently from the
            // ops apart, and here that flips one ReLU6 unit (its pre-activation within 1e-6 of
            // zero): measured, 200 gradient elements differ, all in one 10 × 11 window. With
            // every convolution's output asked for too, nothing is folded and the ops run as
            // PyTorch runs them, checked element by element.
            let id = model.layer(key).unwrap();
            let g = common::channel_mean_grad_unfolded(&model, &input, id, c);
            assert_grad_close(&g, &want, "efficientnet grad _blocks.2 c5, unfolded", true);
        }
    }
    // The top-1 class of the cat photo is 285, "Egyptian cat".
    let logits = model
        .graph
        .forward(input, model.layer("_fc").unwrap())
        .unwrap()
        .output()
        .clone();
    let top =
        logits.data().iter().enumerate().fold(
            (0, f32::MIN),
            |b, (i, v)| if *v > b.1 { (i, *v) } else { b },
        );
    assert_eq!(top.0, 285);
}

/// The few fields of the fixture JSON we need, read without a JSON dependency in this crate.
mod serde_json_free {
    pub type Cases = Vec<(usize, usize, f32)>;

    pub fn cases(path: &std::path::Path) -> Cases {
        let text = std::fs::read_to_string(path).unwrap();
        let mut out = Vec::new();
        for block in text.split('{').skip(2) {
            let field = |name: &str| -> f64 {
                let start = block.find(&format!("\"{name}\"")).unwrap() + name.len() + 3;
                let rest = block[start..].trim_start();
                let end = rest.find([',', '\n', '}']).unwrap();
                rest[..end].trim().parse().unwrap()
            };
            out.push((
                field("layer") as usize,
                field("channel") as usize,
                field("objective_value") as f32,
            ));
        }
        out
    }
}
