//! torchvision's ShuffleNetV2 ×1.0, with the module paths of its state dict: `conv1`
//! (Sequential: conv `conv1.0`, batch norm `conv1.1`, ReLU `conv1.2`), `maxpool`, the stages
//! `stage2`…`stage4` of `InvertedResidual` blocks, `conv5` (as `conv1`), `fc`.
//!
//! Layer names mean what a PyTorch forward hook on that module returns:
//! - A block `stageN.i` is its output after the channel shuffle. Inside it, `branch1` and
//!   `branch2` are their Sequentials' outputs (`branch2.0` … `branch2.7` their layers).
//! - Functional ops have names of their own: in a stride-1 block `stageN.i.x1` and
//!   `stageN.i.x2` are the two halves of `x.chunk(2, dim=1)` (the first passes through,
//!   the second feeds `branch2`; such blocks never call their empty `branch1`);
//!   `stageN.i.cat` is `torch.cat` of the two paths before `channel_shuffle`, and `mean` is
//!   the global pooling `x.mean([2, 3])` before `fc`.

use crate::blocks::conv_bn;
use crate::builder::{Builder, Conv};
use crate::ModelError;
use deepvis_engine::{
    ChannelShuffle, Concat, Identity, MaxPool2d, NodeId, ReduceMean, Relu, Slice, SliceAxis,
};

const EPS: f32 = 1e-5;

/// (blocks, output channels) per stage, after `conv1`'s 24.
const STAGES: [(usize, usize); 3] = [(4, 116), (8, 232), (4, 464)];

/// Channels `start..end` of `x`, as node `name` of this scope.
fn channels(b: &mut Builder, name: &str, x: NodeId, start: usize, end: usize) -> NodeId {
    let axis = SliceAxis {
        axis: 1,
        start: start as i64,
        end: end as i64,
        step: 1,
    };
    b.op(name, Slice { axes: vec![axis] }, &[x])
}

/// `branch2`: 1×1 conv, BN, ReLU, 3×3 depthwise (strided), BN, 1×1 conv, BN, ReLU.
fn branch2(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    c: usize,
    stride: usize,
) -> Result<NodeId, ModelError> {
    let y = conv_bn(b, ("0", "1"), x, Conv::new(cin, c, 1), c, EPS)?;
    let y = b.op(2, Relu, &[y]);
    let dw = Conv::new(c, c, 3).stride(stride).pad(1).depthwise();
    let y = conv_bn(b, ("3", "4"), y, dw, c, EPS)?;
    let y = conv_bn(b, ("5", "6"), y, Conv::new(c, c, 1), c, EPS)?;
    let y = b.op(7, Relu, &[y]);
    Ok(b.output(Identity, &[y]))
}

/// torchvision's `InvertedResidual` in scope `stageN.i`.
fn inverted_residual(
    b: &mut Builder,
    x: NodeId,
    cin: usize,
    cout: usize,
    stride: usize,
) -> Result<NodeId, ModelError> {
    let c = cout / 2;
    let cat = if stride == 1 {
        let x1 = channels(b, "x1", x, 0, c);
        let x2 = channels(b, "x2", x, c, 2 * c);
        let y = branch2(&mut b.pp("branch2"), x2, c, c, 1)?;
        b.op("cat", Concat { axis: 1 }, &[x1, y])
    } else {
        let y1 = {
            let mut b1 = b.pp("branch1");
            let dw = Conv::new(cin, cin, 3).stride(stride).pad(1).depthwise();
            let y = conv_bn(&mut b1, ("0", "1"), x, dw, cin, EPS)?;
            let y = conv_bn(&mut b1, ("2", "3"), y, Conv::new(cin, c, 1), c, EPS)?;
            let y = b1.op(4, Relu, &[y]);
            b1.output(Identity, &[y])
        };
        let y2 = branch2(&mut b.pp("branch2"), x, cin, c, stride)?;
        b.op("cat", Concat { axis: 1 }, &[y1, y2])
    };
    Ok(b.output(ChannelShuffle { groups: 2 }, &[cat]))
}

/// A `Sequential(conv, BatchNorm2d, ReLU)` in its own scope.
fn conv_bn_relu(b: &mut Builder, x: NodeId, spec: Conv, cout: usize) -> Result<NodeId, ModelError> {
    let y = conv_bn(b, ("0", "1"), x, spec, cout, EPS)?;
    let y = b.op(2, Relu, &[y]);
    Ok(b.output(Identity, &[y]))
}

pub(crate) fn shufflenet_v2_x1_0(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    let stem = Conv::new(3, 24, 3).stride(2).pad(1);
    let x = conv_bn_relu(&mut b.pp("conv1"), 0, stem, 24)?;
    let pool = MaxPool2d {
        padding: (1, 1),
        ..MaxPool2d::square(3, 2)
    };
    let mut x = b.op("maxpool", pool, &[x]);
    let mut cin = 24;
    for (s, &(blocks, cout)) in STAGES.iter().enumerate() {
        let mut stage = b.pp(format!("stage{}", s + 2));
        for i in 0..blocks {
            let stride = if i == 0 { 2 } else { 1 };
            x = inverted_residual(&mut stage.pp(i), x, cin, cout, stride)?;
            cin = cout;
        }
        x = stage.output(Identity, &[x]);
    }
    let x = conv_bn_relu(&mut b.pp("conv5"), x, Conv::new(cin, 1024, 1), 1024)?;
    let mean = ReduceMean {
        axes: vec![2, 3],
        keepdims: false,
    };
    let x = b.op("mean", mean, &[x]);
    if head {
        b.linear("fc", x, 1024, 1000)?;
    }
    Ok(())
}
