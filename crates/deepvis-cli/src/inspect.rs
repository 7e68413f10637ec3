//! Subcommands that look at a model rather than optimize images: layers, predict, probe,
//! convert, download, models.

use crate::settings::parse_size;
use crate::source::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use deepvis_engine::Tensor;
use deepvis_models::{imagenet_classes, Model, WeightsFrom};
use deepvis_output::{load_rgb, resize_bilinear_planar};
use deepvis_render::{model_normalization, normalize};
use deepvis_weights::{DType, StateDict, StoredTensor};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct LayersArgs {
    /// Model name (see `deepvis models`), or the path of an .onnx file.
    #[arg(long, alias = "model_name", default_value = "efficientnet_lite0")]
    pub model: String,
    /// Input size used to compute the output shapes: N or HxW (default: the model's native
    /// size).
    #[arg(long, value_name = "N|HxW", value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
}

pub fn layers(a: LayersArgs) -> Result<()> {
    let (model, unavailable) = if crate::source::is_onnx_path(&a.model) {
        let spec = deepvis_models::onnx::InputSpec {
            size: a.size,
            normalization: None,
        };
        let loaded = deepvis_models::onnx::load(std::path::Path::new(&a.model), &spec)?;
        (loaded.model, loaded.unavailable)
    } else {
        // The architecture alone gives names and shapes; no weights are needed.
        (Model::build(&a.model, WeightsFrom::Random(0))?, Vec::new())
    };
    let (h, w) = a.size.unwrap_or(model.info.native_size);
    outln!(
        "{:<34} {:<24} {:>9} {:>8}  output at {}x{}",
        "layer",
        "op",
        "channels",
        "field",
        h,
        w
    );
    for l in model.layers_at((h, w))? {
        let channels = l.shape.get(1).copied().unwrap_or(0);
        let shape = l
            .shape
            .iter()
            .skip(1)
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let field = l
            .receptive_field
            .map_or("global".to_string(), |f| format!("{f}px"));
        let also = if l.aliases.is_empty() {
            String::new()
        } else {
            format!("  = {}", l.aliases.join(", "))
        };
        outln!(
            "{:<34} {:<24} {:>9} {:>8}  {}{also}",
            l.name,
            l.op,
            channels,
            field,
            shape
        );
    }
    if !unavailable.is_empty() {
        outln!(
            "\n{} values of the graph cannot be computed (only layers that need them are affected), e.g. {}: {}",
            unavailable.len(),
            unavailable[0].0,
            unavailable[0].1
        );
    }
    if let Some(seq) = model.info.sequential.as_deref() {
        outln!("\nLayers of `{seq}` may also be given by index: --layer 28 means {seq}.28.");
    }
    outln!("field: side of the input region one value of the layer sees (its receptive field).");
    Ok(())
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Photo to classify (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,
    /// Classify at this size, N or HxW (default: the model's native size, after a resize of
    /// the shorter side to size·256/224 and a centre crop, as torchvision evaluates).
    #[arg(long, value_name = "N|HxW", value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
    /// How many classes to print.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

/// Resize (aspect kept) until the image covers `rh`×`rw`, then centre-crop `ch`×`cw`.
pub(crate) fn resize_and_crop(
    chw: &[f32],
    h: usize,
    w: usize,
    (rh, rw): (usize, usize),
    (ch, cw): (usize, usize),
) -> Vec<f32> {
    let (nh, nw) = if rh * w >= rw * h {
        (rh, (w * rh).div_ceil(h))
    } else {
        ((h * rw).div_ceil(w), rw)
    };
    let r = resize_bilinear_planar(chw, h, w, nh, nw);
    let (top, left) = ((nh - ch) / 2, (nw - cw) / 2);
    let mut out = Vec::with_capacity(3 * ch * cw);
    for c in 0..3 {
        for y in 0..ch {
            let row = (c * nh + top + y) * nw + left;
            out.extend_from_slice(&r[row..row + cw]);
        }
    }
    out
}

pub fn predict(a: PredictArgs) -> Result<()> {
    let loaded = a.model.load_exact_at(a.size)?;
    let model = &loaded.model;
    if !model.has_head {
        bail!(
            "these weights hold no classifier ({}…); pass a full checkpoint to predict",
            model.info.head_prefix
        );
    }
    let (sh, sw) = a.size.unwrap_or(model.info.native_size);
    let (chw, h, w) = load_rgb(&a.image)?;
    let resize = |s: usize| (s * 256).div_ceil(224);
    let input = resize_and_crop(&chw, h, w, (resize(sh), resize(sw)), (sh, sw));
    let c = model.info.channels;
    let input = crate::render_cmd::photo_channels(&input, c, sh * sw)?;
    let x = normalize(
        &Tensor::new(vec![1, c, sh, sw], input)?,
        &model_normalization(model)?,
    );
    let logits = model.graph.forward(x, model.graph.last())?.output().clone();
    let max = logits.data().iter().fold(f32::MIN, |m, v| m.max(*v));
    let exp: Vec<f64> = logits
        .data()
        .iter()
        .map(|v| ((v - max) as f64).exp())
        .collect();
    let total: f64 = exp.iter().sum();
    let mut order: Vec<usize> = (0..exp.len()).collect();
    order.sort_by(|&i, &j| exp[j].total_cmp(&exp[i]));
    // ImageNet's names only for a 1000-way head: a user's 10-class network has its own labels.
    let names = if exp.len() == 1000 {
        imagenet_classes()
    } else {
        Vec::new()
    };
    for &i in order.iter().take(a.top) {
        outln!(
            "{:>6.2}%  {:>4}  {}",
            100.0 * exp[i] / total,
            i,
            names.get(i).copied().unwrap_or("")
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input photo, resized to --size×--size, RGB in [0, 1], then the model's normalization.
    #[arg(
        long,
        conflicts_with = "input_tensor",
        required_unless_present = "input_tensor"
    )]
    pub image: Option<PathBuf>,
    /// Size of the resized photo, N or HxW (default: the model's native size).
    #[arg(long, value_name = "N|HxW", value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
    /// An already normalized NCHW input: FILE.safetensors:TENSOR_NAME.
    #[arg(long)]
    pub input_tensor: Option<String>,
    /// Layer whose output is written.
    #[arg(long)]
    pub layer: String,
    /// Also write d mean(layer[0, channel]) / d normalized input as `input_grad`.
    #[arg(long)]
    pub channel: Option<usize>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn probe(a: ProbeArgs) -> Result<()> {
    let loaded = a.model.load_exact_at(a.size)?;
    let model = &loaded.model;
    let layer = model.layer(&a.layer)?;
    let c = model.info.channels;
    let input = match (&a.image, &a.input_tensor) {
        (_, Some(spec)) => {
            let (file, name) = spec
                .rsplit_once(':')
                .with_context(|| format!("--input-tensor '{spec}' must be FILE:TENSOR_NAME"))?;
            let dict = deepvis_weights::load(std::path::Path::new(file))?;
            let t = dict
                .get(name)
                .with_context(|| format!("{file} has no tensor named '{name}'"))?;
            if t.shape.len() != 4 || t.shape[1] != c {
                bail!(
                    "tensor '{name}' in {file} has shape {:?}; expected [N, {c}, H, W]",
                    t.shape
                );
            }
            Tensor::new(t.shape.clone(), t.data.clone())?
        }
        (Some(path), None) => {
            let (sh, sw) = a.size.unwrap_or(model.info.native_size);
            let (chw, h, w) = load_rgb(path)?;
            let rgb = resize_bilinear_planar(&chw, h, w, sh, sw);
            let input = crate::render_cmd::photo_channels(&rgb, c, sh * sw)?;
            normalize(
                &Tensor::new(vec![1, c, sh, sw], input)?,
                &model_normalization(model)?,
            )
        }
        (None, None) => bail!("pass --image FILE or --input-tensor FILE:NAME"),
    };
    let probe = deepvis_render::probe(model, layer, &a.layer, input, a.channel)?;
    let mut dict = StateDict::new();
    let out = probe.activation;
    dict.insert(
        "activation",
        StoredTensor::new(out.shape().to_vec(), DType::F32, out.into_data()),
    );
    if let Some(grad) = probe.input_grad {
        dict.insert(
            "input_grad",
            StoredTensor::new(grad.shape().to_vec(), DType::F32, grad.into_data()),
        );
    }
    deepvis_weights::save_safetensors(&dict, &a.out, DType::F32)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StoreAs {
    F32,
    F16,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input weight file (.pth zip or legacy format, or safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Storage type of floating-point tensors.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: StoreAs,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let dict = deepvis_weights::load(&a.weights)?;
    let dtype = match a.dtype {
        StoreAs::F32 => DType::F32,
        StoreAs::F16 => DType::F16,
    };
    deepvis_weights::save_safetensors(&dict, &a.out, dtype)?;
    eprintln!("wrote {} ({} tensors)", a.out.display(), dict.len());
    Ok(())
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn download(a: DownloadArgs) -> Result<()> {
    let path = a.model.fetch()?;
    // Loading proves the file is a complete checkpoint of this model.
    Model::load(&a.model.model, &path)?;
    outln!("{}", path.display());
    Ok(())
}

pub fn models() -> Result<()> {
    for m in deepvis_models::ZOO {
        let source = if m.bundled {
            "bundled".to_string()
        } else {
            m.url.as_deref().unwrap_or("--weights only").to_string()
        };
        let size = Model::parameter_count(&m.name)
            .map(|n| {
                format!(
                    "{:.1} M parameters ({:.0} MB in float32)",
                    n as f64 / 1e6,
                    n as f64 * 4.0 / 1e6
                )
            })
            .unwrap_or_else(|e| format!("size unknown: {e}"));
        let list = |v: &[f32]| {
            v.iter()
                .map(|x| format!("{x}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let n = &m.normalization;
        outln!(
            "{:<20} {}\n{:<20} {size}; input {}x{} px, RGB in 0-1, mean {}, std {}\n{:<20} weights: {source}",
            m.name,
            m.description,
            "",
            m.native_size.0,
            m.native_size.1,
            list(&n.mean),
            list(&n.std),
            ""
        );
    }
    Ok(())
}
