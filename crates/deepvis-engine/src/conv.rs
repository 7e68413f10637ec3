//! 2-D convolution: forward and the gradient with respect to the input.
//!
//! Dense and grouped convolutions go through im2col + `gemm` (AVX-512 kernels via its `x86-v4`
//! feature), tiled by output rows so the column buffer stays cache-sized instead of the 100+ MB a
//! whole 224×224×64 layer would need. Depthwise convolutions use a direct loop (`depthwise.rs`): as a GEMM they
//! would have an inner dimension of only kh·kw. Dense 3×3 stride-1 convolutions can instead use
//! Winograd F(4×4, 3×3) (see `winograd.rs` and `ConvAlgo` for when).

use crate::bf16::{self, PackedA};
use crate::depthwise::{self, DwGeom};
use crate::gemm::{matmul, matmul_split, Epilogue, MatMut, MatRef};
use crate::layers::{bias_act, relu6_backward_in_place, relu_backward_in_place, Clamp};
use crate::narrow;
use crate::winograd::{self, WinoGeom, WinogradWeights};
use crate::{precision, ChannelAffine, EngineError, Precision, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Which algorithm computes a convolution and its input gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgo {
    /// Winograd in both directions where it applies and pays (dense 3×3 stride 1 with at
    /// least 16 channels each way), else im2col + GEMM. Forward values differ from `Im2col`'s
    /// in the last bits (relative ~1e-6), which can flip a ReLU whose input lies within ~1e-7
    /// of zero (the VGG16 parity fixture has one at `features.10`); the parity tests allow for
    /// that downstream of it.
    Auto,
    /// im2col + GEMM (direct loops for depthwise): the reference path.
    Im2col,
    /// Winograd F(4×4, 3×3) in both directions wherever it applies (dense 3×3, stride 1,
    /// dilation 1), else im2col: the fastest, with forward values that differ from `Im2col`'s
    /// in the last bits (relative error ~1e-6).
    Winograd,
}

const ALGO_UNSET: u8 = u8::MAX;
static DEFAULT_ALGO: AtomicU8 = AtomicU8::new(ALGO_UNSET);

impl ConvAlgo {
    fn code(self) -> u8 {
        match self {
            ConvAlgo::Auto => 0,
            ConvAlgo::Im2col => 1,
            ConvAlgo::Winograd => 2,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => ConvAlgo::Im2col,
            2 => ConvAlgo::Winograd,
            _ => ConvAlgo::Auto,
        }
    }

    /// Parses "auto", "im2col" or "winograd".
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(ConvAlgo::Auto),
            "im2col" | "gemm" | "reference" => Some(ConvAlgo::Im2col),
            "winograd" => Some(ConvAlgo::Winograd),
            _ => None,
        }
    }
}

/// The algorithm `Conv2d::forward`/`backward` use: set by `set_conv_algo`, else by the
/// environment variable `DEEPVIS_CONV_ALGO` (auto | im2col | winograd), else `Auto`.
pub fn conv_algo() -> ConvAlgo {
    let c = DEFAULT_ALGO.load(Ordering::Relaxed);
    if c != ALGO_UNSET {
        return ConvAlgo::from_code(c);
    }
    let algo = std::env::var("DEEPVIS_CONV_ALGO")
        .ok()
        .and_then(|v| ConvAlgo::parse(&v))
        .unwrap_or(ConvAlgo::Auto);
    // A concurrent set_conv_algo wins over the environment.
    let _ = DEFAULT_ALGO.compare_exchange(
        ALGO_UNSET,
        algo.code(),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    ConvAlgo::from_code(DEFAULT_ALGO.load(Ordering::Relaxed))
}

/// Sets the process-wide default algorithm (for benchmarks and A/B comparisons).
pub fn set_conv_algo(algo: ConvAlgo) {
    DEFAULT_ALGO.store(algo.code(), Ordering::Relaxed);
}

/// Weights prepared for the fast paths, made on first use. Cloning a convolution gives it an
/// empty cache. The cache notices a replaced weight vector and in-place edits of sampled
/// values, not every in-place edit: after changing `weight` in place, set
/// `cache = ConvCache::default()`.
#[derive(Default)]
pub struct ConvCache {
    winograd: Mutex<Option<(WeightStamp, Arc<WinogradWeights>)>>,
    bf16: Mutex<Option<(WeightStamp, Arc<GemmBf16>)>>,
    /// The last output-channel selection (`Conv2d::select_outputs`), with its own cache.
    selection: Mutex<Option<Selected>>,
}

/// Weights it was made from, the channels, and the restricted convolution.
type Selected = (WeightStamp, Vec<usize>, Arc<Conv2d>);

/// The value kept in `slot` if `fresh` accepts it, else `make()`'s, kept for next time. The
/// lock is held while making, so threads that need it at once prepare it once.
fn cached<T: Clone>(
    slot: &Mutex<Option<T>>,
    fresh: impl FnOnce(&T) -> bool,
    make: impl FnOnce() -> T,
) -> T {
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match &*slot {
        Some(v) if fresh(v) => v.clone(),
        _ => {
            let v = make();
            *slot = Some(v.clone());
            v
        }
    }
}

/// Per group, the weight matrix [cout_g × k] and its transpose, packed for `bf16::matmul`.
struct GemmBf16 {
    forward: Vec<PackedA>,
    backward: Vec<PackedA>,
}

impl Clone for ConvCache {
    fn clone(&self) -> Self {
        ConvCache::default()
    }
}

impl std::fmt::Debug for ConvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConvCache")
    }
}

