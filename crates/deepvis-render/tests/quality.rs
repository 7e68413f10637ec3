//! Adaptive steps, saturating targets, starting from a photo and frames, on the bundled
//! EfficientNet-Lite0.

use deepvis_models::Model;
use deepvis_render::render::Adaptive;
use deepvis_render::score::{robust_scores, ScoreSettings};
use deepvis_render::{evaluate, render, BatchObjective, Init, Objective, Preset};
use std::sync::OnceLock;

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::bundled("efficientnet_lite0").unwrap())
}

fn obj(spec: &str) -> BatchObjective {
    BatchObjective::Shared(Objective::parse(spec, model()).unwrap())
}

fn adaptive(min_gain: f32, budget: Option<f64>) -> Adaptive {
    Adaptive {
        min_steps: 16,
        max_steps: 160,
        check_every: 16,
        views: 4,
        min_gain,
        budget,
    }
}

#[test]
fn adaptive_steps_stop_when_the_score_stops_climbing() {
    let m = model();
    let o = obj("_blocks.2:5");
    let mut s = Preset::Default.settings(64, Some(16), 2);
    // Asking for a 1000 % gain per check: the first check sets the best, the second cannot
    // beat it by that much, so the render stops there, at 32 steps.
    s.adaptive = Some(adaptive(10.0, None));
    let strict = render(m, &o, 1, &s, Init::Random, |_| {}).unwrap();
    let mut taken = 0;
    s.adaptive = Some(adaptive(10.0, None));
    render(m, &o, 1, &s, Init::Random, |p| taken = p.step).unwrap();
    assert_eq!(taken, 32, "stops at the second check");
    assert!(strict.steps[0] <= 32);
    // Any gain counts: a shallow channel keeps climbing past the second check.
    s.adaptive = Some(adaptive(0.0, None));
    let mut patient_steps = 0;
    let patient = render(m, &o, 1, &s, Init::Random, |p| patient_steps = p.step).unwrap();
    assert!(
        patient_steps > 32,
        "kept going while the score climbed: {patient_steps}"
    );
    // The image kept is the best check's: its score is at least the stricter run's.
    let sc = ScoreSettings {
        views: 4,
        seed: 0xC0FF_EE15,
        size: Some((64, 64)),
    };
    let a = robust_scores(m, &o, &strict.images, 1, (64, 64), &sc).unwrap()[0];
    let b = robust_scores(m, &o, &patient.images, 1, (64, 64), &sc).unwrap()[0];
    assert!(b >= a, "patient {b} vs strict {a}");
    // A budget spent at once stops after the first step.
    s.adaptive = Some(adaptive(0.0, Some(1e-9)));
    let mut steps = 0;
    render(m, &o, 1, &s, Init::Random, |p| steps = p.step).unwrap();
    assert_eq!(steps, 1);
}

#[test]
fn capped_values_are_the_layers_own() {
    // The rewritten objective reads the ReLU6's input; its value must be the ReLU6's output.
    let m = model();
    for spec in [
        "_conv_head.act:5",
        "_conv_head.act:700",
        "neuron(_conv_head.act:3)",
        "_blocks.3._act0:2",
    ] {
        let plain = Objective::parse(spec, m).unwrap();
        let capped = plain.uncapped(&m.graph);
        assert_ne!(plain, capped, "{spec} is a ReLU6 output");
        assert_eq!(plain.to_string(), capped.to_string());
        let img: Vec<f32> = (0..3 * 96 * 96)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let a = evaluate(m, &BatchObjective::Shared(plain), &img, 1, 96, 96).unwrap()[0];
        let b = evaluate(m, &BatchObjective::Shared(capped), &img, 1, 96, 96).unwrap()[0];
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "{spec}: {a} vs {b}"
        );
    }
    // Layers without a cap stay as they are.
    let block = Objective::parse("_blocks.8:3", m).unwrap();
    assert_eq!(block.uncapped(&m.graph), block);
}

#[test]
fn a_capped_target_keeps_improving_its_robust_score() {
    // `_conv_head.act` is ReLU6(bn(conv)): the plain gradient vanishes where the unit reaches
    // 6 and everywhere it is dead. Through the redirected gradient, the robust score keeps
    // rising with more steps and ends well above its start.
    let m = model();
    let o = obj("_conv_head.act:5");
    let sc = ScoreSettings {
        views: 8,
        seed: 0,
        size: Some((96, 96)),
    };
    let mut scores = Vec::new();
    let mut initial = Vec::new();
    for steps in [4, 16, 64] {
        let s = Preset::Default.settings(96, Some(steps), 0);
        let out = render(m, &o, 1, &s, Init::Random, |_| {}).unwrap();
        initial.push(out.initial[0]);
        scores.push(robust_scores(m, &o, &out.images, 1, (96, 96), &sc).unwrap()[0]);
    }
    // The unit starts dead (ReLU6 of a negative input everywhere): the plain gradient is zero
    // there and an optimizer would never move. Redirected, it rises to the cap and holds it
    // under the views.
    assert_eq!(initial[0], 0.0, "a dead start");
    assert!(
        scores[0] < scores[1] && scores[1] <= scores[2],
        "{scores:?}"
    );
    assert!(scores[2] > 5.5, "{scores:?}");
}

