//! `deepvis examples`: the images of a folder that excite each channel of a layer most, and the
//! receptive-field patch around where they do, for the atlas's unit pages.
//!
//! Memory is bounded whatever the folder's size: images stream through in batches, forward only
//! (`Graph::infer`, nothing kept for a gradient), and each channel keeps a top-k list of (value,
//! image, position) — never pixels. Thumbnails and patches are cut at the end from the few
//! images that made some top-k. A checkpoint after every few batches makes a stopped run resume
//! where it was.

use crate::filters::parse_filters;
use crate::source::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use deepvis_engine::Tensor;
use deepvis_output::{
    load_rgb, write_atomic, Example, LayerExamples, Manifest, RgbImage, UnitExamples, EXAMPLES_FILE,
};
use deepvis_render::{model_normalization, normalize};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ExamplesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder of PNG/JPEG images, searched recursively.
    #[arg(long)]
    pub images: PathBuf,
    /// Layer whose channels are ranked (as `deepvis layers` names it).
    #[arg(long)]
    pub layer: String,
    /// Channels: `A..B`, `A..=B`, `N` or `a,b,c` (default: every channel of the layer).
    #[arg(long)]
    pub filters: Option<String>,
    /// Images kept per channel.
    #[arg(long, default_value_t = 9)]
    pub top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Model input size, N or HxW: each image is resized to cover it and centre-cropped
    /// (default: the model's native size).
    #[arg(long, value_name = "N|HxW", value_parser = crate::settings::parse_size)]
    pub size: Option<(usize, usize)>,
    /// Output folder; may be that of an earlier `filters` or `atlas` run of the same model, so
    /// that the unit pages show the optimized images and the examples side by side.
    #[arg(long, default_value = "deepvis-out")]
    pub out: PathBuf,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A channel's best images so far: (value, image index, row, column), best first.
type Top = Vec<(f32, usize, usize, usize)>;

/// What a stopped run resumes from; valid only for the same images, model, layer and settings.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    fingerprint: String,
    /// Images (in sorted order) already seen.
    done: usize,
    skipped: Vec<String>,
    tops: Vec<Top>,
}

const CHECKPOINT_FILE: &str = "examples.checkpoint.json";

fn is_image(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg"))
}