/// Identifies the weight a cache entry was made from.
#[derive(Clone, Copy, PartialEq, Eq)]
struct WeightStamp {
    ptr: usize,
    len: usize,
    sample: u64,
}

impl WeightStamp {
    fn of(w: &[f32]) -> Self {
        let step = (w.len() / 61).max(1);
        let sample = w
            .iter()
            .step_by(step)
            .fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
                (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3)
            });
        WeightStamp {
            ptr: w.as_ptr() as usize,
            len: w.len(),
            sample,
        }
    }
}

/// How a convolution (or pool) pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Zero padding of fixed size on each side (PyTorch's `padding=`).
    Explicit {
        top: usize,
        bottom: usize,
        left: usize,
        right: usize,
    },
    /// TensorFlow "SAME": output size is ceil(input / stride); the padding is computed from the
    /// input size and may be one larger at the bottom/right than at the top/left.
    Same,
}

impl Padding {
    pub fn symmetric(p: usize) -> Self {
        Padding::Explicit {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }
}

/// Output extent and padding of one spatial axis of a sliding window.
pub(crate) fn window_axis(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
    vertical: bool,
) -> Result<(usize, usize, usize), EngineError> {
    let span = dilation * (kernel - 1) + 1;
    let (lo, hi) = match padding {
        Padding::Explicit {
            top,
            bottom,
            left,
            right,
        } => {
            if vertical {
                (top, bottom)
            } else {
                (left, right)
            }
        }
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = ((out - 1) * stride + span).saturating_sub(input);
            (total / 2, total - total / 2)
        }
    };
    if input + lo + hi < span {
        return Err(EngineError::Shape(format!(
            "input extent {input} (padded {}) is smaller than the kernel extent {span}",
            input + lo + hi
        )));
    }
    Ok(((input + lo + hi - span) / stride + 1, lo, hi))
}

#[derive(Clone, Debug)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    pub padding: Padding,
    /// [out, in / groups, kh, kw], PyTorch's layout.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    /// Prepared forms of `weight` (made on first use); construct with `ConvCache::default()`.
    pub cache: ConvCache,
}

/// Geometry of one convolution call, resolved for a concrete input shape.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
    groups: usize,
}

impl Geometry {
    fn cin_g(&self) -> usize {
        self.cin / self.groups
    }
    fn cout_g(&self) -> usize {
        self.cout / self.groups
    }
    fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.oh == self.h
            && self.ow == self.w
            && self.pt == 0
            && self.pl == 0
    }
    /// Stride 1 and no dilation on both axes.
    fn unit_steps(&self) -> bool {
        self.sh == 1 && self.sw == 1 && self.dh == 1 && self.dw == 1
    }
    fn depthwise(&self) -> bool {
        self.groups == self.cin && self.groups == self.cout && self.groups > 1
    }
    fn depthwise_geom(&self) -> DwGeom {
        DwGeom {
            planes: self.n * self.cout,
            channels: self.cout,
            h: self.h,
            w: self.w,
            oh: self.oh,
            ow: self.ow,
            kh: self.kh,
            kw: self.kw,
            sh: self.sh,
            sw: self.sw,
            dh: self.dh,
            dw: self.dw,
            pt: self.pt,
            pl: self.pl,
        }
    }
    /// Output rows per im2col tile: the column buffer stays near 4 MB, and a tile spans at least
    /// the kernel height so tiles two apart never touch the same input rows (see `backward`).
    fn tile_rows(&self) -> usize {
        const BUDGET_FLOATS: usize = 1 << 20;
        let by_budget = BUDGET_FLOATS / (self.k() * self.ow).max(1);
        by_budget.max(self.kh.div_ceil(self.sh)).max(1).min(self.oh)
    }
}

/// A raw pointer that may cross threads; every use writes a region no other task touches.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    // A method, not field access, so closures capture the whole Send + Sync wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

impl Conv2d {
    /// The direct path for a few output channels (`narrow`), under `Auto` only.
    fn narrow_geometry(&self, g: &Geometry, algo: ConvAlgo) -> Option<narrow::NarrowGeom> {
        let eligible = algo == ConvAlgo::Auto
            && g.cout <= narrow::MAX_OUTPUTS
            && g.groups == 1
            && g.unit_steps()
            && g.cin >= 16;
        eligible.then_some(narrow::NarrowGeom {
            cin: g.cin,
            cout: g.cout,
            h: g.h,
            w: g.w,
            oh: g.oh,
            ow: g.ow,
            kh: g.kh,
            kw: g.kw,
            pt: g.pt,
            pl: g.pl,
        })
    }

