//! torchvision's ConvNeXt-Tiny, with the module paths of its state dict: `features.0` the
//! stem (4×4/4 convolution `features.0.0`, LayerNorm2d `features.0.1`), the stages of CNBlocks
//! `features.1`, `.3`, `.5`, `.7`, the downsamplings `features.2`, `.4`, `.6` (LayerNorm2d `.0`,
//! 2×2/2 convolution `.1`), `avgpool`, and the head `classifier.0` (LayerNorm2d),
//! `classifier.1` (Flatten), `classifier.2` (Linear).
//!
//! Layer names mean what a PyTorch forward hook on that module returns:
//! - A LayerNorm2d (`features.0.1`, `features.2.0`, `classifier.0`) is its NCHW output; inside
//!   it the functional steps are `….to_nhwc` (permute to channels last) and `….layer_norm`
//!   (normalized over channels, NHWC).
//! - A CNBlock `features.N.M`: `block.0` the 7×7 depthwise convolution, `block.1` the Permute
//!   to NHWC, `block.2` the LayerNorm, `block.3` and `block.5` the Linear layers (over the last
//!   axis, NHWC), `block.4` GELU, `block.6` the Permute back; `block` the Sequential's output.
//!   The block then multiplies by its `layer_scale` parameter (functional: node
//!   `features.N.M.layer_scale`, the scaled branch), calls `stochastic_depth` (the identity in
//!   eval) and adds its input in place: the sum is the block's own output `features.N.M`.

use crate::builder::{Builder, Conv};
use crate::params::Kind;
use crate::ModelError;
use deepvis_engine::{
    AdaptiveAvgPool2d, Add, BinaryConst, BinaryKind, Flatten, Identity, LayerNorm, MatMulConst,
    NodeId, Tensor, Transpose, Unary, UnaryKind,
};

const EPS: f32 = 1e-6;
const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// (channels, blocks) per stage; each stage but the last is followed by a downsampling to the
/// next stage's channels.
const STAGES: [(usize, usize); 4] = [(96, 3), (192, 3), (384, 9), (768, 3)];

/// An nn.LayerNorm over the last axis (`c` values) as the node `name` of this scope.
fn layer_norm(b: &mut Builder, name: &str, x: NodeId, c: usize) -> Result<NodeId, ModelError> {
    let (scale, bias) = {
        let mut s = b.pp(name);
        let scale = s.param("weight", &[c], Kind::Scale)?;
        (scale, s.param("bias", &[c], Kind::Bias)?)
    };
    let op = LayerNorm {
        axis: 3,
        eps: EPS,
        scale: Some(scale),
        bias: Some(bias),
    };
    Ok(b.op(name, op, &[x]))
}

/// torchvision's `LayerNorm2d` over `c` channels in its own scope (the scope's node is its
/// NCHW output).
fn layer_norm_2d(b: &mut Builder, x: NodeId, c: usize) -> Result<NodeId, ModelError> {
    let scale = b.param("weight", &[c], Kind::Scale)?;
    let bias = b.param("bias", &[c], Kind::Bias)?;
    let y = b.op(
        "to_nhwc",
        Transpose {
            perm: TO_NHWC.to_vec(),
        },
        &[x],
    );
    let op = LayerNorm {
        axis: 3,
        eps: EPS,
        scale: Some(scale),
        bias: Some(bias),
    };
    let y = b.op("layer_norm", op, &[y]);
    Ok(b.output(
        Transpose {
            perm: TO_NCHW.to_vec(),
        },
        &[y],
    ))
}

/// nn.Linear `name` of this scope over the last axis of any rank: PyTorch's [out, in] weight
/// transposed to MatMulConst's [in, out].
fn linear_last(
    b: &mut Builder,
    name: &str,
    x: NodeId,
    fin: usize,
    fout: usize,
) -> Result<NodeId, ModelError> {
    let (w, bias) = {
        let mut s = b.pp(name);
        let w = s.param("weight", &[fout, fin], Kind::Weight { fan_in: fin })?;
        (w, s.param("bias", &[fout], Kind::Bias)?)
    };
    let mut weight = vec![0.0; fin * fout];
    for o in 0..fout {
        for i in 0..fin {
            weight[i * fout + o] = w[o * fin + i];
        }
    }
    let op = MatMulConst {
        k: fin,
        m: fout,
        weight,
        bias: Some(bias),
    };
    Ok(b.op(name, op, &[x]))
}

/// torchvision's `CNBlock` over `c` channels in scope `features.N.M`.
fn cn_block(b: &mut Builder, x: NodeId, c: usize) -> Result<NodeId, ModelError> {
    let mut blk = b.pp("block");
    let y = blk.conv(0, x, Conv::new(c, c, 7).pad(3).depthwise())?;
    let y = blk.op(
        1,
        Transpose {
            perm: TO_NHWC.to_vec(),
        },
        &[y],
    );
    let y = layer_norm(&mut blk, "2", y, c)?;
    let y = linear_last(&mut blk, "3", y, c, 4 * c)?;
    let y = blk.op(4, Unary(UnaryKind::Gelu), &[y]);
    let y = linear_last(&mut blk, "5", y, 4 * c, c)?;
    let y = blk.op(
        6,
        Transpose {
            perm: TO_NCHW.to_vec(),
        },
        &[y],
    );
    let y = blk.output(Identity, &[y]);
    drop(blk);
    // Generated values take the formula's weight kind with fan-in 1 (a [C, 1, 1] tensor that is
    // neither a bias nor one-dimensional), as `scripts/zoo_fixtures.py` computes it.
    let scale = b.param("layer_scale", &[c, 1, 1], Kind::Weight { fan_in: 1 })?;
    let constant = Tensor::new(vec![c, 1, 1], scale)
        .map_err(|e| ModelError::Architecture(format!("layer_scale: {e}")))?;
    let op = BinaryConst {
        kind: BinaryKind::Mul,
        constant,
        constant_first: true,
    };
    let y = b.op("layer_scale", op, &[y]);
    let y = b.op("stochastic_depth", Identity, &[y]);
    Ok(b.output(Add, &[y, x]))
}

pub(crate) fn convnext_tiny(b: &mut Builder, head: bool) -> Result<(), ModelError> {
    let mut f = b.pp("features");
    let mut x = {
        let mut stem = f.pp(0);
        let y = stem.conv(0, 0, Conv::new(3, 96, 4).stride(4))?;
        let y = layer_norm_2d(&mut stem.pp(1), y, 96)?;
        stem.output(Identity, &[y])
    };
    let mut idx = 1;
    for (s, &(c, blocks)) in STAGES.iter().enumerate() {
        {
            let mut stage = f.pp(idx);
            for m in 0..blocks {
                x = cn_block(&mut stage.pp(m), x, c)?;
            }
            x = stage.output(Identity, &[x]);
        }
        idx += 1;
        if let Some(&(next, _)) = STAGES.get(s + 1) {
            let mut down = f.pp(idx);
            let y = layer_norm_2d(&mut down.pp(0), x, c)?;
            let y = down.conv(1, y, Conv::new(c, next, 2).stride(2))?;
            x = down.output(Identity, &[y]);
            idx += 1;
        }
    }
    x = f.output(Identity, &[x]);
    drop(f);
    let x = b.op("avgpool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    if head {
        let mut cl = b.pp("classifier");
        let y = layer_norm_2d(&mut cl.pp(0), x, 768)?;
        let y = cl.op(1, Flatten, &[y]);
        let y = cl.linear(2, y, 768, 1000)?;
        cl.output(Identity, &[y]);
    }
    Ok(())
}
