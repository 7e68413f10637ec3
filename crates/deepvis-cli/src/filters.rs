//! `deepvis filters`: the original tool's job. Renders filters `start..end` of a layer, writes
//! one PNG per filter, a labeled grid sheet, a manifest and a gallery page; resumes where an
//! interrupted run stopped.

use crate::settings::RenderArgs;
use crate::shard::{Shard, ShardArgs};
use crate::source::{Loaded, ModelArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use deepvis_models::{size_text, Model};
use deepvis_output::{
    grid_sheet, load_rgb, save_planar_image, DiversityRecord, FilterRecord, InputRecord, Manifest,
    RgbImage, ScoreRecord, MANIFEST_FILE, PARTS_DIR,
};
use deepvis_render::render::{render, seed_init_shaped, Init, RenderOutput};
use deepvis_render::{available_memory, check_fits, pass_bytes};
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
    pub job: JobArgs,
}

/// How `filters` and `atlas` render their layers and where the results go.
#[derive(Args, Debug)]
pub struct JobArgs {
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
    #[command(flatten)]
    pub diversity: DiversityArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
}

impl JobArgs {
    /// Checks what needs no model, before anything loads; returns this process's shard.
    pub fn validate(&self) -> Result<Option<Shard>> {
        self.render.validate()?;
        if self.batch == Some(0) {
            bail!("--batch must be at least 1");
        }
        self.diversity.validate(self.batch)?;
        self.shard.resolve()
    }
}

/// Several distinct images per filter; shared by `filters` and `atlas`.
#[derive(Args, Clone, Copy, Debug)]
pub struct DiversityArgs {
    /// Render N distinct images per filter together, with Lucid's diversity term (their
    /// mutual similarity goes into the manifest).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub diversity: usize,
    /// Weight of the diversity term, in Lucid's scale (its `channel − 100·diversity`).
    #[arg(long, default_value_t = 100.0, value_name = "W")]
    pub diversity_weight: f32,
}

