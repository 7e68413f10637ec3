//! A preset and per-piece overrides, as the front ends take them (the CLI's flags, the Python
//! package's keyword arguments), turned into [`RenderSettings`]. One place for the rules, so
//! both front ends give the same images and the same one-line errors for the same options.

use crate::optim::OptimizerKind;
use crate::param::ParamKind;
use crate::render::{
    default_octaves_hw, seed_settings_hw, Adaptive, Octave, Preset, RenderSettings,
};
use crate::transform::{lucid_standard, Regularizer};

/// Which transforms run before each forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransformsChoice {
    None,
    /// pad 12, jitter 8, random scale 0.9–1.1, random rotation ±10°, jitter 4 (at 128 px).
    Lucid,
}

/// The optimizer, without its learning rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerChoice {
    Adam,
    /// The original tool's: p ← p + lr · g / rms(g) per image.
    Ascent,
}

/// A preset and whatever of its parts the user overrode. Regularizers with an interval come
/// as text `VALUE:EVERY`, as the user wrote them.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderOptions {
    pub preset: Preset,
    /// (height, width) of the output; `None`: the model's native size.
    pub size: Option<(usize, usize)>,
    pub steps: Option<usize>,
    pub step_size: Option<f32>,
    pub param: Option<ParamKind>,
    pub transforms: Option<TransformsChoice>,
    pub optimizer: Option<OptimizerChoice>,
    pub lr: Option<f32>,
    pub octaves: Option<usize>,
    pub l2: Option<f32>,
    pub tv: Option<f32>,
    pub blur: Option<String>,
    pub clip_norm: Option<String>,
    pub clip_contribution: Option<String>,
    /// Adaptive steps that also stop after this many seconds of wall time per image. Without
    /// it the default preset's steps still adapt, to the score alone (reproducible), unless
    /// `steps` is given.
    pub budget: Option<f64>,
    /// Intermediate images kept per result (0: none).
    pub frames: usize,
}

/// A time budget as the user writes it: `2s`, `1.5`, `500ms`, in seconds.
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

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            preset: Preset::Default,
            size: None,
            steps: None,
            step_size: None,
            param: None,
            transforms: None,
            optimizer: None,
            lr: None,
            octaves: None,
            l2: None,
            tv: None,
            blur: None,
            clip_norm: None,
            clip_contribution: None,
            budget: None,
            frames: 0,
        }
    }
}

/// The lower-case name of a preset, as the front ends spell it.
pub fn preset_name(p: Preset) -> &'static str {
    match p {
        Preset::Default => "default",
        Preset::Seed => "seed",
        Preset::Lucid => "lucid",
        Preset::Maco => "maco",
    }
}

/// A preset by its name.
pub fn parse_preset(name: &str) -> Result<Preset, String> {
    match name {
        "default" => Ok(Preset::Default),
        "seed" => Ok(Preset::Seed),
        "lucid" => Ok(Preset::Lucid),
        "maco" => Ok(Preset::Maco),
        other => Err(format!(
            "unknown preset '{other}'; choose default, seed, lucid or maco"
        )),
    }
}

fn pair(flag: &str, v: &str) -> Result<(f32, usize), String> {
    let (a, b) = v
        .split_once(':')
        .ok_or_else(|| format!("--{flag} takes VALUE:EVERY, e.g. 1.0:4"))?;
    let a: f32 = a
        .parse()
        .map_err(|_| format!("--{flag}: '{a}' is not a number"))?;
    let b: usize = b
        .parse()
        .map_err(|_| format!("--{flag}: '{b}' is not a step count"))?;
    if !(a.is_finite() && a >= 0.0) || b == 0 {
        return Err(format!(
            "--{flag} needs a non-negative value and an interval of at least 1 step"
        ));
    }
    Ok((a, b))
}

/// An image size: `N` (square) or `HxW`, as (height, width).
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
    check_size((h, w), text)?;
    Ok((h, w))
}

