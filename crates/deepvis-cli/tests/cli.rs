//! The `deepvis` binary end to end: the main job on the bundled model, the original tool's
//! flags, resuming, parity through `probe`, and clear one-line errors for bad input.

mod common;

use common::{deepvis, fails_clearly, ok, stderr};

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: tests need ../shared beside the repository",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn renders_filters_of_the_bundled_model_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let args = [
        "filters",
        "--layer",
        "_blocks.8",
        "--filters",
        "0..3",
        "--size",
        "64",
        "--steps",
        "10",
        "--out",
        out,
    ];
    ok(deepvis(&args));
    let layer_dir = tmp.path().join("efficientnet_lite0/_blocks.8");
    for f in 0..3 {
        assert!(layer_dir.join(format!("filter_{f:04}.png")).is_file());
    }
    assert!(layer_dir.join("grid.png").is_file());
    assert!(tmp.path().join("index.html").is_file());
    let m = manifest(tmp.path());
    assert_eq!(m["model"], "efficientnet_lite0");
    assert_eq!(m["weights_sha256"].as_str().unwrap().len(), 64);
    let run = &m["runs"][0];
    assert_eq!(run["layer"], "_blocks.8");
    assert_eq!(run["seed"], 0);
    assert_eq!(run["settings"]["size"], 64);
    let filters = run["filters"].as_array().unwrap();
    assert_eq!(filters.len(), 3);
    for rec in filters {
        let (a, b) = (
            rec["initial_activation"].as_f64().unwrap(),
            rec["final_activation"].as_f64().unwrap(),
        );
        assert!(
            b > a + 1.0 && b > 2.0 * a.abs(),
            "activation did not rise: {a} → {b}"
        );
        assert!(rec["seconds"].as_f64().unwrap() > 0.0);
        assert!(tmp.path().join(rec["png"].as_str().unwrap()).is_file());
    }

    // A second run with the same settings renders nothing again and changes no image.
    let before = std::fs::read(layer_dir.join("filter_0001.png")).unwrap();
    let o = ok(deepvis(&args));
    assert!(
        stderr(&o).contains("resuming: 3 filters already rendered"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(layer_dir.join("filter_0001.png")).unwrap(),
        before
    );

    // An interrupted run: one image lost. Only it is rendered again, identically.
    std::fs::remove_file(layer_dir.join("filter_0001.png")).unwrap();
    let o = ok(deepvis(&args));
    assert!(stderr(&o).contains("resuming: 2 filters"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(layer_dir.join("filter_0001.png")).unwrap(),
        before
    );
}

#[test]
fn results_reproduce_from_the_seed_whatever_the_batch() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let run = |dir: &Path, batch: &str, jobs: &str, seed: &str| {
        ok(deepvis(&[
            "filters",
            "--preset",
            "seed",
            "--layer",
            "_blocks.3",
            "--filters",
            "5,9",
            "--size",
            "48",
            "--steps",
            "4",
            "--batch",
            batch,
            "--jobs",
            jobs,
            "--seed",
            seed,
            "--out",
            dir.to_str().unwrap(),
            "--quiet",
        ]))
    };
    run(a.path(), "2", "1", "7");
    run(b.path(), "1", "1", "7");
    run(c.path(), "2", "1", "8");
    // Two single-image renders side by side, one per thread.
    run(d.path(), "1", "2", "7");
    let png = |d: &Path, f: usize| {
        std::fs::read(d.join(format!("efficientnet_lite0/_blocks.3/filter_{f:04}.png"))).unwrap()
    };
    assert_eq!(png(a.path(), 5), png(b.path(), 5));
    assert_eq!(png(a.path(), 9), png(b.path(), 9));
    assert_eq!(png(a.path(), 5), png(d.path(), 5));
    assert_eq!(png(a.path(), 9), png(d.path(), 9));
    assert_ne!(
        png(a.path(), 9),
        png(c.path(), 9),
        "another seed gives another image"
    );
}

