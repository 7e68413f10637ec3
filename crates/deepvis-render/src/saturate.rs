//! Saturating targets. A channel of a capped activation (ReLU6, Clip, HardSigmoid, Sigmoid)
//! stops giving gradient where the activation reaches its cap: an image that pushes the unit to
//! 6.0 at one alignment has nothing left to climb, and nothing makes the feature hold under
//! other views (measured on EfficientNet-Lite0's `_conv_head.act`: robust score 4.4 against
//! 5.7 for Lucent, which optimizes the convolution before the cap).
//!
//! As Lucid redirected ReLU's gradient, the optimization here reads the activation's *input*
//! and passes the gradient through the upper cap as if the linear part went on: where the unit
//! is saturated, pushing it further still pays, so the image keeps strengthening the feature
//! (which is what keeps it saturated when the view moves). Where the whole channel of an image
//! is below the floor (a dead ReLU6: no gradient at all), the gradient passes as through the
//! linear range wherever it pushes upward, as Lucid's `redirected_relu_grad` does only where
//! nothing came through otherwise. The value reported for each step,
//! and every value and score recorded, is the requested layer's own (capped) value.

use crate::objective::{Layer, Objective};
use deepvis_engine::{Activation, Graph, NodeId, Relu6, Unary, UnaryKind};

/// A capped element-wise activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cap {
    Relu6,
    /// min(max(x, min), max) with a finite max.
    Clip {
        min: f32,
        max: f32,
    },
    /// clamp(alpha·x + beta, 0, 1).
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    Sigmoid,
}

impl Cap {
    /// The activation's value.
    pub fn value(self, x: f32) -> f32 {
        match self {
            Cap::Relu6 => x.clamp(0.0, 6.0),
            Cap::Clip { min, max } => x.max(min).min(max),
            Cap::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Cap::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }

    /// The redirected derivative: the true one below and inside the linear range, the linear
    /// range's slope at and above the cap (for the sigmoid: its slope at 0 from 0 on).
    pub fn redirected_slope(self, x: f32) -> f32 {
        match self {
            Cap::Relu6 => f32::from(x > 0.0),
            Cap::Clip { min, .. } => f32::from(x > min),
            Cap::HardSigmoid { alpha, beta } => {
                if alpha * x + beta > 0.0 {
                    alpha
                } else {
                    0.0
                }
            }
            Cap::Sigmoid => {
                if x >= 0.0 {
                    0.25
                } else {
                    let s = self.value(x);
                    s * (1.0 - s)
                }
            }
        }
    }

    /// The slope of the linear range.
    pub fn linear_slope(self) -> f32 {
        match self {
            Cap::Relu6 | Cap::Clip { .. } => 1.0,
            Cap::HardSigmoid { alpha, .. } => alpha,
            Cap::Sigmoid => 0.25,
        }
    }

    /// Whether `x` is at or below the floor, where no gradient comes through.
    pub fn dead(self, x: f32) -> bool {
        match self {
            Cap::Relu6 => x <= 0.0,
            Cap::Clip { min, .. } => x <= min,
            Cap::HardSigmoid { alpha, beta } => alpha * x + beta <= 0.0,
            Cap::Sigmoid => false,
        }
    }

    /// The cap of `node`'s op, if it is a capped activation of one input.
    pub fn of(graph: &Graph, node: NodeId) -> Option<(Cap, NodeId)> {
        let n = graph.nodes().get(node)?;
        if n.inputs.len() != 1 {
            return None;
        }
        let op = n.op.as_any();
        let cap = if op.downcast_ref::<Relu6>().is_some()
            || n.op.activation() == Some(Activation::Relu6)
        {
            Cap::Relu6
        } else {
            match op.downcast_ref::<Unary>()?.0 {
                UnaryKind::Clip { min, max } if max.is_finite() && min < max => {
                    Cap::Clip { min, max }
                }
                UnaryKind::HardSigmoid { alpha, beta } if alpha > 0.0 => {
                    Cap::HardSigmoid { alpha, beta }
                }
                UnaryKind::Sigmoid => Cap::Sigmoid,
                _ => return None,
            }
        };
        Some((cap, n.inputs[0]))
    }
}

impl Objective {
    /// The objective to optimize for this one: channels and neurons of capped activations read
    /// the activation's input with the redirected gradient ([`Cap`]); everything else as is.
    /// Its values are the same as this objective's.
    pub fn uncapped(&self, graph: &Graph) -> Objective {
        let redirect = |layer: &Layer, channel: usize, at: Option<Option<(usize, usize)>>| {
            Cap::of(graph, layer.node).map(|(cap, pre)| Objective::Capped {
                layer: layer.clone(),
                pre: Layer {
                    node: pre,
                    name: graph.nodes()[pre].name.clone(),
                },
                cap,
                channel,
                neuron: at,
            })
        };
        match self {
            Objective::Channel { layer, channel } => {
                redirect(layer, *channel, None).unwrap_or_else(|| self.clone())
            }
            Objective::Neuron { layer, channel, at } => {
                redirect(layer, *channel, Some(*at)).unwrap_or_else(|| self.clone())
            }
            Objective::Add(a, b) => {
                Objective::Add(Box::new(a.uncapped(graph)), Box::new(b.uncapped(graph)))
            }
            Objective::Sub(a, b) => {
                Objective::Sub(Box::new(a.uncapped(graph)), Box::new(b.uncapped(graph)))
            }
            Objective::Mul(a, b) => {
                Objective::Mul(Box::new(a.uncapped(graph)), Box::new(b.uncapped(graph)))
            }
            Objective::Neg(a) => Objective::Neg(Box::new(a.uncapped(graph))),
            other => other.clone(),
        }
    }
}
