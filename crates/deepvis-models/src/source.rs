//! Where a model comes from: a zoo name (bundled, a weight file, the download cache or a
//! download) or an ONNX file with its input normalization. Shared by the front ends (the CLI,
//! the Python package) so a name means the same model, with the same messages, in both.

use crate::onnx::InputSpec;
use crate::{Model, ModelError, Normalization, WeightsFrom};
use deepvis_weights::download;
use std::path::{Path, PathBuf};

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// A zoo name, or the path of an .onnx file.
    pub model: String,
    /// A weight file (.pth or safetensors) for a zoo architecture.
    pub weights: Option<PathBuf>,
    /// Never use the network.
    pub offline: bool,
    /// Download cache (default: [`download::default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Seeded random weights (for timing only).
    pub random_weights: bool,
    /// ONNX models: per-channel mean (one value for all channels, or one per channel), in the
    /// units of `range`.
    pub mean: Option<Vec<f32>>,
    /// ONNX models: per-channel standard deviation, as `mean`.
    pub std: Option<Vec<f32>>,
    /// ONNX models: the pixel range the network was trained on, "0-1" or "0-255".
    pub range: Option<String>,
}

/// A loaded model and where its weights came from.
pub struct Loaded {
    pub model: Model,
    /// "bundled", "random (seed 0)" or the file's path.
    pub weights_label: String,
    /// The file the weights were read from, if any.
    pub weights_file: Option<PathBuf>,
}

/// Whether a model name is the path of an ONNX file rather than a zoo name.
pub fn is_onnx_path(model: &str) -> bool {
    model.to_ascii_lowercase().ends_with(".onnx")
        || (model.contains(std::path::MAIN_SEPARATOR) && Path::new(model).is_file())
}

fn invalid(msg: String) -> ModelError {
    ModelError::Source(msg)
}

impl Source {
    /// A zoo name or .onnx path with everything else at its default.
    pub fn named(model: impl Into<String>) -> Self {
        Source {
            model: model.into(),
            ..Source::default()
        }
    }

    /// Loads the model; an ONNX model with a dynamic input size is lowered at `size`.
    /// `notify` receives one-line notes for the user (a download starting, an assumed
    /// normalization); `progress` shows a download's progress bar on stderr.
    pub fn load_at(
        &self,
        size: Option<(usize, usize)>,
        progress: bool,
        notify: &mut dyn FnMut(&str),
    ) -> Result<Loaded, ModelError> {
        if is_onnx_path(&self.model) {
            return self.load_onnx(size, notify);
        }
        if self.mean.is_some() || self.std.is_some() || self.range.is_some() {
            return Err(invalid(format!(
                "--mean, --std and --range are for ONNX models; zoo model '{}' has its own normalization",
                self.model
            )));
        }
        let info = crate::info(&self.model)?;
        if self.random_weights {
            return Ok(Loaded {
                model: Model::build(&self.model, WeightsFrom::Random(0))?,
                weights_label: "random (seed 0)".into(),
                weights_file: None,
            });
        }
        if let Some(path) = &self.weights {
            return load_file(&self.model, path);
        }
        if info.bundled {
            return Ok(Loaded {
                model: Model::bundled(&self.model)?,
                weights_label: "bundled".into(),
                weights_file: None,
            });
        }
        let path = self.fetch(progress, notify)?;
        load_file(&self.model, &path)
    }