#[test]
fn the_original_tools_flags_work_verbatim() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = shared("fixtures/vgg16_features_random.safetensors");
    ok(deepvis(&[
        "--img_size",
        "40",
        "--layer_num",
        "28",
        "--filter_start",
        "3",
        "--filter_end",
        "5",
        "--step_size",
        "3",
        "--model_name",
        "vgg16",
        "--weights",
        &weights,
        "--steps",
        "2",
        "--out",
        tmp.path().to_str().unwrap(),
    ]));
    let dir = tmp.path().join("vgg16/features.28");
    assert!(dir.join("filter_0003.png").is_file() && dir.join("filter_0004.png").is_file());
    assert!(
        !dir.join("filter_0005.png").exists(),
        "filter_end is excluded, like range()"
    );
    let m = manifest(tmp.path());
    assert_eq!(m["runs"][0]["settings"]["step_size"], 3.0);

    // The exact original command needs torchvision's weights; offline it says how to pass them.
    let o = Command::new(env!("CARGO_BIN_EXE_deepvis"))
        .args([
            "--img_size",
            "512",
            "--layer_num",
            "28",
            "--filter_start",
            "0",
            "--filter_end",
            "100",
            "--step_size",
            "3",
            "--model_name",
            "vgg16",
        ])
        .env("DEEPVIS_OFFLINE", "1")
        .env("DEEPVIS_CACHE", tmp.path().join("cache"))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--weights")
            && err.contains("vgg16-397923af.pth")
            && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn probe_matches_the_pytorch_fixtures() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("probe.safetensors");
    let golden = shared("fixtures/efficientnet_lite0_golden.safetensors");
    let probe = |layer: &str, channel: &str| {
        let input = format!("{golden}:input_normalized");
        let mut args: Vec<String> = ["probe", "--input-tensor", &input, "--layer", layer]
            .map(String::from)
            .to_vec();
        if !channel.is_empty() {
            args.extend(["--channel".to_string(), channel.to_string()]);
        }
        args.extend(["--out".to_string(), out.to_string_lossy().into_owned()]);
        ok(Command::new(env!("CARGO_BIN_EXE_deepvis"))
            .args(&args)
            .output()
            .unwrap());
        deepvis_weights::load(&out).unwrap()
    };
    let want = deepvis_weights::load(Path::new(&golden)).unwrap();
    let close = |got: &deepvis_weights::StateDict, k: &str, w: &str| {
        let (a, b) = (got.get(k).unwrap(), want.get(w).unwrap());
        assert_eq!(a.shape, b.shape);
        let scale = b.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a
            .data
            .iter()
            .zip(&b.data)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err / scale < 1e-4, "{k}: relative error {}", err / scale);
    };
    let got = probe("_blocks.3", "");
    close(&got, "activation", "act._blocks.3");
    assert!(got.get("input_grad").is_none());
    // The input gradient in relative L2 norm: the pass folds batch norms into convolutions,
    // which rounds differently from PyTorch's ops apart and flips one ReLU6 unit whose input
    // lies within 1e-6 of zero (its receptive field's 200 gradient elements differ; see the
    // models crate's parity test). A wrong gradient is off by a norm of order 1.
    let got = probe("_blocks.2", "5");
    let (a, b) = (
        got.get("input_grad").unwrap(),
        want.get("grad._blocks.2.c5").unwrap(),
    );
    assert_eq!(a.shape, b.shape);
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut a.data.iter().zip(&b.data).map(|(x, y)| (x - y) as f64));
    let l2 = diff / norm(&mut b.data.iter().map(|&y| y as f64));
    assert!(l2 < 1e-2, "input_grad: relative L2 error {l2}");
}

