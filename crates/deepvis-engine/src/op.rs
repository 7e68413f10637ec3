//! What an op of the graph is: one trait, [`Operator`], that each op implements in its own file
//! (shape, forward, input gradient, what its backward pass needs, receptive field, FLOPs,
//! description), and [`Op`], the shared handle the graph stores.
//!
//! Every required method has no default, so an op that forgets one does not compile. The
//! methods with defaults are capabilities an op may offer the planner (`plan.rs`): computing
//! an activation in the same pass, computing only some output channels, keeping codes instead
//! of its input. An op that offers none of them is still correct, only less optimized.

use crate::{ChannelAffine, EngineError, Tensor};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// How one value of an op's output depends on its inputs' positions: what
/// `Graph::receptive_field` composes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Each output position reads the same position of its (first) input.
    Pointwise,
    /// A sliding window over the first input.
    Window {
        kernel: (usize, usize),
        stride: (usize, usize),
        dilation: (usize, usize),
    },
    /// Pointwise over several inputs: the widest of their fields.
    Merge,
    /// Each output value reads the whole input (global pooling, linear layers, flattening).
    Global,
}

/// What an op's backward pass reads besides the output gradient and the input shapes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The values of all its inputs.
    pub inputs: bool,
    /// Its own output.
    pub output: bool,
}

impl Needs {
    pub const NOTHING: Needs = Needs {
        inputs: false,
        output: false,
    };
    pub const INPUTS: Needs = Needs {
        inputs: true,
        output: false,
    };
    pub const OUTPUT: Needs = Needs {
        inputs: false,
        output: true,
    };
}

/// Element-wise activations that a producing op may compute in its own pass (`fuses`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Relu6,
    /// x·σ(x) (EfficientNet's), whose derivative needs its input.
    Silu,
}

impl Activation {
    /// Whether the fused pair's backward pass needs the producer's input rather than the
    /// pair's output (which, for a ReLU or ReLU6, tells where the gradient passes).
    pub fn needs_input(self) -> bool {
        self == Activation::Silu
    }
}

/// What the backward pass of a node gets: its input shapes, and the values its `Needs` asked
/// the forward pass to keep.
pub struct Saved<'a> {
    pub(crate) node: &'a str,
    pub(crate) input_shapes: Vec<&'a [usize]>,
    pub(crate) inputs: Vec<Option<&'a Tensor>>,
    pub(crate) output: Option<&'a Tensor>,
}

impl<'a> Saved<'a> {
    /// For running an op's backward pass outside a graph (tests, profiling).
    pub fn new(
        node: &'a str,
        input_shapes: Vec<&'a [usize]>,
        inputs: Vec<Option<&'a Tensor>>,
        output: Option<&'a Tensor>,
    ) -> Self {
        Saved {
            node,
            input_shapes,
            inputs,
            output,
        }
    }

    pub fn input_shape(&self, k: usize) -> &'a [usize] {
        self.input_shapes.get(k).copied().unwrap_or(&[])
    }

    pub fn input_shapes(&self) -> &[&'a [usize]] {
        &self.input_shapes
    }

    /// Input `k`'s value; an error if the op's `Needs` did not ask for it.
    pub fn input(&self, k: usize) -> Result<&'a Tensor, EngineError> {
        self.inputs
            .get(k)
            .copied()
            .flatten()
            .ok_or_else(|| EngineError::Graph(format!("input {k} of {} was not kept", self.node)))
    }

    /// The op's own output; an error if its `Needs` did not ask for it.
    pub fn output(&self) -> Result<&'a Tensor, EngineError> {
        self.output
            .ok_or_else(|| EngineError::Graph(format!("output of {} was not kept", self.node)))
    }
}

/// One op of a network: forward pass and gradient with respect to its inputs (weights are
/// frozen). Implemented once per op, in the op's own file.
pub trait Operator: fmt::Debug + Send + Sync + Any {
    /// A short name for listings: "Conv2d 3x3/2", "ReLU", …
    fn describe(&self) -> String;

    /// The output shape for inputs of these shapes, or why they do not fit.
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError>;

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError>;

    /// What `backward` reads besides the output gradient.
    fn backward_needs(&self) -> Needs;

    /// The gradient with respect to each input, in order, given the gradient of the output
    /// (which the op may reuse as storage).
    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError>;

    fn receptive_field(&self) -> Field;

    /// Multiply-adds ×2 of one forward pass for these shapes (0 where negligible: element-wise
    /// ops, pooling, data movement).
    fn flops(&self, inputs: &[&[usize]], output: &[usize]) -> u64;

    fn as_any(&self) -> &dyn Any;

    /// Whether the output is the input itself (Identity): the executor may then hand the input's
    /// value over instead of running `forward`.
    fn passes_through(&self) -> bool {
        false
    }

    /// Which activation this op is, if it is one that producers may absorb.
    fn activation(&self) -> Option<Activation> {
        None
    }

    /// Whether `forward_fused` / `backward_fused` can compute `act(self(inputs))` in one pass.
    fn fuses(&self, _act: Activation) -> bool {
        false
    }