#[test]
fn a_photo_start_is_the_photo_and_then_rises() {
    let m = model();
    let (h, w) = (64, 64);
    let photo: Vec<f32> = (0..3 * h * w)
        .map(|i| 0.2 + 0.6 * ((i % w) as f32 / w as f32) * (((i / w) % h) as f32 / h as f32))
        .collect();
    let o = obj("_blocks.6:10");
    for preset in [Preset::Default, Preset::Seed] {
        // No steps: the Fourier parametrization inverted exactly gives the photo back.
        let s = preset.settings(64, Some(0), 0);
        let out = render(m, &o, 1, &s, Init::Images(photo.clone()), |_| {}).unwrap();
        let err = out
            .images
            .iter()
            .zip(&photo)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{preset:?}: {err}");
        let s = preset.settings(64, Some(24), 0);
        let out = render(m, &o, 1, &s, Init::Images(photo.clone()), |_| {}).unwrap();
        let start = evaluate(m, &o, &photo, 1, h, w).unwrap()[0];
        assert!((out.initial[0] - start).abs() < 1e-3 * start.abs().max(1.0));
        assert!(
            out.final_values[0] > start + 0.5,
            "{preset:?}: {start} → {}",
            out.final_values[0]
        );
    }
}

#[test]
fn frames_are_evenly_spaced_and_end_with_the_result() {
    let m = model();
    let o = obj("_blocks.4:1");
    let mut s = Preset::Default.settings(48, Some(40), 0);
    s.frames = 6;
    let out = render(m, &o, 2, &s, Init::Random, |_| {}).unwrap();
    assert_eq!(out.frames.len(), 6);
    let steps: Vec<usize> = out.frames.iter().map(|f| f.0).collect();
    assert!(steps.windows(2).all(|p| p[1] > p[0]), "{steps:?}");
    assert_eq!(*steps.last().unwrap(), 40);
    let gaps: Vec<usize> = steps.windows(2).map(|p| p[1] - p[0]).collect();
    let (lo, hi) = (*gaps.iter().min().unwrap(), *gaps.iter().max().unwrap());
    assert!(hi <= 2 * lo + 2, "even spacing: {steps:?}");
    for (_, f) in &out.frames {
        assert_eq!(f.len(), out.images.len());
    }
    assert_eq!(out.frames.last().unwrap().1, out.images);
    // Images change along the way.
    assert_ne!(out.frames[0].1, out.images);
    // Without frames, none.
    s.frames = 0;
    assert!(render(m, &o, 1, &s, Init::Random, |_| {})
        .unwrap()
        .frames
        .is_empty());
}

#[test]
fn caricature_compares_with_the_photos_own_activations() {
    let m = model();
    let photo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/images/chelsea.png"
    );
    let spec = format!("caricature(_blocks.6, \"{photo}\")");
    let o = Objective::parse(&spec, m).unwrap();
    assert_eq!(o.to_string(), spec, "round trip");
    let Objective::Direction { vector, .. } = &o else {
        panic!("{o:?}")
    };
    // The vector is the photo's mean activation per channel: check channels against the
    // channel objective on the same photo, read independently and resized the same way.
    let img = image::open(photo).unwrap().to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut chw = vec![0.0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            chw[(c * h + y as usize) * w + x as usize] = p[c] as f32 / 255.0;
        }
    }
    let at224 = deepvis_render::score::resize_like_torch(&chw, 3, h, w, 224, 224);
    for ch in [0, 5, 17, 39] {
        let want = evaluate(m, &obj(&format!("_blocks.6:{ch}")), &at224, 1, 224, 224).unwrap()[0];
        assert!(
            (vector[ch] - want).abs() < 1e-4 * want.abs().max(1.0),
            "{ch}: {} vs {want}",
            vector[ch]
        );
    }
    // The photo itself matches its own pattern better than a grey image does.
    let grey = vec![0.5f32; 3 * 224 * 224];
    let b = BatchObjective::Shared(o);
    let on_photo = evaluate(m, &b, &at224, 1, 224, 224).unwrap()[0];
    let on_grey = evaluate(m, &b, &grey, 1, 224, 224).unwrap()[0];
    assert!(on_photo > on_grey, "{on_photo} vs {on_grey}");
    let e = Objective::parse("caricature(_blocks.6, \"/nonexistent.png\")", m).unwrap_err();
    assert!(e.message.contains("cannot read the photo"), "{}", e.message);
}
