//! The quality features end to end: the robust score in the manifest and from `deepvis
//! score`, adaptive steps, `--init`, `--frames` with its GIF, `filters --diversity`, and
//! their errors.

mod common;

use common::{deepvis, fails_clearly, ok};
use std::path::{Path, PathBuf};

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn chelsea() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/images/chelsea.png")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn manifest_scores_match_deepvis_score_and_frames_make_a_gif() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    ok(deepvis(&[
        "filters",
        "--layer",
        "_blocks.4",
        "--filters",
        "3,9",
        "--size",
        "64",
        "--steps",
        "24",
        "--frames",
        "5",
        "--score-views",
        "8",
        "--out",
        out,
    ]));
    let m = manifest(tmp.path());
    let run = &m["runs"][0];
    assert_eq!(run["settings"]["frames"], 5);
    for rec in run["filters"].as_array().unwrap() {
        let score = &rec["score"];
        assert_eq!(score["views"], 8);
        assert_eq!(score["final"], rec["final_activation"]);
        // Fixed steps: no per-image steps recorded.
        assert!(rec.get("steps").is_none());
        let f = rec["filter"].as_u64().unwrap();
        let png = tmp.path().join(rec["png"].as_str().unwrap());
        // `deepvis score` on the saved PNG: the same measure (up to the PNG's 8-bit rounding).
        let o = ok(deepvis(&[
            "score",
            "--layer",
            "_blocks.4",
            "--filters",
            &f.to_string(),
            "--views",
            "8",
            "--json",
            png.to_str().unwrap(),
        ]));
        let line: serde_json::Value =
            serde_json::from_slice(o.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
        let (a, b) = (
            line["robust"].as_f64().unwrap(),
            score["robust"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() < 0.05 * b.abs().max(1.0),
            "filter {f}: {a} vs {b}"
        );
        // Frames and the GIF.
        let gif = tmp.path().join(rec["gif"].as_str().unwrap());
        let bytes = std::fs::read(&gif).unwrap();
        assert!(bytes.starts_with(b"GIF89a"), "{}", gif.display());
        let frames = png.with_extension("").to_string_lossy().into_owned() + "_frames";
        let n = std::fs::read_dir(&frames).unwrap().count();
        assert_eq!(n, 5, "{frames}");
        // Five frames: five image descriptors (0x2C after a graphic control block).
        let descriptors = bytes.windows(2).filter(|w| w == &[0x00, 0x2C]).count();
        assert!(descriptors >= 5, "{descriptors} frames in the GIF");
    }
    let html = std::fs::read_to_string(tmp.path().join("index.html")).unwrap();
    assert!(html.contains("robust "), "the gallery shows the score");
}

#[test]
fn score_command_scores_any_image_and_explains_mistakes() {
    let img = chelsea();
    let o = ok(deepvis(&[
        "score",
        "--layer",
        "_blocks.8",
        "--filters",
        "3,4",
        "--views",
        "4",
        &img,
    ]));
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].contains("_blocks.8:3") && lines[2].contains("_blocks.8:4"),
        "{text}"
    );
    fails_clearly(
        &[
            "score",
            "--layer",
            "_blocks.8",
            "--filters",
            "3",
            "--views",
            "0",
            &img,
        ],
        "--views must be at least 1",
    );
    fails_clearly(
        &[
            "score",
            "--layer",
            "_blocks.8",
            "--filters",
            "3",
            "/nonexistent.png",
        ],
        "nonexistent.png",
    );
    fails_clearly(
        &["score", "--layer", "_blocks.8", "--filters", "999", &img],
        "out of range",
    );
}