impl DiversityArgs {
    pub fn validate(&self, batch: Option<usize>) -> Result<()> {
        if self.diversity == 0 || self.diversity > 64 {
            bail!("--diversity takes 1 to 64 images per filter");
        }
        if !(self.diversity_weight.is_finite() && self.diversity_weight >= 0.0) {
            bail!("--diversity-weight must be a non-negative number");
        }
        if self.diversity > 1 && batch.is_some() {
            bail!("--diversity N renders each filter's N images as one batch; drop --batch");
        }
        Ok(())
    }
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
    let manifest = match check_manifest(out, model, loaded)? {
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

/// What an output directory holds (its manifest and every shard's part), after checking that it
/// is of this model and these weights.
pub fn check_manifest(out: &Path, model: &str, loaded: &Loaded) -> Result<Option<Manifest>> {
    let path = out.join(MANIFEST_FILE);
    match Manifest::load_dir(out)? {
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
        m => Ok(m),
    }
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
    let per_image = check_fits(model, layer, (h, w), requested)?;
    if let (None, Some(avail)) = (requested, available_memory()) {
        let fit = (avail / 2 / per_image.max(1)).max(1) as usize;
        return Ok(fit.min(default_batch(per_image)).min(count));
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
    let filters = filter_list(&a)?;
    let shard = a.job.validate()?;
    let loaded = a.model.load_at(a.job.render.size)?;
    let ctx = Ctx::new(&a.model.model, &loaded, &a.job, shard)?;
    let plan = ctx.plan_layer(&a.layer, Some(filters))?;
    let mut units = 0;
    let outcome = ctx.render_layer(&plan, &mut units)?;
    if shard.is_some() {
        ctx.report_shard(&[outcome])?;
        return Ok(());
    }
    let grid = ctx.write_grid(&plan)?;
    let manifest = ctx.finish()?;
    let diverged: Vec<String> = manifest
        .run(&plan.layer_name, &plan.settings, a.job.run.seed)
        .map(|r| {
            r.filters
                .iter()
                .filter(|r| plan.filters.contains(&r.filter))
                .filter_map(|r| Some(format!("filter {} (step {})", r.filter, r.diverged?)))
                .collect()
        })
        .unwrap_or_default();
    if !a.job.run.quiet {
        let run = manifest.run(&plan.layer_name, &plan.settings, a.job.run.seed);
        if let Some(run) = run {
            let gains: Vec<f32> = run
                .filters
                .iter()
                .filter(|r| plan.filters.contains(&r.filter) && r.diverged.is_none())
                .map(|r| r.final_activation - r.initial_activation)
                .collect();
            let mean_gain = gains.iter().sum::<f32>() / gains.len().max(1) as f32;
            eprintln!(
                "{} filters of {} {} ({} rendered, {} already done); mean activation gain {mean_gain:.3}",
                plan.filters.len(),
                a.model.model,
                plan.layer_name,
                outcome.rendered,
                outcome.skipped
            );
        }
        eprintln!("grid:     {}", ctx.out.join(&grid).display());
        eprintln!("manifest: {}", ctx.out.join(MANIFEST_FILE).display());
        eprintln!(
            "gallery:  {}",
            ctx.out.join(deepvis_output::GALLERY_FILE).display()
        );
    }
    if !diverged.is_empty() {
        return Err(crate::outcome::Diverged { which: diverged }.into());
    }
    Ok(())
}

/// What one run (`filters`, or `atlas` over many layers) renders with: the model, settings and
/// where results go. Shared so that a layer renders the same whichever command asks.
pub struct Ctx<'a> {
    pub model_arg: &'a str,
    pub loaded: &'a Loaded,
    pub render: &'a RenderArgs,
    pub batch: Option<usize>,
    pub jobs: Option<usize>,
    pub seed: u64,
    pub out: &'a Path,
    pub quiet: bool,
    pub shard: Option<Shard>,
    /// Images per filter, and the weight of the term that keeps them apart.
    diversity: DiversityArgs,
    input: Option<InputRecord>,
    /// A new manifest's header, for a folder that has none yet.
    fresh: Manifest,
    /// What the folder held when this run started (manifest and every shard's part), to skip
    /// what is done.
    done: Manifest,
    /// This shard's own part (sharded runs only): written by this process alone.
    part: Mutex<Option<Manifest>>,
}

/// One layer's share of a run: which filters, with which settings, in which fixed groups.
pub struct LayerPlan {
    pub layer: usize,
    pub layer_name: String,
    pub layer_dir: PathBuf,
    pub filters: Vec<usize>,
    /// What identifies the results in the manifest.
    pub settings: serde_json::Value,
    base_settings: deepvis_render::RenderSettings,
    seed_method: bool,
    /// Filters per batch (with diversity: one filter, its images together).
    batch: usize,
    size: (usize, usize),
    /// `--init`: the photo as the model's input at the first octave's size.
    photo: Option<Vec<f32>>,
}

/// What a layer's rendering did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerOutcome {
    pub rendered: usize,
    pub skipped: usize,
}

impl<'a> Ctx<'a> {
    pub fn new(
        model_arg: &'a str,
        loaded: &'a Loaded,
        job: &'a JobArgs,
        shard: Option<Shard>,
    ) -> Result<Self> {
        let run = &job.run;
        let model = &loaded.model;
        let input = input_record(model, crate::source::is_onnx_path(model_arg))?;
        let out = run.out.as_path();
        let fresh = Manifest::new(
            format!("deepvis {}", env!("CARGO_PKG_VERSION")),
            model_arg,
            Some(loaded.weights_label.clone()),
            loaded.weights_sha256.clone(),
        );
        let done = check_manifest(out, model_arg, loaded)?.unwrap_or_else(|| fresh.clone());
        let part = match shard {
            Some(s) => {
                // Not done again until this run finishes (a rerun after a kill, or new work).
                let marker = out.join(PARTS_DIR).join(s.done_name());
                if marker.exists() {
                    std::fs::remove_file(&marker).with_context(|| {
                        format!(
                            "could not remove {}; check the folder's permissions",
                            marker.display()
                        )
                    })?;
                }
                let path = out.join(PARTS_DIR).join(s.part_name());
                Some(Manifest::load(&path)?.unwrap_or_else(|| fresh.clone()))
            }
            None => None,
        };
        Ok(Ctx {
            model_arg,
            loaded,
            render: &job.render,
            batch: job.batch,
            jobs: job.jobs,
            seed: run.seed,
            out,
            quiet: run.quiet,
            shard,
            diversity: job.diversity,
            input,
            fresh,
            done,
            part: Mutex::new(part),
        })
    }

