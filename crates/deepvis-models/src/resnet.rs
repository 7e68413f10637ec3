//! torchvision's ResNet family (ResNet-18/34/50/101/152, ResNeXt-50 32×4d, Wide ResNet-50-2)
//! with the module paths of its state dicts: `conv1`, `bn1`, `relu`, `maxpool`,
//! `layer1`…`layer4`, `avgpool`, `flatten`, `fc`.
//!
//! Layer names mean what a PyTorch forward hook on that module returns:
//! - A block calls its one `relu` module twice (`BasicBlock`) or three times (`Bottleneck`);
//!   each call is its own node, `layer1.0.relu#0`, `layer1.0.relu#1`, …, and the bare
//!   `layer1.0.relu` (an alias, `Model::aliases`) is the last call, what a hook holds after the
//!   forward. The stem's `relu` is called once and has no `#`.
//! - Every batch norm is its own node (`layer1.0.bn2` is before the residual sum).
//! - Functional ops have names of their own: `layerN.i.add` is the residual sum before the
//!   last relu, `flatten` is `torch.flatten` before `fc`.
//! - A block `layerN.i` is its output (after its last relu), `layerN.i.downsample` the
//!   shortcut's batch-norm output, and a stage `layerN` its last block's output.

use crate::blocks::{basic_block, bottleneck};
use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{AdaptiveAvgPool2d, Flatten, Identity, MaxPool2d, Relu};

/// A ResNet's blocks: basic (two 3×3) or bottleneck with (groups, width per group).
#[derive(Clone, Copy)]
pub(crate) enum Block {
    Basic,
    Bottleneck(usize, usize),
}

/// ResNet with `blocks` per stage, e.g. `[2, 2, 2, 2]` basic for ResNet-18.
pub(crate) fn resnet(
    b: &mut Builder,
    block: Block,
    blocks: [usize; 4],
    head: bool,
) -> Result<(), ModelError> {
    let x = b.conv("conv1", 0, Conv::new(3, 64, 7).stride(2).pad(3).no_bias())?;
    let x = b.batch_norm("bn1", x, 64, 1e-5)?;
    let x = b.op("relu", Relu, &[x]);
    let pool = MaxPool2d {
        padding: (1, 1),
        ..MaxPool2d::square(3, 2)
    };
    let mut x = b.op("maxpool", pool, &[x]);
    let expansion = match block {
        Block::Basic => 1,
        Block::Bottleneck(..) => 4,
    };
    let mut cin = 64;
    for (stage, &n) in blocks.iter().enumerate() {
        let planes = 64 << stage;
        let mut layer = b.pp(format!("layer{}", stage + 1));
        for i in 0..n {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let mut s = layer.pp(i);
            x = match block {
                Block::Basic => basic_block(&mut s, x, cin, planes, stride)?,
                Block::Bottleneck(groups, width) => {
                    bottleneck(&mut s, x, cin, planes, stride, (groups, width))?
                }
            };
            cin = planes * expansion;
        }
        x = layer.output(Identity, &[x]);
    }
    let x = b.op("avgpool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    let x = b.op("flatten", Flatten, &[x]);
    if head {
        b.linear("fc", x, cin, 1000)?;
    }
    Ok(())
}
