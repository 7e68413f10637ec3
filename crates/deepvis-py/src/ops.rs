//! What the Python calls do, in Rust terms: load, render, filters, dream, probe, images. Thin
//! over the library crates (the same calls the CLI makes); the pyo3 layer only converts.

use crate::job::{Ctl, Failure, Job, Kind, Output};
use deepvis_engine::Tensor;
use deepvis_models::source::{Loaded, Source};
use deepvis_models::{Model, ModelError};
use deepvis_output::{grid_sheet, load_rgb, resize_bilinear_planar, RgbImage};
use deepvis_render::options::{group_seed, is_seed_method, RenderOptions};
use deepvis_render::render::{dream_until, render_until, seed_init_shaped, DreamSettings, Init};
use deepvis_render::RenderOutput;
use deepvis_render::{model_normalization, normalize, BatchObjective, Objective, RenderError};
use rayon::prelude::*;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An error and its causes on one line, each cause once (as the CLI prints them).
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut msg = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        let text = c.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
        cur = c.source();
    }
    // Parse errors come with a caret line under the source; the first line says it all.
    msg.lines().next().unwrap_or("").to_string()
}

pub fn model_failure(e: ModelError) -> Failure {
    let kind = match &e {
        ModelError::UnknownModel(_) | ModelError::Layer(_) | ModelError::Source(_) => Kind::Value,
        ModelError::Weights(w) if is_not_found(w) => Kind::NotFound,
        _ => Kind::Other,
    };
    Failure::new(kind, one_line(&e))
}

fn is_not_found(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::NotFound;
        }
        cur = c.source();
    }
    false
}

pub fn render_failure(e: RenderError) -> Failure {
    let kind = match &e {
        RenderError::Interrupted => Kind::Cancelled,
        RenderError::Invalid(_) | RenderError::Spec(_) => Kind::Value,
        RenderError::Engine(_) => Kind::Other,
    };
    Failure::new(kind, one_line(&e))
}

pub fn value(msg: impl Into<String>) -> Failure {
    Failure::new(Kind::Value, msg)
}

