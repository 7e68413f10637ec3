//! Blocks that several architectures share, written once: SqueezeNet's Fire module and the
//! inverted residual of MobileNetV2 / EfficientNet(-Lite). Each runs inside the caller's scope
//! (`b.pp("features").pp(3)`), so its nodes and parameters carry the module path there.

use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{
    AdaptiveAvgPool2d, Add, Binary, BinaryKind, Concat, Identity, NodeId, Relu, Relu6, Unary,
    UnaryKind,
};

/// torchvision's `Fire`: a 1×1 squeeze, then 1×1 and 3×3 expansions side by side, each with
/// its ReLU module, concatenated over channels (the block's output).
pub(crate) fn fire(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    squeeze: usize,
    e1: usize,
    e3: usize,
) -> Result<NodeId, ModelError> {
    let s = b.conv("squeeze", x, Conv::new(cin, squeeze, 1))?;
    let s = b.op("squeeze_activation", Relu, &[s]);
    let a = b.conv("expand1x1", s, Conv::new(squeeze, e1, 1))?;
    let a = b.op("expand1x1_activation", Relu, &[a]);
    let c = b.conv("expand3x3", s, Conv::new(squeeze, e3, 3).pad(1))?;
    let c = b.op("expand3x3_activation", Relu, &[c]);
    Ok(b.output(Concat { axis: 1 }, &[a, c]))
}

/// An inverted residual without squeeze-excitation, as EfficientNet-Lite names it: 1×1
/// expansion (skipped at ratio 1), k×k depthwise, 1×1 projection, each with batch norm, ReLU6
/// after the first two; the block's output is the residual sum where shapes allow, else the
/// projection. (cin, cout, kernel, stride, expand ratio); TF "SAME" padding, batch-norm `eps`.
pub(crate) fn mb_conv_lite(
    b: &mut Builder,
    x: NodeId,
    (cin, cout, k, stride, expand): (usize, usize, usize, usize, usize),
    eps: f32,
) -> Result<NodeId, ModelError> {
    let mid = cin * expand;
    let mut y = x;
    if expand != 1 {
        y = b.conv("_expand_conv", y, Conv::new(cin, mid, 1).same().no_bias())?;
        y = b.batch_norm("_bn0", y, mid, eps)?;
        y = b.op("_swish#0", Relu6, &[y]);
        b.alias("_act0", y);
    }
    let dw = Conv::new(mid, mid, k)
        .stride(stride)
        .same()
        .depthwise()
        .no_bias();
    y = b.conv("_depthwise_conv", y, dw)?;
    y = b.batch_norm("_bn1", y, mid, eps)?;
    // The block's `_swish` module: its second call, or its only one without an expansion.
    y = b.op(if expand != 1 { "_swish#1" } else { "_swish" }, Relu6, &[y]);
    b.alias("_act1", y);
    y = b.conv("_project_conv", y, Conv::new(mid, cout, 1).same().no_bias())?;
    y = b.batch_norm("_bn2", y, cout, eps)?;
    Ok(if stride == 1 && cin == cout {
        b.output(Add, &[y, x])
    } else {
        b.output(Identity, &[y])
    })
}

/// A module's `k`-th call, for modules called more than once in one forward (ResNet's `relu`):
/// `relu#0`, `relu#1`, …; the bare module path names its last call (see `resnet.rs`).
pub(crate) fn call(name: &str, k: usize) -> String {
    format!("{name}#{k}")
}

/// Batch norm after a bias-free convolution, the pair every ResNet and MobileNet layer uses.
pub(crate) fn conv_bn(
    b: &mut Builder,
    (conv, bn): (&str, &str),
    x: NodeId,
    spec: Conv,
    cout: usize,
    eps: f32,
) -> Result<NodeId, ModelError> {
    let y = b.conv(conv, x, spec.no_bias())?;
    b.batch_norm(bn, y, cout, eps)
}

