//! The optimization options shared by `filters` and `render`: a preset and per-piece
//! overrides, turned into `deepvis_render::RenderSettings`.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use deepvis_render::render::{
    default_octaves_hw, seed_settings_hw, Adaptive, Octave, Preset, RenderSettings,
};
use deepvis_render::transform::lucid_standard;
use deepvis_render::{OptimizerKind, ParamKind, Regularizer};
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
    /// Adaptive steps: stop when the robust score stops improving, within this much time per
    /// image (`2s`, `1.5`, `500ms`). The default preset adapts with 2 s unless --steps is given.
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
/// Seconds per image the default preset's adaptive steps may take.
pub const DEFAULT_BUDGET: f64 = 2.0;

/// `--budget`: `2s`, `1.5`, `500ms`.
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (num, scale) = if let Some(v) = t.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * scale),
        _ => Err(format!(
            "'{text}' is not a time; write seconds like 2s, 1.5 or 500ms"
        )),
    }
}

fn pair(flag: &str, v: &str) -> Result<(f32, usize)> {
    let (a, b) = v
        .split_once(':')
        .with_context(|| format!("--{flag} takes VALUE:EVERY, e.g. 1.0:4"))?;
    let a: f32 = a
        .parse()
        .with_context(|| format!("--{flag}: '{a}' is not a number"))?;
    let b: usize = b
        .parse()
        .with_context(|| format!("--{flag}: '{b}' is not a step count"))?;
    if !(a.is_finite() && a >= 0.0) || b == 0 {
        bail!("--{flag} needs a non-negative value and an interval of at least 1 step");
    }
    Ok((a, b))
}

/// `--size`: `N` (square) or `HxW`, as (height, width).
pub fn parse_size(text: &str) -> Result<(usize, usize), String> {
    let bad = || {
        format!(
            "'{text}' is not an image size; write N or HxW (height x width), e.g. 224 or 48x192"
        )
    };
    let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
    let (h, w) = match text.split_once(['x', 'X', '×']) {
        Some((h, w)) => (num(h)?, num(w)?),
        None => {
            let n = num(text)?;
            (n, n)
        }
    };
    if h == 0 || w == 0 {
        return Err("--size must be at least 1 pixel on each side".into());
    }
    // Far beyond any memory: refused here, before a size overflows the arithmetic.
    if h.saturating_mul(w) > 1 << 30 {
        return Err(format!(
            "--size {text} is too large; choose a smaller --size"
        ));
    }
    Ok((h, w))
}

fn octaves((h, w): (usize, usize), steps: usize, n: usize) -> Vec<Octave> {
    if n <= 1 || h.min(w) < 64 {
        return vec![Octave::new((h, w), steps)];
    }
    if n == 3 {
        return default_octaves_hw((h, w), steps);
    }
    let first = steps / 2;
    let rest = steps - first;
    (0..n)
        .map(|i| {
            let frac = 0.5 + 0.5 * i as f64 / (n - 1) as f64;
            let side = |v: usize| ((v as f64 * frac) as usize / 2 * 2).max(8);
            let s = if i == n - 1 {
                (h, w)
            } else {
                (side(h), side(w))
            };
            let st = if i == 0 {
                first
            } else {
                rest / (n - 1) + usize::from(i <= rest % (n - 1))
            };
            Octave::new(s, st)
        })
        .collect()
}

impl RenderArgs {
    /// The output size: `--size`, or else the model's native (height, width).
    pub fn size_or(&self, native: (usize, usize)) -> (usize, usize) {
        self.size.unwrap_or(native)
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(size) = self.size {
            self.validate_size(size)?;
        }
        if self.steps == Some(0) {
            bail!("--steps must be at least 1");
        }
        if let Some(s) = self.step_size {
            if !(s.is_finite() && s > 0.0) {
                bail!("--step-size must be a positive number");
            }
        }
        if let Some(lr) = self.lr {
            if !(lr.is_finite() && lr > 0.0) {
                bail!("--lr must be a positive number");
            }
        }
        if self.octaves == Some(0) {
            bail!("--octaves must be at least 1");
        }
        if self.budget.is_some() && self.steps.is_some() {
            bail!("--budget lets the steps adapt and --steps fixes them; give one of the two");
        }
        if self.budget.is_some() && self.preset == PresetName::Seed {
            bail!(
                "--budget adapts the steps of the Fourier presets; the seed method takes --steps"
            );
        }
        if self.frames > 1000 {
            bail!(
                "--frames {} is more than anyone can watch; choose at most 1000",
                self.frames
            );
        }
        if self.step_size.is_some()
            && (self.optimizer == Some(OptimizerName::Adam) || self.lr.is_some())
        {
            bail!("--step-size is the step of the seed's normalized ascent; with Adam use --lr");
        }
        Ok(())
    }

