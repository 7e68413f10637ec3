//! torchvision's GoogLeNet (Inception v1) as its pretrained weights use it
//! (`transform_input=True`, no auxiliary heads), with the module paths of its state dict:
//! `conv1`…`conv3`, `maxpool1`…`maxpool4`, `inception3a`…`inception5b`, `avgpool`,
//! `dropout`, `fc`.
//!
//! Layer names mean what a PyTorch forward hook on that module returns (see `resnet.rs`):
//! - `transform_input` is the first step of torchvision's forward (`_transform_input`): the
//!   ImageNet-normalized input re-scaled per channel to the (x − 0.5) / 0.5 convention the
//!   weights were trained with, `x · (std / 0.5) + (mean − 0.5) / 0.5`.
//! - A `BasicConv2d` (`conv1`, `inception3a.branch1`, `inception3a.branch2.0`, …) has its
//!   convolution `….conv`, its batch norm `….bn` (eps 1e-3), and its own node is the output of
//!   the functional relu that ends it.
//! - `inceptionNx.branch2`…`branch4` are the Sequentials' outputs (`branch4.0` is the 3×3
//!   max pool, stride 1); a block `inceptionNx` is the concatenation of its four branches.
//! - `flatten` is the functional `torch.flatten` between `avgpool` and `dropout` (an identity
//!   in eval mode).
//!
//! The auxiliary classifiers' keys (`aux1.*`, `aux2.*`) of torchvision's published file are
//! dropped at load time ([`drop_aux_keys`]): they are used only in training.

use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{
    AdaptiveAvgPool2d, ChannelAffine, Concat, Flatten, Identity, MaxPool2d, NodeId, Relu,
};
use deepvis_weights::StateDict;

/// A max pool that rounds its output size up, as all of GoogLeNet's do.
fn pool(k: usize, stride: usize, pad: usize) -> MaxPool2d {
    MaxPool2d {
        padding: (pad, pad),
        ceil_mode: true,
        ..MaxPool2d::square(k, stride)
    }
}

/// `BasicConv2d` in its own scope: `conv` (bias-free), `bn`, and the scope's node the relu.
fn basic_conv(b: &mut Builder, x: NodeId, spec: Conv, cout: usize) -> Result<NodeId, ModelError> {
    let y = b.conv("conv", x, spec.no_bias())?;
    let y = b.batch_norm("bn", y, cout, 1e-3)?;
    Ok(b.output(Relu, &[y]))
}

/// An `Inception` block's widths: 1×1, 3×3 reduce, 3×3, "5×5" reduce, "5×5" (a 3×3 in
/// torchvision, a known bug kept for the weights), pool projection.
type Widths = (usize, usize, usize, usize, usize, usize);

fn inception(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    w: Widths,
) -> Result<(NodeId, usize), ModelError> {
    let (c1, r3, c3, r5, c5, pp) = w;
    let b1 = basic_conv(&mut b.pp("branch1"), x, Conv::new(cin, c1, 1), c1)?;
    let b2 = {
        let mut s = b.pp("branch2");
        let y = basic_conv(&mut s.pp(0), x, Conv::new(cin, r3, 1), r3)?;
        let y = basic_conv(&mut s.pp(1), y, Conv::new(r3, c3, 3).pad(1), c3)?;
        s.output(Identity, &[y])
    };
    let b3 = {
        let mut s = b.pp("branch3");
        let y = basic_conv(&mut s.pp(0), x, Conv::new(cin, r5, 1), r5)?;
        let y = basic_conv(&mut s.pp(1), y, Conv::new(r5, c5, 3).pad(1), c5)?;
        s.output(Identity, &[y])
    };
    let b4 = {
        let mut s = b.pp("branch4");
        let y = s.op(0, pool(3, 1, 1), &[x]);
        let y = basic_conv(&mut s.pp(1), y, Conv::new(cin, pp, 1), pp)?;
        s.output(Identity, &[y])
    };
    Ok((
        b.output(Concat { axis: 1 }, &[b1, b2, b3, b4]),
        c1 + c3 + c5 + pp,
    ))
}

pub(crate) fn googlenet(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let transform = ChannelAffine {
        scale: std.iter().map(|s| s / 0.5).collect(),
        shift: mean.iter().map(|m| (m - 0.5) / 0.5).collect(),
    };
    let x = b.op("transform_input", transform, &[0]);
    let x = basic_conv(
        &mut b.pp("conv1"),
        x,
        Conv::new(3, 64, 7).stride(2).pad(3),
        64,
    )?;
    let x = b.op("maxpool1", pool(3, 2, 0), &[x]);
    let x = basic_conv(&mut b.pp("conv2"), x, Conv::new(64, 64, 1), 64)?;
    let x = basic_conv(&mut b.pp("conv3"), x, Conv::new(64, 192, 3).pad(1), 192)?;
    let mut x = b.op("maxpool2", pool(3, 2, 0), &[x]);
    let mut c = 192;
    let stages: [(&str, Widths); 9] = [
        ("inception3a", (64, 96, 128, 16, 32, 32)),
        ("inception3b", (128, 128, 192, 32, 96, 64)),
        ("inception4a", (192, 96, 208, 16, 48, 64)),
        ("inception4b", (160, 112, 224, 24, 64, 64)),
        ("inception4c", (128, 128, 256, 24, 64, 64)),
        ("inception4d", (112, 144, 288, 32, 64, 64)),
        ("inception4e", (256, 160, 320, 32, 128, 128)),
        ("inception5a", (256, 160, 320, 32, 128, 128)),
        ("inception5b", (384, 192, 384, 48, 128, 128)),
    ];
    for (name, w) in stages {
        (x, c) = inception(&mut b.pp(name), x, c, w)?;
        match name {
            "inception3b" => x = b.op("maxpool3", pool(3, 2, 0), &[x]),
            "inception4e" => x = b.op("maxpool4", pool(2, 2, 0), &[x]),
            _ => {}
        }
    }
    let x = b.op("avgpool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    let x = b.op("flatten", Flatten, &[x]);
    let x = b.op("dropout", Identity, &[x]);
    if head {
        b.linear("fc", x, c, 1000)?;
    }
    Ok(())
}

/// Drops the auxiliary classifiers' parameters (`aux1.*`, `aux2.*`), which torchvision's
/// published file holds but an eval-mode GoogLeNet never uses.
pub fn drop_aux_keys(dict: &mut StateDict) {
    crate::drop_prefixes(dict, &["aux1.", "aux2."]);
}
