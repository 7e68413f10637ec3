//! torchvision's MobileNetV2 and MobileNetV3 (small, large) at width 1, with the module paths
//! of their state dicts. Every `Conv2dNormActivation` and inverted residual is a node of its
//! own (`features`, `classifier`, `features.3`, `features.3.block.1`, `features.3.block.1.0` …: what a forward hook on
//! that module returns), a squeeze-excitation module is its scaled input, and the functional
//! ops have names of their own: MobileNetV2's `avgpool` (`adaptive_avg_pool2d`) and both
//! models' `flatten` before the classifier.

use crate::blocks::{conv_norm_act, inverted_residual_v2, inverted_residual_v3, Act, V3Block};
use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{AdaptiveAvgPool2d, Flatten, Identity, Unary, UnaryKind};

pub(crate) fn mobilenet_v2(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    // (expand ratio, channels, repeats, first stride)
    const SETTINGS: [(usize, usize, usize, usize); 7] = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let mut f = b.pp("features");
    let stem = Conv::new(3, 32, 3).stride(2);
    let mut x = conv_norm_act(&mut f.pp(0), 0, stem, (3, 32), 1e-5, Act::Relu6)?;
    let mut cin = 32;
    let mut idx = 1;
    for (t, c, n, s) in SETTINGS {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            x = inverted_residual_v2(&mut f.pp(idx), x, (cin, c, stride, t))?;
            cin = c;
            idx += 1;
        }
    }
    let last = Conv::new(cin, 1280, 1);
    x = conv_norm_act(&mut f.pp(idx), x, last, (1, 1280), 1e-5, Act::Relu6)?;
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

pub(crate) fn mobilenet_v3(b: &mut Builder, large: bool, head: bool) -> Result<(), ModelError> {
    use Act::{HardSwish as HS, Relu as RE};
    // torchvision's `_mobilenet_v3_conf`: (in, kernel, expanded, out, SE, activation, stride)
    #[rustfmt::skip]
    const LARGE: [(usize, usize, usize, usize, bool, Act, usize); 15] = [
        (16, 3, 16, 16, false, RE, 1),
        (16, 3, 64, 24, false, RE, 2),
        (24, 3, 72, 24, false, RE, 1),
        (24, 5, 72, 40, true, RE, 2),
        (40, 5, 120, 40, true, RE, 1),
        (40, 5, 120, 40, true, RE, 1),
        (40, 3, 240, 80, false, HS, 2),
        (80, 3, 200, 80, false, HS, 1),
        (80, 3, 184, 80, false, HS, 1),
        (80, 3, 184, 80, false, HS, 1),
        (80, 3, 480, 112, true, HS, 1),
        (112, 3, 672, 112, true, HS, 1),
        (112, 5, 672, 160, true, HS, 2),
        (160, 5, 960, 160, true, HS, 1),
        (160, 5, 960, 160, true, HS, 1),
    ];
    #[rustfmt::skip]
    const SMALL: [(usize, usize, usize, usize, bool, Act, usize); 11] = [
        (16, 3, 16, 16, true, RE, 2),
        (16, 3, 72, 24, false, RE, 2),
        (24, 3, 88, 24, false, RE, 1),
        (24, 5, 96, 40, true, HS, 2),
        (40, 5, 240, 40, true, HS, 1),
        (40, 5, 240, 40, true, HS, 1),
        (40, 5, 120, 48, true, HS, 1),
        (48, 5, 144, 48, true, HS, 1),
        (48, 5, 288, 96, true, HS, 2),
        (96, 5, 576, 96, true, HS, 1),
        (96, 5, 576, 96, true, HS, 1),
    ];
    let (blocks, last_channel): (&[_], usize) = if large {
        (&LARGE, 1280)
    } else {
        (&SMALL, 1024)
    };
    let eps = 1e-3;
    let mut f = b.pp("features");
    let stem = Conv::new(3, 16, 3).stride(2);
    let mut x = conv_norm_act(&mut f.pp(0), 0, stem, (3, 16), eps, HS)?;
    let mut cin = 16;
    for (i, &(c_in, k, expanded, cout, se, act, stride)) in blocks.iter().enumerate() {
        let cfg = V3Block {
            cin: c_in,
            k,
            expanded,
            cout,
            se,
            act,
            stride,
        };
        x = inverted_residual_v3(&mut f.pp(i + 1), x, cfg)?;
        cin = cout;
    }
    let lastconv = 6 * cin;
    let spec = Conv::new(cin, lastconv, 1);
    x = conv_norm_act(&mut f.pp(blocks.len() + 1), x, spec, (1, lastconv), eps, HS)?;
    x = f.output(Identity, &[x]);
    drop(f);
    let x = b.op("avgpool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    let x = b.op("flatten", Flatten, &[x]);
    if head {
        let mut c = b.pp("classifier");
        let x = c.linear(0, x, lastconv, last_channel)?;
        let x = c.op(1, Unary(UnaryKind::HardSwish), &[x]);
        let x = c.op(2, Identity, &[x]);
        let x = c.linear(3, x, last_channel, 1000)?;
        c.output(Identity, &[x]);
    }
    Ok(())
}