#[test]
fn predict_names_the_right_classes() {
    let o = ok(deepvis(&[
        "predict",
        "--image",
        &shared("images/chelsea.png"),
    ]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let first = text.lines().next().unwrap();
    assert!(first.contains("cat"), "{text}");
    assert_eq!(text.lines().count(), 5);
    let o = ok(deepvis(&[
        "predict",
        "--image",
        &shared("images/coffee.png"),
        "--top",
        "1",
    ]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("espresso"));
}

#[test]
fn layers_lists_torchvision_numbering() {
    let o = ok(deepvis(&["layers", "--model", "vgg16"]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("features.28 "))
        .expect("features.28 listed");
    assert!(line.contains("Conv2d") && line.contains("512"), "{line}");
    assert!(text.lines().any(|l| l.starts_with("classifier.6 ")));
}

#[test]
fn convert_reads_legacy_pth_into_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("small.safetensors");
    ok(deepvis(&[
        "convert",
        "--weights",
        &shared("fixtures/small_legacy.pth"),
        "--out",
        out.to_str().unwrap(),
    ]));
    let got = deepvis_weights::load(&out).unwrap();
    let want = deepvis_weights::load(Path::new(&shared("fixtures/small.safetensors"))).unwrap();
    for (k, t) in want.iter() {
        assert_eq!(got.get(k).unwrap().data, t.data, "{k}");
    }
}

#[test]
fn bad_input_gets_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let vgg = shared("fixtures/vgg16_features_random.safetensors");
    let text_file = tmp.path().join("notes.txt");
    std::fs::write(&text_file, "these are not weights").unwrap();
    let truncated = tmp.path().join("half.pth");
    let bytes = std::fs::read(shared("fixtures/small_zip.pth")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["filters", "--out", out, "--steps", "1"]
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
    check(
        base(&["--model", "resnet9000", "--layer", "3", "--size", "32"]),
        "unknown model 'resnet9000'",
    );
    check(
        base(&["--layer", "_blocks.99"]),
        "unknown layer '_blocks.99'",
    );
    check(
        base(&["--layer", "_blocks.8", "--filters", "0..500"]),
        "filter 112 is out of range",
    );
    check(
        base(&["--layer", "_blocks.8", "--jobs", "0"]),
        "--jobs must be at least 1",
    );
    check(
        base(&["--layer", "_blocks.8", "--filters", "9..3"]),
        "empty or reversed",
    );
    check(
        base(&["--layer", "_blocks.8", "--filters", "x..3"]),
        "not a filter index",
    );
    check(
        base(&[
            "--layer",
            "_blocks.8",
            "--filter_start",
            "5",
            "--filter_end",
            "5",
        ]),
        "must be less than",
    );
    check(
        [
            "filters",
            "--out",
            out,
            "--size",
            "0",
            "--layer",
            "_blocks.8",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        "--size must be at least 1",
    );
    check(
        base(&["--layer", "_blocks.8", "--size", "200000"]),
        "choose a smaller --size",
    );
    let mut a = base(&["--model", "vgg16", "--layer", "31"]);
    a.extend(["--weights".into(), vgg.clone()]);
    check(a, "layer 31 is out of range");
    let mut a = base(&["--model", "vgg16", "--layer", "28"]);
    a.extend([
        "--weights".into(),
        tmp.path().join("nope.pth").to_string_lossy().into_owned(),
    ]);
    check(a, "nope.pth");
    let mut a = base(&["--model", "vgg16", "--layer", "28"]);
    a.extend(["--weights".into(), text_file.to_string_lossy().into_owned()]);
    check(a, "not recognized");
    let mut a = base(&["--model", "vgg16", "--layer", "28"]);
    a.extend(["--weights".into(), truncated.to_string_lossy().into_owned()]);
    check(a, "half.pth");
    // Weights of another model: the first missing key is named.
    let mut a = base(&["--model", "alexnet", "--layer", "3"]);
    a.extend(["--weights".into(), vgg.clone()]);
    check(a, "key 'features.0.weight' has shape");
    fails_clearly(
        &[
            "download",
            "--model",
            "vgg16",
            "--offline",
            "--cache-dir",
            out,
        ],
        "pass --weights",
    );
    fails_clearly(
        &[
            "predict",
            "--image",
            &shared("images/chelsea.png"),
            "--model",
            "vgg16",
            "--weights",
            &vgg,
        ],
        "no classifier",
    );
}

/// The whole download path of the CLI against a loopback server (via `DEEPVIS_MIRROR`): a file
/// whose hash does not match the prefix in torchvision's file name is refused and not kept.
#[test]
fn downloads_are_checked_against_the_hash_in_the_file_name() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        let body = b"not the real vgg16 weights";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(body).unwrap();
        request
    });
    let cache = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_deepvis"))
        .args([
            "download",
            "--model",
            "vgg16",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ])
        .env("DEEPVIS_MIRROR", format!("http://127.0.0.1:{port}/models"))
        .env_remove("DEEPVIS_OFFLINE")
        .output()
        .unwrap();
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /models/vgg16-397923af.pth "),
        "{request}"
    );
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("hash mismatch") && err.contains("397923af"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        0,
        "nothing is left in the cache"
    );
}