    /// `act(self(inputs))` (only called where `fuses(act)`).
    fn forward_fused(&self, _inputs: &[&Tensor], _act: Activation) -> Result<Tensor, EngineError> {
        Err(not_offered(self, "fused activations"))
    }

    /// The gradients of the inputs of `act(self(inputs))`, one per input (whose shapes are
    /// `input_shapes`), from the pair's output gradient and `kept`: the pair's output, or
    /// where `act.needs_input()` this op's (first) input (only called where `fuses(act)`).
    fn backward_fused(
        &self,
        _input_shapes: &[&[usize]],
        _grad: Tensor,
        _kept: &Tensor,
        _act: Activation,
    ) -> Result<Vec<Tensor>, EngineError> {
        Err(not_offered(self, "fused activations"))
    }

    /// `affine(self(inputs))` as one op, where this op can take the per-channel map into its
    /// own parameters: the planner folds an eval-mode batch norm into the convolution before
    /// it wherever nobody reads the convolution's own output, which saves the norm's pass each
    /// way and lets an activation after the norm fuse with the convolution.
    fn fold_affine(&self, _affine: &ChannelAffine) -> Option<Op> {
        None
    }

    /// For a one-input op: adds the gradient of its input into `acc`, which holds that input's
    /// gradient from its other readers, and says whether it did. Where an input has several
    /// readers (a residual branch and its shortcut, squeeze-excitation's pool and product),
    /// adding in the same pass saves writing a gradient and then adding it. False (the default)
    /// leaves `acc` untouched, and the graph calls `backward` and adds.
    fn backward_accumulate(
        &self,
        _saved: &Saved,
        _grad: &mut Tensor,
        _acc: &mut Tensor,
    ) -> Result<bool, EngineError> {
        Ok(false)
    }

    /// `backward_accumulate` for the pair `act(self(input))` (only called where `fuses(act)`),
    /// from the pair's output gradient (which it may change, as storage) and `kept` as in
    /// `backward_fused`. False leaves `acc` and `grad` untouched.
    fn backward_fused_accumulate(
        &self,
        _input_shape: &[usize],
        _grad: &mut Tensor,
        _kept: &Tensor,
        _act: Activation,
        _acc: &mut Tensor,
    ) -> Result<bool, EngineError> {
        Ok(false)
    }

    /// This op computing only the output channels `channels` (sorted, distinct), where it can:
    /// for objectives that read a few channels of the last layer.
    fn select_outputs(&self, _channels: &[usize]) -> Option<Result<Op, EngineError>> {
        None
    }

    /// Where the op can do its backward pass from one byte per output instead of its input
    /// value (and can then also mask the gradient of a ReLU feeding it): its coded form.
    fn coded(&self) -> Option<&dyn CodedBackward> {
        None
    }
}

/// An op whose backward pass works from codes recorded by its forward pass (`Operator::coded`).
pub trait CodedBackward {
    /// Whether codes exist for an input of this shape.
    fn applies(&self, input_shape: &[usize]) -> bool;

    fn forward_coded(&self, x: &Tensor) -> Result<(Tensor, Vec<u8>), EngineError>;

    /// The input gradient; with `through_relu`, also that of a ReLU whose output is this op's
    /// input (the ReLU's own backward pass is then skipped).
    fn backward_coded(
        &self,
        input_shape: &[usize],
        codes: &[u8],
        grad: &Tensor,
        through_relu: bool,
    ) -> Result<Tensor, EngineError>;
}

fn not_offered(op: &(impl Operator + ?Sized), what: &str) -> EngineError {
    EngineError::Graph(format!("{} does not offer {what}", op.describe()))
}

/// An op as the graph holds it: shared, cheap to clone.
#[derive(Clone)]
pub struct Op(Arc<dyn Operator>);

impl Op {
    pub fn new(op: impl Operator) -> Self {
        Op(Arc::new(op))
    }

    pub fn from_arc(op: Arc<dyn Operator>) -> Self {
        Op(op)
    }

    /// Whether both handles hold the same op (not merely an equal one).
    pub fn same(&self, other: &Op) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }

    /// The concrete op, if it is a `T`.
    pub fn downcast_ref<T: Operator>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref::<T>()
    }

    pub fn is<T: Operator>(&self) -> bool {
        self.downcast_ref::<T>().is_some()
    }
}

impl std::ops::Deref for Op {
    type Target = dyn Operator;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Operator> From<T> for Op {
    fn from(op: T) -> Self {
        Op::new(op)
    }
}

/// The single input of a one-input op, or a shape error naming the op.
pub(crate) fn single<'a, T: ?Sized>(op: &str, inputs: &'a [&'a T]) -> Result<&'a T, EngineError> {
    match inputs {
        [x] => Ok(x),
        _ => Err(EngineError::Shape(format!(
            "{op} takes one input, got {}",
            inputs.len()
        ))),
    }
}

/// Product of dims as u64 (FLOP counts).
pub(crate) fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}
