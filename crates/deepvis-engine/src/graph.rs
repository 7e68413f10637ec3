//! A network as a list of named nodes in topological order, evaluated up to a target node and
//! differentiated back to the input. What each op does is its own business (`op.rs`,
//! `ops/`); which nodes run, fuse and keep their values is the plan's (`plan.rs`); this file
//! carries the plan out.

use crate::op::{Field, Saved};
use crate::ops::Input;
use crate::plan::Plan;
use crate::{ChannelAffine, EngineError, Op, Tensor};
use std::collections::HashMap;
use std::sync::Mutex;

pub type NodeId = usize;

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
    folds: FoldCache,
}

/// Per batch-norm node, the convolution before it with the norm folded in
/// (`Operator::fold_affine`), made on first use, beside the two ops it was made from: a node
/// replaced since (`node_mut`) no longer matches them, and holding them keeps their addresses
/// from being reused by another op.
#[derive(Default)]
struct FoldCache(Mutex<HashMap<NodeId, [Op; 3]>>);

impl Clone for FoldCache {
    fn clone(&self) -> Self {
        FoldCache::default()
    }
}

impl std::fmt::Debug for FoldCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FoldCache")
    }
}

impl Default for Graph {
    fn default() -> Self {
        Self::new()
    }
}

/// The values one forward pass kept for its backward pass.
pub struct Trace {
    plan: Plan,
    values: Vec<Option<Tensor>>,
    /// For nodes with a coded backward pass (`Operator::coded`): their codes.
    codes: Vec<Option<Vec<u8>>>,
}

impl Trace {
    /// The output of the (last) target node.
    pub fn output(&self) -> &Tensor {
        self.value(self.target())
            .expect("target values are always kept")
    }

    /// The output of any target node (or of a node the backward pass keeps).
    pub fn value(&self, id: NodeId) -> Option<&Tensor> {
        self.values
            .get(self.plan.source(id))
            .and_then(Option::as_ref)
    }

    pub fn target(&self) -> NodeId {
        self.plan.target()
    }

    pub fn targets(&self) -> &[NodeId] {
        &self.plan.targets
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.plan.input_shape
    }

    /// The producer computed in the same pass as activation `node` (`Operator::fuses`), if the
    /// plan fused them.
    pub fn fused_producer(&self, node: NodeId) -> Option<NodeId> {
        self.plan.head.get(node).copied().flatten()
    }