#[test]
fn the_default_preset_reproduces_from_the_seed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let run = |dir: &Path, jobs: &str| {
        ok(deepvis(&[
            "filters",
            "--preset",
            "default",
            "--layer",
            "_blocks.8",
            "--filters",
            "2..4",
            "--size",
            "96",
            "--steps",
            "48",
            "--batch",
            "1",
            "--jobs",
            jobs,
            "--out",
            dir.to_str().unwrap(),
            "--quiet",
        ]))
    };
    // One at a time, then both side by side: the same images.
    run(a.path(), "1");
    run(b.path(), "2");
    let png = |d: &Path, f: usize| {
        std::fs::read(d.join(format!("efficientnet_lite0/_blocks.8/filter_{f:04}.png"))).unwrap()
    };
    assert_eq!(png(a.path(), 2), png(b.path(), 2));
    assert_eq!(png(a.path(), 3), png(b.path(), 3));
    // The raw activation rises well above the start; which method gives the more robust
    // image is judged by scripts/quality_vs_lucent.py (PyTorch, random views), not here.
    for rec in manifest(a.path())["runs"][0]["filters"].as_array().unwrap() {
        let (i, f) = (
            rec["initial_activation"].as_f64().unwrap(),
            rec["final_activation"].as_f64().unwrap(),
        );
        assert!(f > i + 5.0, "{i} → {f}");
    }
    assert_eq!(
        manifest(a.path())["runs"][0]["settings"]["preset"],
        "default"
    );
}

#[test]
fn render_and_dream_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let o = ok(deepvis(&[
        "render",
        "--objective",
        "class(\"goldfish\") - 0.1 * _fc:285",
        "--size",
        "64",
        "--steps",
        "12",
        "--out",
        out,
    ]));
    assert!(stderr(&o).contains("→"), "{}", stderr(&o));
    let m = manifest(tmp.path());
    let rec = &m["runs"][0]["filters"][0];
    assert!(
        rec["final_activation"].as_f64().unwrap() > rec["initial_activation"].as_f64().unwrap()
    );
    assert!(tmp.path().join(rec["png"].as_str().unwrap()).is_file());
    fails_clearly(
        &["render", "--objective", "_blocks.8:33 - * 2", "--out", out],
        "byte",
    );
    fails_clearly(
        &["render", "--objective", "_blocks.8:999", "--out", out],
        "out of range",
    );

    let dream = tmp.path().join("dream.png");
    ok(deepvis(&[
        "dream",
        "--image",
        &shared("images/coffee.png"),
        "--layer",
        "_blocks.4",
        "--octaves",
        "2",
        "--steps-per-octave",
        "3",
        "--out",
        dream.to_str().unwrap(),
    ]));
    let (src, dst) = (
        image_size(&shared("images/coffee.png")),
        image_size(dream.to_str().unwrap()),
    );
    assert_eq!(src, dst, "the dream has the photo's size");
}

/// Width and height from a PNG header.
fn image_size(path: &str) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

/// bf16 arithmetic (or its float32 fallback on CPUs without AVX512-BF16) gives nearly the same
/// images: final activations within 5 % of float32's for the same seed (about 1–3 % measured).
#[test]
fn bf16_precision_stays_close_to_float32() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let auto = tempfile::tempdir().unwrap();
    let run = |dir: &Path, precision: Option<&str>| {
        let mut args = vec![
            "filters",
            "--layer",
            "_blocks.8",
            "--filters",
            "0..2",
            "--size",
            "160",
            // Fixed steps: adaptive ones depend on the wall time, which differs by precision.
            "--steps",
            "96",
            "--out",
            dir.to_str().unwrap(),
            "--quiet",
        ];
        if let Some(p) = precision {
            args.extend(["--precision", p]);
        }
        ok(deepvis(&args))
    };
    run(a.path(), Some("f32"));
    run(b.path(), Some("bf16"));
    // The default, auto, is bf16 exactly where the CPU runs it (the bf16 check holds on the
    // bundled model), and the manifest says which arithmetic made the images.
    run(auto.path(), None);
    let bf16 = deepvis_engine::bf16_supported();
    let precision = |d: &Path| manifest(d)["runs"][0]["settings"]["precision"].clone();
    assert_eq!(precision(a.path()), "f32");
    assert_eq!(precision(b.path()), if bf16 { "bf16" } else { "f32" });
    assert_eq!(precision(auto.path()), precision(b.path()));
    let png =
        |d: &Path| std::fs::read(d.join("efficientnet_lite0/_blocks.8/filter_0001.png")).unwrap();
    assert_eq!(png(auto.path()), png(b.path()));
    assert_eq!(png(a.path()) == png(b.path()), !bf16);
    let finals = |d: &Path| -> Vec<f64> {
        manifest(d)["runs"][0]["filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["final_activation"].as_f64().unwrap())
            .collect()
    };
    for (x, y) in finals(a.path()).iter().zip(finals(b.path())) {
        assert!((x - y).abs() <= 0.05 * x.abs(), "f32 {x} vs bf16 {y}");
    }
}
