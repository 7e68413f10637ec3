//! torchvision's DenseNet-121/161/169/201 with the module paths of its state dicts:
//! `features.conv0`, `norm0`, `relu0`, `pool0`, `features.denseblockN.denselayerM.{norm1,
//! relu1, conv1, norm2, relu2, conv2}`, `features.transitionN.{norm, relu, conv, pool}`,
//! `features.norm5`, then `classifier`.
//!
//! Layer names mean what a PyTorch forward hook on that module returns (see `resnet.rs`):
//! - `features.denseblockN.denselayerM.cat` is the functional `torch.cat` a dense layer applies
//!   to its inputs (the block's input and the new features of the layers before it) before
//!   `norm1`; for the first layer of a block it is that one input unchanged.
//! - A dense layer `…denselayerM` is its new features (the output of `conv2`), a block
//!   `features.denseblockN` the concatenation of its input and every layer's new features, a
//!   transition `features.transitionN` its pool's output, `features` the output of `norm5`.
//! - After `features`, torchvision's forward applies functional ops, named here: `relu`
//!   (`F.relu`), `avgpool` (`F.adaptive_avg_pool2d` to 1×1) and `flatten` (`torch.flatten`),
//!   then the `classifier` Linear.
//!
//! torchvision's published weights use the old keys `…denselayerM.norm.1.weight` (for `norm1`,
//! and likewise `relu.2`, `conv.1`, …); [`remap_legacy_keys`] renames them at load time as
//! torchvision's `_load_state_dict` does.

use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{
    AdaptiveAvgPool2d, AvgPool2d, Concat, Flatten, Identity, MaxPool2d, NodeId, Relu,
};
use deepvis_weights::StateDict;

/// A DenseNet-BC's configuration: growth rate, layers per dense block, stem width.
#[derive(Clone, Copy)]
pub(crate) struct Config {
    pub growth: usize,
    pub blocks: [usize; 4],
    pub init: usize,
}

pub(crate) const DENSENET121: Config = Config {
    growth: 32,
    blocks: [6, 12, 24, 16],
    init: 64,
};
pub(crate) const DENSENET161: Config = Config {
    growth: 48,
    blocks: [6, 12, 36, 24],
    init: 96,
};
pub(crate) const DENSENET169: Config = Config {
    growth: 32,
    blocks: [6, 12, 32, 32],
    init: 64,
};
pub(crate) const DENSENET201: Config = Config {
    growth: 32,
    blocks: [6, 12, 48, 32],
    init: 64,
};

/// The bottleneck width of a dense layer is `BN_SIZE` × growth rate.
const BN_SIZE: usize = 4;
const EPS: f32 = 1e-5;

