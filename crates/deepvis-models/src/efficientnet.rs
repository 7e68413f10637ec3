//! EfficientNet-Lite0 as in PyPI `efficientnet-lite-pytorch` 0.1.0: TF "SAME" padding, ReLU6,
//! no squeeze-excitation, batch-norm eps 1e-3, module names `_conv_stem`, `_blocks.N`, ….
//!
//! Node names: `_conv_stem` and `_conv_head` are the activations after their batch norm and
//! ReLU6 (the raw convolutions are `….conv`); `_blocks.N` is a block's output after its
//! residual add; inside a block `_blocks.N._expand_conv`, `._bn0`, `._act0`, `._depthwise_conv`,
//! `._bn1`, `._act1`, `._project_conv`, `._bn2`.

use crate::builder::{batch_norm, conv, linear, ConvSpec};
use crate::params::Params;
use crate::ModelError;
use deepvis_engine::{AdaptiveAvgPool2d, Graph, Op, Padding};

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

fn same(cin: usize, cout: usize, k: usize, stride: usize, groups: usize) -> ConvSpec {
    ConvSpec {
        cin,
        cout,
        k,
        stride,
        padding: Padding::Same,
        groups,
        bias: false,
    }
}

pub(crate) fn efficientnet_lite0(params: &mut Params, head: bool) -> Result<Graph, ModelError> {
    let mut g = Graph::new();
    g.then(
        "_conv_stem.conv",
        conv(params, "_conv_stem", same(3, 32, 3, 2, 1))?,
    );
    g.then("_bn0", batch_norm(params, "_bn0", 32, EPS)?);
    let mut x = g.then("_conv_stem", Op::Relu6);

    let mut block = 0;
    for (repeats, k, stride, expand, cin0, cout) in STAGES {
        for r in 0..repeats {
            let (cin, s) = if r == 0 { (cin0, stride) } else { (cout, 1) };
            let p = format!("_blocks.{block}");
            let mid = cin * expand;
            if expand != 1 {
                g.then(
                    format!("{p}._expand_conv"),
                    conv(
                        params,
                        &format!("{p}._expand_conv"),
                        same(cin, mid, 1, 1, 1),
                    )?,
                );
                g.then(
                    format!("{p}._bn0"),
                    batch_norm(params, &format!("{p}._bn0"), mid, EPS)?,
                );
                g.then(format!("{p}._act0"), Op::Relu6);
            }
            g.then(
                format!("{p}._depthwise_conv"),
                conv(
                    params,
                    &format!("{p}._depthwise_conv"),
                    same(mid, mid, k, s, mid),
                )?,
            );
            g.then(
                format!("{p}._bn1"),
                batch_norm(params, &format!("{p}._bn1"), mid, EPS)?,
            );
            g.then(format!("{p}._act1"), Op::Relu6);
            g.then(
                format!("{p}._project_conv"),
                conv(
                    params,
                    &format!("{p}._project_conv"),
                    same(mid, cout, 1, 1, 1),
                )?,
            );
            let bn2 = g.then(
                format!("{p}._bn2"),
                batch_norm(params, &format!("{p}._bn2"), cout, EPS)?,
            );
            x = if s == 1 && cin == cout {
                g.push(p, Op::Add, &[bn2, x])
            } else {
                g.push(p, Op::Identity, &[bn2])
            };
            block += 1;
        }
    }

    g.then(
        "_conv_head.conv",
        conv(params, "_conv_head", same(320, 1280, 1, 1, 1))?,
    );
    g.then("_bn1", batch_norm(params, "_bn1", 1280, EPS)?);
    g.then("_conv_head", Op::Relu6);
    if head {
        g.then(
            "_avg_pooling",
            Op::AdaptiveAvgPool2d(AdaptiveAvgPool2d { output: (1, 1) }),
        );
        g.then("flatten", Op::Flatten);
        g.then("_dropout", Op::Identity);
        g.then("_fc", linear(params, "_fc", 1280, 1000)?);
    }
    Ok(g)
}
