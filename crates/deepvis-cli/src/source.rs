//! Where a model's weights come from: `--weights FILE`, the bundled copy, the download cache,
//! or a download, and the options every subcommand shares for that.

use anyhow::{bail, Context, Result};
use clap::Args;
use deepvis_models::onnx::InputSpec;
use deepvis_models::{Model, Normalization, WeightsFrom};
use deepvis_weights::download;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model name (see `deepvis models`), or the path of an .onnx file: your own network. The
    /// default is bundled and works offline.
    #[arg(
        long,
        visible_alias = "model_name",
        default_value = "efficientnet_lite0"
    )]
    pub model: String,
    /// Weight file: PyTorch .pth (zip or legacy format) or safetensors. Without it, zoo models
    /// are downloaded from torchvision's published URL into the cache (checksum-verified).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Never use the network; use --weights or an already cached download.
    #[arg(long, env = "DEEPVIS_OFFLINE", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::FalseyValueParser::new())]
    pub offline: bool,
    /// Download cache (default: $DEEPVIS_CACHE, $XDG_CACHE_HOME/deepvis or ~/.cache/deepvis).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Use seeded random weights instead (for timing only: the images mean nothing).
    #[arg(long, conflicts_with = "weights")]
    pub random_weights: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Arithmetic of the convolutions: f32, or bf16 (bfloat16 inputs, float32 accumulation;
    /// about twice as fast on CPUs with AVX512-BF16, values within ~1 % of float32). Without
    /// AVX512-BF16, bf16 falls back to f32 with a message.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    /// ONNX models: the per-channel mean subtracted from the input (one value, or one per
    /// channel, comma-separated; in the units of --range). Default: ImageNet's, with a note.
    #[arg(long, value_name = "M[,M...]")]
    pub mean: Option<String>,
    /// ONNX models: the per-channel standard deviation the input is divided by (as --mean).
    #[arg(long, value_name = "S[,S...]")]
    pub std: Option<String>,
    /// ONNX models: the pixel range the network was trained on, 0-1 or 0-255.
    #[arg(long, value_name = "0-1|0-255")]
    pub range: Option<String>,
}

/// Whether `--model` names an ONNX file rather than a zoo model.
pub fn is_onnx_path(model: &str) -> bool {
    model.to_ascii_lowercase().ends_with(".onnx")
        || (model.contains(std::path::MAIN_SEPARATOR) && Path::new(model).is_file())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    F32,
    Bf16,
}

/// A loaded model and a description of its weights for the manifest.
pub struct Loaded {
    pub model: Model,
    pub weights_label: String,
    pub weights_sha256: Option<String>,
}

