//! A network as a list of named nodes in topological order, evaluated up to a target node and
//! differentiated back to the input.

use crate::layers::{
    affine_relu6, affine_relu6_backward_in_place, relu, relu6, relu6_backward_in_place,
    relu_backward_in_place,
};
use crate::{
    AdaptiveAvgPool2d, AvgPool2d, ChannelAffine, Conv2d, EngineError, Linear, MaxPool2d, Tensor,
};
use std::sync::Arc;

pub type NodeId = usize;

#[derive(Clone, Debug)]
pub enum Op {
    /// The network input; always node 0.
    Input,
    Conv2d(Conv2d),
    ChannelAffine(ChannelAffine),
    Relu,
    Relu6,
    MaxPool2d(MaxPool2d),
    AvgPool2d(AvgPool2d),
    AdaptiveAvgPool2d(AdaptiveAvgPool2d),
    Linear(Linear),
    /// [N, ...] → [N, product(...)].
    Flatten,
    /// Element-wise sum of its inputs (residual connections).
    Add,
    /// Dropout in eval mode, and any other pass-through.
    Identity,
}

impl Op {
    /// A short name for listings: "Conv2d 3×3/2", "ReLU", …
    pub fn describe(&self) -> String {
        match self {
            Op::Input => "Input".into(),
            Op::Conv2d(c) => {
                let kind = if c.groups == 1 {
                    "Conv2d".to_string()
                } else if c.groups == c.in_channels && c.groups == c.out_channels {
                    "Conv2d depthwise".to_string()
                } else {
                    format!("Conv2d groups={}", c.groups)
                };
                format!("{kind} {}x{}/{}", c.kernel.0, c.kernel.1, c.stride.0)
            }
            Op::ChannelAffine(_) => "BatchNorm2d".into(),
            Op::Relu => "ReLU".into(),
            Op::Relu6 => "ReLU6".into(),
            Op::MaxPool2d(p) => format!("MaxPool2d {}x{}/{}", p.kernel.0, p.kernel.1, p.stride.0),
            Op::AvgPool2d(p) => format!("AvgPool2d {}x{}/{}", p.kernel.0, p.kernel.1, p.stride.0),
            Op::AdaptiveAvgPool2d(p) => format!("AdaptiveAvgPool2d {}x{}", p.output.0, p.output.1),
            Op::Linear(_) => "Linear".into(),
            Op::Flatten => "Flatten".into(),
            Op::Add => "Add".into(),
            Op::Identity => "Identity".into(),
        }
    }

    /// Whether the backward pass needs the value of this op's input (not just its shape).
    fn backward_needs_input(&self) -> bool {
        matches!(self, Op::Relu6 | Op::MaxPool2d(_))
    }

