//! `deepvis render`: any objective (a channel, a neuron, a class, a direction, a weighted sum,
//! diversity across a batch), and `deepvis dream`: DeepDream on a photo.

use crate::filters::RunArgs;
use crate::settings::RenderArgs;
use crate::source::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use deepvis_output::{
    grid_sheet, load_rgb, save_planar_image, write_gallery, FilterRecord, Manifest, RgbImage,
};
use deepvis_render::render::{dream as deep_dream, render as run_render, DreamSettings, Init};
use deepvis_render::{BatchObjective, Objective};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct RenderCmdArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// What to maximize. `LAYER:N` is channel N of LAYER; also `neuron(LAYER:N[, X, Y])`,
    /// `layer(LAYER)` (DeepDream: mean of squares), `class(285)` or `class("Egyptian cat")`,
    /// `direction(LAYER, FILE)`, `diversity(LAYER)`, numbers, + - * and parentheses, e.g.
    /// "_blocks.8:33 - 0.5 * _blocks.8:34" or "_blocks.12:7 + 0.1 * diversity(_blocks.12)".
    #[arg(long)]
    pub objective: String,
    /// Images rendered together for this objective (use with diversity for distinct images).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[command(flatten)]
    pub render: RenderArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// A directory name for an objective: its text with anything unusual replaced.
fn slug(text: &str) -> String {
    deepvis_output::path_component(&text.chars().take(80).collect::<String>())
}

pub fn render(a: RenderCmdArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    a.render.validate()?;
    let loaded = a.model.load_at(a.render.size)?;
    let model = &loaded.model;
    let input = crate::filters::input_record(model, crate::source::is_onnx_path(&a.model.model))?;
    let size = a.render.size_or(model.info.native_size);
    let settings = a.render.settings(a.run.seed, size)?;
    let objective = Objective::parse(&a.objective, model)
        .map_err(|e| anyhow::anyhow!("{}", one_line(&e.to_string())))?;
    let described = objective.to_string();
    crate::filters::plan_batch(
        model,
        objective.nodes().into_iter().max().unwrap_or(0),
        size,
        Some(a.batch),
        a.batch,
    )?;

    let out = &a.run.out;
    let (manifest_path, mut manifest) =
        crate::filters::open_manifest(out, &a.model.model, &loaded)?;
    let mut run_settings = a.render.manifest_settings(&settings);
    run_settings["batch"] = a.batch.into();
    let dir = Path::new(&deepvis_output::path_component(&model.info.name))
        .join("objectives")
        .join(slug(&described));
    deepvis_output::ensure_writable_dir(&out.join(&dir))?;
    let start = Instant::now();
    let bar = crate::filters::Progress::new(a.run.quiet, settings.most_steps() * a.batch, 0);
    let init = match &a.render.init {
        Some(p) => Init::Images(crate::quality::repeat(
            &crate::quality::load_photo(p, model, settings.octaves[0].hw())?,
            a.batch,
        )),
        None => Init::Random,
    };
    let objective = BatchObjective::Shared(objective);
    crate::outcome::install_stop_handler();
    let result = run_render(model, &objective, a.batch, &settings, init, |p| {
        bar.step(p.step * a.batch, p.total * a.batch)
    })
    .map_err(|e| match e {
        // Nothing of a shared-objective render is saved before it ends.
        deepvis_render::RenderError::Interrupted => crate::outcome::Interrupted {
            saved: 0,
            total: a.batch,
        }
        .into(),
        e => anyhow::Error::from(e),
    })?;
    bar.finish();
    let scores = crate::quality::score_records(model, &objective, &result, a.render.score_views)?;
    let seconds = start.elapsed().as_secs_f64() / a.batch as f64;
    let (c, h, w) = (result.channels, result.height, result.width);
    let per = c * h * w;
    if let Some(input) = input {
        manifest.set_input(&described, &run_settings, a.run.seed, input);
    }
    let mut tiles = Vec::new();
    for b in 0..a.batch {
        let rel = dir.join(format!("image_{b:02}.png"));
        let npy = save_planar_image(
            &out.join(&rel),
            &result.images[b * per..(b + 1) * per],
            c,
            h,
            w,
        )?;
        manifest.upsert_filter(
            &described,
            &run_settings,
            a.run.seed,
            FilterRecord {
                filter: b,
                png: rel.to_string_lossy().into_owned(),
                npy: npy.map(|_| rel.with_extension("npy").to_string_lossy().into_owned()),
                initial_activation: result.initial[b],
                final_activation: result.final_values[b],
                seconds,
                diverged: result.diverged[b],
                score: scores[b].clone(),
                steps: settings.adaptive.as_ref().map(|_| result.steps[b]),
                gif: crate::quality::write_frames(out, &rel, &result, b)?,
                diversity: None,
            },
        );
        tiles.push((
            format!("image {b}"),
            crate::filters::grid_tile(&out.join(&rel))?,
        ));
    }
    let grid_rel = dir.join("grid.png");
    let refs: Vec<(String, &RgbImage)> = tiles.iter().map(|(l, t)| (l.clone(), t)).collect();
    grid_sheet(&refs, None, None).save_png(&out.join(&grid_rel))?;
    manifest.set_grid(
        &described,
        &run_settings,
        a.run.seed,
        grid_rel.to_string_lossy(),
    );
    // Re-read under the lock, so runs writing into this folder at the same time keep theirs.
    let manifest = Manifest::update(&manifest_path, &manifest, |m| m.merge_from(&manifest))?;
    write_gallery(&manifest, out)?;
    if !a.run.quiet {
        for b in 0..a.batch {
            eprintln!(
                "{described} image {b}: {:.3} → {:.3}",
                result.initial[b], result.final_values[b]
            );
        }
        eprintln!("images:   {}", out.join(&dir).display());
        eprintln!("manifest: {}", manifest_path.display());
    }
    let diverged: Vec<String> = (0..a.batch)
        .filter_map(|b| Some(format!("image {b} (step {})", result.diverged[b]?)))
        .collect();
    if !diverged.is_empty() {
        return Err(crate::outcome::Diverged { which: diverged }.into());
    }
    Ok(())
}