/// torchvision's ResNet `BasicBlock` in scope `layerN.i`: two 3×3 convolutions, the first
/// strided; `downsample` (1×1 strided conv and batch norm) where the shape changes.
pub(crate) fn basic_block(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    planes: usize,
    stride: usize,
) -> Result<NodeId, ModelError> {
    let y = conv_bn(
        b,
        ("conv1", "bn1"),
        x,
        Conv::new(cin, planes, 3).stride(stride).pad(1),
        planes,
        1e-5,
    )?;
    let y = b.op(call("relu", 0), Relu, &[y]);
    let y = conv_bn(
        b,
        ("conv2", "bn2"),
        y,
        Conv::new(planes, planes, 3).pad(1),
        planes,
        1e-5,
    )?;
    residual_end(b, x, y, (cin, planes, stride), 1)
}

/// torchvision's ResNet `Bottleneck` (V1.5: the stride sits on the 3×3 conv) in scope
/// `layerN.i`, with `groups` and `base_width` as ResNeXt and Wide ResNet set them.
pub(crate) fn bottleneck(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    planes: usize,
    stride: usize,
    (groups, base_width): (usize, usize),
) -> Result<NodeId, ModelError> {
    let width = planes * base_width / 64 * groups;
    let cout = planes * 4;
    let y = conv_bn(
        b,
        ("conv1", "bn1"),
        x,
        Conv::new(cin, width, 1),
        width,
        1e-5,
    )?;
    let y = b.op(call("relu", 0), Relu, &[y]);
    let spec = Conv::new(width, width, 3)
        .stride(stride)
        .pad(1)
        .groups(groups);
    let y = conv_bn(b, ("conv2", "bn2"), y, spec, width, 1e-5)?;
    let y = b.op(call("relu", 1), Relu, &[y]);
    let y = conv_bn(
        b,
        ("conv3", "bn3"),
        y,
        Conv::new(width, cout, 1),
        cout,
        1e-5,
    )?;
    residual_end(b, x, y, (cin, cout, stride), 2)
}

/// The shared tail of ResNet blocks: the shortcut (`downsample` where the shape changes), the
/// functional residual sum `add`, the relu's last call, and the block's own output node.
fn residual_end(
    b: &mut Builder,
    x: NodeId,
    y: NodeId,
    (cin, cout, stride): (usize, usize, usize),
    relu_call: usize,
) -> Result<NodeId, ModelError> {
    let shortcut = if stride != 1 || cin != cout {
        let mut d = b.pp("downsample");
        let s = conv_bn(
            &mut d,
            ("0", "1"),
            x,
            Conv::new(cin, cout, 1).stride(stride),
            cout,
            1e-5,
        )?;
        d.output(Identity, &[s])
    } else {
        x
    };
    let sum = b.op("add", Add, &[y, shortcut]);
    let out = b.op(call("relu", relu_call), Relu, &[sum]);
    Ok(b.output(Identity, &[out]))
}

/// The activation closing a `Conv2dNormActivation`.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Act {
    Relu,
    Relu6,
    HardSwish,
    None,
}

/// torchvision's `Conv2dNormActivation` in its own scope: `0` the bias-free convolution
/// (padding (k−1)/2), `1` its batch norm, `2` the activation; the scope's node is its output.
pub(crate) fn conv_norm_act(
    b: &mut Builder,
    x: NodeId,
    spec: Conv,
    (k, cout): (usize, usize),
    eps: f32,
    act: Act,
) -> Result<NodeId, ModelError> {
    let y = conv_bn(b, ("0", "1"), x, spec.pad((k - 1) / 2), cout, eps)?;
    let y = match act {
        Act::Relu => b.op(2, Relu, &[y]),
        Act::Relu6 => b.op(2, Relu6, &[y]),
        Act::HardSwish => b.op(2, Unary(UnaryKind::HardSwish), &[y]),
        Act::None => y,
    };
    Ok(b.output(Identity, &[y]))
}

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at least 8 and not
/// below 90% of `v`.
pub(crate) fn make_divisible(v: usize) -> usize {
    let d = ((v + 4) / 8 * 8).max(8);
    if d * 10 < v * 9 {
        d + 8
    } else {
        d
    }
}

