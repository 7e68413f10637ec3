//! Activation maximization: optimizing input images so that chosen channels of a frozen
//! network respond strongly.
//!
//! Two layers live here:
//!
//! - the original tool's method ([`ascend_channels`]): pixel parametrization, a random start,
//!   and gradient ascent on the mean activation of one channel with the gradient normalized to
//!   unit RMS;
//! - Lucid/Lucent-style composable pieces: [`objective`] (terms, a text grammar, batch
//!   evaluation), [`param`] (pixel, Fourier, MACO parametrizations), [`transform`] (random
//!   differentiable transforms and regularizers), [`optim`] (normalized ascent, Adam) and
//!   [`render`] (the loop, octaves, presets, DeepDream).
//!
//! Quick start:
//!
//! ```no_run
//! use deepvis_render::{render, BatchObjective, Init, Objective, Preset};
//! let model = deepvis_models::Model::bundled("efficientnet_lite0").unwrap();
//! let obj = Objective::parse("_blocks.8:3", &model).unwrap();
//! let settings = Preset::Default.settings(128, None, 0);
//! let out = render(&model, &BatchObjective::Shared(obj), 1, &settings, Init::Random, |_| {}).unwrap();
//! assert_eq!(out.images.len(), 3 * 128 * 128);
//! ```

// Index loops read best in the numeric kernels; `is_multiple_of` needs a newer Rust than the
// workspace's rust-version.
#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

pub mod caricature;
pub mod fft;
pub mod objective;
pub mod optim;
pub mod options;
pub mod param;
pub mod precision;
pub mod render;
pub mod saturate;
pub mod score;
pub mod transform;

pub use objective::{BatchObjective, Objective, SpecError};
pub use optim::OptimizerKind;
pub use param::ParamKind;
pub use render::{
    clear_stop, default_octaves, default_octaves_hw, dream, dream_until, evaluate, render,
    render_until, request_stop, seed_init, seed_init_shaped, seed_settings, seed_settings_hw,
    stop_requested, DreamSettings, Init, Octave, Preset, Progress, RenderOutput, RenderSettings,
};
pub use score::{robust_scores, sample_views, ScoreSettings, View};
pub use transform::{PadMode, Regularizer, Transform};

use deepvis_engine::{EngineError, Graph, NodeId, Tensor};
use deepvis_models::{Model, Normalization};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// The render stopped between two steps because it was asked to: [`render::request_stop`]
    /// (Ctrl-C in the CLI) or a front end's `on_step` callback (`render_until`).
    #[error("interrupted")]
    Interrupted,
}

/// Settings of the original tool's gradient ascent.
#[derive(Clone, Debug, PartialEq)]
pub struct AscentSettings {
    /// Image side in pixels.
    pub size: usize,
    /// Number of gradient steps.
    pub steps: usize,
    /// Change per step, in 0–255 pixel units, as the RMS over the image: the gradient is
    /// normalized to unit RMS and scaled by `step_size / 255`.
    pub step_size: f32,
    /// Images optimized together in one batch.
    pub batch: usize,
}

/// The outcome for one channel.
#[derive(Clone, Debug)]
pub struct ChannelResult {
    pub channel: usize,
    /// The model's input channels in [0, 1], planar [C, size, size].
    pub image: Vec<f32>,
    pub initial_activation: f32,
    pub final_activation: f32,
}

/// Maps images in [0, 1] (`[N, C, H, W]`) to the model's normalized input, and gradients back.
/// A normalization with one value per channel indexes by channel, one with a single value
/// applies it to every channel; check its length with [`Normalization::for_channels`] first.
pub fn normalize(x: &Tensor, norm: &Normalization) -> Tensor {
    let mut y = x.clone();
    normalize_in_place(&mut y, norm);
    y
}

/// `normalize` of the images `[n, c, h, w]` in `rgb`, into a tensor from the engine's buffer
/// pool (what the render loop builds every step).
pub(crate) fn normalized(
    rgb: &[f32],
    shape: [usize; 4],
    norm: &Normalization,
) -> Result<Tensor, RenderError> {
    let mut x = Tensor::from_slice(&shape, rgb)?;
    normalize_in_place(&mut x, norm);
    Ok(x)
}

