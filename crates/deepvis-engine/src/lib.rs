//! The numeric engine of deepvis: float32 NCHW tensors and, for every op that CNNs of the
//! torchvision family use, the forward pass and the gradient with respect to the input.
//! Weights are frozen; no weight gradient is ever formed.

mod aligned;
mod amx;
mod bf16;
mod conv;
mod depthwise;
mod gemm;
mod graph;
mod lanes;
mod layers;
mod memory;
mod narrow;
mod op;
mod ops;
mod plan;
mod pool;
pub mod profile;
#[cfg(target_arch = "x86_64")]
mod sgemm;
mod simd;
mod storage;
mod stride2;
mod tensor;
mod threads;
mod winograd;

pub use bf16::{bf16_supported, precision, set_precision, Precision};
pub use conv::{conv_algo, set_conv_algo, Conv2d, ConvAlgo, ConvCache, Padding};
pub use graph::{Graph, Node, NodeId, Trace};
pub use layers::{relu, relu6, relu6_backward, relu_backward, ChannelAffine, Linear};
pub use memory::retain_freed_memory;
pub use op::{Activation, CodedBackward, Field, Needs, Op, Operator, Saved};
pub use ops::*;
pub use pool::{AdaptiveAvgPool2d, AvgPool2d, MaxPool2d};
pub use simd::{detected_simd, set_max_simd, simd_level, SimdLevel};
pub use tensor::{set_concurrent_passes, Tensor};
pub use threads::on_pool;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("shape error: {0}")]
    Shape(String),
    #[error("graph error: {0}")]
    Graph(String),
    /// The CPU cannot run what was asked for (e.g. bf16 without AVX512-BF16).
    #[error("{0}")]
    Unsupported(String),
}

/// The unit tests' seeded inputs: uniform in [-0.5, 0.5).
#[cfg(test)]
pub(crate) fn test_lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}
