//! `deepvis filters`: the original tool's job. Renders filters `start..end` of a layer, writes
//! one PNG per filter, a labeled grid sheet, a manifest and a gallery page; resumes where an
//! interrupted run stopped.

use crate::settings::RenderArgs;
use crate::source::{Loaded, ModelArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use deepvis_models::{size_text, Model};
use deepvis_output::{
    grid_sheet, load_rgb, save_planar_image, write_gallery, DiversityRecord, FilterRecord,
    InputRecord, Manifest, RgbImage, ScoreRecord, MANIFEST_FILE,
};
use deepvis_render::render::{render, seed_init_shaped, Init, RenderOutput};
use deepvis_render::{BatchObjective, Objective};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct FiltersArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layer to visualize: its PyTorch name (`features.28`, `_blocks.8`) or, for models with a
    /// `features` Sequential, its index there (`28`). See `deepvis layers`.
    #[arg(long, visible_alias = "layer_num")]
    pub layer: String,
    /// Filters (channels) to render: `A..B` (B excluded, like Python's range), `A..=B`, `N`,
    /// or a comma list `3,7,12`. Default: 0..16.
    #[arg(long)]
    pub filters: Option<String>,
    /// First filter (the original tool's flag; use with --filter_end).
    #[arg(
        long = "filter_start",
        alias = "filter-start",
        conflicts_with = "filters"
    )]
    pub filter_start: Option<usize>,
    /// End of the filter range, excluded (the original tool's flag).
    #[arg(long = "filter_end", alias = "filter-end", conflicts_with = "filters")]
    pub filter_end: Option<usize>,
    #[command(flatten)]
    pub render: RenderArgs,
    /// Images optimized together (default: up to 8 for small images, one for large ones, never
    /// more than fit in half the free memory).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Batches rendered at the same time, one per thread (default: one per thread, as memory
    /// allows, for single-image batches or models with small ops; else 1). Images are the same
    /// either way.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Render N distinct images per filter together, with Lucid's diversity term (their
    /// mutual similarity goes into the manifest).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub diversity: usize,
    /// Weight of the diversity term, in Lucid's scale (its `channel − 100·diversity`).
    #[arg(long, default_value_t = 100.0, value_name = "W")]
    pub diversity_weight: f32,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Where results go and how a run is seeded; shared by `filters` and `render`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Random seed: the same seed, settings and weights give the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (PNGs, grid sheets, manifest.json, index.html).
    #[arg(long, default_value = "deepvis-out")]
    pub out: PathBuf,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parses `A..B`, `A..=B`, `N` or `a,b,c`.
pub fn parse_filters(spec: &str) -> Result<Vec<usize>> {
    let spec = spec.trim();
    let num = |s: &str| -> Result<usize> {
        s.trim()
            .parse()
            .with_context(|| format!("'{s}' in --filters '{spec}' is not a filter index"))
    };
    if let Some((a, b)) = spec.split_once("..") {
        let (start, end) = match b.strip_prefix('=') {
            Some(b) => (num(a)?, num(b)? + 1),
            None => (num(a)?, num(b)?),
        };
        if start >= end {
            bail!("the filter range {spec} is empty or reversed; write START..END with START < END (END excluded)");
        }
        return Ok((start..end).collect());
    }
    let list: Vec<usize> = spec.split(',').map(num).collect::<Result<_>>()?;
    if list.is_empty() {
        bail!("--filters is empty");
    }
    Ok(list)
}

fn filter_list(a: &FiltersArgs) -> Result<Vec<usize>> {
    match (&a.filters, a.filter_start, a.filter_end) {
        (Some(spec), _, _) => parse_filters(spec),
        (None, None, None) => Ok((0..16).collect()),
        (None, start, end) => {
            let start = start.unwrap_or(0);
            let Some(end) = end else {
                bail!(
                    "--filter_start needs --filter_end (the end is excluded, like Python's range)"
                );
            };
            if start >= end {
                bail!("--filter_start {start} must be less than --filter_end {end} (the end is excluded)");
            }
            Ok((start..end).collect())
        }
    }
}

