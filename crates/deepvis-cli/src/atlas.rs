//! `deepvis atlas`: every channel of a model's chosen layers (by default its block outputs and
//! logits), rendered with one preset into one folder, with the site to browse them. Resumable and
//! shardable like `filters`, whose rendering it shares.

use crate::filters::{parse_filters, Ctx, JobArgs, LayerOutcome};
use crate::source::ModelArgs;
use anyhow::{bail, Result};
use clap::Args;
use deepvis_engine::NodeId;
use deepvis_models::Model;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct AtlasArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layers to render: `L1,L2,…` (names as `deepvis layers` lists them), or `all` for every
    /// layer of the model (large). Default: every block output or major stage of the model's
    /// family and the logits (see the README's atlas section for the rule per family).
    #[arg(long, value_name = "all|L1,L2,..")]
    pub layers: Option<String>,
    /// Channels of each layer: `A..B`, `A..=B`, `N` or `a,b,c`; indices past a layer's channel
    /// count are left out for that layer. Default: every channel.
    #[arg(long)]
    pub filters: Option<String>,
    #[command(flatten)]
    pub job: JobArgs,
}

/// The layers an atlas renders by default, by model family (zoo name), then the logits:
/// - EfficientNet-Lite: each of `_blocks.N`, and `_conv_head.act` (the head convolution after
///   its ReLU6).
/// - VGG, AlexNet: the last layer of each stage, the one before each max pool of `features`.
/// - ResNet, ResNeXt, Wide ResNet: each residual block `layerK.J`.
/// - MobileNet, EfficientNet-B, ConvNeXt, SqueezeNet: each module of `features` that is a
///   block or stage (`features.N` with sub-modules).
/// - DenseNet: each `features.denseblockK` and `features.transitionK`.
/// - GoogLeNet: each `inception*`; Inception v3: each `Mixed_*`.
/// - ShuffleNetV2: each `stageK.J` and `conv5`.
/// - Other models (ONNX files): each numbered module `P.N` that has sub-modules, outermost
///   first; where there is none, pass --layers.
///
/// The logits are the graph's last node where the model has its classifier.
pub fn default_layers(model: &Model) -> Vec<NodeId> {
    let nodes = model.graph.nodes();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let composite = |n: &str| {
        let prefix = format!("{n}.");
        names.iter().any(|m| m.starts_with(&prefix))
    };
    let numbered = |n: &str, parent: &str| {
        n.strip_prefix(parent)
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
    };
    let top_level = |n: &str| !n.contains('.') && !n.contains('#');
    let family = model.info.name.to_ascii_lowercase();
    let by = |pred: &dyn Fn(&str) -> bool| -> Vec<NodeId> {
        (1..nodes.len()).filter(|&i| pred(names[i])).collect()
    };
    let mut ids: Vec<NodeId> = if family.starts_with("efficientnet_lite") {
        let mut v = by(&|n| numbered(n, "_blocks"));
        v.extend(model.layer("_conv_head.act").ok());
        v
    } else if family.starts_with("vgg") || family.starts_with("alexnet") {
        (1..nodes.len())
            .filter(|&i| {
                names[i].starts_with("features.") && nodes[i].op.describe().starts_with("MaxPool")
            })
            .filter_map(|i| nodes[i].inputs.first().copied())
            .collect()
    } else if ["resnet", "resnext", "wide_resnet"]
        .iter()
        .any(|f| family.starts_with(f))
    {
        by(&|n| (1..=4).any(|k| numbered(n, &format!("layer{k}"))))
    } else if ["mobilenet", "efficientnet", "convnext", "squeezenet"]
        .iter()
        .any(|f| family.starts_with(f))
    {
        by(&|n| numbered(n, "features") && composite(n))
    } else if family.starts_with("densenet") {
        by(&|n| {
            n.strip_prefix("features.").is_some_and(|r| {
                (r.starts_with("denseblock") || r.starts_with("transition")) && !r.contains('.')
            })
        })
    } else if family.starts_with("googlenet") {
        by(&|n| top_level(n) && n.starts_with("inception"))
    } else if family.starts_with("inception") {
        by(&|n| top_level(n) && n.starts_with("Mixed_"))
    } else if family.starts_with("shufflenet") {
        by(&|n| (2..=4).any(|k| numbered(n, &format!("stage{k}"))) || n == "conv5")
    } else {
        // Outermost numbered modules with sub-modules: a numbered module inside one already
        // taken is a part of that block.
        let mut taken: Vec<NodeId> = Vec::new();
        for i in 1..nodes.len() {
            let n = names[i];
            let Some((parent, _)) = n.rsplit_once('.') else {
                continue;
            };
            if numbered(n, parent)
                && composite(n)
                && !taken
                    .iter()
                    .any(|&t| n.starts_with(&format!("{}.", names[t])))
            {
                taken.push(i);
            }
        }
        taken
    };
    if model.has_head {
        let last = model.graph.last();
        if last != 0 && !ids.contains(&last) {
            ids.push(last);
        }
    }
    ids
}

