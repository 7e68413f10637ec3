//! torchvision's SqueezeNet 1.0 and 1.1, with the `features.N` / `classifier.N` numbering of
//! their state dicts; Fire modules are `features.N`, their parts `features.N.squeeze`, ….

use crate::blocks::fire;
use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{AdaptiveAvgPool2d, Flatten, Identity, MaxPool2d, NodeId, Relu};

/// Max pools of SqueezeNet round their output size up (`ceil_mode=True`).
fn pool() -> MaxPool2d {
    MaxPool2d {
        ceil_mode: true,
        ..MaxPool2d::square(3, 2)
    }
}

/// One entry of `features` after the stem: a pool, or a Fire (in, squeeze, expand each).
enum Layer {
    Pool,
    Fire(usize, usize, usize),
}

fn squeezenet(b: &mut Builder, stem: Conv, layers: &[Layer], head: bool) -> Result<(), ModelError> {
    let mut f = b.pp("features");
    let mut x: NodeId = f.conv(0, 0, stem)?;
    x = f.op(1, Relu, &[x]);
    x = f.op(2, pool(), &[x]);
    for (i, layer) in layers.iter().enumerate() {
        let idx = i + 3;
        x = match *layer {
            Layer::Pool => f.op(idx, pool(), &[x]),
            Layer::Fire(cin, s, e) => fire(&mut f.pp(idx), x, cin, s, e, e)?,
        };
    }
    drop(f);
    if head {
        let mut c = b.pp("classifier");
        x = c.op(0, Identity, &[x]);
        x = c.conv(1, x, Conv::new(512, 1000, 1))?;
        x = c.op(2, Relu, &[x]);
        x = c.op(3, AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
        drop(c);
        b.op("flatten", Flatten, &[x]);
    }
    Ok(())
}

pub(crate) fn squeezenet1_0(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    use Layer::*;
    let layers = [
        Fire(96, 16, 64),
        Fire(128, 16, 64),
        Fire(128, 32, 128),
        Pool,
        Fire(256, 32, 128),
        Fire(256, 48, 192),
        Fire(384, 48, 192),
        Fire(384, 64, 256),
        Pool,
        Fire(512, 64, 256),
    ];
    squeezenet(b, Conv::new(3, 96, 7).stride(2), &layers, head)
}

pub(crate) fn squeezenet1_1(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    use Layer::*;
    let layers = [
        Fire(64, 16, 64),
        Fire(128, 16, 64),
        Pool,
        Fire(128, 32, 128),
        Fire(256, 32, 128),
        Pool,
        Fire(256, 48, 192),
        Fire(384, 48, 192),
        Fire(384, 64, 256),
        Fire(512, 64, 256),
    ];
    squeezenet(b, Conv::new(3, 64, 3).stride(2), &layers, head)
}
