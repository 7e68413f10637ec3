//! torchvision's VGG (11/13/16/19, with and without batch norm) and AlexNet, with the exact
//! `features.N` / `classifier.N` numbering of their state dicts.

use crate::builder::{batch_norm, conv, linear, ConvSpec};
use crate::params::Params;
use crate::ModelError;
use deepvis_engine::{AdaptiveAvgPool2d, Graph, MaxPool2d, Op, Padding};

/// Layer configurations from torchvision (`M` = 2×2 max-pool), as channel counts with 0 for M.
pub(crate) fn vgg_config(depth: u32) -> Option<&'static [usize]> {
    const A: &[usize] = &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
    const B: &[usize] = &[
        64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0,
    ];
    const D: &[usize] = &[
        64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
    ];
    const E: &[usize] = &[
        64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0,
    ];
    match depth {
        11 => Some(A),
        13 => Some(B),
        16 => Some(D),
        19 => Some(E),
        _ => None,
    }
}

/// The classifier head used by VGG and AlexNet: `classifier.N` in torchvision's numbering,
/// after `avgpool` and a flatten. Skipped when the checkpoint holds the feature extractor only.
fn classifier(
    g: &mut Graph,
    params: &mut Params,
    layers: &[(usize, ClassifierLayer)],
) -> Result<(), ModelError> {
    g.then("flatten", Op::Flatten);
    for (i, layer) in layers {
        let name = format!("classifier.{i}");
        let op = match *layer {
            ClassifierLayer::Linear(fin, fout) => linear(params, &name, fin, fout)?,
            ClassifierLayer::Relu => Op::Relu,
            ClassifierLayer::Dropout => Op::Identity,
        };
        g.then(name, op);
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum ClassifierLayer {
    Linear(usize, usize),
    Relu,
    Dropout,
}

pub(crate) fn vgg(
    params: &mut Params,
    depth: u32,
    bn: bool,
    head: bool,
) -> Result<Graph, ModelError> {
    let cfg = vgg_config(depth)
        .ok_or_else(|| ModelError::Architecture(format!("no VGG of depth {depth}")))?;
    let mut g = Graph::new();
    let mut idx = 0;
    let mut cin = 3;
    for &c in cfg {
        if c == 0 {
            g.then(
                format!("features.{idx}"),
                Op::MaxPool2d(MaxPool2d::square(2, 2)),
            );
            idx += 1;
            continue;
        }
        let spec = ConvSpec {
            cin,
            cout: c,
            k: 3,
            stride: 1,
            padding: Padding::symmetric(1),
            groups: 1,
            bias: true,
        };
        g.then(
            format!("features.{idx}"),
            conv(params, &format!("features.{idx}"), spec)?,
        );
        idx += 1;
        if bn {
            g.then(
                format!("features.{idx}"),
                batch_norm(params, &format!("features.{idx}"), c, 1e-5)?,
            );
            idx += 1;
        }
        g.then(format!("features.{idx}"), Op::Relu);
        idx += 1;
        cin = c;
    }
    if head {
        g.then(
            "avgpool",
            Op::AdaptiveAvgPool2d(AdaptiveAvgPool2d { output: (7, 7) }),
        );
        use ClassifierLayer::*;
        let layers = [
            (0, Linear(512 * 7 * 7, 4096)),
            (1, Relu),
            (2, Dropout),
            (3, Linear(4096, 4096)),
            (4, Relu),
            (5, Dropout),
            (6, Linear(4096, 1000)),
        ];
        classifier(&mut g, params, &layers)?;
    }
    Ok(g)
}

pub(crate) fn alexnet(params: &mut Params, head: bool) -> Result<Graph, ModelError> {
    let mut g = Graph::new();
    let convs: [(usize, usize, usize, usize, usize, usize); 5] = [
        (0, 3, 64, 11, 4, 2),
        (3, 64, 192, 5, 1, 2),
        (6, 192, 384, 3, 1, 1),
        (8, 384, 256, 3, 1, 1),
        (10, 256, 256, 3, 1, 1),
    ];
    for (idx, cin, cout, k, stride, pad) in convs {
        let name = format!("features.{idx}");
        let spec = ConvSpec {
            cin,
            cout,
            k,
            stride,
            padding: Padding::symmetric(pad),
            groups: 1,
            bias: true,
        };
        g.then(name.clone(), conv(params, &name, spec)?);
        g.then(format!("features.{}", idx + 1), Op::Relu);
        if matches!(idx, 0 | 3 | 10) {
            g.then(
                format!("features.{}", idx + 2),
                Op::MaxPool2d(MaxPool2d::square(3, 2)),
            );
        }
    }
    if head {
        g.then(
            "avgpool",
            Op::AdaptiveAvgPool2d(AdaptiveAvgPool2d { output: (6, 6) }),
        );
        use ClassifierLayer::*;
        let layers = [
            (0, Dropout),
            (1, Linear(256 * 6 * 6, 4096)),
            (2, Relu),
            (3, Dropout),
            (4, Linear(4096, 4096)),
            (5, Relu),
            (6, Linear(4096, 1000)),
        ];
        classifier(&mut g, params, &layers)?;
    }
    Ok(g)
}