#[test]
fn adaptive_steps_are_recorded_and_budget_conflicts_with_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    ok(deepvis(&[
        "filters",
        "--layer",
        "_blocks.2",
        "--filters",
        "1",
        "--size",
        "48",
        "--budget",
        "0.5s",
        "--score-views",
        "0",
        "--out",
        out,
    ]));
    let m = manifest(tmp.path());
    let run = &m["runs"][0];
    assert_eq!(run["settings"]["steps"], "adaptive");
    assert_eq!(run["settings"]["budget_s"], 0.5);
    let rec = &run["filters"][0];
    assert!(rec["steps"].as_u64().unwrap() >= 1);
    assert!(rec.get("score").is_none(), "--score-views 0 records none");
    fails_clearly(
        &[
            "filters",
            "--layer",
            "_blocks.2",
            "--steps",
            "5",
            "--budget",
            "2s",
            "--out",
            out,
        ],
        "give one of the two",
    );
    fails_clearly(
        &[
            "filters",
            "--layer",
            "_blocks.2",
            "--budget",
            "soon",
            "--out",
            out,
        ],
        "is not a time",
    );
    fails_clearly(
        &[
            "filters",
            "--layer",
            "_blocks.2",
            "--preset",
            "seed",
            "--budget",
            "1s",
            "--out",
            out,
        ],
        "seed method",
    );
}

#[test]
fn init_from_a_photo_keeps_the_photo_visible() {
    // Zero-ish change: with 1 step at a tiny learning rate the result is still the photo.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    ok(deepvis(&[
        "render",
        "--objective",
        "_blocks.6:10",
        "--size",
        "64",
        "--steps",
        "1",
        "--lr",
        "1e-6",
        "--init",
        &chelsea(),
        "--score-views",
        "0",
        "--out",
        out,
    ]));
    let m = manifest(tmp.path());
    let rec = &m["runs"][0]["filters"][0];
    assert_eq!(m["runs"][0]["settings"]["init"], chelsea());
    let png = tmp.path().join(rec["png"].as_str().unwrap());
    let got = image::open(&png).unwrap().to_rgb8();
    let want = image::open(chelsea())
        .unwrap()
        .resize_exact(64, 64, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let diff: f64 = got
        .pixels()
        .zip(want.pixels())
        .map(|(a, b)| {
            (0..3)
                .map(|c| (a[c] as f64 - b[c] as f64).abs())
                .sum::<f64>()
        })
        .sum::<f64>()
        / (64.0 * 64.0 * 3.0);
    assert!(diff < 12.0, "mean abs difference {diff} of 255");
    fails_clearly(
        &[
            "render",
            "--objective",
            "_blocks.6:10",
            "--init",
            "/nonexistent.jpg",
            "--out",
            out,
        ],
        "nonexistent.jpg",
    );
}

#[test]
fn diversity_renders_distinct_images_and_reports_similarity() {
    let sim = |weight: &str| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().to_str().unwrap();
        ok(deepvis(&[
            "filters",
            "--layer",
            "_blocks.6",
            "--filters",
            "4",
            "--size",
            "64",
            "--steps",
            "40",
            "--diversity",
            "3",
            "--diversity-weight",
            weight,
            "--score-views",
            "0",
            "--out",
            out,
        ]));
        let m = manifest(tmp.path());
        let d = m["runs"][0]["filters"][0]["diversity"].clone();
        let images = d["images"].as_array().unwrap();
        assert_eq!(images.len(), 3);
        for i in images {
            assert!(tmp.path().join(i.as_str().unwrap()).is_file());
        }
        let s = d["similarity"].as_array().unwrap();
        for (i, row) in s.iter().enumerate() {
            assert!((row[i].as_f64().unwrap() - 1.0).abs() < 1e-4);
        }
        d["mean_similarity"].as_f64().unwrap()
    };
    let (plain, diverse) = (sim("0"), sim("100"));
    assert!(
        diverse < plain - 0.02,
        "with the term {diverse}, without {plain}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    fails_clearly(
        &[
            "filters",
            "--layer",
            "_blocks.6",
            "--diversity",
            "0",
            "--out",
            out,
        ],
        "--diversity takes 1 to 64",
    );
    fails_clearly(
        &[
            "filters",
            "--layer",
            "_blocks.6",
            "--diversity",
            "2",
            "--preset",
            "seed",
            "--out",
            out,
        ],
        "seed method",
    );
}
