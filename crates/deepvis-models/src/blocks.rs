//! Blocks that several architectures share, written once: SqueezeNet's Fire module and the
//! inverted residual of MobileNetV2 / EfficientNet(-Lite). Each runs inside the caller's scope
//! (`b.pp("features").pp(3)`), so its nodes and parameters carry the module path there.

use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{Add, Concat, Identity, NodeId, Relu, Relu6};

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
        y = b.op("_act0", Relu6, &[y]);
    }
    let dw = Conv::new(mid, mid, k)
        .stride(stride)
        .same()
        .depthwise()
        .no_bias();
    y = b.conv("_depthwise_conv", y, dw)?;
    y = b.batch_norm("_bn1", y, mid, eps)?;
    y = b.op("_act1", Relu6, &[y]);
    y = b.conv("_project_conv", y, Conv::new(mid, cout, 1).same().no_bias())?;
    y = b.batch_norm("_bn2", y, cout, eps)?;
    Ok(if stride == 1 && cin == cout {
        b.output(Add, &[y, x])
    } else {
        b.output(Identity, &[y])
    })
}