/// The manifest of an output directory, or a new one. One directory holds one model with one
/// set of weights, so that every record in it means what it says.
pub fn open_manifest(out: &Path, model: &str, loaded: &Loaded) -> Result<(PathBuf, Manifest)> {
    let path = out.join(MANIFEST_FILE);
    let manifest = match Manifest::load(&path)? {
        Some(m) if m.model != model => bail!(
            "{} holds results of model '{}'; choose another --out for '{model}'",
            path.display(),
            m.model
        ),
        Some(m) if m.weights_sha256 != loaded.weights_sha256 => bail!(
            "{} was made with other weights (sha256 {}); choose another --out",
            path.display(),
            m.weights_sha256.as_deref().unwrap_or("unknown")
        ),
        Some(m) => m,
        None => Manifest::new(
            format!("deepvis {}", env!("CARGO_PKG_VERSION")),
            model,
            Some(loaded.weights_label.clone()),
            loaded.weights_sha256.clone(),
        ),
    };
    Ok((path, manifest))
}

/// Available memory in bytes, from /proc/meminfo where there is one.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Images per batch by default, at most: batching pays only while one image is little work.
const MAX_BATCH: usize = 8;
/// Activation bytes (forward and backward) one batch aims at by default. Measured on 2 cores:
/// a batch of 8 renders 1.2–1.8× faster per image than one at a time where an image needs
/// 10–70 MB (VGG16 at 64–128 px, EfficientNet-Lite0 at 128 px), no faster at ~125 MB
/// (Lite0 at 224 px), and 8–16 % slower from ~220 MB on (VGG16 at 224 px, anything at 512).
const BATCH_BYTES: u64 = 256 << 20;

/// Checks that one image of this size fits and picks the batch: a forward and backward pass
/// holds at most about twice the activations of one forward pass.
pub fn plan_batch(
    model: &Model,
    layer: usize,
    (h, w): (usize, usize),
    requested: Option<usize>,
    count: usize,
) -> Result<usize> {
    let per_image = pass_bytes(model, layer, (h, w))?;
    let size = size_text(h, w);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if let Some(avail) = available_memory() {
        if per_image > avail {
            bail!(
                "image size {size} needs about {:.1} GiB per image for this layer, but only {:.1} GiB is free; choose a smaller --size",
                gib(per_image),
                gib(avail)
            );
        }
        if let Some(b) = requested {
            if per_image.saturating_mul(b as u64) > avail {
                bail!(
                    "--batch {b} at size {size} needs about {:.1} GiB, but only {:.1} GiB is free; use a smaller --batch",
                    gib(per_image * b as u64),
                    gib(avail)
                );
            }
        }
        if requested.is_none() {
            let fit = (avail / 2 / per_image.max(1)).max(1) as usize;
            return Ok(fit.min(default_batch(per_image)).min(count));
        }
    }
    Ok(requested.unwrap_or(default_batch(per_image).min(count)))
}

/// How many batches render side by side, one per thread. Measured on 2 cores: two
/// single-threaded passes side by side beat one pass split over both threads wherever an op's
/// split and join costs much against its work, or each core can keep its own image in its own
/// caches. VGG16 at 512 px, one image per batch, per image-step: features.5 69.4 → 66.5 ms,
/// features.21 246 → 231, features.28 280 → 268. EfficientNet-Lite0, whose ops average under
/// 10 MFLOP: 16 filters at 224 px (batches of 2) 21.7 → 15.8 s, 32 at 128 px (batches of 6)
/// 13.5 → 10.7 s. But batches of several VGG16 images, whose ops are hundreds of MFLOP, gain
/// little or lose (64 px, batches of 8: 10.8 → 10.4 s; 128 px, batches of 3: 26.6 → 27.7 s), so
/// by default batches go side by side only when they hold one image or their ops are small.
pub fn plan_jobs(
    model: &Model,
    layer: usize,
    (h, w): (usize, usize),
    batch: usize,
    requested: Option<usize>,
    groups: usize,
) -> Result<usize> {
    let per_batch = pass_bytes(model, layer, (h, w))?.saturating_mul(batch as u64);
    let avail = available_memory();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if let Some(jobs) = requested {
        if jobs == 0 {
            bail!("--jobs must be at least 1");
        }
        if let Some(avail) = avail {
            let need = per_batch.saturating_mul(jobs as u64);
            if jobs > 1 && need > avail {
                bail!(
                    "--jobs {jobs} needs about {:.1} GiB, but only {:.1} GiB is free; use a smaller --jobs",
                    gib(need),
                    gib(avail)
                );
            }
        }
        return Ok(jobs.min(groups.max(1)));
    }
    /// Forward-pass work per node of one batch below which ops are small (VGG16's start at
    /// hundreds of MFLOP, EfficientNet-Lite0's average under 10).
    const SMALL_OPS: u64 = 100_000_000;
    let flops = model
        .graph
        .forward_flops(&[batch, model.info.channels, h, w], layer)
        .map_err(|e| {
            anyhow::anyhow!(
                "image size {} does not work for this layer: {e}",
                size_text(h, w)
            )
        })?;
    if batch > 1 && flops / (layer as u64 + 1) >= SMALL_OPS {
        return Ok(1);
    }
    let fit = avail.map_or(1, |a| (a / 2 / per_batch.max(1)) as usize);
    Ok(rayon::current_num_threads().min(fit).min(groups).max(1))
}