    /// The cached weight file of a zoo model, downloading it unless offline.
    pub fn fetch(
        &self,
        progress: bool,
        notify: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, ModelError> {
        let info = crate::info(&self.model)?;
        let Some(official) = info.url.as_deref() else {
            return Err(invalid(format!(
                "model '{}' has no download; pass --weights FILE",
                self.model
            )));
        };
        let dl = |e: download::DownloadError| invalid(e.to_string());
        // A mirror serves the same file names (checked against the same hash prefixes).
        let url = match std::env::var("DEEPVIS_MIRROR") {
            Ok(base) if !base.is_empty() => format!(
                "{}/{}",
                base.trim_end_matches('/'),
                download::file_name_from_url(official).map_err(dl)?
            ),
            _ => official.to_string(),
        };
        let url = url.as_str();
        let cache = self
            .cache_dir
            .clone()
            .unwrap_or_else(download::default_cache_dir);
        if self.offline {
            let name = download::file_name_from_url(url).map_err(dl)?;
            let cached = cache.join(&name);
            if cached.is_file() {
                return Ok(cached);
            }
            return Err(invalid(format!(
                "model '{}' needs its weights and --offline forbids downloading {url}; pass --weights FILE \
                 (torchvision's {name}), or put that file in {}",
                self.model,
                cache.display()
            )));
        }
        notify(&format!(
            "fetching {} weights from {url} (cached in {})",
            self.model,
            cache.display()
        ));
        download::fetch(url, &cache, progress).map_err(dl)
    }

    fn load_onnx(
        &self,
        size: Option<(usize, usize)>,
        notify: &mut dyn FnMut(&str),
    ) -> Result<Loaded, ModelError> {
        if self.weights.is_some() || self.random_weights {
            return Err(invalid(
                "an ONNX file holds its own weights; drop --weights / --random-weights".into(),
            ));
        }
        let path = Path::new(&self.model);
        let spec = InputSpec {
            size,
            normalization: self.normalization()?,
        };
        let loaded = crate::onnx::load(path, &spec)?;
        if loaded.normalization_assumed {
            let what = if loaded.input[0] == 3 {
                "ImageNet normalization (RGB in 0-1, mean 0.485,0.456,0.406, std 0.229,0.224,0.225)"
            } else {
                "ImageNet's grey normalization (each channel in 0-1, mean 0.449, std 0.226)"
            };
            notify(&format!(
                "note: {}: assuming {what}; pass --mean, --std and --range if the network was trained otherwise",
                path.display()
            ));
        }
        Ok(Loaded {
            model: loaded.model,
            weights_label: path.display().to_string(),
            weights_file: Some(path.to_path_buf()),
        })
    }

    /// The mean, std and range as the normalization applied to images in [0, 1].
    pub fn normalization(&self) -> Result<Option<Normalization>, ModelError> {
        if self.mean.is_none() && self.std.is_none() && self.range.is_none() {
            return Ok(None);
        }
        let scale = match self.range.as_deref() {
            None | Some("0-1") => 1.0,
            Some("0-255") => 255.0,
            Some(other) => {
                return Err(invalid(format!(
                    "--range must be 0-1 or 0-255, not '{other}'"
                )))
            }
        };
        // One value stands for every channel; a list must have one per input channel, which
        // only the loaded model knows: the renderer checks it against the model.
        let mean = self.mean.clone().unwrap_or_else(|| vec![0.0]);
        let std = self.std.clone().unwrap_or_else(|| vec![1.0]);
        for (flag, v) in [("--mean", &mean), ("--std", &std)] {
            if v.is_empty() {
                return Err(invalid(format!("{flag} needs at least one value")));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(invalid(format!("{flag} values must be finite numbers")));
            }
        }
        if std.iter().any(|s| *s <= 0.0) {
            return Err(invalid("--std values must be positive".into()));
        }
        // Inputs are made in [0, 1]; a network trained on 0-255 sees x·255, so its mean and
        // std are divided by 255 to act on [0, 1] values.
        Ok(Some(Normalization::per_channel(
            mean.into_iter().map(|m| m / scale).collect(),
            std.into_iter().map(|s| s / scale).collect(),
        )))
    }
}

fn load_file(model: &str, path: &Path) -> Result<Loaded, ModelError> {
    Ok(Loaded {
        model: Model::load(model, path)?,
        weights_label: path.display().to_string(),
        weights_file: Some(path.to_path_buf()),
    })
}