pub fn run(a: AtlasArgs) -> Result<()> {
    let filters = a.filters.as_deref().map(parse_filters).transpose()?;
    let shard = a.job.validate()?;
    let loaded = a.model.load_at(a.job.render.size)?;
    let model = &loaded.model;
    let specs: Vec<String> = match a.layers.as_deref().map(str::trim) {
        None => {
            let ids = default_layers(model);
            if ids.is_empty() {
                bail!(
                    "no default atlas layers are known for {}; name them with --layers L1,L2 (see `deepvis layers --model {}`)",
                    a.model.model,
                    a.model.model
                );
            }
            ids.iter()
                .map(|&i| model.graph.nodes()[i].name.clone())
                .collect()
        }
        Some("all") => model
            .graph
            .nodes()
            .iter()
            .skip(1)
            .map(|n| n.name.clone())
            .collect(),
        Some(list) => {
            let v: Vec<String> = list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if v.is_empty() {
                bail!("--layers is empty; write all or L1,L2");
            }
            v
        }
    };
    let ctx = Ctx::new(&a.model.model, &loaded, &a.job, shard)?;
    let size = a.job.render.size_or(model.info.native_size);
    // Every layer is checked before anything renders, so a bad name fails at once.
    let mut plans = Vec::with_capacity(specs.len());
    for spec in &specs {
        let id = model.layer(spec)?;
        let channels = model.channels_at(id, size)?;
        let chosen: Vec<usize> = match &filters {
            Some(f) => f.iter().copied().filter(|&c| c < channels).collect(),
            None => (0..channels).collect(),
        };
        if chosen.is_empty() {
            if !a.job.run.quiet {
                eprintln!("note: {spec} has {channels} channels, none of --filters; left out");
            }
            continue;
        }
        plans.push(ctx.plan_layer(spec, Some(chosen))?);
    }
    let total: usize = plans.iter().map(|p| p.filters.len()).sum();
    if !a.job.run.quiet {
        eprintln!(
            "atlas of {}: {} layers, {total} channels{}",
            a.model.model,
            plans.len(),
            shard.map_or(String::new(), |s| format!(
                " (shard {}/{})",
                s.index, s.count
            ))
        );
    }
    let start = Instant::now();
    let mut units = 0;
    let mut outcomes: Vec<LayerOutcome> = Vec::with_capacity(plans.len());
    for (k, plan) in plans.iter().enumerate() {
        if !a.job.run.quiet {
            eprintln!(
                "[{}/{}] {} ({} channels)",
                k + 1,
                plans.len(),
                plan.layer_name,
                plan.filters.len()
            );
        }
        outcomes.push(ctx.render_layer(plan, &mut units)?);
    }
    let rendered: usize = outcomes.iter().map(|o| o.rendered).sum();
    let seconds = start.elapsed().as_secs_f64();
    if shard.is_some() {
        if !a.job.run.quiet && rendered > 0 {
            eprintln!(
                "{rendered} channels in {seconds:.0} s ({:.0} channels/hour)",
                rendered as f64 * 3600.0 / seconds
            );
        }
        ctx.report_shard(&outcomes)?;
        return Ok(());
    }
    for plan in &plans {
        ctx.write_grid(plan)?;
    }
    let manifest = ctx.finish()?;
    if !a.job.run.quiet {
        let skipped: usize = outcomes.iter().map(|o| o.skipped).sum();
        eprintln!(
            "{total} channels ({rendered} rendered in {seconds:.0} s{}, {skipped} already done)",
            if rendered > 0 {
                format!(", {:.0} channels/hour", rendered as f64 * 3600.0 / seconds)
            } else {
                String::new()
            }
        );
        let model_dir = deepvis_output::path_component(&model.info.name);
        eprintln!(
            "atlas:    {}",
            ctx.out.join(model_dir).join("index.html").display()
        );
        eprintln!(
            "manifest: {} ({} runs)",
            ctx.out.join(deepvis_output::MANIFEST_FILE).display(),
            manifest.runs.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deepvis_models::WeightsFrom;

    fn names(model: &str) -> Vec<String> {
        let m = Model::build(model, WeightsFrom::Random(0)).expect("model");
        default_layers(&m)
            .into_iter()
            .map(|i| m.graph.nodes()[i].name.clone())
            .collect()
    }

    #[test]
    fn default_layers_per_family() {
        let lite = names("efficientnet_lite0");
        assert_eq!(lite.len(), 16 + 2, "{lite:?}");
        assert_eq!(lite[0], "_blocks.0");
        assert_eq!(lite[15], "_blocks.15");
        assert_eq!(lite[17], "_fc");
        assert_eq!(
            names("vgg16"),
            [
                "features.3",
                "features.8",
                "features.15",
                "features.22",
                "features.29",
                "classifier.6"
            ]
        );
        let r = names("resnet18");
        assert_eq!(r.len(), 9, "{r:?}");
        assert_eq!(r[0], "layer1.0");
        assert_eq!(r[7], "layer4.1");
        let mb = names("mobilenet_v2");
        assert_eq!(mb.len(), 19 + 1, "{mb:?}");
        let g = names("googlenet");
        assert_eq!(g.len(), 9 + 1, "{g:?}");
        let d = names("densenet121");
        assert_eq!(d.len(), 4 + 3 + 1, "{d:?}");
        let s = names("shufflenet_v2_x1_0");
        assert_eq!(s.len(), 4 + 8 + 4 + 1 + 1, "{s:?}");
        let i = names("inception_v3");
        assert_eq!(i.len(), 11 + 1, "{i:?}");
    }
}