/// torchvision's `SqueezeExcitation` as MobileNetV3 uses it: `avgpool`, `fc1` (1×1 conv),
/// `activation` (ReLU), `fc2`, `scale_activation` (Hardsigmoid); the scope's node is the
/// input scaled per channel.
pub(crate) fn squeeze_excitation(
    b: &mut Builder,
    x: NodeId,
    c: usize,
    squeeze: usize,
) -> Result<NodeId, ModelError> {
    let s = b.op("avgpool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    let s = b.conv("fc1", s, Conv::new(c, squeeze, 1))?;
    let s = b.op("activation", Relu, &[s]);
    let s = b.conv("fc2", s, Conv::new(squeeze, c, 1))?;
    let hard_sigmoid = UnaryKind::HardSigmoid {
        alpha: 1.0 / 6.0,
        beta: 0.5,
    };
    let s = b.op("scale_activation", Unary(hard_sigmoid), &[s]);
    Ok(b.output(Binary(BinaryKind::Mul), &[s, x]))
}

/// A MobileNetV3 inverted residual (torchvision's `InvertedResidualConfig`, width 1).
#[derive(Clone, Copy)]
pub(crate) struct V3Block {
    pub cin: usize,
    pub k: usize,
    pub expanded: usize,
    pub cout: usize,
    pub se: bool,
    pub act: Act,
    pub stride: usize,
}

/// MobileNetV3's `InvertedResidual` in scope `features.N`: `block.i` numbered as torchvision
/// appends them (expansion where it widens, depthwise, squeeze-excitation where used,
/// projection); `block` is the Sequential's output and the scope's node the block's output
/// (with the residual sum where shapes allow).
pub(crate) fn inverted_residual_v3(
    b: &mut Builder,
    x: NodeId,
    c: V3Block,
) -> Result<NodeId, ModelError> {
    let eps = 1e-3;
    let mut blk = b.pp("block");
    let mut i = 0;
    let mut y = x;
    if c.expanded != c.cin {
        let spec = Conv::new(c.cin, c.expanded, 1);
        y = conv_norm_act(&mut blk.pp(i), y, spec, (1, c.expanded), eps, c.act)?;
        i += 1;
    }
    let dw = Conv::new(c.expanded, c.expanded, c.k)
        .stride(c.stride)
        .depthwise();
    y = conv_norm_act(&mut blk.pp(i), y, dw, (c.k, c.expanded), eps, c.act)?;
    i += 1;
    if c.se {
        let squeeze = make_divisible(c.expanded / 4);
        y = squeeze_excitation(&mut blk.pp(i), y, c.expanded, squeeze)?;
        i += 1;
    }
    let spec = Conv::new(c.expanded, c.cout, 1);
    y = conv_norm_act(&mut blk.pp(i), y, spec, (1, c.cout), eps, Act::None)?;
    y = blk.output(Identity, &[y]);
    drop(blk);
    Ok(if c.stride == 1 && c.cin == c.cout {
        b.output(Add, &[y, x])
    } else {
        b.output(Identity, &[y])
    })
}

/// MobileNetV2's `InvertedResidual` in scope `features.N`: `conv.0` the 1×1 expansion (absent
/// at ratio 1), then the depthwise `Conv2dNormActivation`, the projection conv and its batch
/// norm; `conv` is the Sequential's output, the scope's node the block's output.
pub(crate) fn inverted_residual_v2(
    b: &mut Builder,
    x: NodeId,
    (cin, cout, stride, expand): (usize, usize, usize, usize),
) -> Result<NodeId, ModelError> {
    let eps = 1e-5;
    let hidden = cin * expand;
    let mut conv = b.pp("conv");
    let mut i = 0;
    let mut y = x;
    if expand != 1 {
        let spec = Conv::new(cin, hidden, 1);
        y = conv_norm_act(&mut conv.pp(i), y, spec, (1, hidden), eps, Act::Relu6)?;
        i += 1;
    }
    let dw = Conv::new(hidden, hidden, 3).stride(stride).depthwise();
    y = conv_norm_act(&mut conv.pp(i), y, dw, (3, hidden), eps, Act::Relu6)?;
    let project = (i + 1).to_string();
    let norm = (i + 2).to_string();
    let spec = Conv::new(hidden, cout, 1);
    y = conv_bn(&mut conv, (&project, &norm), y, spec, cout, eps)?;
    y = conv.output(Identity, &[y]);
    drop(conv);
    Ok(if stride == 1 && cin == cout {
        b.output(Add, &[x, y])
    } else {
        b.output(Identity, &[y])
    })
}
