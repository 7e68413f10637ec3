//! torchvision's Inception v3 as its pretrained weights use it (`transform_input=True`, no
//! auxiliary head), with the module paths of its state dict: `Conv2d_1a_3x3`…`Conv2d_4a_3x3`,
//! `maxpool1`, `maxpool2`, `Mixed_5b`…`Mixed_7c`, `avgpool`, `dropout`, `fc`.
//!
//! Layer names mean what a PyTorch forward hook on that module returns (see `resnet.rs`):
//! - `transform_input` is the first step of torchvision's forward (`_transform_input`): the
//!   ImageNet-normalized input re-scaled per channel to the (x − 0.5) / 0.5 convention the
//!   weights were trained with, `x · (std / 0.5) + (mean − 0.5) / 0.5`.
//! - A `BasicConv2d` (`Conv2d_1a_3x3`, `Mixed_5b.branch3x3dbl_2`, …) has its convolution
//!   `….conv` (bias-free), its batch norm `….bn` (eps 1e-3), and its own node is the output of
//!   the functional relu that ends it.
//! - A block `Mixed_*` is the concatenation of its branches.
//! - Functional steps inside blocks, which have no module, are named after them:
//!   `Mixed_*.branch_pool_avg` is the `F.avg_pool2d` (3×3, stride 1, padding 1, padding
//!   counted) that feeds the `branch_pool` BasicConv2d of `Mixed_5b`…`5d`, `6b`…`6e`, `7b`,
//!   `7c`; in the reduction blocks `Mixed_6a` and `Mixed_7a`, whose pool branch is only the
//!   functional `F.max_pool2d` (3×3, stride 2), that max pool is `Mixed_*.branch_pool`, so
//!   `Mixed_*.branch_pool` is the pool branch's output in every block. In `Mixed_7b`/`7c`,
//!   `branch3x3` and `branch3x3dbl` are the `torch.cat`s of the `_2a`/`_2b` and `_3a`/`_3b`
//!   convolutions (torchvision's local variable names).
//! - `flatten` is the functional `torch.flatten` between `dropout` (an identity in eval mode,
//!   on the 2048×1×1 pooled map) and `fc`.
//!
//! The auxiliary classifier's keys (`AuxLogits.*`) of torchvision's published file are
//! dropped at load time ([`drop_aux_keys`]): it is used only in training.

use crate::builder::Builder;
use crate::params::Kind;
use crate::ModelError;
use deepvis_engine::{
    AdaptiveAvgPool2d, AvgPool2d, ChannelAffine, Concat, Conv2d, Flatten, Identity, MaxPool2d,
    NodeId, Padding, Relu,
};
use deepvis_weights::StateDict;

/// A `BasicConv2d`'s convolution: output channels, kernel (h, w), stride, padding (h, w).
#[derive(Clone, Copy)]
struct Spec {
    cout: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
}

/// A square kernel `k`, stride 1, no padding.
const fn sq(cout: usize, k: usize) -> Spec {
    Spec {
        cout,
        k: (k, k),
        stride: 1,
        pad: (0, 0),
    }
}

impl Spec {
    const fn stride(self, stride: usize) -> Spec {
        Spec { stride, ..self }
    }
    const fn pad(self, p: usize) -> Spec {
        Spec {
            pad: (p, p),
            ..self
        }
    }
}

/// A 1×7 (`wide`) or 7×1 kernel, "same" padded, as the factorized convolutions have (also
/// 1×3 / 3×1 with `n` = 3).
const fn strip(cout: usize, n: usize, wide: bool) -> Spec {
    let p = n / 2;
    if wide {
        Spec {
            cout,
            k: (1, n),
            stride: 1,
            pad: (0, p),
        }
    } else {
        Spec {
            cout,
            k: (n, 1),
            stride: 1,
            pad: (p, 0),
        }
    }
}

/// `BasicConv2d` `name` of this scope: `name.conv` (bias-free, possibly non-square kernel),
/// `name.bn`, and `name` itself the relu. Returns the node and its channels.
fn basic_conv(
    b: &mut Builder,
    name: &str,
    x: NodeId,
    cin: usize,
    s: Spec,
) -> Result<(NodeId, usize), ModelError> {
    let mut sc = b.pp(name);
    let (kh, kw) = s.k;
    let weight = {
        let mut c = sc.pp("conv");
        c.param(
            "weight",
            &[s.cout, cin, kh, kw],
            Kind::Weight {
                fan_in: cin * kh * kw,
            },
        )?
    };
    let conv = Conv2d {
        in_channels: cin,
        out_channels: s.cout,
        kernel: s.k,
        stride: (s.stride, s.stride),
        dilation: (1, 1),
        groups: 1,
        padding: Padding::Explicit {
            top: s.pad.0,
            bottom: s.pad.0,
            left: s.pad.1,
            right: s.pad.1,
        },
        weight,
        bias: None,
        cache: Default::default(),
    };
    let path = sc.path("conv");
    conv.validate()
        .map_err(|e| ModelError::Architecture(format!("{path}: {e}")))?;
    let y = sc.op("conv", conv, &[x]);
    let y = sc.batch_norm("bn", y, s.cout, 1e-3)?;
    Ok((sc.output(Relu, &[y]), s.cout))
}