/// What one image's forward and backward pass holds at most: about twice the activations of
/// its forward pass.
fn pass_bytes(model: &Model, layer: usize, (h, w): (usize, usize)) -> Result<u64> {
    Ok(model
        .graph
        .activation_bytes(&[1, model.info.channels, h, w], layer)
        .map_err(|e| {
            anyhow::anyhow!(
                "image size {} does not work for this layer: {e}",
                size_text(h, w)
            )
        })?
        .saturating_mul(2))
}

/// What the manifest records of a model's input where it is not the zoo's RGB convention:
/// for ONNX models, whose channels and normalization come from the file and the flags.
pub fn input_record(model: &Model, onnx: bool) -> Result<Option<InputRecord>> {
    let norm = deepvis_render::model_normalization(model)?;
    Ok(onnx.then(|| InputRecord {
        channels: model.info.channels,
        mean: norm.mean.to_vec(),
        std: norm.std.to_vec(),
    }))
}

/// Tiles of a grid sheet: read back from the PNGs, small ones enlarged (pixels repeated) so a
/// 28 px image and its label stay legible.
pub fn grid_tile(path: &Path) -> Result<RgbImage> {
    /// Tiles whose larger side is under this are enlarged to about twice it.
    const SMALL_TILE: u32 = 40;
    let (chw, h, w) = load_rgb(path).with_context(|| format!("reading back {}", path.display()))?;
    let tile = RgbImage::from_planar_f32(&chw, h, w);
    let side = tile.width.max(tile.height);
    Ok(if side < SMALL_TILE {
        tile.scale_nearest((2 * SMALL_TILE).div_ceil(side.max(1)))
    } else {
        tile
    })
}

fn default_batch(per_image: u64) -> usize {
    ((BATCH_BYTES / per_image.max(1)) as usize).clamp(1, MAX_BATCH)
}