    /// Which kernels a pass over `g` takes under `algo`, in the order `forward_impl` and
    /// `backward_impl` try them.
    fn path(&self, g: &Geometry, algo: ConvAlgo) -> Path {
        if g.depthwise() || self.narrow_geometry(g, algo).is_some() {
            Path::Direct
        } else if self.winograd_geometry(g, algo).is_some() {
            Path::Winograd
        } else {
            Path::Gemm
        }
    }

    /// Whether Winograd computes this convolution for `g` under `algo`.
    fn winograd_geometry(&self, g: &Geometry, algo: ConvAlgo) -> Option<WinoGeom> {
        let eligible = g.kh == 3 && g.kw == 3 && g.unit_steps() && g.groups == 1;
        let wanted = match algo {
            ConvAlgo::Im2col => false,
            ConvAlgo::Winograd => true,
            // Below 16 output channels the 36 transform-domain GEMMs are too thin to beat one
            // im2col GEMM. Few input channels are no obstacle: at VGG16's first layer (3 → 64)
            // Winograd saves the im2col matrix (224 px, forward + input gradient, f32:
            // 2.7 → 1.9 ms; 8 → 16 channels, bf16, 1.2 → 0.5 ms). A single input channel
            // stays with im2col (0.11 against 0.20 ms at 112 px).
            ConvAlgo::Auto => g.cout >= 16 && g.cin >= 3,
        };
        (eligible && wanted).then_some(WinoGeom {
            n: g.n,
            cin: g.cin,
            cout: g.cout,
            h: g.h,
            w: g.w,
            oh: g.oh,
            ow: g.ow,
            pt: g.pt,
            pl: g.pl,
        })
    }

    /// This convolution restricted to the output channels `channels` (in that order): what a
    /// pass needs when only those channels of its output are read. Kept in the cache, so a
    /// render that asks for the same channels every step prepares them once.
    pub fn select_outputs(&self, channels: &[usize]) -> Result<Arc<Conv2d>, EngineError> {
        if let Some(&c) = channels.iter().find(|&&c| c >= self.out_channels) {
            return Err(EngineError::Shape(format!(
                "output channel {c} of a conv2d with {} channels",
                self.out_channels
            )));
        }
        if self.groups != 1 {
            return Err(EngineError::Shape(
                "output channels can be selected only from an ungrouped conv2d".into(),
            ));
        }
        let stamp = WeightStamp::of(&self.weight);
        let fresh = |(s, chosen, _): &Selected| *s == stamp && chosen == channels;
        let (_, _, conv) = cached(&self.cache.selection, fresh, || {
            (
                stamp,
                channels.to_vec(),
                Arc::new(self.restricted_to(channels)),
            )
        });
        Ok(conv)
    }

    /// This convolution followed by the per-channel map y·scale + shift (an eval-mode batch
    /// norm), as one convolution: each output channel's weights scaled, its bias mapped. None
    /// where the map's channels are not this convolution's outputs.
    pub fn then_affine(&self, affine: &ChannelAffine) -> Option<Conv2d> {
        let (scale, shift) = (&affine.scale, &affine.shift);
        if scale.len() != self.out_channels || shift.len() != self.out_channels {
            return None;
        }
        let per = self.weight.len() / self.out_channels;
        let weight = self
            .weight
            .chunks(per)
            .zip(scale)
            .flat_map(|(w, &s)| w.iter().map(move |&v| v * s))
            .collect();
        let bias = match &self.bias {
            Some(b) => b
                .iter()
                .zip(scale)
                .zip(shift)
                .map(|((b, s), t)| b * s + t)
                .collect(),
            None => shift.clone(),
        };
        Some(self.with_outputs(self.out_channels, weight, Some(bias)))
    }