/// Parse errors come with a caret line under the source; on one line they read as "… at byte N".
fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

#[derive(Args, Debug)]
pub struct DreamArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The photo (PNG or JPEG); the result has its size.
    #[arg(long)]
    pub image: PathBuf,
    /// Layer whose activations are amplified (mean of squares).
    #[arg(long, required_unless_present = "objective")]
    pub layer: Option<String>,
    /// Any objective instead of `layer(LAYER)`, in the grammar of `deepvis render`.
    #[arg(long)]
    pub objective: Option<String>,
    /// Number of scales, the photo's own included.
    #[arg(long, default_value_t = 4)]
    pub octaves: usize,
    /// Ratio between successive scales.
    #[arg(long, default_value_t = 1.4)]
    pub octave_scale: f32,
    #[arg(long, default_value_t = 10)]
    pub steps_per_octave: usize,
    /// RMS change of the image per step, in [0, 1] units.
    #[arg(long, default_value_t = 0.02)]
    pub lr: f32,
    /// Random seed of the jitter.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn dream(a: DreamArgs) -> Result<()> {
    let settings = DreamSettings {
        octaves: a.octaves,
        octave_scale: a.octave_scale,
        steps_per_octave: a.steps_per_octave,
        lr: a.lr,
        seed: a.seed,
        ..DreamSettings::default()
    };
    settings.validate().map_err(anyhow::Error::msg)?;
    let loaded = a.model.load()?;
    let model = &loaded.model;
    let spec = match (&a.objective, &a.layer) {
        (Some(o), _) => o.clone(),
        (None, Some(l)) => format!("layer(\"{l}\")"),
        (None, None) => bail!("pass --layer LAYER or --objective EXPR"),
    };
    let objective = Objective::parse(&spec, model)
        .map_err(|e| anyhow::anyhow!("{}", one_line(&e.to_string())))?;
    let (rgb, h, w) = load_rgb(&a.image)?;
    let c = model.info.channels;
    let photo = photo_channels(&rgb, c, h * w)?;
    crate::filters::plan_batch(
        model,
        objective.nodes().into_iter().max().unwrap_or(0),
        (h, w),
        Some(1),
        1,
    )
    .context("the photo is too large for this layer")?;
    let bar = crate::filters::Progress::new(a.quiet, a.octaves * a.steps_per_octave, 0);
    crate::outcome::install_stop_handler();
    let result = deep_dream(model, &objective, &photo, h, w, &settings, |p| {
        bar.step(p.step, p.total)
    })
    .map_err(|e| match e {
        deepvis_render::RenderError::Interrupted => {
            crate::outcome::Interrupted { saved: 0, total: 1 }.into()
        }
        e => anyhow::Error::from(e),
    })?;
    bar.finish();
    match c {
        3 => RgbImage::from_planar_f32(&result, h, w).save_png(&a.out)?,
        _ => {
            if let Some(npy) = save_planar_image(&a.out, &result, c, h, w)? {
                if !a.quiet {
                    eprintln!("wrote {} (all {c} channels)", npy.display());
                }
            }
        }
    }
    if !a.quiet {
        eprintln!("wrote {} ({w}×{h})", a.out.display());
    }
    Ok(())
}

/// A photo as the model's input channels (see [`deepvis_render::photo_channels`]).
pub fn photo_channels(rgb: &[f32], channels: usize, plane: usize) -> Result<Vec<f32>> {
    Ok(deepvis_render::photo_channels(rgb, channels, plane)?)
}
