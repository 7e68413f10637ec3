//! Where a model's weights come from: `--weights FILE`, the bundled copy, the download cache,
//! or a download, and the options every subcommand shares for that.

use anyhow::{bail, Context, Result};
use clap::Args;
use deepvis_models::source::Source;
use deepvis_models::Model;
use deepvis_render::precision::PrecisionChoice;
use std::io::IsTerminal;
use std::path::PathBuf;

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
    /// Arithmetic of the convolutions: f32, bf16 (bfloat16 inputs, float32 accumulation;
    /// about twice as fast on CPUs with AVX512-BF16, on AMX tiles where the CPU has them; values
    /// within ~1 % of float32), or auto: bf16 where the CPU has AVX512-BF16 and the model's
    /// output in bf16 stays within 10 % of float32's (checked on one test image at load), f32
    /// otherwise. Without AVX512-BF16, bf16 falls back to f32 with a message. The manifest
    /// records which one made the images. Default: auto; f32 for `probe` and `predict`, whose
    /// values are compared with other frameworks'.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
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
    deepvis_models::source::is_onnx_path(model)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    Auto,
    F32,
    Bf16,
}

impl PrecisionArg {
    fn choice(self) -> PrecisionChoice {
        match self {
            PrecisionArg::Auto => PrecisionChoice::Auto,
            PrecisionArg::F32 => PrecisionChoice::F32,
            PrecisionArg::Bf16 => PrecisionChoice::Bf16,
        }
    }
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
        Ok(())
    }

    /// Sets the precision for `model` (`--precision auto` checks bf16 against float32 on it).
    fn choose_precision(&self, model: &Model, default: PrecisionArg) -> Result<()> {
        let wanted = self.precision.unwrap_or(default).choice();
        let chosen = deepvis_render::precision::choose_precision(model, wanted)
            .context("checking bf16 against float32 on this model")?;
        if let Some(note) = chosen.note {
            eprintln!("{note}");
        }
        Ok(())
    }

    pub fn load(&self) -> Result<Loaded> {
        self.load_at(None)
    }

    /// Loads the model; an ONNX model with a dynamic input size is lowered at `size`. Without
    /// `--precision` it computes in `auto` precision.
    pub fn load_at(&self, size: Option<(usize, usize)>) -> Result<Loaded> {
        self.load_in(size, PrecisionArg::Auto)
    }

    /// [`ModelArgs::load_at`] in float32 unless `--precision` says otherwise: for commands that
    /// report values to compare with other frameworks'.
    pub fn load_exact_at(&self, size: Option<(usize, usize)>) -> Result<Loaded> {
        self.load_in(size, PrecisionArg::F32)
    }

    fn load_in(&self, size: Option<(usize, usize)>, precision: PrecisionArg) -> Result<Loaded> {
        self.init_threads()?;
        let loaded =
            self.source()?
                .load_at(size, std::io::stderr().is_terminal(), &mut |note| {
                    eprintln!("{note}")
                })?;
        self.choose_precision(&loaded.model, precision)?;
        let sha = match &loaded.weights_file {
            Some(path) => Some(
                deepvis_weights::sha256_file(path)
                    .with_context(|| format!("hashing {}", path.display()))?,
            ),
            None if loaded.weights_label == "bundled" => {
                Some(sha256_hex(deepvis_models::BUNDLED_EFFICIENTNET_LITE0))
            }
            None => None,
        };
        Ok(Loaded {
            model: loaded.model,
            weights_label: loaded.weights_label,
            weights_sha256: sha,
        })
    }

    /// The cached weight file of a zoo model, downloading it unless offline.
    pub fn fetch(&self) -> Result<PathBuf> {
        Ok(self
            .source()?
            .fetch(std::io::stderr().is_terminal(), &mut |note| {
                eprintln!("{note}")
            })?)
    }

    /// The flags as the library's model source (its rules are shared with the Python package).
    fn source(&self) -> Result<Source> {
        Ok(Source {
            model: self.model.clone(),
            weights: self.weights.clone(),
            offline: self.offline,
            cache_dir: self.cache_dir.clone(),
            random_weights: self.random_weights,
            mean: list("--mean", &self.mean)?,
            std: list("--std", &self.std)?,
            range: self.range.clone(),
        })
    }
}

/// `--mean` / `--std`: numbers separated by commas.
fn list(flag: &str, v: &Option<String>) -> Result<Option<Vec<f32>>> {
    let Some(v) = v else {
        return Ok(None);
    };
    let vals: Vec<f32> = v
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("{flag} takes numbers separated by commas, not '{v}'"))?;
    if vals.iter().any(|x| !x.is_finite()) {
        bail!("{flag} values must be finite numbers, not '{v}'");
    }
    Ok(Some(vals))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
