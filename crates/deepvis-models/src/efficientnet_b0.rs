//! torchvision's EfficientNet-B0 (width and depth 1), with the module paths of its state dict:
//! `features.0` the stem, `features.1`…`features.7` the stages of MBConv blocks,
//! `features.8` the last 1×1 convolution, `avgpool`, `classifier.0` (dropout, the identity in
//! eval) and `classifier.1`. Batch norms use PyTorch's default eps 1e-5 (torchvision passes
//! eps 1e-3 only from B5 on).
//!
//! Layer names mean what a PyTorch forward hook on that module returns:
//! - Every `Conv2dNormActivation` (`features.0`, `features.2.0.block.1`, …) is its output,
//!   `….0` its convolution, `….1` its batch norm, `….2` its SiLU.
//! - A squeeze-excitation module `features.N.M.block.K` is its input scaled per channel;
//!   inside it `avgpool`, `fc1`, `activation` (SiLU), `fc2`, `scale_activation` (sigmoid).
//! - `features.N.M.block` is the Sequential's output (the projection's batch norm).
//! - A block with a residual connection (stride 1, as many channels out as in) calls its
//!   `stochastic_depth` (the identity in eval) and adds its input in place (`result += input`):
//!   the sum is the block's own output `features.N.M`, with no name of its own. Blocks without
//!   the residual never call `stochastic_depth`; their output is `block`'s.
//! - Functional: `flatten` is `torch.flatten` between `avgpool` and the classifier.

use crate::blocks::conv_bn;
use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{
    AdaptiveAvgPool2d, Add, Binary, BinaryKind, Flatten, Identity, NodeId, Unary, UnaryKind,
};

const EPS: f32 = 1e-5;

/// torchvision's `_efficientnet_conf("efficientnet_b0")`: (expand ratio, kernel, stride, in,
/// out, layers) per stage.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

/// `Conv2dNormActivation` with SiLU (or none) in its own scope: `0` conv, `1` batch norm, `2`
/// SiLU; the scope's node is its output.
fn conv_bn_silu(
    b: &mut Builder,
    x: NodeId,
    spec: Conv,
    (k, cout): (usize, usize),
    silu: bool,
) -> Result<NodeId, ModelError> {
    let mut y = conv_bn(b, ("0", "1"), x, spec.pad((k - 1) / 2), cout, EPS)?;
    if silu {
        y = b.op(2, Unary(UnaryKind::Silu), &[y]);
    }
    Ok(b.output(Identity, &[y]))
}

/// torchvision's `SqueezeExcitation` with SiLU and sigmoid, in its own scope.
fn squeeze_excitation(
    b: &mut Builder,
    x: NodeId,
    c: usize,
    squeeze: usize,
) -> Result<NodeId, ModelError> {
    let s = b.op("avgpool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    let s = b.conv("fc1", s, Conv::new(c, squeeze, 1))?;
    let s = b.op("activation", Unary(UnaryKind::Silu), &[s]);
    let s = b.conv("fc2", s, Conv::new(squeeze, c, 1))?;
    let s = b.op("scale_activation", Unary(UnaryKind::Sigmoid), &[s]);
    Ok(b.output(Binary(BinaryKind::Mul), &[s, x]))
}

/// torchvision's `MBConv` in scope `features.N.M`.
fn mb_conv(
    b: &mut Builder,
    x: NodeId,
    (expand, k, stride, cin, cout): (usize, usize, usize, usize, usize),
) -> Result<NodeId, ModelError> {
    let mid = cin * expand;
    let mut blk = b.pp("block");
    let mut i = 0;
    let mut y = x;
    if mid != cin {
        y = conv_bn_silu(
            &mut blk.pp(i),
            y,
            Conv::new(cin, mid, 1).no_bias(),
            (1, mid),
            true,
        )?;
        i += 1;
    }
    let dw = Conv::new(mid, mid, k).stride(stride).depthwise().no_bias();
    y = conv_bn_silu(&mut blk.pp(i), y, dw, (k, mid), true)?;
    i += 1;
    y = squeeze_excitation(&mut blk.pp(i), y, mid, (cin / 4).max(1))?;
    i += 1;
    let project = Conv::new(mid, cout, 1).no_bias();
    y = conv_bn_silu(&mut blk.pp(i), y, project, (1, cout), false)?;
    y = blk.output(Identity, &[y]);
    drop(blk);
    Ok(if stride == 1 && cin == cout {
        let y = b.op("stochastic_depth", Identity, &[y]);
        b.output(Add, &[y, x])
    } else {
        b.output(Identity, &[y])
    })
}

pub(crate) fn efficientnet_b0(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    let mut f = b.pp("features");
    let stem = Conv::new(3, 32, 3).stride(2).no_bias();
    let mut x = conv_bn_silu(&mut f.pp(0), 0, stem, (3, 32), true)?;
    for (s, &(expand, k, stride, cin0, cout, layers)) in STAGES.iter().enumerate() {
        let mut stage = f.pp(s + 1);
        for m in 0..layers {
            let (cin, st) = if m == 0 { (cin0, stride) } else { (cout, 1) };
            x = mb_conv(&mut stage.pp(m), x, (expand, k, st, cin, cout))?;
        }
        x = stage.output(Identity, &[x]);
    }
    let last = Conv::new(320, 1280, 1).no_bias();
    x = conv_bn_silu(&mut f.pp(8), x, last, (1, 1280), true)?;
    x = f.output(Identity, &[x]);
    drop(f);
    let x = b.op("avgpool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    let x = b.op("flatten", Flatten, &[x]);
    if head {
        let mut c = b.pp("classifier");
        let x = c.op(0, Identity, &[x]);
        let x = c.linear(1, x, 1280, 1000)?;
        c.output(Identity, &[x]);
    }
    Ok(())
}