    /// Resolves a layer and the filters to render there (None: every channel).
    pub fn plan_layer(&self, spec: &str, filters: Option<Vec<usize>>) -> Result<LayerPlan> {
        let model = &self.loaded.model;
        let layer = model.layer(spec)?;
        let layer_name = model.layer_name(spec, layer);
        let size = self.render.size_or(model.info.native_size);
        let channels = model.channels_at(layer, size)?;
        let filters = filters.unwrap_or_else(|| (0..channels).collect());
        if let Some(&bad) = filters.iter().find(|&&f| f >= channels) {
            bail!(
                "filter {bad} is out of range: layer {layer_name} of {} has {channels} filters (0..{channels})",
                self.model_arg
            );
        }
        let d = self.diversity.diversity;
        let diverse = d > 1;
        let batch = if diverse {
            plan_batch(model, layer, size, Some(d), d)?;
            1
        } else {
            plan_batch(model, layer, size, self.batch, filters.len())?
        };
        let base_settings = self.render.settings(self.seed, size)?;
        let seed_method = self.render.is_seed_method(&base_settings);
        if diverse && seed_method {
            bail!("--diversity needs an optimizer that sees the batch; use a Fourier preset, not the seed method");
        }
        let photo = match &self.render.init {
            Some(p) => Some(crate::quality::load_photo(
                p,
                model,
                base_settings.octaves[0].hw(),
            )?),
            None => None,
        };
        let mut settings = self.render.manifest_settings(&base_settings);
        if !seed_method {
            // Transforms draw per batch, so the grouping is part of what reproduces an image.
            settings["batch"] = json!(batch);
        }
        if diverse {
            settings["diversity"] = json!({"images": d, "weight": self.diversity.diversity_weight});
        }
        if self.render.frames > 0 {
            settings["frames"] = json!(self.render.frames);
        }
        // Layer names of ONNX models contain slashes: one path component each, inside --out.
        let layer_dir = Path::new(&deepvis_output::path_component(&model.info.name))
            .join(deepvis_output::path_component(&layer_name));
        deepvis_output::ensure_writable_dir(&self.out.join(&layer_dir))?;
        Ok(LayerPlan {
            layer,
            layer_name,
            layer_dir,
            filters,
            settings,
            base_settings,
            seed_method,
            batch,
            size,
            photo,
        })
    }

    fn png_rel(plan: &LayerPlan, f: usize) -> PathBuf {
        plan.layer_dir.join(format!("filter_{f:04}.png"))
    }

    /// A run's images are for its input: another normalization of the same settings is redone.
    fn is_done(&self, plan: &LayerPlan, f: usize) -> bool {
        let m = &self.done;
        m.find(&plan.layer_name, &plan.settings, self.seed, f)
            .is_some()
            && m.run(&plan.layer_name, &plan.settings, self.seed)
                .is_some_and(|r| r.input == self.input)
            && self.out.join(Self::png_rel(plan, f)).is_file()
    }