    /// Whether the backward pass needs this op's own output.
    fn backward_needs_output(&self) -> bool {
        matches!(self, Op::Relu)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let first = inputs
            .first()
            .ok_or_else(|| EngineError::Graph("op has no input".into()))?;
        match self {
            Op::Conv2d(c) => c.output_shape(first),
            Op::MaxPool2d(p) => p.output_shape(first),
            Op::AvgPool2d(p) => p.output_shape(first),
            Op::AdaptiveAvgPool2d(p) => p.output_shape(first),
            Op::Linear(l) => match first {
                [n, f] if *f == l.in_features => Ok(vec![*n, l.out_features]),
                s => Err(EngineError::Shape(format!(
                    "linear layer expects [N, {}], got {s:?}",
                    l.in_features
                ))),
            },
            Op::Flatten => Ok(vec![first[0], first[1..].iter().product()]),
            Op::Add => {
                if inputs.iter().any(|s| s != first) {
                    return Err(EngineError::Shape(format!(
                        "add of unequal shapes {inputs:?}"
                    )));
                }
                Ok(first.to_vec())
            }
            _ => Ok(first.to_vec()),
        }
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = inputs[0];
        match self {
            Op::Input | Op::Identity => Ok(x.clone()),
            Op::Conv2d(c) => c.forward(x),
            Op::ChannelAffine(a) => a.forward(x),
            Op::Relu => Ok(relu(x)),
            Op::Relu6 => Ok(relu6(x)),
            Op::MaxPool2d(p) => p.forward(x),
            Op::AvgPool2d(p) => p.forward(x),
            Op::AdaptiveAvgPool2d(p) => p.forward(x),
            Op::Linear(l) => l.forward(x),
            Op::Flatten => {
                let shape = vec![x.shape()[0], x.shape()[1..].iter().product()];
                x.clone().reshape(shape)
            }
            Op::Add => {
                let mut y = x.clone();
                for other in &inputs[1..] {
                    if other.shape() != y.shape() {
                        return Err(EngineError::Shape(format!(
                            "add of {:?} and {:?}",
                            y.shape(),
                            other.shape()
                        )));
                    }
                    y.add_assign(other);
                }
                Ok(y)
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    /// The PyTorch module path whose output this node is, e.g. `features.28` or `_blocks.3`.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
}

/// Nodes in topological order; node 0 is the input.
#[derive(Clone, Debug)]
pub struct Graph {
    nodes: Vec<Node>,
}

impl Default for Graph {
    fn default() -> Self {
        Self::new()
    }
}

/// The values one forward pass kept for its backward pass.
pub struct Trace {
    /// The nodes whose values were asked for; the last one is the primary target.
    targets: Vec<NodeId>,
    input_shape: Vec<usize>,
    shapes: Vec<Option<Vec<usize>>>,
    values: Vec<Option<Tensor>>,
    /// Nodes computed together with their successor (see `Graph::fusions`); they have no value.
    fused: Vec<bool>,
    /// How many of the pass's nodes read each node's output.
    consumers: Vec<usize>,
    /// A target convolution computed for these output channels only (`forward_channels`).
    selection: Option<Selection>,
    /// For 2×2 max pools: which element of each window won (`MaxPool2d::forward_with_codes`),
    /// so that their inputs need not be kept.
    pool_codes: Vec<Option<Vec<u8>>>,
}

struct Selection {
    node: NodeId,
    channels: Vec<usize>,
    conv: Arc<Conv2d>,
}

impl Trace {
    /// The output of the (last) target node.
    pub fn output(&self) -> &Tensor {
        self.value(self.target())
            .expect("target values are always kept")
    }

    /// The output of any target node (or of a node the backward pass keeps).
    pub fn value(&self, id: NodeId) -> Option<&Tensor> {
        self.values.get(id).and_then(Option::as_ref)
    }

    pub fn target(&self) -> NodeId {
        *self
            .targets
            .last()
            .expect("a trace has at least one target")
    }

    pub fn targets(&self) -> &[NodeId] {
        &self.targets
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The output channels computed for `node`, if only some were (`Graph::forward_channels`).
    pub fn computed_channels(&self, node: NodeId) -> Option<&[usize]> {
        self.selected(node).map(|s| &s.channels[..])
    }

    fn selected(&self, node: NodeId) -> Option<&Selection> {
        self.selection.as_ref().filter(|s| s.node == node)
    }
}

/// The channel count of node `i`'s output.
fn shapes_c(shapes: &[Option<Vec<usize>>], i: NodeId) -> usize {
    shapes[i].as_ref().map_or(0, |s| s[1])
}

/// [n, channels.len(), …] → [n, c, …] with channel k at `channels[k]` and zeros elsewhere.
fn scatter_channels(t: &Tensor, channels: &[usize], c: usize) -> Tensor {
    let shape = t.shape();
    let (n, k) = (shape[0], shape[1]);
    let plane: usize = shape[2..].iter().product();
    let mut full_shape = shape.to_vec();
    full_shape[1] = c;
    let mut out = Tensor::zeros(&full_shape);
    let (src, dst) = (t.data(), out.data_mut());
    for b in 0..n {
        for (j, &ch) in channels.iter().enumerate() {
            dst[(b * c + ch) * plane..][..plane]
                .copy_from_slice(&src[(b * k + j) * plane..][..plane]);
        }
    }
    out
}

/// The channels `channels` of an [n, c, …] tensor, as [n, channels.len(), …].
fn gather_channels(t: &Tensor, channels: &[usize]) -> Result<Tensor, EngineError> {
    let shape = t.shape();
    if shape.len() < 2 || channels.iter().any(|&ch| ch >= shape[1]) {
        return Err(EngineError::Shape(format!(
            "channels {channels:?} of a tensor of shape {shape:?}"
        )));
    }
    let (n, c) = (shape[0], shape[1]);
    let plane: usize = shape[2..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape[1] = channels.len();
    let mut data = Vec::with_capacity(n * channels.len() * plane);
    for b in 0..n {
        for &ch in channels {
            data.extend_from_slice(&t.data()[(b * c + ch) * plane..][..plane]);
        }
    }
    Tensor::new(out_shape, data)
}

impl Graph {
    pub fn new() -> Self {
        Graph {
            nodes: vec![Node {
                name: "input".into(),
                op: Op::Input,
                inputs: vec![],
            }],
        }
    }

    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: &[NodeId]) -> NodeId {
        debug_assert!(inputs.iter().all(|&i| i < self.nodes.len()));
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.to_vec(),
        });
        self.nodes.len() - 1
    }

    /// Appends `op` fed by the last node: the common sequential case.
    pub fn then(&mut self, name: impl Into<String>, op: Op) -> NodeId {
        let last = self.nodes.len() - 1;
        self.push(name, op, &[last])
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn last(&self) -> NodeId {
        self.nodes.len() - 1
    }

    pub fn find(&self, name: &str) -> Option<NodeId> {
        // Later nodes win so that a name shared by a conv and its fused successor means the latter.
        self.nodes.iter().rposition(|n| n.name == name)
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// Side, in input pixels, of the square region that one value of `target` depends on
    /// (its theoretical receptive field); None where a value depends on the whole input (global
    /// pooling, linear layers) or `target` is not a node.
    pub fn receptive_field(&self, target: NodeId) -> Option<usize> {
        if target >= self.nodes.len() {
            return None;
        }
        // (field, jump): the field of one value, and the input distance between neighbours.
        let mut fields: Vec<Option<(usize, usize)>> = Vec::with_capacity(target + 1);
        for node in &self.nodes[..=target] {
            let input = |k: usize| node.inputs.get(k).and_then(|&i| fields[i]);
            let window = |kernel: (usize, usize),
                          stride: (usize, usize),
                          dilation: (usize, usize)| {
                input(0).map(|(rf, jump)| {
                    let k = (dilation.0 * (kernel.0 - 1) + 1).max(dilation.1 * (kernel.1 - 1) + 1);
                    (rf + (k - 1) * jump, jump * stride.0.max(stride.1))
                })
            };
            let f = match &node.op {
                Op::Input => Some((1, 1)),
                Op::Conv2d(c) => window(c.kernel, c.stride, c.dilation),
                Op::MaxPool2d(p) => window(p.kernel, p.stride, p.dilation),
                Op::AvgPool2d(p) => window(p.kernel, p.stride, (1, 1)),
                Op::ChannelAffine(_) | Op::Relu | Op::Relu6 | Op::Identity => input(0),
                Op::Add => (0..node.inputs.len())
                    .map(input)
                    .try_fold((0, 0), |(rf, jump), f| {
                        f.map(|(r, j)| (rf.max(r), jump.max(j)))
                    }),
                Op::AdaptiveAvgPool2d(_) | Op::Linear(_) | Op::Flatten => None,
            };
            fields.push(f);
        }
        fields[target].map(|(rf, _)| rf)
    }

    /// Which nodes the value of `target` depends on.
    fn ancestors(&self, target: NodeId) -> Vec<bool> {
        self.ancestors_of(&[target])
    }

    /// Which nodes the values of `targets` depend on (indexed up to the deepest target).
    fn ancestors_of(&self, targets: &[NodeId]) -> Vec<bool> {
        let last = targets.iter().copied().max().unwrap_or(0);
        let mut needed = vec![false; last + 1];
        for &t in targets {
            needed[t] = true;
        }
        for i in (0..=last).rev() {
            if needed[i] {
                for &j in &self.nodes[i].inputs {
                    needed[j] = true;
                }
            }
        }
        needed
    }

    /// Output shapes of every node up to `target` for an input of `input_shape`.
    pub fn shapes(
        &self,
        input_shape: &[usize],
        target: NodeId,
    ) -> Result<Vec<Option<Vec<usize>>>, EngineError> {
        self.shapes_of(input_shape, &self.ancestors(target))
    }

    fn shapes_of(
        &self,
        input_shape: &[usize],
        needed: &[bool],
    ) -> Result<Vec<Option<Vec<usize>>>, EngineError> {
        let mut shapes: Vec<Option<Vec<usize>>> = vec![None; needed.len()];
        shapes[0] = Some(input_shape.to_vec());
        for i in 1..needed.len() {
            if !needed[i] {
                continue;
            }
            let node = &self.nodes[i];
            let ins: Vec<&[usize]> = node
                .inputs
                .iter()
                .map(|&j| shapes[j].as_deref().unwrap_or(&[]))
                .collect();
            shapes[i] = Some(
                node.op
                    .output_shape(&ins)
                    .map_err(|e| EngineError::Shape(format!("at {}: {e}", node.name)))?,
            );
        }
        Ok(shapes)
    }

    /// Multiply-adds ×2 of every convolution and linear layer up to `target`: the FLOPs of one
    /// forward pass by direct count (the input-gradient pass costs about the same again).
    pub fn forward_flops(&self, input_shape: &[usize], target: NodeId) -> Result<u64, EngineError> {
        let shapes = self.shapes(input_shape, target)?;
        let mut flops = 0u64;
        for (node, shape) in self.nodes[..=target].iter().zip(&shapes) {
            let Some(out) = shape else { continue };
            let numel: u64 = out.iter().map(|&d| d as u64).product();
            flops += match &node.op {
                Op::Conv2d(c) => {
                    2 * numel * (c.in_channels / c.groups * c.kernel.0 * c.kernel.1) as u64
                }
                Op::Linear(l) => 2 * numel * l.in_features as u64,
                _ => 0,
            };
        }
        Ok(flops)
    }

    /// Bytes of float32 activations one forward pass to `target` creates, an upper bound on
    /// what a forward and backward pass hold at once (the trace keeps less).
    pub fn activation_bytes(
        &self,
        input_shape: &[usize],
        target: NodeId,
    ) -> Result<u64, EngineError> {
        let shapes = self.shapes(input_shape, target)?;
        Ok(shapes
            .iter()
            .flatten()
            .map(|s| s.iter().map(|&d| d as u64).product::<u64>() * 4)
            .sum())
    }

    /// Which nodes to compute in one pass with the node after them: Conv2d → ReLU (the ReLU
    /// applied where the bias is added) and batch norm → ReLU6 (one pass instead of two, and the
    /// ReLU6's input need not be kept: its output tells the same). Only where the first node's
    /// own output is not a target and feeds nothing else, so every value anyone can ask for
    /// still exists.
    fn fusions(&self, needed: &[bool], is_target: &[bool], consumers: &[usize]) -> Vec<bool> {
        let last = needed.len() - 1;
        let mut fused = vec![false; last + 1];
        for i in 1..last {
            let next = &self.nodes[i + 1];
            fused[i] = needed[i]
                && needed[i + 1]
                && !is_target[i]
                && !fused[i - 1]
                && consumers[i] == 1
                && next.inputs == [i]
                && matches!(
                    (&self.nodes[i].op, &next.op),
                    (Op::Conv2d(_), Op::Relu) | (Op::ChannelAffine(_), Op::Relu6)
                );
        }
        fused
    }

    /// How many of the `needed` nodes read each node's output.
    fn consumers(&self, needed: &[bool]) -> Vec<usize> {
        let mut consumers = vec![0usize; needed.len()];
        for (node, _) in self.nodes.iter().zip(needed).filter(|(_, &n)| n) {
            for &j in &node.inputs {
                consumers[j] += 1;
            }
        }
        consumers
    }

    /// Evaluates the network up to `target`, keeping only what the backward pass needs.
    pub fn forward(&self, x: Tensor, target: NodeId) -> Result<Trace, EngineError> {
        self.forward_multi(x, &[target])
    }

    /// Evaluates the network up to the deepest of `targets`, keeping every target's value (for
    /// objectives over several layers) and what the backward pass needs.
    pub fn forward_multi(&self, x: Tensor, targets: &[NodeId]) -> Result<Trace, EngineError> {
        self.forward_impl(x, targets, None)
    }

    /// `forward_multi` for a loss that reads only `channels` of the deepest target: where that
    /// target is an ungrouped convolution (or the ReLU right after one), only those output
    /// channels are computed, forward and backward; its other channels read as zero, and a
    /// gradient seeded on them is ignored. Elsewhere it is `forward_multi`. For channel
    /// objectives this skips most of the last layer's work (at VGG16 `features.5`, a third of
    /// the step's arithmetic).
    pub fn forward_channels(
        &self,
        x: Tensor,
        targets: &[NodeId],
        channels: &[usize],
    ) -> Result<Trace, EngineError> {
        self.forward_impl(x, targets, Some(channels))
    }

    fn forward_impl(
        &self,
        x: Tensor,
        targets: &[NodeId],
        channels: Option<&[usize]>,
    ) -> Result<Trace, EngineError> {
        let Some(&target) = targets.iter().max() else {
            return Err(EngineError::Graph("no target node".into()));
        };
        if target >= self.nodes.len() {
            return Err(EngineError::Graph(format!("node {target} does not exist")));
        }
        let needed = self.ancestors_of(targets);
        let mut keep = vec![false; target + 1];
        let mut last_use = vec![0usize; target + 1];
        for &t in targets {
            keep[t] = true;
        }
        let consumers = self.consumers(&needed);
        let fused = self.fusions(&needed, &keep, &consumers);
        let input_shape = x.shape().to_vec();
        let shapes = self.shapes_of(&input_shape, &needed)?;
        // 2×2 max pools keep codes instead of their input; a ReLU feeding one of them alone
        // then needs no value either, as the pool's backward pass does its masking.
        let coded = |i: usize| match &self.nodes[i].op {
            Op::MaxPool2d(p) => shapes[self.nodes[i].inputs[0]]
                .as_deref()
                .is_some_and(|s| p.folds_relu(s)),
            _ => false,
        };
        let pooled_relu = |i: usize| {
            matches!(self.nodes[i].op, Op::Relu)
                && consumers[i] == 1
                && !keep[i]
                && (i + 1..=target).any(|k| needed[k] && self.nodes[k].inputs == [i] && coded(k))
        };
        let pooled: Vec<bool> = (0..=target).map(|i| i > 0 && pooled_relu(i)).collect();
        for i in 1..=target {
            if !needed[i] {
                continue;
            }
            let node = &self.nodes[i];
            if fused[i] {
                // Computed at i + 1; backward needs neither its input values nor its output.
                for &j in &node.inputs {
                    last_use[j] = i + 1;
                }
                continue;
            }
            if fused[i - 1] {
                // Both fused backward passes work from the final output alone.
                keep[i] |= !pooled[i];
                continue;
            }
            keep[i] |= node.op.backward_needs_output() && !pooled[i];
            for &j in &node.inputs {
                keep[j] |= node.op.backward_needs_input() && !coded(i);
                last_use[j] = i;
            }
        }
        // The convolution computing the deepest target: the target itself, or the head of a
        // fused conv + ReLU pair ending there.
        let head = if target > 0 && fused[target - 1] {
            target - 1
        } else {
            target
        };
        let selection = match (channels, &self.nodes[head].op) {
            (Some(ch), Op::Conv2d(c)) if c.groups == 1 && !ch.is_empty() => {
                let mut ch = ch.to_vec();
                ch.sort_unstable();
                ch.dedup();
                let conv = c.select_outputs(&ch)?;
                Some(Selection {
                    node: target,
                    channels: ch,
                    conv,
                })
            }
            _ => None,
        };
        let mut values: Vec<Option<Tensor>> = vec![None; target + 1];
        let mut pool_codes: Vec<Option<Vec<u8>>> = vec![None; target + 1];
        values[0] = Some(x);
        for i in 1..=target {
            if !needed[i] || fused[i] {
                continue;
            }
            // A fused pair runs on the inputs of its first node.
            let node = if fused[i - 1] {
                &self.nodes[i - 1]
            } else {
                &self.nodes[i]
            };
            let ins: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|&j| {
                    values[j]
                        .as_ref()
                        .ok_or_else(|| EngineError::Graph(format!("value of node {j} was dropped")))
                })
                .collect::<Result<_, _>>()?;
            let y = match (&node.op, &selection) {
                (Op::Conv2d(_), Some(sel)) if sel.node == i => {
                    let y = if fused[i - 1] {
                        sel.conv.forward_relu(ins[0])
                    } else {
                        sel.conv.forward(ins[0])
                    };
                    y.map(|y| scatter_channels(&y, &sel.channels, shapes_c(&shapes, i)))
                }
                (Op::Conv2d(c), _) if fused[i - 1] => c.forward_relu(ins[0]),
                (Op::MaxPool2d(p), _) if coded(i) => p.forward_with_codes(ins[0]).map(|(y, c)| {
                    pool_codes[i] = c;
                    y
                }),
                (Op::ChannelAffine(a), _) if fused[i - 1] => affine_relu6(a, ins[0]),
                (op, _) => op.forward(&ins),
            }
            .map_err(|e| EngineError::Shape(format!("at {}: {e}", node.name)))?;
            values[i] = Some(y);
            for &j in &node.inputs {
                if last_use[j] == i && !keep[j] {
                    values[j] = None;
                }
            }
        }
        let mut targets = targets.to_vec();
        targets.sort_unstable();
        targets.dedup();
        Ok(Trace {
            targets,
            input_shape,
            shapes,
            values,
            fused,
            consumers,
            selection,
            pool_codes,
        })
    }

    /// The gradient of a scalar loss with respect to the network input, given the gradient with
    /// respect to the target node's output.
    pub fn backward(&self, trace: &Trace, grad: Tensor) -> Result<Tensor, EngineError> {
        self.backward_multi(trace, vec![(trace.target(), grad)])
    }

    /// The input gradient of a loss that depends on several traced nodes, given the gradient
    /// with respect to each of their outputs.
    pub fn backward_multi(
        &self,
        trace: &Trace,
        seeds: Vec<(NodeId, Tensor)>,
    ) -> Result<Tensor, EngineError> {
        let target = trace.values.len() - 1;
        let mut grads: Vec<Option<Tensor>> = vec![None; target + 1];
        // A ReLU whose only consumer is a 2×2 max pool has its backward pass done by the
        // pool's (`MaxPool2d::backward_from_codes`), saving a sweep over the larger tensor;
        // not where the ReLU's output is also seeded (that gradient is unmasked).
        let consumers = &trace.consumers;
        let mut seeded = vec![false; target + 1];
        let mut relu_done = vec![false; target + 1];
        for (id, grad) in seeds {
            if let Some(s) = seeded.get_mut(id) {
                *s = true;
            }
            if id > target || Some(grad.shape()) != trace.shapes[id].as_deref() {
                return Err(EngineError::Shape(format!(
                    "gradient of shape {:?} for node {id}, whose output is {:?}",
                    grad.shape(),
                    trace.shapes.get(id)
                )));
            }
            match &mut grads[id] {
                Some(acc) => acc.add_assign(&grad),
                slot => *slot = Some(grad),
            }
        }
        for i in (1..=target).rev() {
            let Some(mut g) = grads[i].take() else {
                continue;
            };
            if trace.fused[i - 1] {
                let head = &self.nodes[i - 1];
                // (Not kept where a max pool's codes did the ReLU's masking.)
                let y = || {
                    trace.values[i].as_ref().ok_or_else(|| {
                        EngineError::Graph(format!("output of {} was not kept", self.nodes[i].name))
                    })
                };
                let dx = match &head.op {
                    Op::Conv2d(_) if trace.selected(i).is_some() => {
                        let sel = trace.selected(i).expect("checked");
                        let shape = trace.shapes[head.inputs[0]].as_deref().unwrap_or(&[]);
                        let (mut g, y) = (
                            gather_channels(&g, &sel.channels)?,
                            gather_channels(y()?, &sel.channels)?,
                        );
                        relu_backward_in_place(&y, &mut g);
                        sel.conv.backward(shape, &g)?
                    }
                    Op::Conv2d(c) => {
                        let shape = trace.shapes[head.inputs[0]].as_deref().unwrap_or(&[]);
                        if relu_done[i] {
                            c.backward(shape, &g)?
                        } else {
                            c.backward_relu(shape, &mut g, y()?)?
                        }
                    }
                    Op::ChannelAffine(a) => {
                        affine_relu6_backward_in_place(a, y()?, &mut g)?;
                        g
                    }
                    _ => unreachable!("only these heads are fused"),
                };
                match &mut grads[head.inputs[0]] {
                    Some(acc) => acc.add_assign(&dx),
                    slot => *slot = Some(dx),
                }
                continue;
            }
            let node = &self.nodes[i];
            let in_shape = |k: usize| trace.shapes[node.inputs[k]].as_deref().unwrap_or(&[]);
            let in_value = |k: usize| {
                trace.values[node.inputs[k]].as_ref().ok_or_else(|| {
                    EngineError::Graph(format!("input value of {} was not kept", node.name))
                })
            };
            let input_grads: Vec<Tensor> = match &node.op {
                Op::Input => unreachable!("node 0 is the only input"),
                Op::Identity => vec![g],
                Op::Conv2d(_) if trace.selected(i).is_some() => {
                    let sel = trace.selected(i).expect("checked");
                    let g = gather_channels(&g, &sel.channels)?;
                    vec![sel.conv.backward(in_shape(0), &g)?]
                }
                Op::Conv2d(c) => vec![c.backward(in_shape(0), &g)?],
                Op::ChannelAffine(a) => {
                    a.backward_in_place(&mut g)?;
                    vec![g]
                }
                Op::Relu if relu_done[i] => vec![g],
                Op::Relu => {
                    let y = trace.values[i]
                        .as_ref()
                        .ok_or_else(|| EngineError::Graph("relu output was not kept".into()))?;
                    relu_backward_in_place(y, &mut g);
                    vec![g]
                }
                Op::Relu6 => {
                    relu6_backward_in_place(in_value(0)?, &mut g);
                    vec![g]
                }
                Op::MaxPool2d(p) => {
                    let j = node.inputs[0];
                    let through_relu = matches!(self.nodes[j].op, Op::Relu)
                        && consumers[j] == 1
                        && !seeded[j]
                        && p.folds_relu(in_shape(0));
                    relu_done[j] = through_relu;
                    // A pool that folds the ReLU has codes (forward_impl's `coded`).
                    if let Some(codes) = &trace.pool_codes[i] {
                        vec![p.backward_from_codes(in_shape(0), codes, &g, through_relu)?]
                    } else {
                        vec![p.backward(in_value(0)?, &g)?]
                    }
                }
                Op::AvgPool2d(p) => vec![p.backward(in_shape(0), &g)?],
                Op::AdaptiveAvgPool2d(p) => vec![p.backward(in_shape(0), &g)?],
                Op::Linear(l) => vec![l.backward(&g)?],
                Op::Flatten => vec![g.reshape(in_shape(0).to_vec())?],
                Op::Add => {
                    let mut v = Vec::with_capacity(node.inputs.len());
                    for _ in 1..node.inputs.len() {
                        v.push(g.clone());
                    }
                    v.push(g);
                    v
                }
            };
            for (&j, gj) in node.inputs.iter().zip(input_grads) {
                match &mut grads[j] {
                    Some(acc) => acc.add_assign(&gj),
                    slot => *slot = Some(gj),
                }
            }
        }
        grads[0]
            .take()
            .ok_or_else(|| EngineError::Graph("the target does not depend on the input".into()))
    }
}