    /// A convolution of this one's geometry with `out_channels` outputs and these parameters
    /// (its own, empty cache).
    fn with_outputs(
        &self,
        out_channels: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Conv2d {
        Conv2d {
            in_channels: self.in_channels,
            out_channels,
            kernel: self.kernel,
            stride: self.stride,
            dilation: self.dilation,
            groups: self.groups,
            padding: self.padding,
            weight,
            bias,
            cache: ConvCache::default(),
        }
    }

    /// This convolution's output channels `channels`, as a convolution of its own.
    fn restricted_to(&self, channels: &[usize]) -> Conv2d {
        let per = self.weight.len() / self.out_channels;
        let weight = channels
            .iter()
            .flat_map(|&c| self.weight[c * per..][..per].iter().copied())
            .collect();
        let bias = self
            .bias
            .as_ref()
            .map(|b| channels.iter().map(|&c| b[c]).collect());
        self.with_outputs(channels.len(), weight, bias)
    }

    fn winograd_weights(&self) -> Arc<WinogradWeights> {
        let stamp = WeightStamp::of(&self.weight);
        let make = || {
            let w = WinogradWeights::new(&self.weight, self.out_channels, self.in_channels);
            (stamp, Arc::new(w))
        };
        cached(&self.cache.winograd, |(s, _)| *s == stamp, make).1
    }

    fn gemm_bf16_weights(&self, g: &Geometry) -> Arc<GemmBf16> {
        let stamp = WeightStamp::of(&self.weight);
        let make = || {
            let (cout_g, k) = (g.cout_g(), g.k());
            let pack = |transpose: bool| -> Vec<PackedA> {
                (0..g.groups)
                    .map(|grp| {
                        let ptr = self.weight[grp * cout_g * k..].as_ptr();
                        // SAFETY: each group's weights are a [cout_g × k] row-major block.
                        unsafe { PackedA::row_major(ptr, cout_g, k, transpose) }
                    })
                    .collect()
            };
            let w = GemmBf16 {
                forward: pack(false),
                backward: pack(true),
            };
            (stamp, Arc::new(w))
        };
        cached(&self.cache.bf16, |(s, _)| *s == stamp, make).1
    }

    /// Bytes of prepared weights this convolution's cache holds (Winograd transforms and bf16
    /// copies), for memory reports.
    pub fn cache_bytes(&self) -> usize {
        let wino = self
            .cache
            .winograd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |(_, w)| w.bytes());
        let bf = self
            .cache
            .bf16
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |(_, w)| {
                w.forward
                    .iter()
                    .chain(&w.backward)
                    .map(PackedA::bytes)
                    .sum()
            });
        wino + bf
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        let (kh, kw) = self.kernel;
        let g = self.groups;
        if g == 0 || self.in_channels % g != 0 || self.out_channels % g != 0 {
            return Err(EngineError::Shape(format!(
                "groups {g} must divide in_channels {} and out_channels {}",
                self.in_channels, self.out_channels
            )));
        }
        if kh == 0
            || kw == 0
            || self.stride.0 == 0
            || self.stride.1 == 0
            || self.dilation.0 == 0
            || self.dilation.1 == 0
        {
            return Err(EngineError::Shape(
                "kernel, stride and dilation must be positive".into(),
            ));
        }
        let expected = self.out_channels * (self.in_channels / g) * kh * kw;
        if self.weight.len() != expected {
            return Err(EngineError::Shape(format!(
                "conv weight has {} values, expected {expected}",
                self.weight.len()
            )));
        }
        if let Some(b) = &self.bias {
            if b.len() != self.out_channels {
                return Err(EngineError::Shape(format!(
                    "conv bias has {} values, expected {}",
                    b.len(),
                    self.out_channels
                )));
            }
        }
        Ok(())
    }

    fn geometry(&self, shape: &[usize]) -> Result<Geometry, EngineError> {
        let [n, cin, h, w] = shape[..] else {
            return Err(EngineError::Shape(format!(
                "conv2d expects NCHW input, got {shape:?}"
            )));
        };
        if cin != self.in_channels {
            return Err(EngineError::Shape(format!(
                "conv2d expects {} input channels, got {cin}",
                self.in_channels
            )));
        }
        let (oh, pt, _) = window_axis(
            h,
            self.kernel.0,
            self.stride.0,
            self.dilation.0,
            self.padding,
            true,
        )?;
        let (ow, pl, _) = window_axis(
            w,
            self.kernel.1,
            self.stride.1,
            self.dilation.1,
            self.padding,
            false,
        )?;
        Ok(Geometry {
            n,
            cin,
            h,
            w,
            cout: self.out_channels,
            oh,
            ow,
            kh: self.kernel.0,
            kw: self.kernel.1,
            sh: self.stride.0,
            sw: self.stride.1,
            dh: self.dilation.0,
            dw: self.dilation.1,
            pt,
            pl,
            groups: self.groups,
        })
    }

    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, EngineError> {
        let g = self.geometry(input)?;
        Ok(vec![g.n, g.cout, g.oh, g.ow])
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        self.forward_with(x, conv_algo())
    }

    /// `forward` with an explicit algorithm (tests compare every path against `Im2col`).
    pub fn forward_with(&self, x: &Tensor, algo: ConvAlgo) -> Result<Tensor, EngineError> {
        self.forward_with_precision(x, algo, precision())
    }

    /// `forward` with an explicit algorithm and GEMM precision (`Bf16` needs
    /// `bf16_supported()`; without it this falls back to f32).
    pub fn forward_with_precision(
        &self,
        x: &Tensor,
        algo: ConvAlgo,
        prec: Precision,
    ) -> Result<Tensor, EngineError> {
        self.forward_impl(x, algo, prec, Clamp::None)
    }

    /// clamp(forward(x)) (a ReLU or ReLU6 after the convolution), applied in the pass that
    /// adds the bias where the path allows.
    pub(crate) fn forward_clamped(&self, x: &Tensor, clamp: Clamp) -> Result<Tensor, EngineError> {
        self.forward_impl(x, conv_algo(), precision(), clamp)
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        algo: ConvAlgo,
        prec: Precision,
        clamp: Clamp,
    ) -> Result<Tensor, EngineError> {
        let prec = effective(prec);
        let g = self.geometry(x.shape())?;
        let shape = [g.n, g.cout, g.oh, g.ow];
        let narrow = self.narrow_geometry(&g, algo);
        if narrow.is_some() || g.depthwise() {
            // The direct kernels add the bias themselves; depthwise also clamps as it goes,
            // the few-outputs path in one more pass.
            let mut y = Tensor::for_overwrite(&shape);
            let (w, b) = (&self.weight, self.bias.as_deref());
            match narrow {
                Some(ng) => {
                    narrow::forward(&ng, w, b, x.data(), y.data_mut());
                    if clamp != Clamp::None {
                        bias_act(y.data_mut(), g.oh * g.ow, g.cout, None, clamp);
                    }
                }
                None => {
                    let dg = g.depthwise_geom();
                    depthwise::forward(&dg, w, b, x.data(), y.data_mut(), clamp);
                }
            }
            return Ok(y);
        }
        if let Some(wg) = self.winograd_geometry(&g, algo) {
            // Winograd's output transform applies a ReLU itself; a ReLU6 is one more pass.
            let w = self.winograd_weights();
            let mut y = Tensor::for_overwrite(&shape);
            winograd::forward(
                &wg,
                &w,
                self.bias.as_deref(),
                x.data(),
                y.data_mut(),
                winograd_precision(&wg, prec),
                clamp == Clamp::Relu,
            );
            if clamp == Clamp::Relu6 {
                bias_act(y.data_mut(), g.oh * g.ow, g.cout, None, clamp);
            }
            return Ok(y);
        }
        // Every element is written by exactly one non-accumulating GEMM, which adds the bias
        // and applies the clamp as it finishes each block.
        let mut y = Tensor::for_overwrite(&shape);
        let epi = Epilogue {
            bias: self.bias.as_deref(),
            clamp,
        };
        self.gemm_forward(&g, x.data(), y.data_mut(), prec, epi);
        Ok(y)
    }

    /// Gradient of a scalar loss with respect to this convolution's input, given the gradient
    /// with respect to its output. Weights are frozen: no weight gradient is formed.
    pub fn backward(
        &self,
        input_shape: &[usize],
        grad_out: &Tensor,
    ) -> Result<Tensor, EngineError> {
        self.backward_with(input_shape, grad_out, conv_algo())
    }

    /// `backward` with an explicit algorithm.
    pub fn backward_with(
        &self,
        input_shape: &[usize],
        grad_out: &Tensor,
        algo: ConvAlgo,
    ) -> Result<Tensor, EngineError> {
        self.backward_with_precision(input_shape, grad_out, algo, precision())
    }

    /// `backward` with an explicit algorithm and GEMM precision.
    pub fn backward_with_precision(
        &self,
        input_shape: &[usize],
        grad_out: &Tensor,
        algo: ConvAlgo,
        prec: Precision,
    ) -> Result<Tensor, EngineError> {
        self.backward_impl(input_shape, grad_out, algo, prec, None)
    }

    /// The input gradient of clamp(conv(x)) for the gradient `grad_out` of the clamp's output
    /// `relu_out`. Winograd masks a ReLU's gradient as it reads it; otherwise the gradient is
    /// masked in place first.
    pub(crate) fn backward_clamped(
        &self,
        input_shape: &[usize],
        grad_out: &mut Tensor,
        relu_out: &Tensor,
        clamp: Clamp,
    ) -> Result<Tensor, EngineError> {
        let (algo, prec) = (conv_algo(), precision());
        let masks_as_it_reads = clamp == Clamp::Relu
            && grad_out.shape() == relu_out.shape()
            && self
                .geometry(input_shape)
                .is_ok_and(|g| self.path(&g, algo) == Path::Winograd);
        if masks_as_it_reads {
            return self.backward_impl(input_shape, grad_out, algo, prec, Some(relu_out.data()));
        }
        mask_clamped(grad_out, relu_out, clamp)?;
        self.backward_impl(input_shape, grad_out, algo, prec, None)
    }

    fn backward_impl(
        &self,
        input_shape: &[usize],
        grad_out: &Tensor,
        algo: ConvAlgo,
        prec: Precision,
        relu_out: Option<&[f32]>,
    ) -> Result<Tensor, EngineError> {
        let prec = effective(prec);
        let g = self.geometry(input_shape)?;
        if grad_out.shape() != [g.n, g.cout, g.oh, g.ow] {
            return Err(EngineError::Shape(format!(
                "conv2d output gradient has shape {:?}, expected {:?}",
                grad_out.shape(),
                [g.n, g.cout, g.oh, g.ow]
            )));
        }
        if g.depthwise() {
            let mut dx = Tensor::for_overwrite(input_shape);
            let dg = g.depthwise_geom();
            depthwise::backward(&dg, &self.weight, grad_out.data(), dx.data_mut());
            return Ok(dx);
        }
        if let Some(ng) = self.narrow_geometry(&g, algo) {
            let mut dx = Tensor::for_overwrite(input_shape);
            narrow::backward(&ng, &self.weight, grad_out.data(), dx.data_mut());
            return Ok(dx);
        }
        if let Some(wg) = self.winograd_geometry(&g, algo) {
            // `winograd::backward` writes (or zeroes) every element.
            let mut dx = Tensor::for_overwrite(input_shape);
            let w = self.winograd_weights();
            let prec = winograd_precision(&wg, prec);
            winograd::backward(&wg, &w, grad_out.data(), relu_out, dx.data_mut(), prec);
            return Ok(dx);
        }
        debug_assert!(relu_out.is_none(), "only Winograd masks as it reads");
        // A 1×1 convolution's GEMM writes every element of dx; col2im adds into it.
        let mut dx = if g.pointwise() {
            Tensor::for_overwrite(input_shape)
        } else {
            Tensor::zeros(input_shape)
        };
        self.gemm_backward(&g, grad_out.data(), dx.data_mut(), prec, false);
        Ok(dx)
    }

    /// `backward` (with `clamped`, `backward_clamped`, masking `grad_out` in place) added into
    /// `dx` (the gradient of this input from its other readers), where the convolution takes a
    /// GEMM path: a 1×1 convolution's GEMM accumulates and col2im adds, so the sum costs no
    /// pass of its own. False where it takes another path (depthwise, few outputs, Winograd);
    /// `dx` and `grad_out` are then untouched.
    pub(crate) fn backward_accumulate(
        &self,
        input_shape: &[usize],
        grad_out: &mut Tensor,
        clamped: Option<(&Tensor, Clamp)>,
        dx: &mut Tensor,
    ) -> Result<bool, EngineError> {
        let (algo, prec) = (conv_algo(), effective(precision()));
        let g = self.geometry(input_shape)?;
        if self.path(&g, algo) != Path::Gemm {
            return Ok(false);
        }
        if grad_out.shape() != [g.n, g.cout, g.oh, g.ow] || dx.shape() != input_shape {
            return Err(EngineError::Shape(format!(
                "conv2d gradient {:?} into {:?} for input {input_shape:?}",
                grad_out.shape(),
                dx.shape()
            )));
        }
        if let Some((y, clamp)) = clamped {
            mask_clamped(grad_out, y, clamp)?;
        }
        self.gemm_backward(&g, grad_out.data(), dx.data_mut(), prec, true);
        Ok(true)
    }

    fn tasks(&self, g: &Geometry) -> Vec<(usize, usize, usize, usize)> {
        let rows = if g.pointwise() { g.oh } else { g.tile_rows() };
        let mut tasks = Vec::new();
        for n in 0..g.n {
            for grp in 0..g.groups {
                let mut y0 = 0;
                while y0 < g.oh {
                    let y1 = (y0 + rows).min(g.oh);
                    tasks.push((n, grp, y0, y1));
                    y0 = y1;
                }
            }
        }
        tasks
    }

    fn gemm_forward(&self, g: &Geometry, x: &[f32], y: &mut [f32], prec: Precision, epi: Epilogue) {
        let packed = (prec == Precision::Bf16).then(|| self.gemm_bf16_weights(g));
        let tasks = self.tasks(g);
        let threads = rayon::current_num_threads();
        // Many independent tiles: one single-threaded GEMM per tile. Few: let GEMM split.
        let outer = tasks.len() >= 2 * threads;
        let par = if outer {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(threads)
        };
        let y_ptr = SharedMut(y.as_mut_ptr());
        let run = |&(n, grp, y0, y1): &(usize, usize, usize, usize), col: &mut Vec<f32>| {
            let (cin_g, cout_g, k) = (g.cin_g(), g.cout_g(), g.k());
            let plane_out = g.oh * g.ow;
            let cols = (y1 - y0) * g.ow;
            let x_group = &x[(n * g.cin + grp * cin_g) * g.h * g.w..][..cin_g * g.h * g.w];
            let w_group = &self.weight[grp * cout_g * k..][..cout_g * k];
            let rhs = if g.pointwise() {
                MatRef {
                    ptr: x_group[y0 * g.ow..].as_ptr(),
                    rs: (g.h * g.w) as isize,
                    cs: 1,
                }
            } else {
                col.resize(k * cols, 0.0);
                im2col(g, x_group, y0, y1, col);
                MatRef {
                    ptr: col.as_ptr(),
                    rs: cols as isize,
                    cs: 1,
                }
            };
            let offset = (n * g.cout + grp * cout_g) * plane_out + y0 * g.ow;
            // SAFETY: tasks own disjoint (image, group, row range) blocks of `y`.
            let dst = MatMut {
                ptr: unsafe { y_ptr.get().add(offset) },
                rs: plane_out as isize,
                cs: 1,
            };
            let lhs = MatRef {
                ptr: w_group.as_ptr(),
                rs: k as isize,
                cs: 1,
            };
            // The bias of this group's rows.
            let epi = Epilogue {
                bias: epi.bias.map(|b| &b[grp * cout_g..][..cout_g]),
                ..epi
            };
            match &packed {
                Some(p) => unsafe {
                    bf16::matmul(&p.forward[grp], cols, rhs, dst, false, !outer, epi)
                },
                None if outer => unsafe {
                    matmul(cout_g, cols, k, dst, false, lhs, rhs, par);
                    epi.apply(dst, 0, cout_g, cols);
                },
                None => unsafe { matmul_split(cout_g, cols, k, dst, false, lhs, rhs, epi) },
            }
        };
        if outer {
            tasks.par_iter().for_each(|t| with_col(|col| run(t, col)));
        } else {
            with_col(|col| tasks.iter().for_each(|t| run(t, col)));
        }
    }

    /// The GEMM path's input gradient, written into `dx` or with `accumulate` added to it.
    fn gemm_backward(
        &self,
        g: &Geometry,
        dy: &[f32],
        dx: &mut [f32],
        prec: Precision,
        accumulate: bool,
    ) {
        let packed = (prec == Precision::Bf16).then(|| self.gemm_bf16_weights(g));
        let tasks = self.tasks(g);
        let threads = rayon::current_num_threads();
        let outer = tasks.len() >= 2 * threads;
        let par = if outer {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(threads)
        };
        // SAFETY (of the calls): the callers below pass matrices inside this call's buffers,
        // written by one task each.
        let product =
            |dst: MatMut, lhs: MatRef, rhs: MatRef, grp: usize, cols: usize, acc| match &packed {
                Some(p) => unsafe {
                    bf16::matmul(
                        &p.backward[grp],
                        cols,
                        rhs,
                        dst,
                        acc,
                        !outer,
                        Epilogue::NONE,
                    )
                },
                None if outer => unsafe {
                    matmul(g.k(), cols, g.cout_g(), dst, acc, lhs, rhs, par)
                },
                None => unsafe {
                    matmul_split(g.k(), cols, g.cout_g(), dst, acc, lhs, rhs, Epilogue::NONE)
                },
            };
        let dx_ptr = SharedMut(dx.as_mut_ptr());
        let run = |&(n, grp, y0, y1): &(usize, usize, usize, usize), col: &mut Vec<f32>| {
            let (cin_g, cout_g, k) = (g.cin_g(), g.cout_g(), g.k());
            let plane_out = g.oh * g.ow;
            let cols = (y1 - y0) * g.ow;
            let w_group = &self.weight[grp * cout_g * k..][..cout_g * k];
            // Wᵀ: element (kk, o) of the [k, cout_g] matrix is weight[o * k + kk].
            let lhs = MatRef {
                ptr: w_group.as_ptr(),
                rs: 1,
                cs: k as isize,
            };
            let rhs = MatRef {
                ptr: dy[(n * g.cout + grp * cout_g) * plane_out + y0 * g.ow..].as_ptr(),
                rs: plane_out as isize,
                cs: 1,
            };
            let x_off = (n * g.cin + grp * cin_g) * g.h * g.w;
            if g.pointwise() {
                let dst = MatMut {
                    ptr: unsafe { dx_ptr.get().add(x_off + y0 * g.ow) },
                    rs: (g.h * g.w) as isize,
                    cs: 1,
                };
                product(dst, lhs, rhs, grp, cols, accumulate);
            } else {
                col.resize(k * cols, 0.0);
                let dst = MatMut {
                    ptr: col.as_mut_ptr(),
                    rs: cols as isize,
                    cs: 1,
                };
                product(dst, lhs, rhs, grp, cols, false);
                // SAFETY: see the two-phase schedule below; this tile's input rows are touched by
                // no other task running at the same time.
                let dx_group = unsafe {
                    std::slice::from_raw_parts_mut(dx_ptr.get().add(x_off), cin_g * g.h * g.w)
                };
                col2im(g, col, y0, y1, dx_group);
            }
        };
        if g.pointwise() {
            if outer {
                tasks.par_iter().for_each(|t| with_col(|col| run(t, col)));
            } else {
                with_col(|col| tasks.iter().for_each(|t| run(t, col)));
            }
            return;
        }
        // Neighbouring row tiles scatter into overlapping input rows; tiles two apart do not
        // (each tile spans at least kh / stride rows), so even tiles run together, then odd.
        let rows = g.tile_rows();
        for phase in 0..2 {
            let batch: Vec<_> = tasks.iter().filter(|t| (t.2 / rows) % 2 == phase).collect();
            if outer {
                batch.par_iter().for_each(|t| with_col(|col| run(t, col)));
            } else {
                with_col(|col| batch.iter().for_each(|t| run(t, col)));
            }
        }
    }
}

