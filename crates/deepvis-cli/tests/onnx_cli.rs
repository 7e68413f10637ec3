//! The `deepvis` binary on ONNX models whose input is not square RGB: a 1×28×28 grayscale
//! network, a 3×48×192 wide one and a 3×64×64 ResNet (the fixtures in testdata/onnx), with
//! `--size HxW`, per-channel `--mean/--std`, and one-line errors for bad values.

mod common;

use common::{deepvis, fails_clearly, ok, onnx_fixture};

use std::path::Path;

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Width, height, bit depth and colour type (0 grey, 2 RGB) from a PNG's IHDR chunk.
fn png_header(path: &Path) -> (u32, u32, u8, u8) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&b[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20), b[24], b[25])
}

/// The first conv layer `deepvis layers` lists for a model.
fn first_conv(model: &str) -> String {
    let o = ok(deepvis(&["layers", "--model", model]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|op| op.starts_with("Conv2d"))
        })
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no conv layer in:\n{text}"))
        .to_string()
}

/// Renders filters 0..2 in 8 steps and returns the run of the manifest.
fn filters(model: &str, layer: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "filters",
        "--model",
        model,
        "--layer",
        layer,
        "--filters",
        "0..2",
        "--steps",
        "8",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(deepvis(&args));
    let m = manifest(out);
    let runs = m["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{m}");
    runs[0].clone()
}

fn assert_rises(run: &serde_json::Value) {
    let recs = run["filters"].as_array().unwrap();
    assert_eq!(recs.len(), 2);
    let gain: f64 = recs
        .iter()
        .map(|r| {
            r["final_activation"].as_f64().unwrap() - r["initial_activation"].as_f64().unwrap()
        })
        .sum();
    assert!(gain > 0.0, "the activation did not rise: {run}");
}

#[test]
fn grayscale_model_gives_grayscale_pngs_at_its_native_size() {
    let tmp = tempfile::tempdir().unwrap();
    let model = onnx_fixture("gray28.ts.onnx");
    let layer = first_conv(&model);
    let run = filters(&model, &layer, tmp.path(), &[]);
    assert_rises(&run);
    assert_eq!(run["settings"]["size"], 28);
    assert_eq!(run["input"]["channels"], 1);
    for r in run["filters"].as_array().unwrap() {
        let png = tmp.path().join(r["png"].as_str().unwrap());
        assert_eq!(png_header(&png), (28, 28, 8, 0), "{}", png.display());
        assert!(r.get("npy").is_none(), "a grey PNG holds one channel: {r}");
        assert!(!png.with_extension("npy").exists());
    }
    // The sheet enlarges 28 px tiles so their labels fit.
    let grid = tmp.path().join(run["grid"].as_str().unwrap());
    let (gw, gh, _, _) = png_header(&grid);
    assert!(gw > 2 * 56 && gh > 56, "grid {gw}x{gh}");
    let gallery = std::fs::read_to_string(tmp.path().join("index.html")).unwrap();
    assert!(gallery.contains("filter_0001.png"));
    // The same command again renders nothing new.
    let again = filters(&model, &layer, tmp.path(), &[]);
    assert_eq!(again["filters"], run["filters"]);
}

#[test]
fn wide_model_renders_at_48x192_and_at_other_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = onnx_fixture("wide48x192.ts.onnx");
    let layer = first_conv(&model);
    let run = filters(&model, &layer, &tmp.path().join("native"), &[]);
    assert_rises(&run);
    assert_eq!(run["settings"]["size"], "48x192");
    for r in run["filters"].as_array().unwrap() {
        let png = tmp.path().join("native").join(r["png"].as_str().unwrap());
        assert_eq!(png_header(&png), (192, 48, 8, 2));
    }
    // --size HxW (and the original tool's --img_size) choose another size.
    let run = filters(
        &model,
        &layer,
        &tmp.path().join("sized"),
        &["--img_size", "32x96", "--preset", "seed"],
    );
    assert_eq!(run["settings"]["size"], "32x96");
    let png = tmp
        .path()
        .join("sized")
        .join(run["filters"][0]["png"].as_str().unwrap());
    assert_eq!(png_header(&png), (96, 32, 8, 2));
}

#[test]
fn render_and_predict_take_non_square_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = onnx_fixture("mini_resnet.ts.onnx");
    let out = tmp.path().to_str().unwrap();
    ok(deepvis(&[
        "render",
        "--model",
        &model,
        "--objective",
        "conv1:1",
        "--size",
        "48x80",
        "--steps",
        "4",
        "--quiet",
        "--out",
        out,
    ]));
    let m = manifest(tmp.path());
    let png = tmp
        .path()
        .join(m["runs"][0]["filters"][0]["png"].as_str().unwrap());
    assert_eq!(png_header(&png), (80, 48, 8, 2));
    let o = ok(deepvis(&["layers", "--model", &model, "--size", "40x72"]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("output at 40x72"));
}

#[test]
fn mean_and_std_are_recorded_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let model = onnx_fixture("gray28.ts.onnx");
    let layer = first_conv(&model);
    let run = filters(
        &model,
        &layer,
        tmp.path(),
        &["--mean", "0.5", "--std", "0.5"],
    );
    assert_eq!(
        run["input"],
        serde_json::json!({"channels": 1, "mean": [0.5], "std": [0.5]})
    );
    let out = tmp.path().join("bad");
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "filters",
            "--model",
            &model,
            "--layer",
            &layer,
            "--steps",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let check = |args: Vec<String>, expect: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_clearly(&refs, expect);
    };
    check(base(&["--mean", "0.1,0.2"]), "2 mean values");
    check(base(&["--std", "0.1,0.2,0.3"]), "3 std values");
    check(base(&["--mean", "a,b"]), "numbers separated by commas");
    check(base(&["--std", "0"]), "must be positive");
    for (size, expect) in [
        ("0", "--size must be at least 1"),
        ("0x28", "--size must be at least 1"),
        ("10x", "write N or HxW"),
        ("x10", "write N or HxW"),
        ("28x28x3", "write N or HxW"),
        ("big", "write N or HxW"),
        ("100000x100000", "choose a smaller --size"),
    ] {
        check(base(&["--size", size]), expect);
    }
    check(base(&["--size", "4x64"]), "at least 8 pixels");
    assert!(!out.join("manifest.json").exists());
}
