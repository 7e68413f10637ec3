//! Where a model's weights come from: `--weights FILE`, the bundled copy, the download cache,
//! or a download, and the options every subcommand shares for that.

use anyhow::{bail, Context, Result};
use clap::Args;
use deepvis_models::{Model, WeightsFrom};
use deepvis_weights::download;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model name (see `deepvis models`). The default is bundled and works offline.
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
        self.init_threads()?;
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