/// A chain of `BasicConv2d`s `names[i]` with `specs[i]`, fed by `x`.
fn chain(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    convs: &[(&str, Spec)],
) -> Result<(NodeId, usize), ModelError> {
    let (mut y, mut c) = (x, cin);
    for &(name, s) in convs {
        (y, c) = basic_conv(b, name, y, c, s)?;
    }
    Ok((y, c))
}

/// `F.max_pool2d(x, kernel_size=3, stride=2)` and torchvision's `maxpool1`/`maxpool2`.
fn max_pool() -> MaxPool2d {
    MaxPool2d::square(3, 2)
}

/// The pool branch of the A, C and E blocks: `branch_pool_avg` (`F.avg_pool2d` 3×3, stride 1,
/// padding 1, `count_include_pad=True`), then the `branch_pool` BasicConv2d.
fn avg_branch(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    cout: usize,
) -> Result<(NodeId, usize), ModelError> {
    let avg = AvgPool2d {
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
        ceil_mode: false,
        count_include_pad: true,
    };
    let y = b.op("branch_pool_avg", avg, &[x]);
    basic_conv(b, "branch_pool", y, cin, sq(cout, 1))
}

fn concat(b: &mut Builder, parts: &[(NodeId, usize)]) -> (NodeId, usize) {
    let ids: Vec<NodeId> = parts.iter().map(|p| p.0).collect();
    let c = parts.iter().map(|p| p.1).sum();
    (b.output(Concat { axis: 1 }, &ids), c)
}

fn inception_a(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    pool: usize,
) -> Result<(NodeId, usize), ModelError> {
    let b1 = basic_conv(b, "branch1x1", x, cin, sq(64, 1))?;
    let b5 = chain(
        b,
        x,
        cin,
        &[
            ("branch5x5_1", sq(48, 1)),
            ("branch5x5_2", sq(64, 5).pad(2)),
        ],
    )?;
    let b3 = chain(
        b,
        x,
        cin,
        &[
            ("branch3x3dbl_1", sq(64, 1)),
            ("branch3x3dbl_2", sq(96, 3).pad(1)),
            ("branch3x3dbl_3", sq(96, 3).pad(1)),
        ],
    )?;
    let bp = avg_branch(b, x, cin, pool)?;
    Ok(concat(b, &[b1, b5, b3, bp]))
}

fn inception_b(b: &mut Builder, x: NodeId, cin: usize) -> Result<(NodeId, usize), ModelError> {
    let b3 = basic_conv(b, "branch3x3", x, cin, sq(384, 3).stride(2))?;
    let bd = chain(
        b,
        x,
        cin,
        &[
            ("branch3x3dbl_1", sq(64, 1)),
            ("branch3x3dbl_2", sq(96, 3).pad(1)),
            ("branch3x3dbl_3", sq(96, 3).stride(2)),
        ],
    )?;
    let bp = (b.op("branch_pool", max_pool(), &[x]), cin);
    Ok(concat(b, &[b3, bd, bp]))
}

fn inception_c(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    c7: usize,
) -> Result<(NodeId, usize), ModelError> {
    let b1 = basic_conv(b, "branch1x1", x, cin, sq(192, 1))?;
    let b7 = chain(
        b,
        x,
        cin,
        &[
            ("branch7x7_1", sq(c7, 1)),
            ("branch7x7_2", strip(c7, 7, true)),
            ("branch7x7_3", strip(192, 7, false)),
        ],
    )?;
    let bd = chain(
        b,
        x,
        cin,
        &[
            ("branch7x7dbl_1", sq(c7, 1)),
            ("branch7x7dbl_2", strip(c7, 7, false)),
            ("branch7x7dbl_3", strip(c7, 7, true)),
            ("branch7x7dbl_4", strip(c7, 7, false)),
            ("branch7x7dbl_5", strip(192, 7, true)),
        ],
    )?;
    let bp = avg_branch(b, x, cin, 192)?;
    Ok(concat(b, &[b1, b7, bd, bp]))
}

