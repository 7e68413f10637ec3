//! The ops a graph is made of, one file each: how the graph sees the op (shapes, forward,
//! input gradient, what the backward pass needs, receptive field, FLOPs, capabilities). The
//! numeric kernels they call live in the engine's kernel modules (`conv`, `pool`, `layers`, …).
//!
//! Adding an op: a file here implementing [`crate::Operator`], its two lines below, and a
//! finite-difference test through `tests/common::check_gradient` (`tests/ops_elementwise.rs`,
//! `tests/ops_shape.rs`; the convolution and pooling kernels have theirs in
//! `tests/gradients.rs`). `strided.rs` holds copy kernels the shape ops share.

mod adaptive_avg_pool;
mod add;
mod avg_pool;
mod batch_norm;
mod binary;
mod channel_shuffle;
mod concat;
mod conv2d;
mod conv_transpose;
mod flatten;
mod identity;
mod input;
mod layer_norm;
mod linear;
mod matmul_const;
mod max_pool;
mod pad;
mod prelu;
mod reduce_mean;
mod relu;
mod relu6;
mod reshape;
mod resize;
mod slice;
mod softmax;
mod strided;
mod transpose;
mod unary;

pub use add::Add;
pub use binary::{Binary, BinaryConst, BinaryKind};
pub use channel_shuffle::ChannelShuffle;
pub use concat::Concat;
pub use conv_transpose::ConvTranspose2d;
pub use flatten::Flatten;
pub use identity::Identity;
pub use input::Input;
pub use layer_norm::LayerNorm;
pub use matmul_const::MatMulConst;
pub use pad::{Pad, PadMode};
pub use prelu::PRelu;
pub use reduce_mean::ReduceMean;
pub use relu::Relu;
pub use relu6::Relu6;
pub use reshape::{Reshape, ReshapeDim};
pub use resize::{CoordMode, NearestMode, Resize, ResizeMode, ResizeTo};
pub use slice::{Slice, SliceAxis};
pub use softmax::Softmax;
pub use transpose::Transpose;
pub(crate) use unary::exp;
pub use unary::{Unary, UnaryKind};
