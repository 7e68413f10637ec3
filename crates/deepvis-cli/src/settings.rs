//! The optimization options shared by `filters` and `render`: a preset and per-piece
//! overrides, turned into `deepvis_render::RenderSettings`.

use anyhow::Result;
use clap::{Args, ValueEnum};
use deepvis_render::options::{self, OptimizerChoice, RenderOptions, TransformsChoice};
use deepvis_render::render::{Preset, RenderSettings};
use deepvis_render::{OptimizerKind, ParamKind};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PresetName {
    /// Lucid's decorrelated Fourier image, Lucid's transforms scaled to the size, Adam 0.1,
    /// 96 steps: the best quality per second found (beats Lucent's defaults in a fifth of the time).
    Default,
    /// The original tool: pixels, grey + noise start, normalized-gradient ascent (--step-size),
    /// no transforms, 50 steps.
    Seed,
    /// Lucent's render_vis defaults: Fourier, standard transforms, Adam 0.05, 512 steps.
    Lucid,
    /// MACO: phase-only Fourier with a fixed 1/f magnitude, Adam 0.3, 192 steps.
    Maco,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ParamName {
    Pixel,
    Fourier,
    Maco,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransformsName {
    None,
    /// pad 12, jitter 8, random scale 0.9–1.1, random rotation ±10°, jitter 4 (at 128 px).
    Lucid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerName {
    Adam,
    /// The original tool's: p ← p + lr · g / rms(g) per image.
    Ascent,
}

#[derive(Args, Clone, Debug)]
pub struct RenderArgs {
    /// Method preset; the options below override its parts.
    #[arg(long, value_enum, default_value = "default")]
    pub preset: PresetName,
    /// Image size in pixels (of the output, the last octave): N for N×N, or HxW such as
    /// 48x192 (height × width). Default: the model's native size (224 for the zoo).
    #[arg(long, visible_alias = "img_size", value_name = "N|HxW", value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
    /// Optimization steps per image, all octaves together (default: the preset's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The seed method's step: change of the image per step in 0–255 pixel units (RMS over the
    /// image); the gradient is normalized to unit RMS and scaled by step/255. Implies
    /// normalized-gradient ascent. Default with --preset seed: 3.
    #[arg(long, visible_alias = "step_size")]
    pub step_size: Option<f32>,
    /// Parametrization of the image.
    #[arg(long, value_enum)]
    pub param: Option<ParamName>,
    /// Robustness transforms applied before each forward pass (random per step, seeded).
    #[arg(long, value_enum)]
    pub transforms: Option<TransformsName>,
    /// Optimizer.
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerName>,
    /// Learning rate of the optimizer (Adam: in parameter units; ascent: RMS step in [0, 1]).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Multi-scale schedule: 1 = one resolution; N > 1 = sizes from ½ to full, half the steps
    /// at the first octave.
    #[arg(long)]
    pub octaves: Option<usize>,
    /// L2 decay towards grey, as a penalty of this weight.
    #[arg(long)]
    pub l2: Option<f32>,
    /// Total-variation penalty of this weight.
    #[arg(long)]
    pub tv: Option<f32>,
    /// Gaussian blur SIGMA every K steps (Yosinski et al.), as SIGMA:K.
    #[arg(long)]
    pub blur: Option<String>,
    /// Grey out pixels whose colour norm is below this percentile, every K steps: PCT:K.
    #[arg(long)]
    pub clip_norm: Option<String>,
    /// Grey out pixels whose contribution to the objective is below this percentile: PCT:K.
    #[arg(long)]
    pub clip_contribution: Option<String>,
    /// Also stop adaptive steps after this much wall time per image (`2s`, `1.5`, `500ms`), up
    /// to 1024 steps. Without it the default preset's steps adapt to the score alone (at most
    /// 128, reproducible from the seed on any machine) unless --steps fixes them.
    #[arg(long, value_parser = parse_seconds, value_name = "TIME")]
    pub budget: Option<f64>,
    /// Random views of the robust score recorded for each image (0: no score).
    #[arg(long, default_value_t = crate::settings::DEFAULT_SCORE_VIEWS)]
    pub score_views: usize,
    /// Start from this photo (PNG or JPEG, resized to the image size) instead of noise.
    #[arg(long, value_name = "IMAGE")]
    pub init: Option<std::path::PathBuf>,
    /// Save N intermediate images per result (`NAME_frames/`) and an animated GIF (`NAME.gif`).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub frames: usize,
}

/// Views of the recorded robust score, as the issue that defined it asked.
pub const DEFAULT_SCORE_VIEWS: usize = deepvis_render::score::DEFAULT_VIEWS;
/// `--budget`: `2s`, `1.5`, `500ms`.
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    options::parse_seconds(text)
}

/// `--size`: `N` (square) or `HxW`, as (height, width).
pub fn parse_size(text: &str) -> Result<(usize, usize), String> {
    options::parse_size(text)
}

impl RenderArgs {
    /// The output size: `--size`, or else the model's native (height, width).
    pub fn size_or(&self, native: (usize, usize)) -> (usize, usize) {
        self.size.unwrap_or(native)
    }

    /// The flags as the library's options (the rules live there, shared with the Python package).
    pub fn options(&self) -> RenderOptions {
        RenderOptions {
            preset: match self.preset {
                PresetName::Default => Preset::Default,
                PresetName::Seed => Preset::Seed,
                PresetName::Lucid => Preset::Lucid,
                PresetName::Maco => Preset::Maco,
            },
            size: self.size,
            steps: self.steps,
            step_size: self.step_size,
            param: self.param.map(|p| match p {
                ParamName::Pixel => ParamKind::Pixel,
                ParamName::Fourier => ParamKind::FOURIER,
                ParamName::Maco => ParamKind::Maco,
            }),
            transforms: self.transforms.map(|t| match t {
                TransformsName::None => TransformsChoice::None,
                TransformsName::Lucid => TransformsChoice::Lucid,
            }),
            optimizer: self.optimizer.map(|o| match o {
                OptimizerName::Adam => OptimizerChoice::Adam,
                OptimizerName::Ascent => OptimizerChoice::Ascent,
            }),
            lr: self.lr,
            octaves: self.octaves,
            l2: self.l2,
            tv: self.tv,
            blur: self.blur.clone(),
            clip_norm: self.clip_norm.clone(),
            clip_contribution: self.clip_contribution.clone(),
            budget: self.budget,
            frames: self.frames,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.options().validate().map_err(anyhow::Error::msg)
    }

    /// The full settings for one render of `size` (height, width) with `seed`.
    pub fn settings(&self, seed: u64, size: (usize, usize)) -> Result<RenderSettings> {
        self.options()
            .settings(seed, size)
            .map_err(anyhow::Error::msg)
    }

    /// What identifies a result in the manifest: everything but the seed and the batch.
    pub fn manifest_settings(&self, s: &RenderSettings) -> serde_json::Value {
        let (h, w) = s.size_hw();
        let mut v = json!({
            "preset": format!("{:?}", self.preset).to_lowercase(),
            "size": if h == w { json!(h) } else { json!(format!("{h}x{w}")) },
            "steps": s.total_steps(),
            "method": s.describe(),
            "precision": deepvis_engine::precision().name(),
        });
        if let Some(a) = &s.adaptive {
            v["steps"] = json!("adaptive");
            v["budget_s"] = json!(a.budget);
        }
        if let Some(init) = &self.init {
            v["init"] = json!(init.to_string_lossy());
        }
        if let OptimizerKind::Normalized { lr } = s.optimizer {
            v["step_size"] = json!((lr * 255.0 * 1e4).round() / 1e4);
        }
        v
    }

    pub fn is_seed_method(&self, s: &RenderSettings) -> bool {
        options::is_seed_method(s)
    }
}