impl ModelArgs {
    pub fn init_threads(&self) -> Result<()> {
        if let Some(n) = self.threads {
            if n == 0 {
                bail!("--threads must be at least 1");
            }
            // Fails only if already initialized, which is harmless.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
        let precision = match self.precision {
            PrecisionArg::F32 => deepvis_engine::Precision::F32,
            PrecisionArg::Bf16 => deepvis_engine::Precision::Bf16,
        };
        if let Err(e) = deepvis_engine::set_precision(precision) {
            eprintln!("note: {e}; computing in float32");
            deepvis_engine::set_precision(deepvis_engine::Precision::F32)?;
        }
        Ok(())
    }

    pub fn load(&self) -> Result<Loaded> {
        self.load_at(None)
    }

    /// Loads the model; an ONNX model with a dynamic input size is lowered at `size`.
    pub fn load_at(&self, size: Option<(usize, usize)>) -> Result<Loaded> {
        self.init_threads()?;
        if is_onnx_path(&self.model) {
            return self.load_onnx(size);
        }
        if self.mean.is_some() || self.std.is_some() || self.range.is_some() {
            bail!(
                "--mean, --std and --range are for ONNX models; zoo model '{}' has its own normalization",
                self.model
            );
        }
        let info = deepvis_models::info(&self.model)?;
        if self.random_weights {
            return Ok(Loaded {
                model: Model::build(&self.model, WeightsFrom::Random(0))?,
                weights_label: "random (seed 0)".into(),
                weights_sha256: None,
            });
        }
        if let Some(path) = &self.weights {
            return load_file(&self.model, path);
        }
        if info.bundled {
            return Ok(Loaded {
                model: Model::bundled(&self.model)?,
                weights_label: "bundled".into(),
                weights_sha256: Some(sha256_hex(deepvis_models::BUNDLED_EFFICIENTNET_LITE0)),
            });
        }
        let path = self.fetch()?;
        load_file(&self.model, &path)
    }

    /// The cached weight file of a zoo model, downloading it unless offline.
    pub fn fetch(&self) -> Result<PathBuf> {
        let info = deepvis_models::info(&self.model)?;
        let Some(official) = info.url.as_deref() else {
            bail!(
                "model '{}' has no download; pass --weights FILE",
                self.model
            );
        };
        // A mirror serves the same file names (checked against the same hash prefixes).
        let url = match std::env::var("DEEPVIS_MIRROR") {
            Ok(base) if !base.is_empty() => format!(
                "{}/{}",
                base.trim_end_matches('/'),
                download::file_name_from_url(official)?
            ),
            _ => official.to_string(),
        };
        let url = url.as_str();
        let cache = self
            .cache_dir
            .clone()
            .unwrap_or_else(download::default_cache_dir);
        if self.offline {
            let name = download::file_name_from_url(url)?;
            let cached = cache.join(&name);
            if cached.is_file() {
                return Ok(cached);
            }
            bail!(
                "model '{}' needs its weights and --offline forbids downloading {url}; pass --weights FILE \
                 (torchvision's {name}), or put that file in {}",
                self.model,
                cache.display()
            );
        }
        eprintln!(
            "fetching {} weights from {url} (cached in {})",
            self.model,
            cache.display()
        );
        Ok(download::fetch(
            url,
            &cache,
            std::io::stderr().is_terminal(),
        )?)
    }
}

impl ModelArgs {
    fn load_onnx(&self, size: Option<(usize, usize)>) -> Result<Loaded> {
        if self.weights.is_some() || self.random_weights {
            bail!("an ONNX file holds its own weights; drop --weights / --random-weights");
        }
        let path = Path::new(&self.model);
        let spec = InputSpec {
            size,
            normalization: self.normalization()?,
        };
        let loaded = deepvis_models::onnx::load(path, &spec)?;
        if loaded.normalization_assumed {
            let what = if loaded.input[0] == 3 {
                "ImageNet normalization (RGB in 0-1, mean 0.485,0.456,0.406, std 0.229,0.224,0.225)"
            } else {
                "ImageNet's grey normalization (each channel in 0-1, mean 0.449, std 0.226)"
            };
            eprintln!(
                "note: {}: assuming {what}; pass --mean, --std and --range if the network was trained otherwise",
                path.display()
            );
        }
        let sha = deepvis_weights::sha256_file(path)
            .with_context(|| format!("hashing {}", path.display()))?;
        Ok(Loaded {
            model: loaded.model,
            weights_label: path.display().to_string(),
            weights_sha256: Some(sha),
        })
    }

    /// --mean, --std and --range as the normalization applied to images in [0, 1].
    fn normalization(&self) -> Result<Option<Normalization>> {
        if self.mean.is_none() && self.std.is_none() && self.range.is_none() {
            return Ok(None);
        }
        let scale = match self.range.as_deref() {
            None | Some("0-1") => 1.0,
            Some("0-255") => 255.0,
            Some(other) => bail!("--range must be 0-1 or 0-255, not '{other}'"),
        };
        // One value stands for every channel; a list must have one per input channel, which
        // only the loaded model knows: the renderer checks it against the model.
        let list = |flag: &str, v: &Option<String>, default: f32| -> Result<Vec<f32>> {
            let Some(v) = v else {
                return Ok(vec![default]);
            };
            let vals: Vec<f32> = v
                .split(',')
                .map(|p| p.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    anyhow::anyhow!("{flag} takes numbers separated by commas, not '{v}'")
                })?;
            if vals.iter().any(|x| !x.is_finite()) {
                bail!("{flag} values must be finite numbers, not '{v}'");
            }
            Ok(vals)
        };
        let mean = list("--mean", &self.mean, 0.0)?;
        let std = list("--std", &self.std, 1.0)?;
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            bail!("--std values must be positive");
        }
        // Inputs are made in [0, 1]; a network trained on 0-255 sees x·255, so its mean and
        // std are divided by 255 to act on [0, 1] values.
        Ok(Some(Normalization::per_channel(
            mean.into_iter().map(|m| m / scale).collect(),
            std.into_iter().map(|s| s / scale).collect(),
        )))
    }
}

fn load_file(model: &str, path: &Path) -> Result<Loaded> {
    let model = Model::load(model, path)?;
    let sha = deepvis_weights::sha256_file(path)
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(Loaded {
        model,
        weights_label: path.display().to_string(),
        weights_sha256: Some(sha),
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
