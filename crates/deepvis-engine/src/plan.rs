//! The planning pass: from the graph's data flow (who consumes what) and the ops' stated
//! capabilities, decide for one forward + backward pass which nodes run, which pairs run as one,
//! what is kept for the backward pass and when each value can be dropped. The executor
//! (`graph.rs`) only carries the plan out, so no optimization depends on the order in which an
//! architecture pushed its nodes.

use crate::graph::{Graph, Node, NodeId};
use crate::op::Activation;
use crate::{EngineError, Op};

/// A target computed for some of its output channels only (`Graph::forward_channels`).
pub(crate) struct Selection {
    /// The target node; its producer (itself, or the head of a fused pair ending there) is the
    /// op that was narrowed.
    pub node: NodeId,
    pub channels: Vec<usize>,
    pub op: Op,
}

pub(crate) struct Plan {
    /// Sorted, distinct; the last is the deepest.
    pub targets: Vec<NodeId>,
    /// `rewired[b] = Some(node)`: batch norm b is computed by `node`, the convolution before
    /// it with the norm folded in (`Operator::fold_affine`), reading the convolution's inputs;
    /// the convolution itself does not run.
    pub rewired: Vec<Option<Node>>,
    pub input_shape: Vec<usize>,
    pub needed: Vec<bool>,
    pub shapes: Vec<Option<Vec<usize>>>,
    /// `head[k] = Some(h)`: activation node k is computed in the pass of its producer h
    /// (`Operator::fuses`); h then has no value of its own.
    pub head: Vec<Option<NodeId>>,
    pub absorbed: Vec<bool>,
    /// Nodes whose backward pass works from codes instead of their input (`Operator::coded`).
    pub coded: Vec<bool>,
    /// ReLU nodes (alone or ending a fused pair) whose only reader is a coded node that masks
    /// their gradient itself: their own masking is skipped and their output is not kept.
    pub masked_by_reader: Vec<bool>,
    /// `alias[i] = Some(j)`: pass-through node i (eval-mode dropout, a container's output) is
    /// node j's value under another name; it is never computed, and its readers read j.
    pub alias: Vec<Option<NodeId>>,
    /// Values the backward pass reads (or that were asked for).
    pub keep: Vec<bool>,
    /// The node after whose computation a value is no longer read by the forward pass.
    pub last_use: Vec<NodeId>,
    pub selection: Option<Selection>,
    /// Set by `for_inference`: nothing was kept for a backward pass.
    pub forward_only: bool,
}

impl Plan {
    pub fn target(&self) -> NodeId {
        *self.targets.last().expect("a plan has at least one target")
    }

    pub fn selected(&self, node: NodeId) -> Option<&Selection> {
        self.selection.as_ref().filter(|s| s.node == node)
    }

    /// Node `i` as this plan computes it: the graph's, or its rewired form.
    pub fn node<'a>(&'a self, nodes: &'a [Node], i: NodeId) -> &'a Node {
        self.rewired
            .get(i)
            .and_then(Option::as_ref)
            .unwrap_or(&nodes[i])
    }

    /// The node whose value `node` is: itself, or what its alias chain ends at.
    pub fn source(&self, node: NodeId) -> NodeId {
        self.alias.get(node).copied().flatten().unwrap_or(node)
    }

    pub fn shape(&self, node: NodeId) -> &[usize] {
        self.shapes
            .get(node)
            .and_then(Option::as_deref)
            .unwrap_or(&[])
    }

    /// Turns the plan into a forward-only one: only the targets are kept, and coded ops run
    /// their plain forward (codes serve only the backward pass).
    pub fn for_inference(&mut self) {
        self.forward_only = true;
        for (i, k) in self.keep.iter_mut().enumerate() {
            *k = self.targets.contains(&i);
        }
        self.coded.iter_mut().for_each(|c| *c = false);
        self.masked_by_reader.iter_mut().for_each(|m| *m = false);
    }

    pub fn new(
        graph: &Graph,
        input_shape: &[usize],
        targets: &[NodeId],
        channels: Option<&[usize]>,
    ) -> Result<Plan, EngineError> {
        let Some(&target) = targets.iter().max() else {
            return Err(EngineError::Graph("no target node".into()));
        };
        if target >= graph.nodes().len() {
            return Err(EngineError::Graph(format!("node {target} does not exist")));
        }
        let graph_nodes = &graph.nodes()[..=target];
        let mut sorted = targets.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut is_target = vec![false; target + 1];
        for &t in &sorted {
            is_target[t] = true;
        }
        let mut needed = graph.ancestors_of(&sorted);
        let shapes = graph.shapes_of(input_shape, &needed)?;
        fn readers_of<'a>(node: impl Fn(NodeId) -> &'a Node, needed: &[bool]) -> Vec<Vec<NodeId>> {
            let mut readers: Vec<Vec<NodeId>> = vec![Vec::new(); needed.len()];
            for k in (1..needed.len()).filter(|&k| needed[k]) {
                for &j in &node(k).inputs {
                    readers[j].push(k);
                }
            }
            readers
        }
        let readers = readers_of(|k| &graph_nodes[k], &needed);