    /// The output channels computed for `node`, if only some were (`Graph::forward_channels`).
    pub fn computed_channels(&self, node: NodeId) -> Option<&[usize]> {
        self.plan.selected(node).map(|s| &s.channels[..])
    }
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
                op: Op::new(Input),
                inputs: vec![],
            }],
            folds: FoldCache::default(),
        }
    }

    pub fn push(
        &mut self,
        name: impl Into<String>,
        op: impl Into<Op>,
        inputs: &[NodeId],
    ) -> NodeId {
        debug_assert!(inputs.iter().all(|&i| i < self.nodes.len()));
        self.nodes.push(Node {
            name: name.into(),
            op: op.into(),
            inputs: inputs.to_vec(),
        });
        self.nodes.len() - 1
    }

    /// Appends `op` fed by the last node: the common sequential case.
    pub fn then(&mut self, name: impl Into<String>, op: impl Into<Op>) -> NodeId {
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

    /// Node `producer` with the batch norm `norm` after it folded in, if `norm` is a batch norm
    /// (a per-channel affine map) and `producer` can take it (`Operator::fold_affine`).
    pub(crate) fn folded(&self, producer: NodeId, norm: NodeId) -> Option<Op> {
        let (p, n) = (&self.nodes[producer].op, &self.nodes[norm].op);
        let affine = n.downcast_ref::<ChannelAffine>()?;
        let mut cache = self.folds.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some([a, b, f]) = cache.get(&norm) {
            if a.same(p) && b.same(n) {
                return Some(f.clone());
            }
        }
        let f = p.fold_affine(affine)?;
        cache.insert(norm, [p.clone(), n.clone(), f.clone()]);
        Some(f)
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
        for (id, node) in self.nodes[..=target].iter().enumerate() {
            let input = |k: usize| node.inputs.get(k).and_then(|&i| fields[i]);
            let f = if id == 0 {
                Some((1, 1))
            } else {
                match node.op.receptive_field() {
                    Field::Pointwise => input(0),
                    Field::Window {
                        kernel,
                        stride,
                        dilation,
                    } => input(0).map(|(rf, jump)| {
                        let k =
                            (dilation.0 * (kernel.0 - 1) + 1).max(dilation.1 * (kernel.1 - 1) + 1);
                        (rf + (k - 1) * jump, jump * stride.0.max(stride.1))
                    }),
                    Field::Merge => (0..node.inputs.len())
                        .map(input)
                        .try_fold((0, 0), |(rf, jump), f| {
                            f.map(|(r, j)| (rf.max(r), jump.max(j)))
                        }),
                    Field::Global => None,
                }
            };
            fields.push(f);
        }
        fields[target].map(|(rf, _)| rf)
    }

    /// Which nodes the values of `targets` depend on (indexed up to the deepest target).
    pub(crate) fn ancestors_of(&self, targets: &[NodeId]) -> Vec<bool> {
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
        if target >= self.nodes.len() {
            return Err(EngineError::Graph(format!("node {target} does not exist")));
        }
        self.shapes_of(input_shape, &self.ancestors_of(&[target]))
    }

    pub(crate) fn shapes_of(
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

    /// Multiply-adds ×2 of every node up to `target` (convolutions and linear layers; the ops
    /// count their own): the FLOPs of one forward pass by direct count (the input-gradient pass
    /// costs about the same again).
    pub fn forward_flops(&self, input_shape: &[usize], target: NodeId) -> Result<u64, EngineError> {
        let shapes = self.shapes(input_shape, target)?;
        let mut flops = 0u64;
        for (node, shape) in self.nodes[..=target].iter().zip(&shapes).skip(1) {
            let Some(out) = shape else { continue };
            let ins: Vec<&[usize]> = node
                .inputs
                .iter()
                .map(|&j| shapes[j].as_deref().unwrap_or(&[]))
                .collect();
            flops += node.op.flops(&ins, out);
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

    /// Evaluates the network up to `target`, keeping only what the backward pass needs.
    pub fn forward(&self, x: Tensor, target: NodeId) -> Result<Trace, EngineError> {
        self.forward_multi(x, &[target])
    }

    /// Evaluates the network up to the deepest of `targets`, keeping every target's value (for
    /// objectives over several layers) and what the backward pass needs.
    pub fn forward_multi(&self, x: Tensor, targets: &[NodeId]) -> Result<Trace, EngineError> {
        self.forward_impl(x, targets, None)
    }

    /// `forward_multi` for a loss that reads only `channels` of the deepest target: where the
    /// op computing that target can narrow itself to those channels (`Operator::select_outputs`,
    /// an ungrouped convolution, or the ReLU computed with one), only those output channels are
    /// computed, forward and backward; its other channels read as zero, and a gradient seeded
    /// on them is ignored. Elsewhere it is `forward_multi`. For channel objectives this skips
    /// most of the last layer's work (at VGG16 `features.5`, a third of the step's arithmetic).
    pub fn forward_channels(
        &self,
        x: Tensor,
        targets: &[NodeId],
        channels: &[usize],
    ) -> Result<Trace, EngineError> {
        self.forward_impl(x, targets, Some(channels))
    }

    /// `forward_channels` (with `channels`) or `forward_multi` forward only, like
    /// [`Graph::infer`]: the targets' values and nothing for a backward pass, for objectives
    /// that are only evaluated (scores, start and end values). VGG16's max pools then skip
    /// their argmax codes, and no ReLU mask is kept. A backward pass on the result is refused.
    pub fn evaluate_targets(
        &self,
        x: Tensor,
        targets: &[NodeId],
        channels: Option<&[usize]>,
    ) -> Result<Trace, EngineError> {
        let mut plan = Plan::new(self, x.shape(), targets, channels)?;
        plan.for_inference();
        self.run_plan(x, plan)
    }

    /// The value of `target` for input `x`, forward only (like PyTorch's `torch.no_grad`): no
    /// value is kept for a backward pass and no op records codes for one, so each activation is
    /// dropped as soon as its last reader has run.
    pub fn infer(&self, x: Tensor, target: NodeId) -> Result<Tensor, EngineError> {
        let mut trace = self.evaluate_targets(x, &[target], None)?;
        trace.values[target]
            .take()
            .ok_or_else(|| EngineError::Graph(format!("node {target} was not computed")))
    }

    fn forward_impl(
        &self,
        x: Tensor,
        targets: &[NodeId],
        channels: Option<&[usize]>,
    ) -> Result<Trace, EngineError> {
        let plan = Plan::new(self, x.shape(), targets, channels)?;
        self.run_plan(x, plan)
    }

    fn run_plan(&self, x: Tensor, plan: Plan) -> Result<Trace, EngineError> {
        let target = plan.target();
        let mut values: Vec<Option<Tensor>> = vec![None; target + 1];
        let mut codes: Vec<Option<Vec<u8>>> = vec![None; target + 1];
        values[0] = Some(x);
        for i in 1..=target {
            if !plan.needed[i] || plan.absorbed[i] || plan.alias[i].is_some() {
                continue;
            }
            // A fused pair runs on the inputs of its producer.
            let src = plan.node(&self.nodes, plan.head[i].unwrap_or(i));
            // A pass-through whose input nobody reads later takes that value over instead of
            // copying it (containers' outputs, eval-mode dropout).
            if let [j] = src.inputs[..] {
                let j = plan.source(j);
                if plan.head[i].is_none()
                    && src.op.passes_through()
                    && plan.last_use[j] == i
                    && !plan.keep[j]
                {
                    if let Some(v) = values[j].take() {
                        values[i] = Some(v);
                        continue;
                    }
                }
            }
            let ins: Vec<&Tensor> = src
                .inputs
                .iter()
                .map(|&j| {
                    values[plan.source(j)]
                        .as_ref()
                        .ok_or_else(|| EngineError::Graph(format!("value of node {j} was dropped")))
                })
                .collect::<Result<_, _>>()?;
            let act = || self.activation_of(i);
            let started = crate::profile::start();
            let y = if let Some(sel) = plan.selected(i) {
                let y = match plan.head[i] {
                    Some(_) => sel.op.forward_fused(&ins, act()?),
                    None => sel.op.forward(&ins),
                };
                y.map(|y| scatter_channels(&y, &sel.channels, plan.shape(i)[1]))
            } else if plan.head[i].is_some() {
                src.op.forward_fused(&ins, act()?)
            } else if plan.coded[i] {
                let coded = src
                    .op
                    .coded()
                    .ok_or_else(|| EngineError::Graph("planned codes without a coded op".into()))?;
                coded.forward_coded(ins[0]).map(|(y, c)| {
                    codes[i] = Some(c);
                    y
                })
            } else {
                src.op.forward(&ins)
            }
            .map_err(|e| EngineError::Shape(format!("at {}: {e}", src.name)))?;
            crate::profile::record(started, || self.profile_key(i, &plan), false);
            values[i] = Some(y);
            for &j in &src.inputs {
                let j = plan.source(j);
                if plan.last_use[j] == i && !plan.keep[j] {
                    values[j] = None;
                }
            }
        }
        Ok(Trace {
            plan,
            values,
            codes,
        })
    }

    /// The profiler's row for node `i`: its op (with its producer's, if fused) and shape.
    fn profile_key(&self, i: NodeId, plan: &Plan) -> String {
        let describe = |k: NodeId| match &plan.rewired[k] {
            Some(folded) => format!("{} + {}", folded.op.describe(), self.nodes[k].op.describe()),
            None => self.nodes[k].op.describe(),
        };
        let op = match plan.head[i] {
            Some(h) => format!("{} + {}", describe(h), describe(i)),
            None => describe(i),
        };
        format!("{op} → {:?}", plan.shape(i))
    }

    fn activation_of(&self, i: NodeId) -> Result<crate::Activation, EngineError> {
        self.nodes[i].op.activation().ok_or_else(|| {
            EngineError::Graph(format!(
                "{} was fused but is no activation",
                self.nodes[i].name
            ))
        })
    }

    /// What the backward pass of node `i` gets from the trace.
    fn saved<'a>(&'a self, trace: &'a Trace, i: NodeId) -> Saved<'a> {
        let node = trace.plan.node(&self.nodes, i);
        Saved {
            node: &node.name,
            input_shapes: node.inputs.iter().map(|&j| trace.plan.shape(j)).collect(),
            inputs: node.inputs.iter().map(|&j| trace.value(j)).collect(),
            output: trace.value(i),
        }
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
        let plan = &trace.plan;
        if plan.forward_only {
            return Err(EngineError::Graph(
                "this pass kept nothing for a gradient (evaluate_targets); trace it with forward_multi".into(),
            ));
        }
        let target = plan.target();
        let mut grads: Vec<Option<Tensor>> = vec![None; target + 1];
        // A ReLU's masking is left to its reader only where no gradient enters it directly.
        let mut seeded = vec![false; target + 1];
        for (id, grad) in seeds {
            if id > target || !plan.needed[id] {
                return Err(EngineError::Graph(format!(
                    "a gradient for node {id}, which the forward pass did not reach"
                )));
            }
            seeded[id] = true;
            if grad.shape() != plan.shape(id) {
                return Err(EngineError::Shape(format!(
                    "gradient of shape {:?} for node {id}, whose output is {:?}",
                    grad.shape(),
                    plan.shape(id)
                )));
            }
            accumulate(&mut grads[id], grad);
        }
        let masked = |i: NodeId| plan.masked_by_reader[i] && !seeded[i];
        for i in (1..=target).rev() {
            let Some(g) = grads[i].take() else {
                continue;
            };
            let started = crate::profile::start();
            if let Some(h) = plan.head[i] {
                let head = plan.node(&self.nodes, h);
                // What the fused backward pass reads: the pair's output, or the producer's input
                // (`Activation::needs_input`).
                let kept_node = if self.activation_of(i)?.needs_input() {
                    head.inputs[0]
                } else {
                    i
                };
                let y = || {
                    trace.value(kept_node).ok_or_else(|| {
                        EngineError::Graph(format!(
                            "value of {} was not kept",
                            self.nodes[kept_node].name
                        ))
                    })
                };
                let shapes: Vec<&[usize]> = head.inputs.iter().map(|&j| plan.shape(j)).collect();
                let dxs = if let Some(sel) = plan.selected(i) {
                    let g = gather_channels(&g, &sel.channels)?;
                    let y = gather_channels(y()?, &sel.channels)?;
                    sel.op
                        .backward_fused(&shapes, g, &y, self.activation_of(i)?)?
                } else if masked(i) {
                    // The reader masked the gradient; what is left is the producer's.
                    head.op.backward(&self.saved(trace, h), g)?
                } else {
                    let (mut g, act) = (g, self.activation_of(i)?);
                    // As for single ops below: into the input's gradient where it can.
                    if let Some(acc) = sum_so_far(&mut grads, head) {
                        if head
                            .op
                            .backward_fused_accumulate(shapes[0], &mut g, y()?, act, acc)?
                        {
                            crate::profile::record(started, || self.profile_key(i, plan), true);
                            continue;
                        }
                    }
                    head.op.backward_fused(&shapes, g, y()?, act)?
                };
                accumulate_inputs(&mut grads, head, dxs)?;
                crate::profile::record(started, || self.profile_key(i, plan), true);
                continue;
            }
            let node = plan.node(&self.nodes, i);
            let input_grads = if let Some(sel) = plan.selected(i) {
                let g = gather_channels(&g, &sel.channels)?;
                sel.op.backward(&self.saved(trace, i), g)?
            } else if masked(i) {
                vec![g]
            } else if plan.coded[i] {
                let j = node.inputs[0];
                let (Some(coded), Some(codes)) = (node.op.coded(), trace.codes[i].as_deref())
                else {
                    return Err(EngineError::Graph(format!(
                        "codes of {} were not kept",
                        node.name
                    )));
                };
                vec![coded.backward_coded(plan.shape(j), codes, &g, masked(j))?]
            } else {
                let mut g = g;
                // Into the gradient its input already has from other readers, where the op
                // can add it in the same pass.
                if let Some(acc) = sum_so_far(&mut grads, node) {
                    if node
                        .op
                        .backward_accumulate(&self.saved(trace, i), &mut g, acc)?
                    {
                        crate::profile::record(started, || self.profile_key(i, plan), true);
                        continue;
                    }
                }
                node.op.backward(&self.saved(trace, i), g)?
            };
            accumulate_inputs(&mut grads, node, input_grads)?;
            crate::profile::record(started, || self.profile_key(i, plan), true);
        }
        grads[0]
            .take()
            .ok_or_else(|| EngineError::Graph("the target does not depend on the input".into()))
    }
}

/// For a one-input `node`, the gradient its input has so far from other readers, if any: what
/// `Operator::backward_accumulate` adds into.
fn sum_so_far<'a>(grads: &'a mut [Option<Tensor>], node: &Node) -> Option<&'a mut Tensor> {
    match node.inputs[..] {
        [j] => grads[j].as_mut(),
        _ => None,
    }
}

/// Adds an op's input gradients, one per input of `node`, to those of its inputs.
fn accumulate_inputs(
    grads: &mut [Option<Tensor>],
    node: &Node,
    input_grads: Vec<Tensor>,
) -> Result<(), EngineError> {
    if input_grads.len() != node.inputs.len() {
        return Err(EngineError::Graph(format!(
            "{} gave {} input gradients for {} inputs",
            node.name,
            input_grads.len(),
            node.inputs.len()
        )));
    }
    for (&j, g) in node.inputs.iter().zip(input_grads) {
        accumulate(&mut grads[j], g);
    }
    Ok(())
}

fn accumulate(slot: &mut Option<Tensor>, g: Tensor) {
    match slot {
        Some(acc) => acc.add_assign(&g),
        None => *slot = Some(g),
    }
}
