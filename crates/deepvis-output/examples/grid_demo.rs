//! Writes a demo grid sheet and gallery to a directory, for eyeballing the
//! label rendering and layout: `cargo run -p deepvis-output --example
//! grid_demo -- /tmp/deepvis-demo [tiles] [tile_px]`.

use std::path::PathBuf;

use deepvis_output::{grid_sheet, write_gallery, FilterRecord, Manifest, RgbImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "deepvis-demo".into()));
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let px: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);

    let settings = serde_json::json!({"demo": true});
    let mut manifest = Manifest::new("deepvis demo", "synthetic", None, None);
    let mut tiles = Vec::new();
    for i in 0..n {
        // Distinct smooth patterns so misplaced tiles would be obvious.
        let mut chw = vec![0.0f32; 3 * px * px];
        let phase = i as f32 * 0.7;
        for y in 0..px {
            for x in 0..px {
                let (u, v) = (x as f32 / px as f32, y as f32 / px as f32);
                let k = y * px + x;
                chw[k] = 0.5 + 0.5 * (12.0 * u + phase).sin();
                chw[px * px + k] = 0.5 + 0.5 * (9.0 * v - phase).cos();
                chw[2 * px * px + k] = 0.5 + 0.5 * (7.0 * (u + v) + phase).sin();
            }
        }
        let img = RgbImage::from_planar_f32(&chw, px, px);
        let png = format!("demo/filter_{i:04}.png");
        img.save_png(&dir.join(&png))?;
        manifest.upsert_filter(
            "demo",
            &settings,
            0,
            FilterRecord {
                filter: i,
                png,
                npy: None,
                initial_activation: 0.01 * i as f32,
                final_activation: 1.5 * i as f32,
                seconds: 0.1,
                diverged: None,
                score: None,
                steps: None,
                gif: None,
                diversity: None,
            },
        );
        tiles.push((format!("filter {i}"), img));
    }
    if let Some((label, _)) = tiles.last_mut() {
        *label = "a label that is much too long for the tile".into();
    }
    let refs: Vec<(String, &RgbImage)> = tiles.iter().map(|(l, t)| (l.clone(), t)).collect();
    let sheet = grid_sheet(&refs, None, None);
    sheet.save_png(&dir.join("demo/grid.png"))?;
    manifest.set_grid("demo", &settings, 0, "demo/grid.png");
    manifest.save(&dir.join("manifest.json"))?;
    let page = write_gallery(&manifest, &dir)?;
    println!(
        "{}x{} sheet; gallery at {}",
        sheet.width,
        sheet.height,
        page.display()
    );
    Ok(())
}
