//! `deepvis score`: the robust score of any images (deepvis's, Lucent's, photos) for channels
//! of a layer or any objective, the same measure the manifest records.

use crate::filters::parse_filters;
use crate::source::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use deepvis_output::load_rgb;
use deepvis_render::score::{robust_scores, ScoreSettings, DEFAULT_VIEWS};
use deepvis_render::{evaluate, BatchObjective, Objective};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layer whose channels are scored (with --filters).
    #[arg(long, required_unless_present = "objective")]
    pub layer: Option<String>,
    /// Channels of --layer: `A..B`, `A..=B`, `N` or `a,b,c`.
    #[arg(long, requires = "layer")]
    pub filters: Option<String>,
    /// Any objective instead (`deepvis render --objective` grammar).
    #[arg(long, conflicts_with_all = ["layer", "filters"])]
    pub objective: Option<String>,
    /// Random views per score.
    #[arg(long, default_value_t = DEFAULT_VIEWS)]
    pub views: usize,
    /// Seed of the views (the manifest's scores use 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Size the images are resized to before the views: N or HxW (default: the model's
    /// native size).
    #[arg(long, value_parser = crate::settings::parse_size, value_name = "N|HxW")]
    pub size: Option<(usize, usize)>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// PNG or JPEG images.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    if a.views == 0 {
        bail!("--views must be at least 1");
    }
    let loaded = a.model.load_at(a.size)?;
    let model = &loaded.model;
    let objectives: Vec<(String, Objective)> = match (&a.objective, &a.layer) {
        (Some(text), _) => vec![(
            text.clone(),
            Objective::parse(text, model).map_err(|e| anyhow::anyhow!("{}", e.message))?,
        )],
        (None, Some(layer)) => {
            let filters = parse_filters(a.filters.as_deref().unwrap_or("0"))?;
            let node = model.layer(layer)?;
            let name = model.layer_name(layer, node);
            filters
                .into_iter()
                .map(|f| {
                    Objective::channel(model, &name, f)
                        .map(|o| (format!("{name}:{f}"), o))
                        .map_err(anyhow::Error::from)
                })
                .collect::<Result<_>>()?
        }
        (None, None) => bail!("give --layer (with --filters) or --objective"),
    };
    let settings = ScoreSettings {
        views: a.views,
        seed: a.seed,
        size: a.size,
    };
    let c = model.info.channels;
    if !a.json {
        outln!("image\tobjective\trobust\tfinal");
    }
    for path in &a.images {
        let (rgb, h, w) = load_rgb(path).with_context(|| format!("scoring {}", path.display()))?;
        let img: Vec<f32> = match c {
            3 => rgb,
            1 => (0..h * w)
                .map(|i| (rgb[i] + rgb[h * w + i] + rgb[2 * h * w + i]) / 3.0)
                .collect(),
            _ => bail!("scoring images needs a model with 1 or 3 input channels; this one has {c}"),
        };
        for (label, o) in &objectives {
            let obj = BatchObjective::Shared(o.clone());
            let robust = robust_scores(model, &obj, &img, 1, (h, w), &settings)?[0];
            let fin = evaluate(model, &obj, &img, 1, h, w)?[0];
            if a.json {
                outln!(
                    "{}",
                    serde_json::json!({"image": path.to_string_lossy(), "objective": label,
                        "robust": robust, "final": fin, "views": a.views, "seed": a.seed})
                );
            } else {
                outln!("{}\t{label}\t{robust:.4}\t{fin:.4}", path.display());
            }
        }
    }
    Ok(())
}