pub(crate) fn densenet(b: &mut Builder, cfg: Config, head: bool) -> Result<(), ModelError> {
    let mut f = b.pp("features");
    let stem = Conv::new(3, cfg.init, 7).stride(2).pad(3).no_bias();
    let x = f.conv("conv0", 0, stem)?;
    let x = f.batch_norm("norm0", x, cfg.init, EPS)?;
    let x = f.op("relu0", Relu, &[x]);
    let pool = MaxPool2d {
        padding: (1, 1),
        ..MaxPool2d::square(3, 2)
    };
    let mut x = f.op("pool0", pool, &[x]);
    let mut c = cfg.init;
    for (i, &n) in cfg.blocks.iter().enumerate() {
        let mut block = f.pp(format!("denseblock{}", i + 1));
        let mut parts: Vec<NodeId> = vec![x];
        for m in 0..n {
            let cin = c + m * cfg.growth;
            let mut layer = block.pp(format!("denselayer{}", m + 1));
            let new = dense_layer(&mut layer, &parts, cin, cfg.growth)?;
            parts.push(new);
        }
        x = block.output(Concat { axis: 1 }, &parts);
        drop(block);
        c += n * cfg.growth;
        if i + 1 < cfg.blocks.len() {
            let mut t = f.pp(format!("transition{}", i + 1));
            let y = t.batch_norm("norm", x, c, EPS)?;
            let y = t.op("relu", Relu, &[y]);
            let y = t.conv("conv", y, Conv::new(c, c / 2, 1).no_bias())?;
            let avg = AvgPool2d {
                kernel: (2, 2),
                stride: (2, 2),
                padding: (0, 0),
                ceil_mode: false,
                count_include_pad: true,
            };
            let y = t.op("pool", avg, &[y]);
            x = t.output(Identity, &[y]);
            c /= 2;
        }
    }
    let x = f.batch_norm("norm5", x, c, EPS)?;
    let x = f.output(Identity, &[x]);
    drop(f);
    let x = b.op("relu", Relu, &[x]);
    let x = b.op("avgpool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    let x = b.op("flatten", Flatten, &[x]);
    if head {
        b.linear("classifier", x, c, 1000)?;
    }
    Ok(())
}

/// `_DenseLayer` in scope `…denselayerM`: `cat` of its inputs, then norm1/relu1/conv1 (1×1 to
/// the bottleneck width) and norm2/relu2/conv2 (3×3 to `growth`); the scope's node is `conv2`'s
/// output, the layer's new features.
fn dense_layer(
    b: &mut Builder,
    inputs: &[NodeId],
    cin: usize,
    growth: usize,
) -> Result<NodeId, ModelError> {
    let mid = BN_SIZE * growth;
    let x = if inputs.len() == 1 {
        b.op("cat", Identity, inputs)
    } else {
        b.op("cat", Concat { axis: 1 }, inputs)
    };
    let y = b.batch_norm("norm1", x, cin, EPS)?;
    let y = b.op("relu1", Relu, &[y]);
    let y = b.conv("conv1", y, Conv::new(cin, mid, 1).no_bias())?;
    let y = b.batch_norm("norm2", y, mid, EPS)?;
    let y = b.op("relu2", Relu, &[y]);
    let y = b.conv("conv2", y, Conv::new(mid, growth, 3).pad(1).no_bias())?;
    Ok(b.output(Identity, &[y]))
}

/// Renames the old-style keys of torchvision's published DenseNet files
/// (`…denselayerM.norm.1.weight` → `…denselayerM.norm1.weight`), as torchvision's
/// `_load_state_dict` does with the pattern
/// `^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$`.
pub fn remap_legacy_keys(dict: &mut StateDict) {
    let old: Vec<(String, String)> = dict
        .keys()
        .filter_map(|k| legacy_key(k).map(|new| (k.to_string(), new)))
        .collect();
    for (k, new) in old {
        if let Some(t) = dict.remove(&k) {
            dict.insert(new, t);
        }
    }
}

/// The new name of an old-style dense-layer key, if `key` is one.
fn legacy_key(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let [.., layer, module, index, param] = parts[..] else {
        return None;
    };
    let digits = layer.trim_end_matches(|c: char| c.is_ascii_digit());
    let ok = digits.len() < layer.len()
        && digits.ends_with("denselayer")
        && ["norm", "relu", "conv"].contains(&module)
        && ["1", "2"].contains(&index)
        && ["weight", "bias", "running_mean", "running_var"].contains(&param);
    ok.then(|| {
        let head = &key[..key.len() - index.len() - param.len() - 2];
        format!("{head}{index}.{param}")
    })
}

#[cfg(test)]
mod tests {
    use super::legacy_key;

    #[test]
    fn legacy_keys_follow_torchvisions_pattern() {
        let k = |s: &str| legacy_key(s);
        assert_eq!(
            k("features.denseblock1.denselayer1.norm.1.weight").as_deref(),
            Some("features.denseblock1.denselayer1.norm1.weight")
        );
        assert_eq!(
            k("features.denseblock4.denselayer16.conv.2.weight").as_deref(),
            Some("features.denseblock4.denselayer16.conv2.weight")
        );
        assert_eq!(
            k("features.denseblock2.denselayer3.norm.2.running_var").as_deref(),
            Some("features.denseblock2.denselayer3.norm2.running_var")
        );
        assert_eq!(k("features.denseblock1.denselayer1.norm1.weight"), None);
        assert_eq!(
            k("features.denseblock1.denselayer1.norm.1.num_batches_tracked"),
            None
        );
        assert_eq!(k("features.denseblock1.denselayer.norm.1.weight"), None);
        assert_eq!(k("features.transition1.norm.1.weight"), None);
        assert_eq!(k("features.denseblock1.denselayer1.norm.3.weight"), None);
        assert_eq!(k("norm.1.weight"), None);
    }
}
