//! EfficientNet-Lite0 as in PyPI `efficientnet-lite-pytorch` 0.1.0: TF "SAME" padding, ReLU6,
//! no squeeze-excitation, batch-norm eps 1e-3, module names `_conv_stem`, `_blocks.N`, ….
//!
//! Layer names mean what a PyTorch forward hook on that module returns:
//! - `_conv_stem` and `_conv_head` are the convolutions' outputs, `_bn0` and `_bn1` their
//!   batch norms. The model's one ReLU6 module `_swish` is called twice, after `_bn0` and after
//!   `_bn1`: `_swish#0` and `_swish#1`, bare `_swish` the last call. For the activations of the
//!   stem and the head there are also the documented names `_conv_stem.act` and
//!   `_conv_head.act` (what earlier versions of deepvis called `_conv_stem` and `_conv_head`).
//! - `_blocks.N` is a block's output after its residual add. Inside a block:
//!   `_blocks.N._expand_conv`, `._bn0`, `._depthwise_conv`, `._bn1`, `._project_conv`, `._bn2`,
//!   and the block's own `_swish` module, called after `_bn0` and after `_bn1` (`._swish#0`,
//!   `._swish#1`; once, plain `._swish`, in the first block, which has no expansion). The
//!   documented names `._act0` and `._act1` mean the activations after `_bn0` and `_bn1`.

use crate::blocks::mb_conv_lite;
use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{AdaptiveAvgPool2d, Flatten, Identity, Relu6};

const EPS: f32 = 1e-3;

/// (repeats, kernel, stride, expand ratio, in, out) per stage, from the lite builder.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

pub(crate) fn efficientnet_lite0(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    let stem = Conv::new(3, 32, 3).stride(2).same().no_bias();
    let mut x = b.conv("_conv_stem", 0, stem)?;
    x = b.batch_norm("_bn0", x, 32, EPS)?;
    x = b.op("_swish#0", Relu6, &[x]);
    b.alias("_conv_stem.act", x);

    let mut block = 0;
    for (repeats, k, stride, expand, cin0, cout) in STAGES {
        for r in 0..repeats {
            let (cin, s) = if r == 0 { (cin0, stride) } else { (cout, 1) };
            x = mb_conv_lite(
                &mut b.pp("_blocks").pp(block),
                x,
                (cin, cout, k, s, expand),
                EPS,
            )?;
            block += 1;
        }
    }

    let head_conv = Conv::new(320, 1280, 1).same().no_bias();
    x = b.conv("_conv_head", x, head_conv)?;
    x = b.batch_norm("_bn1", x, 1280, EPS)?;
    x = b.op("_swish#1", Relu6, &[x]);
    b.alias("_conv_head.act", x);
    if head {
        x = b.op("_avg_pooling", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
        x = b.op("flatten", Flatten, &[x]);
        x = b.op("_dropout", Identity, &[x]);
        b.linear("_fc", x, 1280, 1000)?;
    }
    Ok(())
}