fn inception_d(b: &mut Builder, x: NodeId, cin: usize) -> Result<(NodeId, usize), ModelError> {
    let b3 = chain(
        b,
        x,
        cin,
        &[
            ("branch3x3_1", sq(192, 1)),
            ("branch3x3_2", sq(320, 3).stride(2)),
        ],
    )?;
    let b7 = chain(
        b,
        x,
        cin,
        &[
            ("branch7x7x3_1", sq(192, 1)),
            ("branch7x7x3_2", strip(192, 7, true)),
            ("branch7x7x3_3", strip(192, 7, false)),
            ("branch7x7x3_4", sq(192, 3).stride(2)),
        ],
    )?;
    let bp = (b.op("branch_pool", max_pool(), &[x]), cin);
    Ok(concat(b, &[b3, b7, bp]))
}

/// Two BasicConv2d `a` (1×3) and `bb` (3×1) fed by `x`, concatenated as node `name`.
fn split(
    b: &mut Builder,
    name: &str,
    x: NodeId,
    cin: usize,
    (a, bb): (&str, &str),
) -> Result<(NodeId, usize), ModelError> {
    let ya = basic_conv(b, a, x, cin, strip(384, 3, true))?;
    let yb = basic_conv(b, bb, x, cin, strip(384, 3, false))?;
    Ok((b.op(name, Concat { axis: 1 }, &[ya.0, yb.0]), ya.1 + yb.1))
}

fn inception_e(b: &mut Builder, x: NodeId, cin: usize) -> Result<(NodeId, usize), ModelError> {
    let b1 = basic_conv(b, "branch1x1", x, cin, sq(320, 1))?;
    let (y, c) = basic_conv(b, "branch3x3_1", x, cin, sq(384, 1))?;
    let b3 = split(b, "branch3x3", y, c, ("branch3x3_2a", "branch3x3_2b"))?;
    let (y, c) = chain(
        b,
        x,
        cin,
        &[
            ("branch3x3dbl_1", sq(448, 1)),
            ("branch3x3dbl_2", sq(384, 3).pad(1)),
        ],
    )?;
    let bd = split(
        b,
        "branch3x3dbl",
        y,
        c,
        ("branch3x3dbl_3a", "branch3x3dbl_3b"),
    )?;
    let bp = avg_branch(b, x, cin, 192)?;
    Ok(concat(b, &[b1, b3, bd, bp]))
}

pub(crate) fn inception_v3(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let transform = ChannelAffine {
        scale: std.iter().map(|s| s / 0.5).collect(),
        shift: mean.iter().map(|m| (m - 0.5) / 0.5).collect(),
    };
    let x = b.op("transform_input", transform, &[0]);
    let (x, c) = chain(
        b,
        x,
        3,
        &[
            ("Conv2d_1a_3x3", sq(32, 3).stride(2)),
            ("Conv2d_2a_3x3", sq(32, 3)),
            ("Conv2d_2b_3x3", sq(64, 3).pad(1)),
        ],
    )?;
    let x = b.op("maxpool1", max_pool(), &[x]);
    let (x, c) = chain(
        b,
        x,
        c,
        &[("Conv2d_3b_1x1", sq(80, 1)), ("Conv2d_4a_3x3", sq(192, 3))],
    )?;
    let x = b.op("maxpool2", max_pool(), &[x]);
    let (x, c) = inception_a(&mut b.pp("Mixed_5b"), x, c, 32)?;
    let (x, c) = inception_a(&mut b.pp("Mixed_5c"), x, c, 64)?;
    let (x, c) = inception_a(&mut b.pp("Mixed_5d"), x, c, 64)?;
    let (x, c) = inception_b(&mut b.pp("Mixed_6a"), x, c)?;
    let (x, c) = inception_c(&mut b.pp("Mixed_6b"), x, c, 128)?;
    let (x, c) = inception_c(&mut b.pp("Mixed_6c"), x, c, 160)?;
    let (x, c) = inception_c(&mut b.pp("Mixed_6d"), x, c, 160)?;
    let (x, c) = inception_c(&mut b.pp("Mixed_6e"), x, c, 192)?;
    let (x, c) = inception_d(&mut b.pp("Mixed_7a"), x, c)?;
    let (x, c) = inception_e(&mut b.pp("Mixed_7b"), x, c)?;
    let (x, c) = inception_e(&mut b.pp("Mixed_7c"), x, c)?;
    let x = b.op("avgpool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    let x = b.op("dropout", Identity, &[x]);
    let x = b.op("flatten", Flatten, &[x]);
    if head {
        b.linear("fc", x, c, 1000)?;
    }
    Ok(())
}

/// Drops the auxiliary classifier's parameters (`AuxLogits.*`), which torchvision's published
/// file holds but an eval-mode Inception v3 never uses.
pub fn drop_aux_keys(dict: &mut StateDict) {
    crate::drop_prefixes(dict, &["AuxLogits."]);
}
