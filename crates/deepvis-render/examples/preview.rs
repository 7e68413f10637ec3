//! Renders an objective with a preset and writes a PNG grid: a quick look at what a preset does.
//!
//! `cargo run --release -p deepvis-render --example preview -- PRESET OBJECTIVE SIZE STEPS BATCH OUT.png`
//! OBJECTIVE may hold `{i}`, replaced by the image index (one objective per image).
use deepvis_render::{render, BatchObjective, Init, Objective, Preset};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let preset = Preset::from_name(a.get(1).map_or("default", |s| s)).expect("preset");
    let spec = a.get(2).cloned().unwrap_or("_blocks.8:{i}".into());
    let size: usize = a.get(3).map_or(128, |s| s.parse().unwrap());
    let steps: Option<usize> = a.get(4).map(|s| s.parse().unwrap());
    let n: usize = a.get(5).map_or(4, |s| s.parse().unwrap());
    let out = a.get(6).cloned().unwrap_or("/tmp/preview.png".into());
    let model = deepvis_models::Model::bundled("efficientnet_lite0").unwrap();
    let objs: Vec<Objective> = (0..n)
        .map(|i| {
            Objective::parse(&spec.replace("{i}", &i.to_string()), &model)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let mut settings = preset.settings(size, steps, 0);
    // Experiment knobs: LR=0.1, OCT=64:96,128:32 (size:steps,...).
    if let Ok(lr) = std::env::var("LR") {
        settings.optimizer = deepvis_render::OptimizerKind::adam(lr.parse().unwrap());
    }
    if let Ok(oct) = std::env::var("OCT") {
        settings.octaves = oct
            .split(',')
            .map(|o| {
                let (s, k) = o.split_once(':').unwrap();
                deepvis_render::Octave::square(s.parse().unwrap(), k.parse().unwrap())
            })
            .collect();
    }
    eprintln!("{}", settings.describe());
    let t = Instant::now();
    let r = render(
        &model,
        &BatchObjective::PerImage(objs),
        n,
        &settings,
        Init::Random,
        |p| {
            if p.step % 32 == 0 {
                eprintln!(
                    "step {}/{} at {}px: {:?}",
                    p.step, p.total, p.size, p.values
                );
            }
        },
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f32();
    eprintln!(
        "{:.1}s ({:.3}s/step for {n}) before {:?} after {:?}",
        secs,
        secs / settings.total_steps() as f32,
        r.initial,
        r.final_values
    );
    let s = r.size;
    let mut img = image::RgbImage::new((s * n) as u32, s as u32);
    for b in 0..n {
        for y in 0..s {
            for x in 0..s {
                let px = |c: usize| {
                    (r.images[((b * 3 + c) * s + y) * s + x].clamp(0.0, 1.0) * 255.0).round() as u8
                };
                img.put_pixel(
                    (b * s + x) as u32,
                    y as u32,
                    image::Rgb([px(0), px(1), px(2)]),
                );
            }
        }
    }
    img.save(&out).unwrap();
}