fn other(e: &(dyn std::error::Error + 'static)) -> Failure {
    let kind = if is_not_found(e) {
        Kind::NotFound
    } else {
        Kind::Other
    };
    Failure::new(kind, one_line(e))
}

/// Loads a model; `notes` receives what the CLI would print as notes.
pub fn load(
    source: &Source,
    size: Option<(usize, usize)>,
    notes: &mut Vec<String>,
) -> Result<Loaded, Failure> {
    let result = source.load_at(size, false, &mut |n: &str| notes.push(n.to_string()));
    result.map_err(|e| {
        let mut f = model_failure(e);
        // A file the user named that is not there is a FileNotFoundError, whatever reader
        // noticed it first.
        let named = if deepvis_models::source::is_onnx_path(&source.model) {
            Some(Path::new(&source.model).to_path_buf())
        } else {
            source.weights.clone()
        };
        if named.is_some_and(|p| !p.exists()) {
            f.kind = Kind::NotFound;
        }
        f
    })
}

/// Sets the arithmetic of the convolutions for `model` ("auto" checks bf16 against float32 on
/// it, as the CLI's `--precision auto`); a note where the choice falls back to float32.
pub fn set_precision(name: &str, model: &Model) -> Result<Option<String>, Failure> {
    use deepvis_render::precision::{choose_precision, PrecisionChoice};
    let choice = PrecisionChoice::parse(name).ok_or_else(|| {
        value(format!(
            "precision must be 'auto', 'f32' or 'bf16', not '{name}'"
        ))
    })?;
    let chosen = choose_precision(model, choice).map_err(|e| other(&e))?;
    Ok(chosen
        .note
        .map(|n| n.strip_prefix("note: ").unwrap_or(&n).to_string()))
}

/// Start images given by the user (`[n, c, h, w]` in [0, 1]) at the first octave's size, as
/// many as the batch: one image starts every item of a batch.
fn init_images(
    model: &Model,
    init: (Vec<f32>, [usize; 4]),
    batch: usize,
    (fh, fw): (usize, usize),
) -> Result<Vec<f32>, Failure> {
    let (data, [n, c, h, w]) = init;
    let mc = model.info.channels;
    if n != 1 && n != batch {
        return Err(value(format!(
            "init holds {n} images for a batch of {batch}; give one image or one per batch item"
        )));
    }
    if h == 0 || w == 0 || data.len() != n * c * h * w {
        return Err(value("init is empty or does not match its shape"));
    }
    let mut out = Vec::with_capacity(batch * mc * fh * fw);
    for b in 0..batch {
        let img = &data[(b % n) * c * h * w..((b % n) + 1) * c * h * w];
        let img = if c == mc {
            img.to_vec()
        } else if c == 3 {
            deepvis_render::photo_channels(img, mc, h * w).map_err(render_failure)?
        } else {
            return Err(value(format!(
                "init has {c} channels; the model takes {mc} (or give an RGB image)"
            )));
        };
        out.extend(resize_bilinear_planar(&img, h, w, fh, fw));
    }
    Ok(out)
}

fn images_output(r: deepvis_render::RenderOutput, n: usize) -> Output {
    Output::default()
        .with("images", vec![n, r.channels, r.height, r.width], r.images)
        .with("initial", vec![n], r.initial)
        .with("final", vec![n], r.final_values)
}

/// Starts a render of `objective` (the CLI's grammar) for a batch of `batch` images.
pub fn start_render(
    model: Arc<Model>,
    objective: &str,
    batch: usize,
    options: &RenderOptions,
    seed: u64,
    init: Option<(Vec<f32>, [usize; 4])>,
) -> Result<Job, Failure> {
    if batch == 0 {
        return Err(value("--batch must be at least 1"));
    }
    options.validate().map_err(value)?;
    let size = options.size_or(model.info.native_size);
    let settings = options.settings(seed, size).map_err(value)?;
    let objective =
        Objective::parse(objective, &model).map_err(|e| value(one_line(&RenderError::Spec(e))))?;
    let deepest = objective.nodes().into_iter().max().unwrap_or(0);
    deepvis_render::check_fits(&model, deepest, size, Some(batch)).map_err(render_failure)?;
    let init = match init {
        Some(i) => Init::Images(init_images(&model, i, batch, settings.octaves[0].hw())?),
        None => Init::Random,
    };
    let total = settings.most_steps();
    Job::spawn(total, move |ctl: &Ctl| {
        let r = render_until(
            &model,
            &BatchObjective::Shared(objective),
            batch,
            &settings,
            init,
            |p| ctl.step(p.step, p.total),
        )
        .map_err(render_failure)?;
        Ok(images_output(r, batch))
    })
}

/// A layer's canonical name and channel count at `size`.
pub fn resolve_layer(
    model: &Model,
    layer: &str,
    size: (usize, usize),
) -> Result<(String, usize), Failure> {
    let id = model.layer(layer).map_err(model_failure)?;
    let name = model.layer_name(layer, id);
    let channels = model.channels_at(id, size).map_err(model_failure)?;
    Ok((name, channels))
}

/// Starts rendering filters of a layer one image at a time: each image is what
/// `deepvis filters --batch 1` makes of it with the same seed.
pub fn start_filters(
    model: Arc<Model>,
    label: &str,
    layer: &str,
    filters: Vec<usize>,
    options: &RenderOptions,
    seed: u64,
) -> Result<(Job, String), Failure> {
    options.validate().map_err(value)?;
    if filters.is_empty() {
        return Err(value("--filters is empty"));
    }
    let size = options.size_or(model.info.native_size);
    let (layer_name, channels) = resolve_layer(&model, layer, size)?;
    if let Some(&bad) = filters.iter().find(|&&f| f >= channels) {
        return Err(value(format!(
            "filter {bad} is out of range: layer {layer_name} of {label} has {channels} filters (0..{channels})"
        )));
    }
    let id = model.layer(layer).map_err(model_failure)?;
    deepvis_render::check_fits(&model, id, size, Some(1)).map_err(render_failure)?;
    let base = options.settings(seed, size).map_err(value)?;
    let objectives: Vec<Objective> = filters
        .iter()
        .map(|&f| Objective::channel(&model, &layer_name, f))
        .collect::<Result<_, _>>()
        .map_err(render_failure)?;
    let steps = base.most_steps();
    let total = steps * filters.len();
    // Single images go side by side, one per thread, as far as memory allows: what
    // `deepvis filters` does with single-image batches (see its `plan_jobs`); each image
    // comes out the same either way.
    let per_image = deepvis_render::pass_bytes(&model, id, size).map_err(render_failure)?;
    let fit = deepvis_render::available_memory().map_or(1, |a| (a / 2 / per_image.max(1)) as usize);
    let jobs = rayon::current_num_threads()
        .min(fit)
        .min(filters.len())
        .max(1);
    let name = layer_name.clone();
    let job = Job::spawn(total, move |ctl: &Ctl| {
        if jobs > 1 {
            deepvis_engine::set_concurrent_passes(jobs);
        }
        let c = model.info.channels;
        let done = AtomicUsize::new(0);
        let one = |(f, objective): (usize, Objective)| -> Result<RenderOutput, Failure> {
            let mut s = base.clone();
            let init = if is_seed_method(&s) {
                Init::Images(seed_init_shaped([c, size.0, size.1], seed, &[f]))
            } else {
                s.seed = group_seed(seed, f);
                Init::Random
            };
            let mut reported = 0;
            render_until(
                &model,
                &BatchObjective::PerImage(vec![objective]),
                1,
                &s,
                init,
                |p| {
                    let now =
                        done.fetch_add(p.step - reported, Ordering::Relaxed) + p.step - reported;
                    reported = p.step;
                    ctl.step(now, total)
                },
            )
            .map_err(render_failure)
        };
        let work: Vec<(usize, Objective)> = filters.iter().copied().zip(objectives).collect();
        let mut outs = Vec::with_capacity(work.len());
        for wave in work.chunks(jobs) {
            let results: Vec<Result<RenderOutput, Failure>> =
                wave.par_iter().cloned().map(&one).collect();
            for r in results {
                outs.push(r?);
            }
        }
        let n = filters.len();
        let (h, w) = outs.first().map_or((0, 0), |r| (r.height, r.width));
        let mut images = Vec::with_capacity(n * c * h * w);
        let (mut initial, mut finals) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for r in outs {
            images.extend_from_slice(&r.images);
            initial.extend_from_slice(&r.initial);
            finals.extend_from_slice(&r.final_values);
        }
        Ok(Output::default()
            .with("images", vec![n, c, h, w], images)
            .with("initial", vec![n], initial)
            .with("final", vec![n], finals))
    })?;
    Ok((job, name))
}

/// Starts DeepDream on a photo (`[c, h, w]` in [0, 1], RGB or the model's channels).
pub fn start_dream(
    model: Arc<Model>,
    objective: &str,
    photo: (Vec<f32>, [usize; 3]),
    settings: DreamSettings,
) -> Result<Job, Failure> {
    settings.validate().map_err(value)?;
    let objective =
        Objective::parse(objective, &model).map_err(|e| value(one_line(&RenderError::Spec(e))))?;
    let (data, [c, h, w]) = photo;
    let mc = model.info.channels;
    let photo = if c == mc {
        data
    } else if c == 3 {
        deepvis_render::photo_channels(&data, mc, h * w).map_err(render_failure)?
    } else {
        return Err(value(format!(
            "the photo has {c} channels; the model takes {mc} (or give an RGB image)"
        )));
    };
    let deepest = objective.nodes().into_iter().max().unwrap_or(0);
    deepvis_render::check_fits(&model, deepest, (h, w), Some(1)).map_err(|e| {
        let mut f = render_failure(e);
        f.message = format!("the photo is too large for this layer: {}", f.message);
        f
    })?;
    let total = settings.octaves * settings.steps_per_octave;
    Job::spawn(total, move |ctl: &Ctl| {
        let out = dream_until(&model, &objective, &photo, h, w, &settings, |p| {
            ctl.step(p.step, p.total)
        })
        .map_err(render_failure)?;
        Ok(Output::default().with("images", vec![1, mc, h, w], out))
    })
}

/// A layer's activation for a normalized input `[n, c, h, w]` and, with a channel, the
/// gradient of its mean with respect to that input.
pub fn probe_tensor(
    model: &Model,
    layer: &str,
    input: (Vec<f32>, [usize; 4]),
    channel: Option<usize>,
) -> Result<Output, Failure> {
    let (data, shape) = input;
    if shape[1] != model.info.channels {
        return Err(value(format!(
            "the input has shape {shape:?}; expected [N, {}, H, W]",
            model.info.channels
        )));
    }
    let id = model.layer(layer).map_err(model_failure)?;
    let x = Tensor::new(shape.to_vec(), data).map_err(|e| value(one_line(&e)))?;
    let p = deepvis_render::probe(model, id, layer, x, channel).map_err(render_failure)?;
    let mut out = Output::default().with(
        "activation",
        p.activation.shape().to_vec(),
        p.activation.into_data(),
    );
    if let Some(g) = p.input_grad {
        out = out.with("input_grad", g.shape().to_vec(), g.into_data());
    }
    Ok(out)
}

/// `deepvis probe --image`: the photo resized to `size`, as the model's channels, normalized.
pub fn probe_image(
    model: &Model,
    layer: &str,
    path: &Path,
    size: Option<(usize, usize)>,
    channel: Option<usize>,
) -> Result<Output, Failure> {
    let (sh, sw) = size.unwrap_or(model.info.native_size);
    let (chw, h, w) = load_rgb(path).map_err(|e| other(&e))?;
    let rgb = resize_bilinear_planar(&chw, h, w, sh, sw);
    let c = model.info.channels;
    let input = deepvis_render::photo_channels(&rgb, c, sh * sw).map_err(render_failure)?;
    let norm = model_normalization(model).map_err(render_failure)?;
    let x = Tensor::new(vec![1, c, sh, sw], input).map_err(|e| value(one_line(&e)))?;
    let x = normalize(&x, &norm);
    probe_tensor(model, layer, (x.into_data(), [1, c, sh, sw]), channel)
}

/// An image file as RGB planes in [0, 1]: (data, height, width).
pub fn read_image(path: &Path) -> Result<(Vec<f32>, usize, usize), Failure> {
    load_rgb(path).map_err(|e| other(&e))
}

fn rgb_of(chw: &[f32], c: usize, h: usize, w: usize) -> RgbImage {
    let plane = h * w;
    if c >= 3 {
        RgbImage::from_planar_f32(&chw[..3 * plane], h, w)
    } else {
        RgbImage::from_gray_f32(&chw[..plane], h, w)
    }
}

/// PNG bytes of a `[c, h, w]` image (grey for one channel, the first three of more).
pub fn encode_png(chw: &[f32], c: usize, h: usize, w: usize) -> Result<Vec<u8>, Failure> {
    check_planar(chw, c, h, w)?;
    if c < 3 {
        return deepvis_output::encode_gray_png(&chw[..h * w], h, w, Path::new("image"))
            .map_err(|e| other(&e));
    }
    rgb_of(chw, c, h, w)
        .encode_png(Path::new("image"))
        .map_err(|e| other(&e))
}

fn check_planar(chw: &[f32], c: usize, h: usize, w: usize) -> Result<(), Failure> {
    if c == 0 || h == 0 || w == 0 || chw.len() != c * h * w {
        return Err(value(format!(
            "an image of {c}×{h}×{w} needs {} values, got {}",
            c * h * w,
            chw.len()
        )));
    }
    Ok(())
}

/// Saves a `[c, h, w]` image as the CLI does (PNG, with an .npy beside it where a PNG cannot
/// hold every channel), atomically; returns the .npy's path if one was written.
pub fn save_image(
    path: &Path,
    chw: &[f32],
    c: usize,
    h: usize,
    w: usize,
) -> Result<Option<std::path::PathBuf>, Failure> {
    check_planar(chw, c, h, w)?;
    deepvis_output::save_planar_image(path, chw, c, h, w).map_err(|e| other(&e))
}

/// A labeled sheet of `n` images `[n, c, h, w]`, as `deepvis filters` draws its grid.
/// Returns RGB planes in [0, 1] and the sheet's (height, width).
pub fn grid(
    images: &[f32],
    [n, c, h, w]: [usize; 4],
    labels: &[String],
) -> Result<(Vec<f32>, usize, usize), Failure> {
    if labels.len() != n || images.len() != n * c * h * w {
        return Err(value(format!(
            "a grid of {n} images needs {n} labels and {n}×{c}×{h}×{w} values"
        )));
    }
    /// Tiles whose larger side is under this are enlarged, as the CLI's grid does.
    const SMALL_TILE: usize = 40;
    let per = c * h * w;
    let tiles: Vec<RgbImage> = (0..n)
        .map(|i| {
            let t = rgb_of(&images[i * per..(i + 1) * per], c, h, w);
            let side = h.max(w);
            if side < SMALL_TILE {
                t.scale_nearest((2 * SMALL_TILE).div_ceil(side.max(1)) as u32)
            } else {
                t
            }
        })
        .collect();
    let refs: Vec<(String, &RgbImage)> = labels.iter().cloned().zip(tiles.iter()).collect();
    let sheet = grid_sheet(&refs, None, None);
    Ok((
        sheet.to_planar_f32(),
        sheet.height as usize,
        sheet.width as usize,
    ))
}
