//! `atlas`, `examples` and the site they build: resumable runs, top-k examples checked against
//! single-image forward passes, and every link and image of every page present.

mod common;
use common::{deepvis, fails_clearly, ok, stderr};
use deepvis_engine::Tensor;
use deepvis_models::Model;
use std::path::{Path, PathBuf};

fn photos() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/photos")
}

/// Every `href`/`src` of every HTML page under `dir` names a file that exists (relative links
/// only; none may leave for the network).
fn check_links(dir: &Path) -> usize {
    let mut pages = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "html") {
                pages.push(p);
            }
        }
    }
    for page in &pages {
        let html = std::fs::read_to_string(page).expect("page");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{}",
            page.display()
        );
        for attr in ["href=\"", "src=\""] {
            for part in html.split(attr).skip(1) {
                let url = &part[..part.find('"').expect("closing quote")];
                let decoded = url.replace("%20", " ");
                let target = page.parent().expect("parent").join(&decoded);
                assert!(target.exists(), "{}: broken link {url}", page.display());
            }
        }
    }
    pages.len()
}

#[test]
fn atlas_renders_resumes_and_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().to_str().expect("utf-8");
    let args = [
        "atlas",
        "--layers",
        "_blocks.0,_fc",
        "--filters",
        "0..3",
        "--size",
        "32",
        "--steps",
        "2",
        "--out",
        out,
    ];
    let o = ok(deepvis(&args));
    assert!(
        stderr(&o).contains("2 layers, 6 channels"),
        "{}",
        stderr(&o)
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("manifest.json")).unwrap())
            .unwrap();
    let runs = m["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert_eq!(r["filters"].as_array().unwrap().len(), 3, "{r}");
    }
    let lite = tmp.path().join("efficientnet_lite0");
    for page in [
        "index.html",
        "_blocks.0/index.html",
        "_blocks.0/2.html",
        "_fc/0.html",
    ] {
        assert!(lite.join(page).is_file(), "{page}");
    }
    // Nothing to redo the second time.
    let again = ok(deepvis(&args));
    assert!(stderr(&again).contains("0 rendered"), "{}", stderr(&again));
    assert!(check_links(tmp.path()) >= 9);
    fails_clearly(
        &["atlas", "--layers", "_blocks.99", "--out", out],
        "unknown layer '_blocks.99'",
    );
}

/// The images `prepare` makes: covering `s`×`s`, centre-cropped, independent of the binary.
fn reference_input(path: &Path, s: usize) -> Vec<f32> {
    let (chw, h, w) = deepvis_output::load_rgb(path).expect("photo");
    let (nh, nw) = if h <= w {
        (s, (w * s).div_ceil(h))
    } else {
        ((h * s).div_ceil(w), s)
    };
    let r = deepvis_output::resize_bilinear_planar(&chw, h, w, nh, nw);
    let (t, l) = ((nh - s) / 2, (nw - s) / 2);
    let mut out = Vec::with_capacity(3 * s * s);
    for c in 0..3 {
        for y in 0..s {
            let row = (c * nh + t + y) * nw + l;
            out.extend_from_slice(&r[row..row + s]);
        }
    }
    out
}

