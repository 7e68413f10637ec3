//! `deepvis examples`: the images of a folder that excite each channel of a layer most, and the
//! receptive-field patch around where they do, for the atlas's unit pages.
//!
//! Memory is bounded whatever the folder's size: images stream through in batches, forward only
//! (`Graph::infer`, nothing kept for a gradient), and each channel keeps a top-k list of (value,
//! image, position) — never pixels. Thumbnails and patches are cut at the end from the few
//! images that made some top-k. A checkpoint after every few batches makes a stopped run resume
//! where it was.

use crate::filters::parse_filters;
use crate::shard::ShardArgs;
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
    /// Split the images over shards (image k to shard k mod N); each shard writes only its
    /// own part (`examples.parts/`), and `deepvis merge` combines them (exactly: the top-k of
    /// the union is the top-k of the shards' top-k lists).
    #[command(flatten)]
    pub shard: ShardArgs,
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
/// Folder of shards' results beside `examples.json`.
const PARTS_DIR: &str = "examples.parts";

/// A pass's result, before thumbnails and patches: what a shard leaves for `deepvis merge`, and
/// what a whole run finishes from.
#[derive(Clone, Serialize, Deserialize)]
struct Found {
    /// The same for every shard of one run: images, model, layer and settings.
    fingerprint: String,
    /// The --images folder (absolute), which the merge reads thumbnails and patches from.
    images: PathBuf,
    model: String,
    layer: String,
    size: (usize, usize),
    /// The layer's output size (rows, columns).
    out_hw: (usize, usize),
    field: Option<usize>,
    top: usize,
    filters: Vec<usize>,
    seen: usize,
    skipped: Vec<String>,
    /// Per filter, best first: (value, image relative to `images`, row, column).
    tops: Vec<Vec<(f32, String, usize, usize)>>,
}

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
    let shard = a.shard.resolve()?;
    // Image k belongs to shard k mod N; a whole run owns every image.
    let mine: Vec<usize> = (0..images.len())
        .filter(|&k| shard.is_none_or(|s| s.owns(k)))
        .collect();
    let tag = shard.map_or(String::new(), |s| format!(".{}", s.part_name()));
    let ck_path = dir.join(format!("{CHECKPOINT_FILE}{tag}"));
    let ck_print = format!("{fingerprint}{tag}");
    let mut ck = match std::fs::read(&ck_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
    {
        Some(c) if c.fingerprint == ck_print && c.tops.len() == filters.len() => {
            if !a.quiet && c.done > 0 {
                eprintln!("resuming: {} of {} images already seen", c.done, mine.len());
            }
            c
        }
        _ => Checkpoint {
            fingerprint: ck_print,
            done: 0,
            skipped: Vec::new(),
            tops: vec![Vec::new(); filters.len()],
        },
    };

    let bar = progress(a.quiet, mine.len() as u64, ck.done as u64);
    let plain = !a.quiet && bar.is_hidden();
    let mut last_save = Instant::now();
    let mut last_line = Instant::now();
    let start = Instant::now();
    let first = ck.done;
    while ck.done < mine.len() {
        let batch: Vec<usize> = mine[ck.done..(ck.done + a.batch).min(mine.len())].to_vec();
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
        ck.done += batch.len();
        bar.set_position(ck.done as u64);
        if plain && (last_line.elapsed() >= Duration::from_secs(10) || ck.done == mine.len()) {
            last_line = Instant::now();
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "{}/{} images, {:.1} images/s",
                ck.done,
                mine.len(),
                (ck.done - first) as f64 / secs.max(1e-9)
            );
        }
        if last_save.elapsed() >= Duration::from_secs(20) || ck.done == mine.len() {
            save_checkpoint(&ck_path, &ck)?;
            last_save = Instant::now();
        }
    }
    bar.finish_and_clear();
    let seen = ck.done - first;
    let secs = start.elapsed().as_secs_f64();
    let found = Found {
        fingerprint,
        images: std::path::absolute(&a.images).unwrap_or_else(|_| a.images.clone()),
        model: a.model.model.clone(),
        layer: layer_name.clone(),
        size,
        out_hw: (oh, ow),
        field,
        top: a.top,
        filters: filters.clone(),
        seen: mine.len() - ck.skipped.len(),
        skipped: ck.skipped.clone(),
        tops: ck
            .tops
            .iter()
            .map(|t| {
                t.iter()
                    .map(|&(v, i, y, x)| (v, images[i].to_string_lossy().into_owned(), y, x))
                    .collect()
            })
            .collect(),
    };
    if !a.quiet && seen > 0 {
        eprintln!(
            "{seen} images in {secs:.1} s ({:.1} images/s), {} left out",
            seen as f64 / secs,
            ck.skipped.len()
        );
    }
    if let Some(s) = shard {
        let part = dir.join(PARTS_DIR).join(s.part_name());
        let mut bytes = serde_json::to_vec(&found)?;
        bytes.push(b'\n');
        write_atomic(&part, &bytes)?;
        if !a.quiet {
            eprintln!("shard {}/{}: part {}", s.index, s.count, part.display());
            eprintln!(
                "when every shard is done: deepvis merge --out {}",
                a.out.display()
            );
        }
        return Ok(());
    }
    let record = finish(&dir, &found)?;

    // The site shows the examples beside whatever the folder already held.
    let site = publish_site(
        &a.out,
        &loaded.weights_label,
        &loaded.weights_sha256,
        &a.model.model,
    )?;
    if !a.quiet {
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

/// The gallery and site of `out`: through `merge::publish` where the folder has a manifest,
/// else for the examples alone. Returns the page to open.
fn publish_site(
    out: &Path,
    weights_label: &str,
    weights_sha256: &Option<String>,
    model: &str,
) -> Result<PathBuf> {
    if Manifest::load_dir(out)?.is_some() {
        crate::merge::publish(out)?;
    } else {
        let m = Manifest::new(
            format!("deepvis {}", env!("CARGO_PKG_VERSION")),
            model,
            Some(weights_label.to_string()),
            weights_sha256.clone(),
        );
        // The model page links up to the folder's gallery: it exists even before any rendering.
        deepvis_output::write_gallery(&m, out)?;
        deepvis_output::write_site(&m, out)?;
    }
    Ok(out.join(deepvis_output::GALLERY_FILE))
}

/// Thumbnails, patches and `examples.json` in the layer folder `dir` from a pass's result.
fn finish(dir: &Path, f: &Found) -> Result<LayerExamples> {
    // Thumbnails are named by their place among the images some top-k holds, so the same result
    // gives the same files whatever the shard layout.
    let mut wanted: Vec<&str> = f.tops.iter().flatten().map(|t| t.1.as_str()).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let thumb = |src: &str| {
        let k = wanted.binary_search(&src).unwrap_or(0);
        format!("examples/img_{k:06}.png")
    };
    let size = f.size;
    wanted
        .par_iter()
        .map(|&src| -> Result<()> {
            let px = prepare(&f.images.join(src), size, 3)?;
            RgbImage::from_planar_f32(&px, size.0, size.1).save_png(&dir.join(thumb(src)))?;
            let Some(field) = f.field else { return Ok(()) };
            for (k, top) in f.tops.iter().enumerate() {
                for (rank, (_, img, y, x)) in top.iter().enumerate() {
                    if img != src {
                        continue;
                    }
                    let (t, l, s) = patch_box((*y, *x), f.out_hw, size, field);
                    let mut crop = Vec::with_capacity(3 * s * s);
                    for c in 0..3 {
                        for r in t..t + s {
                            let row = (c * size.0 + r) * size.1;
                            crop.extend_from_slice(&px[row + l..row + l + s]);
                        }
                    }
                    // Small fields are enlarged (pixels repeated) to stay visible.
                    let patch = RgbImage::from_planar_f32(&crop, s, s)
                        .scale_nearest((64 / s as u32).max(1));
                    patch.save_png(
                        &dir.join(format!("examples/{}/patch_{rank}.png", f.filters[k])),
                    )?;
                }
            }
            Ok(())
        })
        .collect::<Result<Vec<()>>>()?;
    let record = LayerExamples {
        model: f.model.clone(),
        layer: f.layer.clone(),
        images_seen: f.seen,
        receptive_field: f.field,
        units: f
            .filters
            .iter()
            .zip(&f.tops)
            .map(|(&unit, top)| UnitExamples {
                unit,
                top: top
                    .iter()
                    .enumerate()
                    .map(|(rank, (value, src, y, x))| Example {
                        source: src.clone(),
                        value: *value,
                        at: (*y, *x),
                        image: thumb(src),
                        patch: f.field.map(|_| format!("examples/{unit}/patch_{rank}.png")),
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&record)?;
    bytes.push(b'\n');
    write_atomic(&dir.join(EXAMPLES_FILE), &bytes)?;
    Ok(record)
}

/// Combines the shards' parts of every layer under `out` into its `examples.json`, thumbnails
/// and patches; returns the model of each layer it finished. Exact: each shard's top-k holds every image
/// of its share that could be in the top-k of all images.
pub fn merge_parts(out: &Path) -> Result<Vec<String>> {
    let mut layers = Vec::new();
    for model_dir in subdirs(out) {
        for dir in subdirs(&model_dir) {
            let parts_dir = dir.join(PARTS_DIR);
            let mut parts: Vec<PathBuf> = std::fs::read_dir(&parts_dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "json"))
                        .collect()
                })
                .unwrap_or_default();
            if parts.is_empty() {
                continue;
            }
            parts.sort();
            let mut all: Option<Found> = None;
            for p in &parts {
                let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                let part: Found = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not an examples part", p.display()))?;
                match &mut all {
                    None => all = Some(part),
                    Some(acc) => {
                        if acc.fingerprint != part.fingerprint {
                            bail!(
                                "{} is of another examples run (other images, layer or settings) than {}; move one of them out",
                                p.display(),
                                parts[0].display()
                            );
                        }
                        acc.seen += part.seen;
                        acc.skipped.extend(part.skipped);
                        for (t, more) in acc.tops.iter_mut().zip(part.tops) {
                            t.extend(more);
                        }
                    }
                }
            }
            let Some(mut all) = all else { continue };
            // Best first, ties to the earlier image in the sorted list, as one process keeps them.
            for t in &mut all.tops {
                t.sort_by(|a, b| {
                    b.0.total_cmp(&a.0)
                        .then_with(|| Path::new(&a.1).cmp(Path::new(&b.1)))
                });
                t.truncate(all.top);
            }
            finish(&dir, &all)?;
            layers.push(all.model);
        }
    }
    Ok(layers)
}

fn subdirs(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
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