    fn validate_size(&self, (h, w): (usize, usize)) -> Result<()> {
        if h.min(w) == 0 {
            bail!("--size must be at least 1 pixel");
        }
        if self.preset != PresetName::Seed && h.min(w) < 8 {
            bail!(
                "--size must be at least 8 pixels for the {:?} preset",
                self.preset
            );
        }
        Ok(())
    }

    /// The full settings for one render of `size` (height, width) with `seed`.
    pub fn settings(&self, seed: u64, size: (usize, usize)) -> Result<RenderSettings> {
        self.validate()?;
        self.validate_size(size)?;
        let preset = match self.preset {
            PresetName::Default => Preset::Default,
            PresetName::Seed => Preset::Seed,
            PresetName::Lucid => Preset::Lucid,
            PresetName::Maco => Preset::Maco,
        };
        let steps = self.steps.unwrap_or(preset.default_steps());
        let mut s = match preset {
            Preset::Seed => seed_settings_hw(size, steps, self.step_size.unwrap_or(3.0), seed),
            p => p.settings_hw(size, Some(steps), seed),
        };
        if let Some(n) = self.octaves {
            s.octaves = octaves(size, steps, n);
        }
        if let Some(p) = self.param {
            s.param = match p {
                ParamName::Pixel => ParamKind::Pixel,
                ParamName::Fourier => ParamKind::FOURIER,
                ParamName::Maco => ParamKind::Maco,
            };
        }
        if let Some(t) = self.transforms {
            s.transforms = match t {
                TransformsName::None => Vec::new(),
                TransformsName::Lucid => lucid_standard(),
            };
            s.transform_reference = Some(128);
        }
        let optimizer = match (self.optimizer, self.step_size) {
            (_, Some(step)) => Some(OptimizerKind::Normalized { lr: step / 255.0 }),
            (Some(OptimizerName::Adam), _) => Some(OptimizerKind::adam(0.05)),
            (Some(OptimizerName::Ascent), _) => Some(OptimizerKind::Normalized { lr: 3.0 / 255.0 }),
            (None, None) => None,
        };
        if let Some(o) = optimizer {
            s.optimizer = o;
        }
        if let Some(lr) = self.lr {
            match &mut s.optimizer {
                OptimizerKind::Adam { lr: l, .. } | OptimizerKind::Normalized { lr: l } => *l = lr,
            }
        }
        if let Some(w) = self.l2 {
            s.regularizers.push(Regularizer::L2 { weight: w });
        }
        if let Some(w) = self.tv {
            s.regularizers
                .push(Regularizer::TotalVariation { weight: w });
        }
        if let Some(v) = &self.blur {
            let (sigma, every) = pair("blur", v)?;
            s.regularizers.push(Regularizer::Blur { sigma, every });
        }
        if let Some(v) = &self.clip_norm {
            let (percentile, every) = pair("clip-norm", v)?;
            s.regularizers
                .push(Regularizer::ClipNorm { percentile, every });
        }
        if let Some(v) = &self.clip_contribution {
            let (percentile, every) = pair("clip-contribution", v)?;
            s.regularizers
                .push(Regularizer::ClipContribution { percentile, every });
        }
        if self.adapts() {
            s.adaptive = Some(Adaptive::with_budget(Some(
                self.budget.unwrap_or(DEFAULT_BUDGET),
            )));
        }
        s.frames = self.frames;
        Ok(s)
    }

    /// Whether the steps adapt to the robust score: the default preset, or --budget, without
    /// --steps.
    fn adapts(&self) -> bool {
        self.steps.is_none()
            && (self.preset == PresetName::Default || self.budget.is_some())
            && self.preset != PresetName::Seed
    }

    /// What identifies a result in the manifest: everything but the seed and the batch.
    pub fn manifest_settings(&self, s: &RenderSettings) -> serde_json::Value {
        let (h, w) = s.size_hw();
        let mut v = json!({
            "preset": format!("{:?}", self.preset).to_lowercase(),
            "size": if h == w { json!(h) } else { json!(format!("{h}x{w}")) },
            "steps": s.total_steps(),
            "method": s.describe(),
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
        matches!(s.param, ParamKind::Pixel)
            && s.transforms.is_empty()
            && s.regularizers.is_empty()
            && s.octaves.len() == 1
            && matches!(s.optimizer, OptimizerKind::Normalized { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_are_n_or_h_by_w() {
        assert_eq!(parse_size("224"), Ok((224, 224)));
        assert_eq!(parse_size("48x192"), Ok((48, 192)));
        assert_eq!(parse_size("48X192"), Ok((48, 192)));
        assert_eq!(parse_size("28×30"), Ok((28, 30)));
        for bad in ["", "x", "10x", "x10", "10x10x10", "-3", "1.5", "ax4", "4 x"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("write N or HxW") || bad == "4 x", "{bad}: {e}");
        }
        assert!(parse_size("0").unwrap_err().contains("at least 1 pixel"));
        assert!(parse_size("0x5").unwrap_err().contains("at least 1 pixel"));
        assert!(parse_size("100000x100000")
            .unwrap_err()
            .contains("smaller --size"));
    }
}
