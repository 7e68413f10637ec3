//! Building blocks shared by the architectures: a conv, batch norm or linear layer whose
//! parameters are read under its PyTorch module path.

use crate::params::{Kind, Params};
use crate::ModelError;
use deepvis_engine::{ChannelAffine, Conv2d, Linear, Op, Padding};

pub(crate) struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: Padding,
    pub groups: usize,
    pub bias: bool,
}

pub(crate) fn conv(params: &mut Params, prefix: &str, s: ConvSpec) -> Result<Op, ModelError> {
    let fan_in = s.cin / s.groups * s.k * s.k;
    let weight = params.take(
        &format!("{prefix}.weight"),
        &[s.cout, s.cin / s.groups, s.k, s.k],
        Kind::Weight { fan_in },
    )?;
    let bias = if s.bias {
        Some(params.take(&format!("{prefix}.bias"), &[s.cout], Kind::Bias)?)
    } else {
        None
    };
    let conv = Conv2d {
        in_channels: s.cin,
        out_channels: s.cout,
        kernel: (s.k, s.k),
        stride: (s.stride, s.stride),
        dilation: (1, 1),
        groups: s.groups,
        padding: s.padding,
        weight,
        bias,
        cache: Default::default(),
    };
    conv.validate()
        .map_err(|e| ModelError::Architecture(e.to_string()))?;
    Ok(Op::Conv2d(conv))
}

pub(crate) fn batch_norm(
    params: &mut Params,
    prefix: &str,
    c: usize,
    eps: f32,
) -> Result<Op, ModelError> {
    let weight = params.take(&format!("{prefix}.weight"), &[c], Kind::Scale)?;
    let bias = params.take(&format!("{prefix}.bias"), &[c], Kind::Bias)?;
    let mean = params.take(&format!("{prefix}.running_mean"), &[c], Kind::Mean)?;
    let var = params.take(&format!("{prefix}.running_var"), &[c], Kind::Variance)?;
    params.ignore(&format!("{prefix}.num_batches_tracked"));
    Ok(Op::ChannelAffine(ChannelAffine::from_batch_norm(
        &weight, &bias, &mean, &var, eps,
    )))
}

pub(crate) fn linear(
    params: &mut Params,
    prefix: &str,
    fin: usize,
    fout: usize,
) -> Result<Op, ModelError> {
    let weight = params.take(
        &format!("{prefix}.weight"),
        &[fout, fin],
        Kind::Weight { fan_in: fin },
    )?;
    let bias = Some(params.take(&format!("{prefix}.bias"), &[fout], Kind::Bias)?);
    Ok(Op::Linear(Linear {
        in_features: fin,
        out_features: fout,
        weight,
        bias,
    }))
}
