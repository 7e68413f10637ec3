//! DeepDream on a photo: `cargo run --release -p deepvis-render --example dream_preview -- IN.png OBJECTIVE OUT.png`
use deepvis_render::{dream, DreamSettings, Objective};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let img = image::open(&a[1]).unwrap().to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut photo = vec![0.0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            photo[(c * h + y as usize) * w + x as usize] = p[c] as f32 / 255.0;
        }
    }
    let model = deepvis_models::Model::bundled("efficientnet_lite0").unwrap();
    let obj = Objective::parse(a.get(2).map_or("dream(_blocks.10)", |s| s), &model)
        .unwrap_or_else(|e| panic!("{e}"));
    let t = std::time::Instant::now();
    let out = dream(
        &model,
        &obj,
        &photo,
        h,
        w,
        &DreamSettings::default(),
        |_| {},
    )
    .unwrap();
    eprintln!("{:.1}s", t.elapsed().as_secs_f32());
    let mut o = image::RgbImage::new(w as u32, h as u32);
    for (x, y, p) in o.enumerate_pixels_mut() {
        for c in 0..3 {
            p[c] =
                (out[(c * h + y as usize) * w + x as usize].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    o.save(a.get(3).map_or("/tmp/dream.png", |s| s)).unwrap();
}