        // Batch norms folded into the convolution before them, where nobody else reads or asked
        // for the convolution's output. The folded weights are computed once per graph.
        let mut rewired: Vec<Option<Node>> = vec![None; target + 1];
        for b in 1..=target {
            let [h] = graph_nodes[b].inputs[..] else {
                continue;
            };
            if !needed[b] || h == 0 || is_target[h] || readers[h] != [b] {
                continue;
            }
            if let Some(op) = graph.folded(h, b) {
                rewired[b] = Some(Node {
                    name: graph_nodes[b].name.clone(),
                    op,
                    inputs: graph_nodes[h].inputs.clone(),
                });
                needed[h] = false;
            }
        }
        let node = |i: NodeId| rewired[i].as_ref().unwrap_or(&graph_nodes[i]);
        let readers = if rewired.iter().any(Option::is_some) {
            readers_of(node, &needed)
        } else {
            readers
        };
        let sole_reader = |j: NodeId| match readers[j][..] {
            [k] if node(k).inputs == [j] => Some(k),
            _ => None,
        };

        // Producer + activation pairs: where the producer's output is not asked for and the
        // activation alone reads it, every value anyone can ask for still exists.
        let mut head = vec![None; target + 1];
        let mut absorbed = vec![false; target + 1];
        for h in 1..=target {
            if !needed[h] || is_target[h] {
                continue;
            }
            let Some(k) = sole_reader(h) else { continue };
            if let Some(act) = node(k).op.activation() {
                if node(h).op.fuses(act) && node(h).op.activation().is_none() {
                    head[k] = Some(h);
                    absorbed[h] = true;
                }
            }
        }

        let coded: Vec<bool> = (0..=target)
            .map(|i| {
                needed[i]
                    && i > 0
                    && node(i).inputs.len() == 1
                    && node(i).op.coded().is_some_and(|c| {
                        c.applies(shapes[node(i).inputs[0]].as_deref().unwrap_or(&[]))
                    })
            })
            .collect();
        let masked_by_reader: Vec<bool> = (0..=target)
            .map(|i| {
                i > 0
                    && needed[i]
                    && !is_target[i]
                    && node(i).op.activation() == Some(Activation::Relu)
                    && sole_reader(i).is_some_and(|k| coded[k])
            })
            .collect();

        // Pass-throughs read a value under another name instead of copying it (ResNet's
        // blocks and stages are containers whose output is their last ReLU's, which that
        // ReLU's backward pass keeps: 19 copies per forward pass). Targets keep their own
        // value, which callers read.
        let mut alias: Vec<Option<NodeId>> = vec![None; target + 1];
        for i in 1..=target {
            if needed[i]
                && !is_target[i]
                && !absorbed[i]
                && head[i].is_none()
                && !coded[i]
                && node(i).op.passes_through()
            {
                if let [j] = node(i).inputs[..] {
                    alias[i] = Some(alias[j].unwrap_or(j));
                }
            }
        }
        let source = |j: NodeId| alias[j].unwrap_or(j);

        let mut keep = is_target.clone();
        let mut last_use = vec![0; target + 1];
        for i in 1..=target {
            if !needed[i] || absorbed[i] || alias[i].is_some() {
                continue;
            }
            if let Some(h) = head[i] {
                // The fused backward passes work from the pair's output, or for activations
                // whose derivative needs their input, from the producer's input.
                if node(i).op.activation().is_some_and(Activation::needs_input) {
                    keep[source(node(h).inputs[0])] = true;
                } else {
                    keep[i] |= !masked_by_reader[i];
                }
                for &j in &node(h).inputs {
                    last_use[source(j)] = i;
                }
                continue;
            }
            let needs = node(i).op.backward_needs();
            keep[i] |= needs.output && !masked_by_reader[i];
            for &j in &node(i).inputs {
                keep[source(j)] |= needs.inputs && !coded[i];
                last_use[source(j)] = i;
            }
        }

        let producer = head[target].unwrap_or(target);
        let selection = match channels {
            Some(ch) if !ch.is_empty() => {
                let mut ch = ch.to_vec();
                ch.sort_unstable();
                ch.dedup();
                match node(producer).op.select_outputs(&ch) {
                    Some(op) => Some(Selection {
                        node: target,
                        channels: ch,
                        op: op?,
                    }),
                    None => None,
                }
            }
            _ => None,
        };

        Ok(Plan {
            targets: sorted,
            rewired,
            input_shape: input_shape.to_vec(),
            needed,
            shapes,
            head,
            absorbed,
            coded,
            masked_by_reader,
            alias,
            keep,
            last_use,
            selection,
            forward_only: false,
        })
    }
}