/// The kernels a convolution pass takes: the direct ones (depthwise, few outputs), Winograd,
/// or a GEMM (1×1 or im2col).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Winograd,
    Gemm,
}

/// The gradient through a ReLU or ReLU6 from its output `y`, in place.
fn mask_clamped(grad: &mut Tensor, y: &Tensor, clamp: Clamp) -> Result<(), EngineError> {
    if y.shape() != grad.shape() {
        return Err(EngineError::Shape(format!(
            "conv2d + activation output {:?} for a gradient {:?}",
            y.shape(),
            grad.shape()
        )));
    }
    match clamp {
        Clamp::None => {}
        Clamp::Relu => relu_backward_in_place(y, grad),
        Clamp::Relu6 => relu6_backward_in_place(y, grad),
    }
    Ok(())
}

/// Winograd's GEMM precision: float32 below 16 input channels whatever was asked. There the
/// GEMMs are a small part of the work, so bf16 gains little, while the transforms magnify its
/// rounding about tenfold (3.5e-2 of the largest output against 3e-3 for im2col in bf16), at
/// a first layer whose error every later layer sees.
fn winograd_precision(g: &WinoGeom, p: Precision) -> Precision {
    if g.cin < 16 {
        Precision::F32
    } else {
        p
    }
}

/// `Bf16` where the CPU has it, else `F32`.
fn effective(p: Precision) -> Precision {
    if p == Precision::Bf16 && !crate::bf16_supported() {
        Precision::F32
    } else {
        p
    }
}