fn normalize_in_place(x: &mut Tensor, norm: &Normalization) {
    let (c, plane) = (x.shape()[1].max(1), x.shape()[2] * x.shape()[3]);
    for (i, p) in x.data_mut().chunks_mut(plane).enumerate() {
        let (m, s) = norm.channel(i % c);
        p.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

/// d/d image from d/d normalized: divide by the channel's std.
pub(crate) fn denormalize_grad(g: &mut Tensor, norm: &Normalization) {
    let (c, plane) = (g.shape()[1].max(1), g.shape()[2] * g.shape()[3]);
    for (i, p) in g.data_mut().chunks_mut(plane).enumerate() {
        let (_, s) = norm.channel(i % c);
        p.iter_mut().for_each(|v| *v /= s);
    }
}

/// The model's normalization checked against its input channel count (see
/// [`Normalization::for_channels`]).
pub fn model_normalization(model: &Model) -> Result<Normalization, RenderError> {
    model
        .info
        .normalization
        .for_channels(model.info.channels)
        .map_err(RenderError::Invalid)
}

/// Mean activation of `channels[b]` in batch item b of a layer output ([N, C, H, W] or [N, F]),
/// and the gradient of their sum with respect to that output.
pub fn channel_objective(
    out: &Tensor,
    channels: &[usize],
) -> Result<(Vec<f32>, Tensor), RenderError> {
    let shape = out.shape();
    let (n, c) = (shape[0], shape[1]);
    let plane: usize = shape[2..].iter().product();
    if channels.len() != n {
        return Err(RenderError::Invalid(format!(
            "{} channels for a batch of {n}",
            channels.len()
        )));
    }
    let mut grad = Tensor::zeros(shape);
    let mut values = Vec::with_capacity(n);
    for (b, &ch) in channels.iter().enumerate() {
        if ch >= c {
            return Err(RenderError::Invalid(format!(
                "channel {ch} is out of range: the layer has {c} channels"
            )));
        }
        let off = (b * c + ch) * plane;
        let sum: f64 = out.data()[off..off + plane].iter().map(|v| *v as f64).sum();
        values.push((sum / plane as f64) as f32);
        grad.data_mut()[off..off + plane].fill(1.0 / plane as f32);
    }
    Ok((values, grad))
}

/// One forward and backward pass: the objective values and their gradient with respect to the
/// image in [0, 1] (not the normalized input).
pub fn objective_and_grad(
    graph: &Graph,
    norm: &Normalization,
    layer: NodeId,
    rgb: &Tensor,
    channels: &[usize],
) -> Result<(Vec<f32>, Tensor), RenderError> {
    // One hand-off to the pool for the whole pass (see `on_pool`).
    deepvis_engine::on_pool(|| {
        let trace = graph.forward_channels(normalize(rgb, norm), &[layer], channels)?;
        let (values, g_out) = channel_objective(trace.output(), channels)?;
        let mut g = graph.backward(&trace, g_out)?;
        denormalize_grad(&mut g, norm);
        Ok((values, g))
    })
}

/// The start image of one channel: grey with uniform noise, drawn from a generator seeded by
/// (seed, channel), so a channel's result does not depend on which batch it ran in. RGB,
/// `size`×`size`; [`initial_image_shaped`] for other inputs.
pub fn initial_image(size: usize, seed: u64, channel: usize) -> Vec<f32> {
    initial_image_shaped([3, size, size], seed, channel)
}

/// [`initial_image`] of `[c, h, w]`.
pub fn initial_image_shaped([c, h, w]: [usize; 3], seed: u64, channel: usize) -> Vec<f32> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (channel as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..c * h * w)
        .map(|_| 0.5 + rng.gen_range(-0.1..0.1))
        .collect()
}

/// Runs the original tool's gradient ascent for `channels` of `layer`, in batches.
/// `on_step(done_steps, total_steps)` reports progress.
pub fn ascend_channels(
    model: &Model,
    layer: NodeId,
    channels: &[usize],
    settings: &AscentSettings,
    seed: u64,
    mut on_step: impl FnMut(usize, usize),
    mut on_result: impl FnMut(ChannelResult) -> Result<(), RenderError>,
) -> Result<(), RenderError> {
    let s = settings.size;
    if s == 0 || settings.batch == 0 {
        return Err(RenderError::Invalid(
            "size and batch must be positive".into(),
        ));
    }
    let norm = &model_normalization(model)?;
    let c = model.info.channels;
    let total = channels.len() * settings.steps;
    let mut done = 0;
    for group in channels.chunks(settings.batch) {
        let n = group.len();
        let mut data = Vec::with_capacity(n * c * s * s);
        for &ch in group {
            data.extend(initial_image_shaped([c, s, s], seed, ch));
        }
        let mut x = Tensor::new(vec![n, c, s, s], data)?;
        let mut initial = None;
        for _ in 0..settings.steps {
            let (values, g) = objective_and_grad(&model.graph, norm, layer, &x, group)?;
            initial.get_or_insert(values);
            ascent_step(&mut x, &g, settings.step_size / 255.0);
            done += n;
            on_step(done, total);
        }
        let (finals, _) = channel_objective(
            model
                .graph
                .forward_channels(normalize(&x, norm), &[layer], group)?
                .output(),
            group,
        )?;
        let initial = initial.unwrap_or_else(|| finals.clone());
        let per = c * s * s;
        for (b, &ch) in group.iter().enumerate() {
            on_result(ChannelResult {
                channel: ch,
                image: x.data()[b * per..(b + 1) * per].to_vec(),
                initial_activation: initial[b],
                final_activation: finals[b],
            })?;
        }
    }
    Ok(())
}

/// x ← clamp(x + lr · g / rms(g), 0, 1), per batch item.
fn ascent_step(x: &mut Tensor, g: &Tensor, lr: f32) {
    let per = x.numel() / x.shape()[0];
    for (xi, gi) in x.data_mut().chunks_mut(per).zip(g.data().chunks(per)) {
        let ms: f64 = gi.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / per as f64;
        let scale = lr / (ms.sqrt() as f32 + 1e-8);
        for (a, b) in xi.iter_mut().zip(gi) {
            *a = (*a + scale * b).clamp(0.0, 1.0);
        }
    }
}

/// A photo (RGB planes in [0, 1]) as the model's input channels: as it is for RGB, its luma
/// (ITU-R BT.601, as PIL's "L") for one channel. Other counts have no photo equivalent.
pub fn photo_channels(rgb: &[f32], channels: usize, plane: usize) -> Result<Vec<f32>, RenderError> {
    match channels {
        3 => Ok(rgb.to_vec()),
        1 => Ok((0..plane)
            .map(|i| 0.299 * rgb[i] + 0.587 * rgb[plane + i] + 0.114 * rgb[2 * plane + i])
            .collect()),
        c => Err(RenderError::Invalid(format!(
            "the model takes {c}-channel input; a photo gives 1 (grey) or 3 (RGB) channels, so dream works only on those"
        ))),
    }
}

/// What a layer makes of an input: its activation and, for a channel, the gradient of that
/// channel's mean (per batch item) with respect to the normalized input.
pub struct Probe {
    pub activation: Tensor,
    pub input_grad: Option<Tensor>,
}

/// Runs the normalized input `[N, C, H, W]` to `layer` (called `layer_name` in messages) and,
/// with `channel`, back: d mean(layer[n, channel]) / d input for each n.
pub fn probe(
    model: &Model,
    layer: NodeId,
    layer_name: &str,
    input: Tensor,
    channel: Option<usize>,
) -> Result<Probe, RenderError> {
    let trace = model.graph.forward(input, layer)?;
    let out = trace.output();
    let activation = out.clone();
    let input_grad = match channel {
        None => None,
        Some(c) => {
            let ch = out.shape()[1];
            if c >= ch {
                return Err(RenderError::Invalid(format!(
                    "channel {c} is out of range: layer {layer_name} has {ch} channels"
                )));
            }
            let plane: usize = out.shape()[2..].iter().product();
            let mut g = Tensor::zeros(out.shape());
            for n in 0..out.shape()[0] {
                g.data_mut()[(n * ch + c) * plane..(n * ch + c + 1) * plane]
                    .fill(1.0 / plane as f32);
            }
            Some(model.graph.backward(&trace, g)?)
        }
    };
    Ok(Probe {
        activation,
        input_grad,
    })
}

/// Available memory in bytes, from /proc/meminfo where there is one.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What one image's forward and backward pass to `layer` holds at most: about twice the
/// activations of its forward pass.
pub fn pass_bytes(
    model: &Model,
    layer: NodeId,
    (h, w): (usize, usize),
) -> Result<u64, RenderError> {
    Ok(model
        .graph
        .activation_bytes(&[1, model.info.channels, h, w], layer)
        .map_err(|e| {
            RenderError::Invalid(format!(
                "image size {} does not work for this layer: {e}",
                deepvis_models::size_text(h, w)
            ))
        })?
        .saturating_mul(2))
}

/// Refuses, before any work, an image size (and a `batch` of it) whose passes to `layer`
/// cannot fit in the free memory. Returns the bytes of one image's pass.
pub fn check_fits(
    model: &Model,
    layer: NodeId,
    (h, w): (usize, usize),
    batch: Option<usize>,
) -> Result<u64, RenderError> {
    let per_image = pass_bytes(model, layer, (h, w))?;
    let size = deepvis_models::size_text(h, w);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if let Some(avail) = available_memory() {
        if per_image > avail {
            return Err(RenderError::Invalid(format!(
                "image size {size} needs about {:.1} GiB per image for this layer, but only {:.1} GiB is free; choose a smaller --size",
                gib(per_image),
                gib(avail)
            )));
        }
        if let Some(b) = batch {
            if per_image.saturating_mul(b as u64) > avail {
                return Err(RenderError::Invalid(format!(
                    "--batch {b} at size {size} needs about {:.1} GiB, but only {:.1} GiB is free; use a smaller --batch",
                    gib(per_image * b as u64),
                    gib(avail)
                )));
            }
        }
    }
    Ok(per_image)
}
