//! The scoped builder the architectures are written with: like candle's `VarBuilder::pp`, a
//! scope is a module path, and one call both names the node and reads its parameters under
//! that path (`b.pp("layer1").pp(0).conv("conv1", x, …)` is node `layer1.0.conv1`, reading
//! `layer1.0.conv1.weight`). Blocks shared by several architectures live here too.

use crate::params::{Kind, Params};
use crate::ModelError;
use deepvis_engine::{ChannelAffine, Conv2d, Graph, Linear, NodeId, Op, Padding};
use std::fmt::Display;

/// A convolution's hyper-parameters, PyTorch's defaults unless said: stride 1, no padding,
/// one group, with bias.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: Padding,
    groups: usize,
    bias: bool,
}

impl Conv {
    pub fn new(cin: usize, cout: usize, k: usize) -> Self {
        Conv {
            cin,
            cout,
            k,
            stride: 1,
            padding: Padding::symmetric(0),
            groups: 1,
            bias: true,
        }
    }

    pub fn stride(self, stride: usize) -> Self {
        Conv { stride, ..self }
    }

    pub fn pad(self, p: usize) -> Self {
        Conv {
            padding: Padding::symmetric(p),
            ..self
        }
    }

    /// TensorFlow's "SAME" padding (EfficientNet-Lite).
    pub fn same(self) -> Self {
        Conv {
            padding: Padding::Same,
            ..self
        }
    }

    pub fn groups(self, groups: usize) -> Self {
        Conv { groups, ..self }
    }

    /// Depthwise: one group per channel.
    pub fn depthwise(self) -> Self {
        self.groups(self.cin)
    }

    pub fn no_bias(self) -> Self {
        Conv {
            bias: false,
            ..self
        }
    }
}

/// A graph under construction and the parameters it reads.
pub(crate) struct Builder<'p> {
    graph: Graph,
    params: &'p mut Params,
    path: String,
    /// Other names of nodes (`Model::aliases`), e.g. documented names for module calls.
    aliases: Vec<(String, NodeId)>,
}

/// A module scope of a [`Builder`]; leaving it (drop) returns to the parent's path.
pub(crate) struct Scope<'b, 'p> {
    builder: &'b mut Builder<'p>,
    parent_len: usize,
}

impl<'p> Builder<'p> {
    pub fn new(params: &'p mut Params) -> Self {
        Builder {
            graph: Graph::new(),
            params,
            path: String::new(),
            aliases: Vec::new(),
        }
    }

    /// The graph, and the aliases given with [`Builder::alias`].
    pub fn finish(self) -> (Graph, Vec<(String, NodeId)>) {
        (self.graph, self.aliases)
    }

    /// Another name, `name` in this scope, for node `id`.
    pub fn alias(&mut self, name: impl Display, id: NodeId) {
        let name = self.path(name);
        self.aliases.push((name, id));
    }

    /// The child scope `name` of the current path.
    pub fn pp(&mut self, name: impl Display) -> Scope<'_, 'p> {
        let parent_len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(&name.to_string());
        Scope {
            builder: self,
            parent_len,
        }
    }

    /// The module path of child `name` in the current scope.
    pub fn path(&self, name: impl Display) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The last node added.
    pub fn last(&self) -> NodeId {
        self.graph.last()
    }

    /// A parameterless op `name` of this scope, fed by `inputs`.
    pub fn op(&mut self, name: impl Display, op: impl Into<Op>, inputs: &[NodeId]) -> NodeId {
        let name = self.path(name);
        self.graph.push(name, op, inputs)
    }

    /// An op that is the current scope's own output (e.g. a block's residual add).
    pub fn output(&mut self, op: impl Into<Op>, inputs: &[NodeId]) -> NodeId {
        let name = self.path.clone();
        self.graph.push(name, op, inputs)
    }

    /// Conv2d `name` of this scope (`name.weight`, `name.bias`), fed by `x`.
    pub fn conv(
        &mut self,
        name: impl Display,
        x: NodeId,
        spec: Conv,
    ) -> Result<NodeId, ModelError> {
        let path = self.path(name);
        let op = self.read_conv(&path, spec)?;
        Ok(self.graph.push(path, op, &[x]))
    }

    fn read_conv(&mut self, path: &str, s: Conv) -> Result<Conv2d, ModelError> {
        let fan_in = s.cin / s.groups * s.k * s.k;
        let weight = self.params.take(
            &format!("{path}.weight"),
            &[s.cout, s.cin / s.groups, s.k, s.k],
            Kind::Weight { fan_in },
        )?;
        let bias = if s.bias {
            Some(
                self.params
                    .take(&format!("{path}.bias"), &[s.cout], Kind::Bias)?,
            )
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
            .map_err(|e| ModelError::Architecture(format!("{path}: {e}")))?;
        Ok(conv)
    }

    /// Eval-mode BatchNorm2d `name` over `c` channels, folded into an affine map.
    pub fn batch_norm(
        &mut self,
        name: impl Display,
        x: NodeId,
        c: usize,
        eps: f32,
    ) -> Result<NodeId, ModelError> {
        let path = self.path(name);
        let p = &mut *self.params;
        let weight = p.take(&format!("{path}.weight"), &[c], Kind::Scale)?;
        let bias = p.take(&format!("{path}.bias"), &[c], Kind::Bias)?;
        let mean = p.take(&format!("{path}.running_mean"), &[c], Kind::Mean)?;
        let var = p.take(&format!("{path}.running_var"), &[c], Kind::Variance)?;
        p.ignore(&format!("{path}.num_batches_tracked"));
        let op = ChannelAffine::from_batch_norm(&weight, &bias, &mean, &var, eps);
        Ok(self.graph.push(path, op, &[x]))
    }

    /// Linear `name` (`fin` → `fout`, with bias), fed by `x`.
    pub fn linear(
        &mut self,
        name: impl Display,
        x: NodeId,
        fin: usize,
        fout: usize,
    ) -> Result<NodeId, ModelError> {
        let path = self.path(name);
        let weight = self.params.take(
            &format!("{path}.weight"),
            &[fout, fin],
            Kind::Weight { fan_in: fin },
        )?;
        let bias = Some(
            self.params
                .take(&format!("{path}.bias"), &[fout], Kind::Bias)?,
        );
        let op = Linear {
            in_features: fin,
            out_features: fout,
            weight,
            bias,
        };
        Ok(self.graph.push(path, op, &[x]))
    }

    /// Parameter `name` of this scope (a module's own tensor, e.g. ConvNeXt's `layer_scale`,
    /// or a LayerNorm's `weight`), of exactly `shape`; `kind` picks generated values.
    pub fn param(
        &mut self,
        name: impl Display,
        shape: &[usize],
        kind: Kind,
    ) -> Result<Vec<f32>, ModelError> {
        let key = self.path(name);
        self.params.take(&key, shape, kind)
    }
}

impl<'p> std::ops::Deref for Scope<'_, 'p> {
    type Target = Builder<'p>;

    fn deref(&self) -> &Self::Target {
        self.builder
    }
}

impl std::ops::DerefMut for Scope<'_, '_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.builder
    }
}

impl Drop for Scope<'_, '_> {
    fn drop(&mut self) {
        self.builder.path.truncate(self.parent_len);
    }
}