    /// Renders this process's share of a layer's filters and records each batch as it finishes.
    /// `units` counts work units over the whole run (all layers), so that shards split an atlas
    /// evenly: unit k belongs to shard k mod N.
    pub fn render_layer(&self, plan: &LayerPlan, units: &mut usize) -> Result<LayerOutcome> {
        let model = &self.loaded.model;
        let in_channels = model.info.channels;
        let (seed, size) = (self.seed, plan.size);
        // The seed method treats every image on its own, so any grouping gives the same images:
        // the unit is one filter. Other methods share random transforms within a batch: groups
        // are fixed slices of the whole filter list, and a group with anything missing is
        // rendered again as a whole.
        let unit_groups: Vec<Vec<usize>> = if plan.seed_method {
            plan.filters.iter().map(|&f| vec![f]).collect()
        } else {
            plan.filters
                .chunks(plan.batch)
                .map(<[usize]>::to_vec)
                .collect()
        };
        let first_unit = *units;
        *units += unit_groups.len();
        let mine: Vec<Vec<usize>> = unit_groups
            .into_iter()
            .enumerate()
            .filter(|(k, _)| self.shard.is_none_or(|s| s.owns(first_unit + k)))
            .map(|(_, g)| g)
            .collect();
        let groups: Vec<Vec<usize>> = if plan.seed_method {
            let todo: Vec<usize> = mine
                .iter()
                .flatten()
                .copied()
                .filter(|&f| !self.is_done(plan, f))
                .collect();
            todo.chunks(plan.batch).map(<[usize]>::to_vec).collect()
        } else {
            mine.into_iter()
                .filter(|g| g.iter().any(|&f| !self.is_done(plan, f)))
                .collect()
        };
        let rendering: usize = groups.iter().map(Vec::len).sum();
        let skipped = plan
            .filters
            .iter()
            .filter(|&&f| self.is_done(plan, f))
            .count();
        let outcome = LayerOutcome {
            rendered: rendering,
            skipped,
        };
        let per_filter = self.diversity.diversity;
        let steps = per_filter * plan.base_settings.most_steps();
        let progress = Progress::new(self.quiet, rendering * steps, skipped);
        if groups.is_empty() {
            progress.finish();
            return Ok(outcome);
        }

        let jobs = plan_jobs(model, plan.layer, size, plan.batch, self.jobs, groups.len())?;
        deepvis_engine::set_concurrent_passes(jobs.max(1));
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
                .map(|&f| {
                    let o = Objective::channel(model, &plan.layer_name, f)?;
                    Ok::<_, deepvis_render::RenderError>(if crate::outcome::poisoned(f) {
                        Objective::Mul(Box::new(Objective::Const(f32::NAN)), Box::new(o))
                    } else {
                        o
                    })
                })
                .collect::<Result<_, _>>()?;
            let scored = BatchObjective::PerImage(objectives.clone());
            let objective = if per_filter > 1 {
                // Lucid's `channel − 100·diversity` summed its mean-over-pairs term over the
                // batch; ours is per image over the n−1 others, hence the factor.
                let w = self.diversity.diversity_weight * (per_filter - 1) as f32;
                let div = Objective::parse(&format!("diversity({:?})", plan.layer_name), model)
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
            let mut settings_g = plan.base_settings.clone();
            let n = targets.len();
            if !plan.seed_method {
                settings_g.seed = deepvis_render::options::group_seed(seed, group[0]);
            }
            let init = match &plan.photo {
                Some(p) => Init::Images(crate::quality::repeat(p, n)),
                None if plan.seed_method => {
                    Init::Images(seed_init_shaped([in_channels, size.0, size.1], seed, group))
                }
                None => Init::Random,
            };
            // Steps reported count every image of the group (a filter's diversity images too).
            let mut reported = 0;
            let out = render(model, &objective, n, &settings_g, init, |p| {
                let done = done_steps.fetch_add((p.step - reported) * n, Ordering::Relaxed)
                    + (p.step - reported) * n;
                reported = p.step;
                progress.step(done, rendering * steps)
            })?;
            let scores =
                crate::quality::score_records(model, &scored, &out, self.render.score_views)?;
            Ok((out, scores))
        };
        // From here Ctrl-C stops after the current step and saves (before, during loading or a
        // download, it kills as usual).
        crate::outcome::install_stop_handler();
        // Groups are independent renders, so `jobs` of them may run side by side, one per
        // thread; each image comes out the same either way.
        for wave in groups.chunks(jobs) {
            let start = Instant::now();
            let results: Vec<Result<Rendered>> = wave.par_iter().map(render_group).collect();
            let images: usize = wave.iter().map(Vec::len).sum();
            let seconds = start.elapsed().as_secs_f64() / images as f64;
            // A failed render leaves the others of its wave to be written first: what is done
            // stays.
            let mut failure = None;
            let mut new = self.fresh.clone();
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
                if let Some(input) = &self.input {
                    new.set_input(&plan.layer_name, &plan.settings, seed, input.clone());
                }
                for (g, &f) in group.iter().enumerate() {
                    let b = g * per_filter;
                    let rel = Self::png_rel(plan, f);
                    let npy = save_planar_image(
                        &self.out.join(&rel),
                        &result.images[b * per..(b + 1) * per],
                        c,
                        h,
                        w,
                    )?;
                    let gif = crate::quality::write_frames(self.out, &rel, &result, b)?;
                    let diversity = if per_filter > 1 {
                        Some(self.diversity_record(plan, f, &rel, &result, b)?)
                    } else {
                        None
                    };
                    new.upsert_filter(
                        &plan.layer_name,
                        &plan.settings,
                        seed,
                        FilterRecord {
                            filter: f,
                            png: rel.to_string_lossy().into_owned(),
                            npy: npy
                                .map(|_| rel.with_extension("npy").to_string_lossy().into_owned()),
                            initial_activation: result.initial[b],
                            final_activation: result.final_values[b],
                            seconds,
                            diverged: result.diverged[b],
                            score: scores[b].clone(),
                            steps: plan
                                .base_settings
                                .adaptive
                                .as_ref()
                                .map(|_| result.steps[b]),
                            gif,
                            diversity,
                        },
                    );
                }
            }
            // After each batch, so an interrupted run resumes from here.
            let recorded = self.record(&new)?;
            if let Some(e) = failure {
                progress.finish();
                if matches!(
                    e.downcast_ref::<deepvis_render::RenderError>(),
                    Some(deepvis_render::RenderError::Interrupted)
                ) {
                    let saved = plan
                        .filters
                        .iter()
                        .filter(|&&f| {
                            recorded
                                .find(&plan.layer_name, &plan.settings, seed, f)
                                .is_some()
                        })
                        .count();
                    let total = plan.filters.len();
                    return Err(crate::outcome::Interrupted { saved, total }.into());
                }
                return Err(e);
            }
        }
        progress.finish();
        Ok(outcome)
    }

