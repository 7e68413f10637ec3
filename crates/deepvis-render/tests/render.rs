//! The render loop on the bundled EfficientNet-Lite0: the seed preset reproduces
//! `ascend_channels`, runs are deterministic, the default preset raises a channel, octaves and
//! DeepDream produce images of the asked size; the optimizers on toy problems.

use deepvis_models::Model;
use deepvis_render::optim::Optimizer;
use deepvis_render::{
    ascend_channels, dream, render, seed_init, seed_settings, AscentSettings, BatchObjective,
    DreamSettings, Init, Objective, OptimizerKind, Preset, Regularizer,
};
use std::sync::OnceLock;

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::bundled("efficientnet_lite0").unwrap())
}

fn channels(layer: &str, chs: &[usize]) -> BatchObjective {
    BatchObjective::PerImage(
        chs.iter()
            .map(|&c| Objective::parse(&format!("{layer}:{c}"), model()).unwrap())
            .collect(),
    )
}

#[test]
fn seed_preset_reproduces_ascend_channels() {
    let m = model();
    let layer = m.layer("_blocks.4").unwrap();
    let chs = [3usize, 7];
    let settings = AscentSettings {
        size: 48,
        steps: 4,
        step_size: 9.0,
        batch: 2,
    };
    let mut old = Vec::new();
    ascend_channels(
        m,
        layer,
        &chs,
        &settings,
        5,
        |_, _| {},
        |r| {
            old.push(r);
            Ok(())
        },
    )
    .unwrap();
    let new = render(
        m,
        &channels("_blocks.4", &chs),
        2,
        &seed_settings(48, 4, 9.0, 5),
        Init::Images(seed_init(48, 5, &chs)),
        |_| {},
    )
    .unwrap();
    let per = 3 * 48 * 48;
    for (b, r) in old.iter().enumerate() {
        assert_eq!(r.image, new.images[b * per..(b + 1) * per], "image {b}");
        assert!((r.initial_activation - new.initial[b]).abs() < 1e-5);
        assert!((r.final_activation - new.final_values[b]).abs() < 1e-5);
    }
    assert_eq!(
        Preset::Seed.settings(48, Some(4), 5),
        seed_settings(48, 4, 9.0, 5)
    );
}

#[test]
fn default_preset_raises_a_channel_and_is_deterministic() {
    let m = model();
    let obj = channels("_blocks.8", &[5, 20]);
    let mut settings = Preset::Default.settings(96, Some(40), 3);
    assert_eq!(settings.octaves.len(), 1, "{}", settings.describe());
    // A multi-scale schedule (½, ¾, full size) ends at the full size too.
    settings.octaves = deepvis_render::render::default_octaves(96, 40);
    assert_eq!(settings.octaves.len(), 3, "{}", settings.describe());
    let mut steps = 0;
    let a = render(m, &obj, 2, &settings, Init::Random, |p| {
        steps += 1;
        assert_eq!(p.step, steps);
        assert_eq!(p.values.len(), 2);
    })
    .unwrap();
    assert_eq!(steps, 40);
    assert_eq!(a.size, 96);
    assert_eq!(a.images.len(), 2 * 3 * 96 * 96);
    assert!(a.images.iter().all(|v| (0.0..=1.0).contains(v)));
    for b in 0..2 {
        assert!(
            a.final_values[b] > a.initial[b] + 10.0 && a.final_values[b] > 10.0,
            "image {b}: {} → {}",
            a.initial[b],
            a.final_values[b]
        );
    }
    let b = render(m, &obj, 2, &settings, Init::Random, |_| {}).unwrap();
    assert_eq!(a.images, b.images, "same seed, different images");
    let c = render(
        m,
        &obj,
        2,
        &Preset::Default.settings(96, Some(40), 4),
        Init::Random,
        |_| {},
    )
    .unwrap();
    assert_ne!(a.images, c.images, "the seed has no effect");
}

