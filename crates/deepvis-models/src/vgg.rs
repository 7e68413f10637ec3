//! torchvision's VGG (11/13/16/19, with and without batch norm) and AlexNet, with the exact
//! `features.N` / `classifier.N` numbering of their state dicts.

use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{AdaptiveAvgPool2d, Flatten, Identity, MaxPool2d, Relu};

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

/// The classifier head of VGG and AlexNet: `avgpool`, a flatten, then `classifier.N` in
/// torchvision's numbering. Skipped when the checkpoint holds the feature extractor only.
fn classifier(
    b: &mut Builder,
    pool: (usize, usize),
    layers: &[(usize, ClassifierLayer)],
) -> Result<(), ModelError> {
    let x = b.last();
    let mut x = b.op("avgpool", AdaptiveAvgPool2d { output: pool }, &[x]);
    x = b.op("flatten", Flatten, &[x]);
    let mut b = b.pp("classifier");
    for &(i, layer) in layers {
        x = match layer {
            ClassifierLayer::Linear(fin, fout) => b.linear(i, x, fin, fout)?,
            ClassifierLayer::Relu => b.op(i, Relu, &[x]),
            ClassifierLayer::Dropout => b.op(i, Identity, &[x]),
        };
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum ClassifierLayer {
    Linear(usize, usize),
    Relu,
    Dropout,
}

pub(crate) fn vgg(b: &mut Builder, depth: u32, bn: bool, head: bool) -> Result<(), ModelError> {
    let cfg = vgg_config(depth)
        .ok_or_else(|| ModelError::Architecture(format!("no VGG of depth {depth}")))?;
    let mut f = b.pp("features");
    let mut x = f.last();
    let mut idx = 0;
    let mut cin = 3;
    for &c in cfg {
        if c == 0 {
            x = f.op(idx, MaxPool2d::square(2, 2), &[x]);
            idx += 1;
            continue;
        }
        x = f.conv(idx, x, Conv::new(cin, c, 3).pad(1))?;
        idx += 1;
        if bn {
            x = f.batch_norm(idx, x, c, 1e-5)?;
            idx += 1;
        }
        x = f.op(idx, Relu, &[x]);
        idx += 1;
        cin = c;
    }
    drop(f);
    if head {
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
        classifier(b, (7, 7), &layers)?;
    }
    Ok(())
}

pub(crate) fn alexnet(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    let mut f = b.pp("features");
    let mut x = f.last();
    // (index, in, out, kernel, stride, padding), each conv followed by its ReLU.
    let convs: [(usize, usize, usize, usize, usize, usize); 5] = [
        (0, 3, 64, 11, 4, 2),
        (3, 64, 192, 5, 1, 2),
        (6, 192, 384, 3, 1, 1),
        (8, 384, 256, 3, 1, 1),
        (10, 256, 256, 3, 1, 1),
    ];
    for (idx, cin, cout, k, stride, pad) in convs {
        x = f.conv(idx, x, Conv::new(cin, cout, k).stride(stride).pad(pad))?;
        x = f.op(idx + 1, Relu, &[x]);
        if matches!(idx, 0 | 3 | 10) {
            x = f.op(idx + 2, MaxPool2d::square(3, 2), &[x]);
        }
    }
    drop(f);
    if head {
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
        classifier(b, (6, 6), &layers)?;
    }
    Ok(())
}