    /// Saves a filter's other diversity images (`filter_NNNN_dK.png`) beside its first, `rel`,
    /// and measures how alike the `per_filter` images from `b` on are.
    fn diversity_record(
        &self,
        plan: &LayerPlan,
        f: usize,
        rel: &Path,
        result: &RenderOutput,
        b: usize,
    ) -> Result<DiversityRecord> {
        let per_filter = self.diversity.diversity;
        let (c, h, w) = (result.channels, result.height, result.width);
        let per = c * h * w;
        let mut images = vec![rel.to_string_lossy().into_owned()];
        for k in 1..per_filter {
            let r = plan.layer_dir.join(format!("filter_{f:04}_d{k}.png"));
            let i = b + k;
            save_planar_image(
                &self.out.join(&r),
                &result.images[i * per..(i + 1) * per],
                c,
                h,
                w,
            )?;
            crate::quality::write_frames(self.out, &r, result, i)?;
            images.push(r.to_string_lossy().into_owned());
        }
        let all = &result.images[b * per..(b + per_filter) * per];
        let similarity = deepvis_render::score::gram_similarity(
            &self.loaded.model,
            plan.layer,
            all,
            per_filter,
            (h, w),
        )?;
        let pairs: Vec<f32> = (0..per_filter)
            .flat_map(|i| (i + 1..per_filter).map(move |j| (i, j)))
            .map(|(i, j)| similarity[i][j])
            .collect();
        Ok(DiversityRecord {
            images,
            mean_similarity: pairs.iter().sum::<f32>() / pairs.len().max(1) as f32,
            similarity,
        })
    }