thread_local! {
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's im2col buffer, kept between calls so the step loop does not
/// page-fault a fresh multi-megabyte buffer in for every tile. `f` must not re-enter (it may
/// use a single-threaded GEMM, never rayon work that could run another tile on this thread).
fn with_col<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    COL.with(|c| match c.try_borrow_mut() {
        Ok(mut col) => f(&mut col),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Range of output x for which input x = ox·s − pad + offset lies inside [0, w).
pub(crate) fn valid_range(
    w: usize,
    out: usize,
    stride: usize,
    pad: usize,
    offset: usize,
) -> (usize, usize) {
    // ox·s + offset ≥ pad  and  ox·s + offset − pad < w
    let lo = if offset >= pad {
        0
    } else {
        (pad - offset).div_ceil(stride)
    };
    let hi = if w + pad > offset {
        (w + pad - offset).div_ceil(stride)
    } else {
        0
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

fn im2col(g: &Geometry, x: &[f32], y0: usize, y1: usize, col: &mut [f32]) {
    let cols = (y1 - y0) * g.ow;
    let mut row = 0;
    for ci in 0..g.cin_g() {
        let xc = &x[ci * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let dst_row = &mut col[row * cols..][..cols];
                let (lo, hi) = valid_range(g.w, g.ow, g.sw, g.pl, kx * g.dw);
                for oy in y0..y1 {
                    let dst = &mut dst_row[(oy - y0) * g.ow..][..g.ow];
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &xc[iy as usize * g.w..][..g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let ix0 = lo * g.sw + kx * g.dw - g.pl;
                    if g.sw == 1 {
                        dst[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else if g.sw == 2 && hi > lo {
                        crate::stride2::gather(
                            &mut dst[lo..hi],
                            &src[ix0..ix0 + 2 * (hi - lo) - 1],
                        );
                    } else {
                        for (i, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[ix0 + i * g.sw];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

fn col2im(g: &Geometry, col: &[f32], y0: usize, y1: usize, dx: &mut [f32]) {
    let cols = (y1 - y0) * g.ow;
    let mut row = 0;
    for ci in 0..g.cin_g() {
        let dxc = &mut dx[ci * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let src_row = &col[row * cols..][..cols];
                let (lo, hi) = valid_range(g.w, g.ow, g.sw, g.pl, kx * g.dw);
                for oy in y0..y1 {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let src = &src_row[(oy - y0) * g.ow..][..g.ow];
                    let dst = &mut dxc[iy as usize * g.w..][..g.w];
                    let ix0 = lo * g.sw + kx * g.dw - g.pl;
                    if g.sw == 1 {
                        for (d, s) in dst[ix0..ix0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += *s;
                        }
                    } else if g.sw == 2 && hi > lo {
                        crate::stride2::scatter_add(
                            &mut dst[ix0..ix0 + 2 * (hi - lo) - 1],
                            &src[lo..hi],
                        );
                    } else {
                        for (i, s) in src[lo..hi].iter().enumerate() {
                            dst[ix0 + i * g.sw] += *s;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}