#[test]
fn maco_and_regularized_pixel_runs_raise_the_objective() {
    let m = model();
    let obj = BatchObjective::Shared(Objective::parse("_blocks.8:5", m).unwrap());
    let r = render(
        m,
        &obj,
        1,
        &Preset::Maco.settings(64, Some(24), 1),
        Init::Random,
        |_| {},
    )
    .unwrap();
    assert!(
        r.final_values[0] > r.initial[0] + 5.0,
        "maco: {:?} → {:?}",
        r.initial,
        r.final_values
    );
    let mut s = seed_settings(64, 16, 9.0, 2);
    s.regularizers = vec![
        Regularizer::L2 { weight: 1.0 },
        Regularizer::TotalVariation { weight: 0.1 },
        Regularizer::Blur {
            sigma: 0.5,
            every: 4,
        },
        Regularizer::ClipContribution {
            percentile: 10.0,
            every: 8,
        },
    ];
    let r = render(m, &obj, 1, &s, Init::Random, |_| {}).unwrap();
    assert!(
        r.final_values[0] > r.initial[0] + 5.0,
        "pixel: {:?} → {:?}",
        r.initial,
        r.final_values
    );
}

#[test]
fn mismatched_batches_are_errors() {
    let m = model();
    let obj = channels("_blocks.8", &[1, 2, 3]);
    assert!(render(
        m,
        &obj,
        2,
        &Preset::Default.settings(64, Some(2), 0),
        Init::Random,
        |_| {}
    )
    .is_err());
    assert!(render(
        m,
        &obj,
        3,
        &Preset::Default.settings(64, Some(2), 0),
        Init::Images(vec![0.5; 10]),
        |_| {}
    )
    .is_err());
}

#[test]
fn dream_keeps_the_photo_size_and_raises_the_layer() {
    let m = model();
    let (h, w) = (72, 96);
    // A smooth synthetic "photo".
    let photo: Vec<f32> = (0..3 * h * w)
        .map(|i| {
            let (c, y, x) = (i / (h * w), (i / w) % h, i % w);
            0.5 + 0.3 * ((x as f32 * 0.1 + c as f32).sin() * (y as f32 * 0.07).cos())
        })
        .collect();
    let obj = Objective::parse("dream(_blocks.6)", m).unwrap();
    let settings = DreamSettings {
        octaves: 2,
        steps_per_octave: 5,
        min_size: 32,
        ..DreamSettings::default()
    };
    let mut steps = 0;
    let out = dream(m, &obj, &photo, h, w, &settings, |_| steps += 1).unwrap();
    assert_eq!(steps, 10);
    assert_eq!(out.len(), photo.len());
    let bo = BatchObjective::Shared(obj);
    let before = deepvis_render::evaluate(m, &bo, &photo, 1, h, w).unwrap()[0];
    let after = deepvis_render::evaluate(m, &bo, &out, 1, h, w).unwrap()[0];
    assert!(after > 1.5 * before, "dream: {before} → {after}");
    // It is still the photo underneath: close on average.
    let diff: f32 = out
        .iter()
        .zip(&photo)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / photo.len() as f32;
    assert!(diff < 0.2, "mean change {diff}");
}

#[test]
fn optimizers_on_toy_problems() {
    // Maximize −(p − 3)²: Adam with lr 0.1 gets there.
    let mut p = vec![0.0f32, 10.0];
    let mut opt = Optimizer::new(OptimizerKind::adam(0.1));
    for _ in 0..500 {
        let g: Vec<f32> = p.iter().map(|x| -2.0 * (x - 3.0)).collect();
        opt.step(&mut p, &g, 1);
    }
    assert!(p.iter().all(|x| (x - 3.0).abs() < 0.05), "{p:?}");
    // Adam's first step moves every coordinate by lr along the gradient's sign.
    let mut p = vec![0.0f32; 3];
    let mut opt = Optimizer::new(OptimizerKind::adam(0.05));
    opt.step(&mut p, &[2.0, -1e-3, 5.0], 3);
    for (x, want) in p.iter().zip([0.05, -0.05, 0.05]) {
        assert!((x - want).abs() < 1e-4, "{p:?}");
    }
    // Normalized ascent: the step has RMS lr per image.
    let mut p = vec![0.0f32; 4];
    let mut opt = Optimizer::new(OptimizerKind::Normalized { lr: 0.1 });
    opt.step(&mut p, &[3.0, 4.0, 0.0, 1.0], 2);
    let rms0 = ((p[0] * p[0] + p[1] * p[1]) / 2.0).sqrt();
    assert!((rms0 - 0.1).abs() < 1e-6 && (p[1] / p[0] - 4.0 / 3.0).abs() < 1e-5);
    assert!((p[3] - 0.1 * 2f32.sqrt()).abs() < 1e-6);
}