    /// Adds `new` records to this process's manifest: its own part for a shard, else the
    /// folder's manifest, re-read and written under its lock so concurrent runs keep theirs.
    fn record(&self, new: &Manifest) -> Result<Manifest> {
        let mut part = self.part.lock().unwrap_or_else(|p| p.into_inner());
        match (&mut *part, self.shard) {
            (Some(part), Some(shard)) => {
                part.merge_from(new);
                part.save(&self.out.join(PARTS_DIR).join(shard.part_name()))?;
                Ok(part.clone())
            }
            _ => Ok(Manifest::update(
                &self.out.join(MANIFEST_FILE),
                &self.fresh,
                |m| m.merge_from(new),
            )?),
        }
    }

    /// The grid sheet of a layer's filters, recorded in the manifest; returns its path in --out.
    pub fn write_grid(&self, plan: &LayerPlan) -> Result<PathBuf> {
        let grid_rel = plan.layer_dir.join("grid.png");
        write_grid_sheet(
            self.out,
            &grid_rel,
            plan.filters.iter().map(|&f| (f, Self::png_rel(plan, f))),
        )?;
        let mut new = self.fresh.clone();
        new.set_grid(
            &plan.layer_name,
            &plan.settings,
            self.seed,
            grid_rel.to_string_lossy(),
        );
        self.record(&new)?;
        Ok(grid_rel)
    }

    /// Writes the gallery and site of everything the folder holds; returns the manifest.
    pub fn finish(&self) -> Result<Manifest> {
        crate::merge::publish(self.out)
    }

    /// Marks this shard done and reports it. The shard that finds every shard of its layout
    /// done assembles the manifest, grids and site as `deepvis merge` would, so a job array
    /// needs no step after it. Each shard writes its marker before it looks at the others', so
    /// however they interleave at least the last to finish sees them all (two that finish
    /// together may both merge: merging is idempotent and runs under the folder's lock).
    pub fn report_shard(&self, outcomes: &[LayerOutcome]) -> Result<()> {
        let Some(s) = self.shard else {
            return Ok(());
        };
        let dir = self.out.join(PARTS_DIR);
        deepvis_output::write_atomic(&dir.join(s.done_name()), b"done\n")?;
        let all_done =
            (0..s.count).all(|index| dir.join(Shard { index, ..s }.done_name()).is_file());
        if all_done {
            crate::merge::publish(self.out)?;
        }
        if self.quiet {
            return Ok(());
        }
        let rendered: usize = outcomes.iter().map(|o| o.rendered).sum();
        eprintln!(
            "shard {}/{}: {rendered} filters rendered; manifest part {}",
            s.index,
            s.count,
            dir.join(s.part_name()).display()
        );
        if all_done {
            eprintln!(
                "every shard is done: manifest, grids and site assembled in {}",
                self.out.display()
            );
        } else {
            eprintln!(
                "the last shard to finish assembles the manifest and site (or run: deepvis merge --out {})",
                self.out.display()
            );
        }
        Ok(())
    }
}

/// A grid sheet of `(filter, png)` tiles (paths relative to `out`) at `grid_rel`.
pub fn write_grid_sheet(
    out: &Path,
    grid_rel: &Path,
    tiles: impl Iterator<Item = (usize, PathBuf)>,
) -> Result<()> {
    let mut images = Vec::new();
    for (f, png) in tiles {
        images.push((format!("filter {f}"), grid_tile(&out.join(png))?));
    }
    let refs: Vec<(String, &RgbImage)> = images.iter().map(|(l, t)| (l.clone(), t)).collect();
    grid_sheet(&refs, None, None).save_png(&out.join(grid_rel))?;
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
