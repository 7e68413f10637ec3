//! The ops a graph is made of, one file each: how the graph sees the op (shapes, forward,
//! input gradient, what the backward pass needs, receptive field, FLOPs, capabilities). The
//! numeric kernels they call live in the engine's kernel modules (`conv`, `pool`, `layers`, …).
//!
//! Adding an op: a file here implementing [`crate::Operator`], its line below, and a
//! finite-difference test in `tests/gradients.rs`.

mod adaptive_avg_pool;
mod add;
mod avg_pool;
mod batch_norm;
mod conv2d;
mod flatten;
mod identity;
mod input;
mod linear;
mod max_pool;
mod relu;
mod relu6;

pub use add::Add;
pub use flatten::Flatten;
pub use identity::Identity;
pub use input::Input;
pub use relu::Relu;
pub use relu6::Relu6;