/// Every PNG/JPEG under `dir`, relative to it, sorted (so the order, and the checkpoint, does not
/// depend on the filesystem).
fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("--images {} is not a folder", dir.display());
    }
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("reading folder {}", d.display()))?;
        for e in entries {
            let p = e
                .with_context(|| format!("reading folder {}", d.display()))?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                found.push(p.strip_prefix(dir).unwrap_or(&p).to_path_buf());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Inserts into a best-first list of at most `k`; ties keep the earlier image.
fn push_top(top: &mut Top, k: usize, item: (f32, usize, usize, usize)) {
    if !item.0.is_finite() || (top.len() == k && top.last().is_some_and(|l| item.0 <= l.0)) {
        return;
    }
    let at = top.partition_point(|t| t.0 >= item.0);
    top.insert(at, item);
    top.truncate(k);
}

/// An image as the model sees it (before normalization): covering `size`, centre-cropped.
fn prepare(path: &Path, (sh, sw): (usize, usize), channels: usize) -> Result<Vec<f32>> {
    let (chw, h, w) = load_rgb(path)?;
    let rgb = crate::inspect::resize_and_crop(&chw, h, w, (sh, sw), (sh, sw));
    crate::render_cmd::photo_channels(&rgb, channels, sh * sw)
}

/// The square of side `field` centred on output position (y, x) of a `oh`×`ow` layer, in input
/// pixels of an `h`×`w` image, shifted to lie inside it: (top, left, side).
pub fn patch_box(
    (y, x): (usize, usize),
    (oh, ow): (usize, usize),
    (h, w): (usize, usize),
    field: usize,
) -> (usize, usize, usize) {
    let side = field.min(h).min(w).max(1);
    let centre =
        |p: usize, o: usize, n: usize| ((p as f64 + 0.5) * n as f64 / o.max(1) as f64) as usize;
    let start = |c: usize, n: usize| c.saturating_sub(side / 2).min(n - side);
    (start(centre(y, oh, h), h), start(centre(x, ow, w), w), side)
}

pub fn run(a: ExamplesArgs) -> Result<()> {
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let images = list_images(&a.images)?;
    if images.is_empty() {
        bail!(
            "no PNG or JPEG images under {}; point --images at a folder of photos",
            a.images.display()
        );
    }
    let loaded = a.model.load_at(a.size)?;
    let model = &loaded.model;
    let layer = model.layer(&a.layer)?;
    let layer_name = model.layer_name(&a.layer, layer);
    let size = a.size.unwrap_or(model.info.native_size);
    let in_ch = model.info.channels;
    let shape = model
        .graph
        .shapes(&[1, in_ch, size.0, size.1], layer)
        .map_err(|e| anyhow::anyhow!("image size {size:?} does not work for this layer: {e}"))?
        [layer]
        .clone()
        .unwrap_or_default();
    let channels = shape.get(1).copied().unwrap_or(0);
    let (oh, ow) = match shape[..] {
        [_, _, h, w] => (h, w),
        _ => (1, 1),
    };
    let filters = match &a.filters {
        Some(spec) => parse_filters(spec)?,
        None => (0..channels).collect(),
    };
    if let Some(&bad) = filters.iter().find(|&&f| f >= channels) {
        bail!("filter {bad} is out of range: layer {layer_name} of {} has {channels} channels (0..{channels})", a.model.model);
    }
    // Patches only where a value sees part of the image.
    let field = model
        .graph
        .receptive_field(layer)
        .filter(|&f| f < size.0.max(size.1) && oh * ow > 1);
    let norm = model_normalization(model)?;

    let layer_dir = Path::new(&deepvis_output::path_component(&model.info.name))
        .join(deepvis_output::path_component(&layer_name));
    let dir = a.out.join(&layer_dir);
    deepvis_output::ensure_writable_dir(&dir)?;
    // Anything that changes the result makes another checkpoint.
    let mut h = Sha256::new();
    for p in &images {
        h.update(p.to_string_lossy().as_bytes());
        h.update([0]);
    }
    h.update(format!(
        "{}|{}|{:?}|{}|{:?}|{:?}",
        a.model.model, layer_name, size, a.top, filters, loaded.weights_sha256
    ));
    let fingerprint = format!("{:x}", h.finalize());
    let ck_path = dir.join(CHECKPOINT_FILE);
    let mut ck = match std::fs::read(&ck_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
    {
        Some(c) if c.fingerprint == fingerprint && c.tops.len() == filters.len() => {
            if !a.quiet && c.done > 0 {
                eprintln!(
                    "resuming: {} of {} images already seen",
                    c.done,
                    images.len()
                );
            }
            c
        }
        _ => Checkpoint {
            fingerprint,
            done: 0,
            skipped: Vec::new(),
            tops: vec![Vec::new(); filters.len()],
        },
    };

    let bar = progress(a.quiet, images.len() as u64, ck.done as u64);
    let mut last_save = Instant::now();
    let start = Instant::now();
    let first = ck.done;
    while ck.done < images.len() {
        let batch: Vec<usize> = (ck.done..(ck.done + a.batch).min(images.len())).collect();
        // Decoding runs on every thread; an image that cannot be read is noted and left out
        // rather than stopping a run over thousands.
        let decoded: Vec<(usize, Result<Vec<f32>>)> = batch
            .par_iter()
            .map(|&i| (i, prepare(&a.images.join(&images[i]), size, in_ch)))
            .collect();
        let mut ids = Vec::with_capacity(batch.len());
        let mut data = Vec::with_capacity(batch.len() * in_ch * size.0 * size.1);
        for (i, r) in decoded {
            match r {
                Ok(px) => {
                    ids.push(i);
                    data.extend_from_slice(&px);
                }
                Err(e) => {
                    bar.suspend(|| eprintln!("note: left out {}: {e:#}", images[i].display()));
                    ck.skipped.push(images[i].to_string_lossy().into_owned());
                }
            }
        }
        if !ids.is_empty() {
            let x = normalize(
                &Tensor::new(vec![ids.len(), in_ch, size.0, size.1], data)?,
                &norm,
            );
            let y = model.graph.infer(x, layer)?;
            let plane = oh * ow;
            let yd = y.data();
            for (k, &c) in filters.iter().enumerate() {
                for (b, &img) in ids.iter().enumerate() {
                    let v = &yd[(b * channels + c) * plane..][..plane];
                    let (mut best, mut at) = (f32::NEG_INFINITY, 0);
                    for (p, &val) in v.iter().enumerate() {
                        if val > best {
                            best = val;
                            at = p;
                        }
                    }
                    push_top(&mut ck.tops[k], a.top, (best, img, at / ow, at % ow));
                }
            }
        }
        ck.done = batch.last().map_or(ck.done, |&l| l + 1);
        bar.set_position(ck.done as u64);
        if last_save.elapsed() >= Duration::from_secs(20) || ck.done == images.len() {
            save_checkpoint(&ck_path, &ck)?;
            last_save = Instant::now();
        }
    }
    bar.finish_and_clear();
    let seen = ck.done - first;
    let secs = start.elapsed().as_secs_f64();

    // Thumbnails and patches, from the images some top-k holds, each read once.
    let mut wanted: Vec<usize> = ck.tops.iter().flatten().map(|t| t.1).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let thumb = |i: usize| format!("examples/img_{i:06}.png");
    wanted
        .par_iter()
        .map(|&i| -> Result<()> {
            let px = prepare(&a.images.join(&images[i]), size, 3)?;
            let img = RgbImage::from_planar_f32(&px, size.0, size.1);
            img.save_png(&dir.join(thumb(i)))?;
            let Some(field) = field else { return Ok(()) };
            for (k, top) in ck.tops.iter().enumerate() {
                for (rank, &(_, img_i, y, x)) in top.iter().enumerate() {
                    if img_i != i {
                        continue;
                    }
                    let (t, l, s) = patch_box((y, x), (oh, ow), size, field);
                    let mut crop = Vec::with_capacity(3 * s * s);
                    for c in 0..3 {
                        for r in t..t + s {
                            let row = (c * size.0 + r) * size.1;
                            crop.extend_from_slice(&px[row + l..row + l + s]);
                        }
                    }
                    let patch = RgbImage::from_planar_f32(&crop, s, s);
                    // Small fields are enlarged (pixels repeated) to stay visible.
                    let patch = patch.scale_nearest((64 / s as u32).max(1));
                    patch
                        .save_png(&dir.join(format!("examples/{}/patch_{rank}.png", filters[k])))?;
                }
            }
            Ok(())
        })
        .collect::<Result<Vec<()>>>()?;

    let record = LayerExamples {
        model: a.model.model.clone(),
        layer: layer_name.clone(),
        images_seen: ck.done - ck.skipped.len(),
        receptive_field: field,
        units: filters
            .iter()
            .zip(&ck.tops)
            .map(|(&unit, top)| UnitExamples {
                unit,
                top: top
                    .iter()
                    .enumerate()
                    .map(|(rank, &(value, i, y, x))| Example {
                        source: images[i].to_string_lossy().into_owned(),
                        value,
                        at: (y, x),
                        image: thumb(i),
                        patch: field.map(|_| format!("examples/{unit}/patch_{rank}.png")),
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&record)?;
    bytes.push(b'\n');
    write_atomic(&dir.join(EXAMPLES_FILE), &bytes)?;

    // The site shows the examples beside whatever the folder already held.
    let site = if Manifest::load_dir(&a.out)?.is_some() {
        crate::merge::publish(&a.out)?;
        a.out.join(deepvis_output::GALLERY_FILE)
    } else {
        let m = Manifest::new(
            format!("deepvis {}", env!("CARGO_PKG_VERSION")),
            &a.model.model,
            Some(loaded.weights_label.clone()),
            loaded.weights_sha256.clone(),
        );
        // The model page links up to the folder's gallery: it exists even before any rendering.
        deepvis_output::write_gallery(&m, &a.out)?;
        deepvis_output::write_site(&m, &a.out)?;
        a.out
            .join(layer_dir.parent().unwrap_or(Path::new("")))
            .join("index.html")
    };
    if !a.quiet {
        if seen > 0 {
            eprintln!(
                "{seen} images in {secs:.1} s ({:.1} images/s), {} left out",
                seen as f64 / secs,
                ck.skipped.len()
            );
        }
        eprintln!(
            "top {} of {} images for {} channels of {layer_name}",
            a.top,
            record.images_seen,
            filters.len()
        );
        eprintln!("examples: {}", dir.join(EXAMPLES_FILE).display());
        eprintln!("site:     {}", site.display());
    }
    Ok(())
}

fn save_checkpoint(path: &Path, ck: &Checkpoint) -> Result<()> {
    write_atomic(path, &serde_json::to_vec(ck)?)?;
    Ok(())
}

fn progress(quiet: bool, total: u64, done: u64) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar.reset_eta();
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_best_in_order() {
        let mut t = Top::new();
        for (v, i) in [
            (1.0, 0),
            (5.0, 1),
            (3.0, 2),
            (5.0, 3),
            (f32::NAN, 4),
            (0.5, 5),
            (4.0, 6),
        ] {
            push_top(&mut t, 3, (v, i, 0, 0));
        }
        let got: Vec<(f32, usize)> = t.iter().map(|x| (x.0, x.1)).collect();
        // Ties keep the earlier image first.
        assert_eq!(got, [(5.0, 1), (5.0, 3), (4.0, 6)]);
    }

    #[test]
    fn patches_centre_on_the_position_and_stay_inside() {
        // 224 px input, 14x14 output (stride 16): position (7, 7) is centred at 120.
        assert_eq!(patch_box((7, 7), (14, 14), (224, 224), 35), (103, 103, 35));
        // At the corner the box shifts inside the image.
        assert_eq!(patch_box((0, 13), (14, 14), (224, 224), 99), (0, 125, 99));
        // A field larger than the image is the whole image.
        assert_eq!(patch_box((3, 3), (7, 7), (224, 224), 851), (0, 0, 224));
    }
}