#[test]
fn examples_match_single_image_passes_and_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A folder with one broken file besides the photos: noted and left out.
    let images = tmp.path().join("images");
    std::fs::create_dir_all(images.join("more")).unwrap();
    let mut names = Vec::new();
    for e in walk(&photos()) {
        let rel = e.strip_prefix(photos()).unwrap().to_path_buf();
        if e.extension().is_some_and(|x| x == "md") {
            continue;
        }
        std::fs::create_dir_all(images.join(&rel).parent().unwrap()).unwrap();
        std::fs::copy(&e, images.join(&rel)).unwrap();
        names.push(rel);
    }
    std::fs::write(images.join("more/broken.jpg"), b"not a jpeg").unwrap();
    let out = tmp.path().join("out");
    let (i, o) = (images.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "examples",
        "--images",
        i,
        "--layer",
        "_blocks.3",
        "--filters",
        "0..5",
        "--top",
        "3",
        "--size",
        "64",
        "--batch",
        "5",
        // Compared below with float32 passes of our engine at 1e-4.
        "--precision",
        "f32",
        "--out",
        o,
    ];
    let first = ok(deepvis(&args));
    assert!(stderr(&first).contains("left out"), "{}", stderr(&first));
    let ex: deepvis_output::LayerExamples = serde_json::from_str(
        &std::fs::read_to_string(out.join("efficientnet_lite0/_blocks.3/examples.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ex.images_seen, names.len());

    // Reference: each photo alone through the training-style forward pass.
    let model = Model::bundled("efficientnet_lite0").unwrap();
    let layer = model.layer("_blocks.3").unwrap();
    let norm = deepvis_render::model_normalization(&model).unwrap();
    let mut per_image: Vec<(String, Vec<(f32, usize)>)> = Vec::new();
    for n in &names {
        let x = Tensor::new(vec![1, 3, 64, 64], reference_input(&images.join(n), 64)).unwrap();
        let y = model
            .graph
            .forward(deepvis_render::normalize(&x, &norm), layer)
            .unwrap();
        let y = y.output();
        let (c, hw) = (y.shape()[1], y.shape()[2] * y.shape()[3]);
        assert!(c >= 5);
        let maxima = (0..5)
            .map(|ch| {
                let v = &y.data()[ch * hw..(ch + 1) * hw];
                let (mut best, mut at) = (f32::NEG_INFINITY, 0);
                for (p, &x) in v.iter().enumerate() {
                    if x > best {
                        best = x;
                        at = p;
                    }
                }
                (best, at)
            })
            .collect();
        per_image.push((n.to_string_lossy().into_owned(), maxima));
    }
    for unit in &ex.units {
        assert_eq!(unit.top.len(), 3);
        let mut want: Vec<(f32, &str)> = per_image
            .iter()
            .map(|(n, m)| (m[unit.unit].0, n.as_str()))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (got, (v, name)) in unit.top.iter().zip(&want) {
            assert_eq!(got.source, *name, "unit {}", unit.unit);
            assert!(
                (got.value - v).abs() <= 1e-4 * v.abs().max(1.0),
                "unit {}: {} vs {v}",
                unit.unit,
                got.value
            );
            let dir = out.join("efficientnet_lite0/_blocks.3");
            assert!(dir.join(&got.image).is_file());
            assert!(dir.join(got.patch.as_ref().expect("patch")).is_file());
        }
    }
    // A second run resumes from the checkpoint and writes the same result.
    let before = std::fs::read(out.join("efficientnet_lite0/_blocks.3/examples.json")).unwrap();
    let second = ok(deepvis(&args));
    assert!(stderr(&second).contains("resuming"), "{}", stderr(&second));
    assert_eq!(
        before,
        std::fs::read(out.join("efficientnet_lite0/_blocks.3/examples.json")).unwrap()
    );
    check_links(&out);

    // Two shards (any order of images between them) and a merge give the same result.
    let sharded = tmp.path().join("sharded");
    let so = sharded.to_str().unwrap();
    for shard in ["1/2", "0/2"] {
        let mut args = args.to_vec();
        let at = args.iter().position(|a| *a == o).unwrap();
        args[at] = so;
        args.extend(["--shard", shard]);
        ok(deepvis(&args));
    }
    assert!(!sharded
        .join("efficientnet_lite0/_blocks.3/examples.json")
        .exists());
    ok(deepvis(&["merge", "--out", so, "-q"]));
    assert_eq!(
        before,
        std::fs::read(sharded.join("efficientnet_lite0/_blocks.3/examples.json")).unwrap()
    );
    check_links(&sharded);

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_clearly(
        &[
            "examples",
            "--images",
            empty.to_str().unwrap(),
            "--layer",
            "_blocks.3",
            "--out",
            o,
        ],
        "no PNG or JPEG images",
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v.sort();
    v
}