pub fn run(a: FiltersArgs) -> Result<()> {
    a.render.validate()?;
    if a.batch == Some(0) {
        bail!("--batch must be at least 1");
    }
    let filters = filter_list(&a)?;
    if a.diversity == 0 || a.diversity > 64 {
        bail!("--diversity takes 1 to 64 images per filter");
    }
    if !(a.diversity_weight.is_finite() && a.diversity_weight >= 0.0) {
        bail!("--diversity-weight must be a non-negative number");
    }
    let diverse = a.diversity > 1;
    if diverse && a.batch.is_some() {
        bail!("--diversity N renders each filter's N images as one batch; drop --batch");
    }
    let loaded = a.model.load_at(a.render.size)?;
    let model = &loaded.model;
    let input = input_record(model, crate::source::is_onnx_path(&a.model.model))?;
    let layer = model.layer(&a.layer)?;
    let layer_name = model.layer_name(&a.layer, layer);
    let size = a.render.size_or(model.info.native_size);
    let in_channels = model.info.channels;
    let channels = model.channels_at(layer, size)?;
    if let Some(&bad) = filters.iter().find(|&&f| f >= channels) {
        bail!(
            "filter {bad} is out of range: layer {layer_name} of {} has {channels} filters (0..{channels})",
            a.model.model
        );
    }
    let batch = if diverse {
        plan_batch(model, layer, size, Some(a.diversity), a.diversity)?;
        1
    } else {
        plan_batch(model, layer, size, a.batch, filters.len())?
    };
    let base_settings = a.render.settings(a.run.seed, size)?;
    let seed_method = a.render.is_seed_method(&base_settings);
    if diverse && seed_method {
        bail!("--diversity needs an optimizer that sees the batch; use a Fourier preset, not the seed method");
    }
    // Per image, the model's input at the output size (the first octave's when octaves differ).
    let photo = match &a.render.init {
        Some(p) => Some(crate::quality::load_photo(
            p,
            model,
            base_settings.octaves[0].hw(),
        )?),
        None => None,
    };
    let per_filter = a.diversity;

    let out = &a.run.out;
    let (manifest_path, mut manifest) = open_manifest(out, &a.model.model, &loaded)?;
    let mut settings = a.render.manifest_settings(&base_settings);
    if !seed_method {
        // Transforms draw per batch, so the grouping is part of what reproduces an image.
        settings["batch"] = json!(batch);
    }
    if diverse {
        settings["diversity"] = json!({"images": a.diversity, "weight": a.diversity_weight});
    }
    if a.render.frames > 0 {
        settings["frames"] = json!(a.render.frames);
    }
    // Layer names of ONNX models contain slashes: one path component each, inside --out.
    let layer_dir = Path::new(&deepvis_output::path_component(&model.info.name))
        .join(deepvis_output::path_component(&layer_name));
    deepvis_output::ensure_writable_dir(&out.join(&layer_dir))?;
    let png_rel = |f: usize| layer_dir.join(format!("filter_{f:04}.png"));
    // A run's images are for its input: another normalization of the same settings is redone.
    let is_done = |m: &Manifest, f: usize| {
        m.find(&layer_name, &settings, a.run.seed, f).is_some()
            && m.run(&layer_name, &settings, a.run.seed)
                .is_some_and(|r| r.input == input)
            && out.join(png_rel(f)).is_file()
    };

    // The seed method treats every image on its own, so any grouping gives the same images.
    // Other methods share random transforms within a batch: groups are fixed slices of the
    // whole filter list, and a group with anything missing is rendered again as a whole.
    let groups: Vec<Vec<usize>> = if seed_method {
        let todo: Vec<usize> = filters
            .iter()
            .copied()
            .filter(|&f| !is_done(&manifest, f))
            .collect();
        todo.chunks(batch).map(<[usize]>::to_vec).collect()
    } else {
        filters
            .chunks(batch)
            .filter(|g| g.iter().any(|&f| !is_done(&manifest, f)))
            .map(<[usize]>::to_vec)
            .collect()
    };
    let rendering: usize = groups.iter().map(Vec::len).sum();
    let skipped = filters.iter().filter(|&&f| is_done(&manifest, f)).count();
    // Adaptive steps are counted at their most for the progress bar.
    let steps = base_settings.total_steps()
        + base_settings.adaptive.as_ref().map_or(0, |ad| {
            ad.max_steps - base_settings.octaves.last().map_or(0, |o| o.steps)
        });
    let progress = Progress::new(a.run.quiet, rendering * per_filter * steps, skipped);

    let jobs = plan_jobs(model, layer, size, batch, a.jobs, groups.len())?;
    if jobs > 1 {
        deepvis_engine::set_concurrent_passes(jobs);
    }
    let done_steps = AtomicUsize::new(0);
    type Rendered = (RenderOutput, Vec<Option<ScoreRecord>>);
    let render_group = |group: &Vec<usize>| -> Result<Rendered> {
        // Each filter's images: one, or --diversity of them.
        let targets: Vec<usize> = group
            .iter()
            .flat_map(|&f| std::iter::repeat_n(f, per_filter))
            .collect();
        let objectives: Vec<Objective> = targets
            .iter()
            .map(|&f| Objective::channel(model, &layer_name, f))
            .collect::<Result<_, _>>()?;
        let scored = BatchObjective::PerImage(objectives.clone());
        let objective = if diverse {
            // Lucid's `channel − 100·diversity` summed its mean-over-pairs term over the batch;
            // ours is per image over the n−1 others, hence the factor.
            let w = a.diversity_weight * (per_filter - 1) as f32;
            let div = Objective::parse(&format!("diversity(\"{layer_name}\")"), model)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            BatchObjective::PerImage(
                objectives
                    .into_iter()
                    .map(|o| o + Objective::Const(w) * div.clone())
                    .collect(),
            )
        } else {
            scored.clone()
        };
        let mut settings_g = base_settings.clone();
        let n = targets.len();
        let init = if let Some(p) = &photo {
            if !seed_method {
                settings_g.seed =
                    a.run.seed ^ (group[0] as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            }
            Init::Images(crate::quality::repeat(p, n))
        } else if seed_method {
            Init::Images(seed_init_shaped(
                [in_channels, size.0, size.1],
                a.run.seed,
                group,
            ))
        } else {
            settings_g.seed =
                a.run.seed ^ (group[0] as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            Init::Random
        };
        let mut reported = 0;
        let out = render(model, &objective, n, &settings_g, init, |p| {
            let done = done_steps.fetch_add((p.step - reported) * n, Ordering::Relaxed)
                + (p.step - reported) * n;
            reported = p.step;
            progress.step(done, rendering * per_filter * steps)
        })?;
        let scores = crate::quality::score_records(model, &scored, &out, a.render.score_views)?;
        Ok((out, scores))
    };
    // Groups are independent renders, so `jobs` of them may run side by side, one per thread;
    // each image comes out the same either way.
    for wave in groups.chunks(jobs) {
        let start = Instant::now();
        let results: Vec<Result<Rendered>> = wave.par_iter().map(render_group).collect();
        let images: usize = wave.iter().map(Vec::len).sum();
        let seconds = start.elapsed().as_secs_f64() / images as f64;
        // A failed render leaves the others of its wave to be written first: what is done stays.
        let mut failure = None;
        for (group, result) in wave.iter().zip(results) {
            let (result, scores) = match result {
                Ok(r) => r,
                Err(e) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            let (c, h, w) = (result.channels, result.height, result.width);
            let per = c * h * w;
            if let Some(input) = &input {
                manifest.set_input(&layer_name, &settings, a.run.seed, input.clone());
            }
            for (g, &f) in group.iter().enumerate() {
                let b = g * per_filter;
                let rel = png_rel(f);
                let npy = save_planar_image(
                    &out.join(&rel),
                    &result.images[b * per..(b + 1) * per],
                    c,
                    h,
                    w,
                )?;
                let gif = crate::quality::write_frames(out, &rel, &result, b)?;
                let diversity = if diverse {
                    let mut images = vec![rel.to_string_lossy().into_owned()];
                    for k in 1..per_filter {
                        let r = layer_dir.join(format!("filter_{f:04}_d{k}.png"));
                        let i = b + k;
                        save_planar_image(
                            &out.join(&r),
                            &result.images[i * per..(i + 1) * per],
                            c,
                            h,
                            w,
                        )?;
                        crate::quality::write_frames(out, &r, &result, i)?;
                        images.push(r.to_string_lossy().into_owned());
                    }
                    let all = &result.images[b * per..(b + per_filter) * per];
                    let similarity = deepvis_render::score::gram_similarity(
                        model,
                        layer,
                        all,
                        per_filter,
                        (h, w),
                    )?;
                    let pairs: Vec<f32> = (0..per_filter)
                        .flat_map(|i| (i + 1..per_filter).map(move |j| (i, j)))
                        .map(|(i, j)| similarity[i][j])
                        .collect();
                    Some(DiversityRecord {
                        images,
                        mean_similarity: pairs.iter().sum::<f32>() / pairs.len().max(1) as f32,
                        similarity,
                    })
                } else {
                    None
                };
                manifest.upsert_filter(
                    &layer_name,
                    &settings,
                    a.run.seed,
                    FilterRecord {
                        filter: f,
                        png: rel.to_string_lossy().into_owned(),
                        npy: npy.map(|_| rel.with_extension("npy").to_string_lossy().into_owned()),
                        initial_activation: result.initial[b],
                        final_activation: result.final_values[b],
                        seconds,
                        score: scores[b].clone(),
                        steps: base_settings.adaptive.as_ref().map(|_| result.steps[b]),
                        gif,
                        diversity,
                    },
                );
            }
        }
        // After each batch, so an interrupted run resumes from here.
        manifest.save(&manifest_path)?;
        if let Some(e) = failure {
            progress.finish();
            return Err(e);
        }
    }
    progress.finish();

    let grid_rel = layer_dir.join("grid.png");
    let mut tiles = Vec::with_capacity(filters.len());
    for &f in &filters {
        tiles.push((format!("filter {f}"), grid_tile(&out.join(png_rel(f)))?));
    }
    let refs: Vec<(String, &RgbImage)> = tiles.iter().map(|(l, t)| (l.clone(), t)).collect();
    grid_sheet(&refs, None, None).save_png(&out.join(&grid_rel))?;
    manifest.set_grid(
        &layer_name,
        &settings,
        a.run.seed,
        grid_rel.to_string_lossy(),
    );
    manifest.save(&manifest_path)?;
    let gallery = write_gallery(&manifest, out)?;

    if !a.run.quiet {
        let run = manifest.run(&layer_name, &settings, a.run.seed);
        if let Some(run) = run {
            let gains: Vec<f32> = run
                .filters
                .iter()
                .filter(|r| filters.contains(&r.filter))
                .map(|r| r.final_activation - r.initial_activation)
                .collect();
            let mean_gain = gains.iter().sum::<f32>() / gains.len().max(1) as f32;
            eprintln!(
                "{} filters of {} {layer_name} ({rendering} rendered, {skipped} already done); mean activation gain {mean_gain:.3}",
                filters.len(),
                a.model.model
            );
        }
        eprintln!("grid:     {}", out.join(&grid_rel).display());
        eprintln!("manifest: {}", manifest_path.display());
        eprintln!("gallery:  {}", gallery.display());
    }
    Ok(())
}

/// A bar with ETA on a terminal; a line every few seconds otherwise; nothing with --quiet.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    start: Instant,
    /// When the last plain line was printed, and the most steps reported (renders side by side
    /// report out of order).
    last: Mutex<(Instant, usize)>,
}

impl Progress {
    pub fn new(quiet: bool, total_steps: usize, skipped: usize) -> Self {
        let now = Instant::now();
        if quiet {
            return Progress {
                bar: None,
                plain: false,
                start: now,
                last: Mutex::new((now, 0)),
            };
        }
        if skipped > 0 {
            eprintln!("resuming: {skipped} filters already rendered with these settings");
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total_steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} image-steps  ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress {
                bar: Some(bar),
                plain: false,
                start: now,
                last: Mutex::new((now, 0)),
            }
        } else {
            Progress {
                bar: None,
                plain: true,
                start: now,
                last: Mutex::new((now, 0)),
            }
        }
    }

    pub fn step(&self, done: usize, total: usize) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if done <= last.1 {
            return;
        }
        last.1 = done;
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
        } else if self.plain && (last.0.elapsed() >= Duration::from_secs(5) || done == total) {
            last.0 = Instant::now();
            let elapsed = self.start.elapsed().as_secs_f64();
            let eta = elapsed / done.max(1) as f64 * (total - done) as f64;
            eprintln!("{done}/{total} image-steps, {elapsed:.0} s elapsed, ETA {eta:.0} s");
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_images_go_side_by_side_one_per_thread() {
        let model = Model::bundled("efficientnet_lite0").expect("bundled model");
        let layer = model.layer("_blocks.8").expect("layer");
        let threads = rayon::current_num_threads();
        let plan =
            |batch, requested, groups| plan_jobs(&model, layer, (64, 64), batch, requested, groups);
        // Small images need little memory, so only the threads and the work limit the default
        // (where free memory cannot be read, one at a time).
        let side_by_side = if available_memory().is_some() {
            threads.min(5)
        } else {
            1
        };
        assert_eq!(plan(1, None, 5).unwrap(), side_by_side);
        assert_eq!(plan(1, None, 1).unwrap(), 1);
        // Lite0's ops are small: its batches go side by side too.
        assert_eq!(plan(2, None, 5).unwrap(), side_by_side);
        // VGG16's are not: a batch of several images spreads its work over the threads.
        let vgg = deepvis_models::Model::build("vgg16", deepvis_models::WeightsFrom::Random(0))
            .expect("vgg16");
        let conv = vgg.layer("10").expect("layer");
        assert_eq!(plan_jobs(&vgg, conv, (64, 64), 8, None, 5).unwrap(), 1);
        assert_eq!(
            plan_jobs(&vgg, conv, (64, 64), 1, None, 5).unwrap(),
            side_by_side
        );
        // Asked for: as many as there are batches, at most.
        assert_eq!(plan(1, Some(3), 2).unwrap(), 2);
        assert_eq!(plan(4, Some(2), 9).unwrap(), 2);
        let err = plan(1, Some(0), 2).unwrap_err().to_string();
        assert!(err.contains("--jobs must be at least 1"), "{err}");
    }
}
