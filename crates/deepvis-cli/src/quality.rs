//! What `filters` and `render` share beyond the optimization itself: the robust score of each
//! result, a start photo (`--init`), and the optimization as frames and an animated GIF
//! (`--frames`).

use anyhow::{bail, Context, Result};
use deepvis_models::Model;
use deepvis_output::{load_rgb, save_gif, save_planar_image, RgbImage, ScoreRecord};
use deepvis_render::render::RenderOutput;
use deepvis_render::score::{robust_scores, ScoreSettings};
use deepvis_render::BatchObjective;
use std::path::Path;

/// The robust score (seed 0, the model's native size) and the final value of each image of
/// `out` for its objective; None with `views` = 0.
pub fn score_records(
    model: &Model,
    objective: &BatchObjective,
    out: &RenderOutput,
    views: usize,
) -> Result<Vec<Option<ScoreRecord>>> {
    let n = out.final_values.len();
    if views == 0 {
        return Ok(vec![None; n]);
    }
    let settings = ScoreSettings {
        views,
        seed: 0,
        size: None,
    };
    let robust = robust_scores(
        model,
        objective,
        &out.images,
        n,
        (out.height, out.width),
        &settings,
    )?;
    Ok(robust
        .into_iter()
        .zip(&out.final_values)
        .map(|(r, &f)| {
            Some(ScoreRecord {
                robust: r,
                final_value: f,
                views,
            })
        })
        .collect())
}

/// A photo as the model's input at `(h, w)`: `[C, h, w]` in [0, 1], resized bilinearly; grey
/// (the mean of R, G, B) for one-channel models.
pub fn load_photo(path: &Path, model: &Model, (h, w): (usize, usize)) -> Result<Vec<f32>> {
    let (rgb, ph, pw) = load_rgb(path).with_context(|| format!("--init {}", path.display()))?;
    let rgb = deepvis_output::resize_bilinear_planar(&rgb, ph, pw, h, w);
    let plane = h * w;
    match model.info.channels {
        3 => Ok(rgb),
        1 => Ok((0..plane)
            .map(|i| (rgb[i] + rgb[plane + i] + rgb[2 * plane + i]) / 3.0)
            .collect()),
        c => bail!(
            "--init needs a model with 1 or 3 input channels; this one has {c} (start from noise instead)"
        ),
    }
}

/// `n` copies of `photo`: the start of a batch.
pub fn repeat(photo: &[f32], n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(photo.len() * n);
    for _ in 0..n {
        v.extend_from_slice(photo);
    }
    v
}

/// Writes image `b`'s frames next to its PNG `png` (under `root`): `NAME_frames/frame_KKK.png`
/// and `NAME.gif`. Returns the GIF's path relative to `root`.
pub fn write_frames(
    root: &Path,
    png: &Path,
    out: &RenderOutput,
    b: usize,
) -> Result<Option<String>> {
    if out.frames.is_empty() {
        return Ok(None);
    }
    let (c, h, w) = (out.channels, out.height, out.width);
    let per = c * h * w;
    let stem = png.with_extension("");
    let dir = root.join(format!("{}_frames", stem.display()));
    deepvis_output::ensure_writable_dir(&dir)?;
    let mut tiles = Vec::with_capacity(out.frames.len());
    for (k, (_, frame)) in out.frames.iter().enumerate() {
        let img = &frame[b * per..(b + 1) * per];
        save_planar_image(&dir.join(format!("frame_{k:03}.png")), img, c, h, w)?;
        tiles.push(match c {
            3 => RgbImage::from_planar_f32(img, h, w),
            // The GIF shows the first channel as grey where the image is not RGB.
            _ => RgbImage::from_planar_f32(&repeat(&img[..h * w], 3), h, w),
        });
    }
    let gif = stem.with_extension("gif");
    // About three seconds for the whole optimization, whatever the number of frames.
    let delay = (3000 / tiles.len().max(1) as u32).clamp(40, 500);
    save_gif(&root.join(&gif), &tiles, delay)?;
    Ok(Some(gif.to_string_lossy().into_owned()))
}