/// Refuses empty sizes, and sizes far beyond any memory before they overflow the arithmetic.
pub fn check_size((h, w): (usize, usize), text: &str) -> Result<(), String> {
    if h == 0 || w == 0 {
        return Err("--size must be at least 1 pixel on each side".into());
    }
    if h.saturating_mul(w) > 1 << 30 {
        return Err(format!(
            "--size {text} is too large; choose a smaller --size"
        ));
    }
    Ok(())
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

impl RenderOptions {
    /// The output size: the chosen one, or else the model's native (height, width).
    pub fn size_or(&self, native: (usize, usize)) -> (usize, usize) {
        self.size.unwrap_or(native)
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(size) = self.size {
            self.validate_size(size)?;
        }
        if self.steps == Some(0) {
            return Err("--steps must be at least 1".into());
        }
        if let Some(s) = self.step_size {
            if !(s.is_finite() && s > 0.0) {
                return Err("--step-size must be a positive number".into());
            }
        }
        if let Some(lr) = self.lr {
            if !(lr.is_finite() && lr > 0.0) {
                return Err("--lr must be a positive number".into());
            }
        }
        if self.octaves == Some(0) {
            return Err("--octaves must be at least 1".into());
        }
        if self.budget.is_some() && self.steps.is_some() {
            return Err(
                "--budget lets the steps adapt and --steps fixes them; give one of the two".into(),
            );
        }
        if self.budget.is_some() && self.preset == Preset::Seed {
            return Err(
                "--budget adapts the steps of the Fourier presets; the seed method takes --steps"
                    .into(),
            );
        }
        if let Some(b) = self.budget {
            if !(b.is_finite() && b > 0.0) {
                return Err("--budget must be a positive time, e.g. 2s".into());
            }
        }
        if self.frames > 1000 {
            return Err(format!(
                "--frames {} is more than anyone can watch; choose at most 1000",
                self.frames
            ));
        }
        if self.step_size.is_some()
            && (self.optimizer == Some(OptimizerChoice::Adam) || self.lr.is_some())
        {
            return Err(
                "--step-size is the step of the seed's normalized ascent; with Adam use --lr"
                    .into(),
            );
        }
        Ok(())
    }

    fn validate_size(&self, (h, w): (usize, usize)) -> Result<(), String> {
        if h.min(w) == 0 {
            return Err("--size must be at least 1 pixel".into());
        }
        if self.preset != Preset::Seed && h.min(w) < 8 {
            return Err(format!(
                "--size must be at least 8 pixels for the {:?} preset",
                self.preset
            ));
        }
        Ok(())
    }

    /// The full settings for one render of `size` (height, width) with `seed`.
    pub fn settings(&self, seed: u64, size: (usize, usize)) -> Result<RenderSettings, String> {
        self.validate()?;
        self.validate_size(size)?;
        let preset = self.preset;
        let steps = self.steps.unwrap_or(preset.default_steps());
        let mut s = match preset {
            Preset::Seed => seed_settings_hw(size, steps, self.step_size.unwrap_or(3.0), seed),
            p => p.settings_hw(size, Some(steps), seed),
        };
        if let Some(n) = self.octaves {
            s.octaves = octaves(size, steps, n);
        }
        if let Some(p) = self.param {
            s.param = p;
        }
        if let Some(t) = self.transforms {
            s.transforms = match t {
                TransformsChoice::None => Vec::new(),
                TransformsChoice::Lucid => lucid_standard(),
            };
            s.transform_reference = Some(128);
        }
        let optimizer = match (self.optimizer, self.step_size) {
            (_, Some(step)) => Some(OptimizerKind::Normalized { lr: step / 255.0 }),
            (Some(OptimizerChoice::Adam), _) => Some(OptimizerKind::adam(0.05)),
            (Some(OptimizerChoice::Ascent), _) => {
                Some(OptimizerKind::Normalized { lr: 3.0 / 255.0 })
            }
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
            s.adaptive = Some(match self.budget {
                Some(b) => Adaptive::with_budget(b),
                None => Adaptive::reproducible(),
            });
        }
        s.frames = self.frames;
        Ok(s)
    }

    /// Whether the steps adapt to the robust score: the default preset, or a budget, without
    /// fixed steps.
    pub fn adapts(&self) -> bool {
        self.steps.is_none()
            && (self.preset == Preset::Default || self.budget.is_some())
            && self.preset != Preset::Seed
    }
}

/// Whether settings are the original tool's method, where every image is optimized on its own
/// from its own seeded start (so any grouping gives the same images).
pub fn is_seed_method(s: &RenderSettings) -> bool {
    matches!(s.param, ParamKind::Pixel)
        && s.transforms.is_empty()
        && s.regularizers.is_empty()
        && s.octaves.len() == 1
        && matches!(s.optimizer, OptimizerKind::Normalized { .. })
}

/// The seed of filter `first`'s group in a layer's filter run: transforms draw per group, and
/// a group's images depend only on the run's seed and its first filter.
pub fn group_seed(seed: u64, first: usize) -> u64 {
    seed ^ (first as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
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
