//! Element-wise activations and math functions of one input (ONNX's unary ops), and what the
//! other element-wise ops of this folder share with them: float32 `exp`, `ln`, `tanh`, `erf`
//! written as plain arithmetic, and slice kernels compiled per instruction set.
//!
//! The math functions are branch-free polynomial approximations so that the loops calling
//! them vectorize: the standard library's `f32::exp` is a call into libm per element, which
//! keeps a loop scalar. Their accuracy (a few ulp; erf within 2e-7 absolute) is checked
//! against f64 in `tests/ops_elementwise.rs`.

use crate::op::{single, Activation, Field, Needs, Operator, Saved};
use crate::simd::simd_fn;
use crate::{EngineError, Tensor};
use rayon::prelude::*;
use std::any::Any;

/// Which function a [`Unary`] applies. Parameters follow ONNX; gradients follow PyTorch's
/// backward formulas, including at the kinks of the piecewise ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryKind {
    Sigmoid,
    Tanh,
    /// max(0, min(1, alpha·x + beta)). ONNX's defaults are 0.2 and 0.5; PyTorch's
    /// hardsigmoid is alpha = 1/6, beta = 0.5.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// x·hardsigmoid(x) with alpha = 1/6, beta = 0.5.
    HardSwish,
    LeakyRelu {
        alpha: f32,
    },
    /// min(max(x, min), max); either bound may be infinite. As in ONNX, min > max gives max
    /// everywhere.
    Clip {
        min: f32,
        max: f32,
    },
    Erf,
    /// x·Φ(x), exact (erf) form.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    Sqrt,
    Exp,
    Neg,
    Abs,
    /// ln(1 + eˣ).
    Softplus,
    /// x for x > 0, alpha·(eˣ − 1) otherwise.
    Elu {
        alpha: f32,
    },
    /// x·sigmoid(x) (swish).
    Silu,
    Reciprocal,
}

/// An element-wise function of one input: same shape out as in.
#[derive(Clone, Debug)]
pub struct Unary(pub UnaryKind);

const SQRT_2_OVER_PI: f32 = 0.797_884_6; // √(2/π), GELU's tanh form
const GELU_KAPPA: f32 = 0.044715;
const TWO_OVER_SQRT_PI: f32 = std::f32::consts::FRAC_2_SQRT_PI;
/// 1/√(2π): the normal density's factor (PyTorch's kBeta·kAlpha of gelu_backward).
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// Above this, softplus(x) = x in float32 (PyTorch's threshold).
const SOFTPLUS_THRESHOLD: f32 = 20.0;

impl Operator for Unary {
    fn describe(&self) -> String {
        use UnaryKind::*;
        match self.0 {
            Sigmoid => "Sigmoid".into(),
            Tanh => "Tanh".into(),
            HardSigmoid { alpha, beta } if alpha == 0.2 && beta == 0.5 => "HardSigmoid".into(),
            HardSigmoid { alpha, beta } => format!("HardSigmoid {alpha}x+{beta}"),
            HardSwish => "HardSwish".into(),
            LeakyRelu { alpha } => format!("LeakyReLU {alpha}"),
            Clip { min, max } => format!("Clip [{min}, {max}]"),
            Erf => "Erf".into(),
            Gelu => "GELU".into(),
            GeluTanh => "GELU (tanh)".into(),
            Sqrt => "Sqrt".into(),
            Exp => "Exp".into(),
            Neg => "Neg".into(),
            Abs => "Abs".into(),
            Softplus => "Softplus".into(),
            Elu { alpha } => format!("ELU {alpha}"),
            Silu => "SiLU".into(),
            Reciprocal => "Reciprocal".into(),
        }
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Ok(single(&self.describe(), inputs)?.to_vec())
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single(&self.describe(), inputs)?;
        use UnaryKind::*;
        Ok(match self.0 {
            Sigmoid => par_map(x, sigmoid),
            Tanh => par_map(x, tanh),
            HardSigmoid { alpha, beta } => par_map(x, |x| (alpha * x + beta).clamp(0.0, 1.0)),
            HardSwish => par_map(x, |x| x * (x + 3.0).clamp(0.0, 6.0) / 6.0),
            LeakyRelu { alpha } => par_map(x, |x| if x > 0.0 { x } else { x * alpha }),
            Clip { min, max } => par_map(x, |x| {
                // Comparisons rather than f32::clamp: it panics on min > max, and max/min
                // would turn NaN into a bound.
                let v = if x < min { min } else { x };
                if v > max {
                    max
                } else {
                    v
                }
            }),
            Erf => par_map(x, erf),
            Gelu => par_map(x, |x| {
                0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
            }),
            GeluTanh => par_map(x, |x| {
                0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + GELU_KAPPA * (x * x * x))))
            }),
            Sqrt => par_map(x, f32::sqrt),
            Exp => par_map(x, exp),
            Neg => par_map(x, |x| -x),
            Abs => par_map(x, f32::abs),
            Softplus => par_map(x, |x| {
                let v = ln_1p(exp(x));
                if x > SOFTPLUS_THRESHOLD {
                    x
                } else {
                    v
                }
            }),
            Elu { alpha } => par_map(x, |x| {
                let v = alpha * exp_m1(x);
                if x > 0.0 {
                    x
                } else {
                    v
                }
            }),
            Silu => par_map(x, |x| x / (1.0 + exp(-x))),
            Reciprocal => par_map(x, |x| 1.0 / x),
        })
    }

    /// The output where the derivative is a function of it alone (exactly as PyTorch computes
    /// it), nothing for Neg, the input otherwise.
    fn backward_needs(&self) -> Needs {
        use UnaryKind::*;
        match self.0 {
            Sigmoid | Tanh | Sqrt | Exp | Reciprocal => Needs::OUTPUT,
            Neg => Needs::NOTHING,
            _ => Needs::INPUTS,
        }
    }

    fn backward(&self, saved: &Saved, mut grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let shape = saved.input_shape(0);
        if grad.shape() != shape {
            return Err(EngineError::Shape(format!(
                "{}: gradient {:?} for input {shape:?}",
                self.describe(),
                grad.shape()
            )));
        }
        let needs = self.backward_needs();
        let v = if needs.output {
            Some(saved.output()?)
        } else if needs.inputs {
            Some(saved.input(0)?)
        } else {
            None
        };
        let v = match v {
            Some(v) if v.shape() != shape => {
                return Err(EngineError::Shape(format!(
                    "{}: kept value {:?} for input {shape:?}",
                    self.describe(),
                    v.shape()
                )))
            }
            Some(v) => v.data(),
            None => &[],
        };
        let g = grad.data_mut();
        use UnaryKind::*;
        match self.0 {
            Sigmoid => par_zip(g, v, |g, y| g * (1.0 - y) * y),
            Tanh => par_zip(g, v, |g, y| g * (1.0 - y * y)),
            HardSigmoid { alpha, beta } => par_zip(g, v, |g, x| {
                let v = alpha * x + beta;
                if v > 0.0 && v < 1.0 {
                    g * alpha
                } else {
                    0.0
                }
            }),
            // PyTorch's hardswish_backward: 0 below −3, x/3 + 1/2 on [−3, 3], 1 above.
            HardSwish => par_zip(g, v, |g, x| {
                if x < -3.0 {
                    0.0
                } else if x <= 3.0 {
                    g * (x / 3.0 + 0.5)
                } else {
                    g
                }
            }),
            LeakyRelu { alpha } => par_zip(g, v, |g, x| if x > 0.0 { g } else { g * alpha }),
            // hardtanh_backward (what ReLU6 and the engine's Relu6 use): strictly inside the
            // bounds. torch.clamp's own backward also passes at x = min or max exactly.
            Clip { min, max } => par_zip(g, v, |g, x| if x <= min || x >= max { 0.0 } else { g }),
            Erf => par_zip(g, v, |g, x| g * TWO_OVER_SQRT_PI * exp(-x * x)),
            Gelu => par_zip(g, v, |g, x| {
                let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = exp(-0.5 * x * x) * INV_SQRT_2PI;
                g * (cdf + x * pdf)
            }),
            GeluTanh => par_zip(g, v, |g, x| {
                let x2 = x * x;
                let t = tanh(SQRT_2_OVER_PI * (x + GELU_KAPPA * (x2 * x)));
                let left = 0.5 * x;
                let right = 1.0 + t;
                let dright = left * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_KAPPA * x2);
                g * (0.5 * right + dright)
            }),
            Sqrt => par_zip(g, v, |g, y| g / (2.0 * y)),
            Exp => par_zip(g, v, |g, y| g * y),
            Neg => par_in_place(g, |g| -g),
            // g·sgn(x), sgn(0) = 0.
            Abs => par_zip(g, v, |g, x| {
                if x > 0.0 {
                    g
                } else if x < 0.0 {
                    -g
                } else {
                    0.0
                }
            }),
            Softplus => par_zip(g, v, |g, x| {
                let z = exp(x);
                let d = g * z / (z + 1.0);
                if x > SOFTPLUS_THRESHOLD {
                    g
                } else {
                    d
                }
            }),
            Elu { alpha } => par_zip(g, v, |g, x| {
                let d = g * alpha * exp(x);
                if x > 0.0 {
                    g
                } else {
                    d
                }
            }),
            Silu => par_zip(g, v, |g, x| {
                let s = 1.0 / (1.0 + exp(-x));
                g * s * (1.0 + x * (1.0 - s))
            }),
            Reciprocal => par_zip(g, v, |g, y| -g * (y * y)),
        }
        Ok(vec![grad])
    }

    fn receptive_field(&self) -> Field {
        Field::Pointwise
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn activation(&self) -> Option<Activation> {
        (self.0 == UnaryKind::Silu).then_some(Activation::Silu)
    }
}

// ---- float32 math written as arithmetic, so that loops over it vectorize ----
// Both sides of a choice are computed before it: left in a branch, an exp or ln kept the
// loop scalar and branchy (softplus ran 15x slower).
// The coefficients are quoted as published (Cephes, Eigen), digits beyond float32 included.

/// eˣ (Cephes expf): 2ⁿ·eʳ with |r| ≤ ln2/2. n is rounded by adding 1.5·2²³, which also
/// leaves it in the low bits; 2ⁿ is applied as two factors so that n may run from −150
/// (underflow to 0) to 128 (overflow to ∞) without a branch. NaN stays NaN.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-104.0, 88.8);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693359375 - n * -2.12194440e-4;
    let mut p = 1.9875691500e-4f32;
    p = p * r + 1.3981999507e-3;
    p = p * r + 8.3334519073e-3;
    p = p * r + 4.1665795894e-2;
    p = p * r + 1.6666665459e-1;
    p = p * r + 5.0000001201e-1;
    let e = p * (r * r) + r + 1.0;
    let k = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let h = k >> 1;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((k - h + 127) as u32) << 23);
    e * s1 * s2
}

/// eˣ − 1, accurate near 0 (where eˣ − 1 cancels): a Taylor polynomial on |x| < 1/2.
#[inline(always)]
pub(super) fn exp_m1(x: f32) -> f32 {
    let mut p = 1.0 / 40320.0f32;
    p = p * x + 1.0 / 5040.0;
    p = p * x + 1.0 / 720.0;
    p = p * x + 1.0 / 120.0;
    p = p * x + 1.0 / 24.0;
    p = p * x + 1.0 / 6.0;
    p = p * x + 0.5;
    let small = x + x * x * p;
    let big = exp(x) - 1.0;
    if x.abs() < 0.5 {
        small
    } else {
        big
    }
}

/// ln x for positive normal x (Cephes logf): the mantissa reduced to [√½, √2).
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(super) fn ln(x: f32) -> f32 {
    let bits = x.to_bits() as i32;
    let mut e = ((bits >> 23) - 127) as f32;
    let mut m = f32::from_bits(((bits & 0x007F_FFFF) | 0x3F80_0000) as u32);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1.0;
    }
    let f = m - 1.0;
    let z = f * f;
    let mut p = 7.0376836292e-2f32;
    p = p * f - 1.1514610310e-1;
    p = p * f + 1.1676998740e-1;
    p = p * f - 1.2420140846e-1;
    p = p * f + 1.4249322787e-1;
    p = p * f - 1.6668057665e-1;
    p = p * f + 2.0000714765e-1;
    p = p * f - 2.4999993993e-1;
    p = p * f + 3.3333331174e-1;
    let mut y = p * f * z;
    y += e * -2.12194440e-4;
    y -= 0.5 * z;
    f + y + e * 0.693359375
}

/// ln(1 + t) for t ≥ 0, accurate for small t: ln(u)·t/(u − 1) with u = 1 + t corrects the
/// rounding of u (Goldberg's trick).
#[inline(always)]
fn ln_1p(t: f32) -> f32 {
    let u = 1.0 + t;
    let d = u - 1.0;
    let v = ln(u) * (t / d);
    if d == 0.0 {
        t
    } else {
        v
    }
}

/// tanh (Cephes tanhf): an odd polynomial below 0.625, 1 − 2/(e²ˣ + 1) above.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(super) fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let big = (1.0 - 2.0 / (exp(a + a) + 1.0)).copysign(x);
    let z = x * x;
    let mut p = -5.70498872745e-3f32;
    p = p * z + 2.06390887954e-2;
    p = p * z - 5.37397155531e-2;
    p = p * z + 1.33314422036e-1;
    p = p * z - 3.33332819422e-1;
    let small = p * z * x + x;
    if a > 0.625 {
        big
    } else {
        small
    }
}

#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// erf: Eigen's (and XLA's) float32 rational approximation, within 2e-7 absolute; erf is ±1
/// in float32 beyond |x| = 4.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.72614225801306e-10f32;
    p = p * x2 + 2.77068142495902e-8;
    p = p * x2 - 2.10102402082508e-6;
    p = p * x2 - 5.69250639462346e-5;
    p = p * x2 - 7.34990630326855e-4;
    p = p * x2 - 2.95459980854025e-3;
    p = p * x2 - 1.60960333262415e-2;
    let mut q = -1.45660718464996e-5f32;
    q = q * x2 - 2.13374055278905e-4;
    q = q * x2 - 1.68282697438203e-3;
    q = q * x2 - 7.37332916720468e-3;
    q = q * x2 - 1.42647390514189e-2;
    x * p / q
}

// ---- slice kernels shared by the element-wise ops (compiled per instruction set) ----

/// Elements per rayon task: enough arithmetic to outweigh the hand-off.
pub(super) const CHUNK: usize = 1 << 14;

#[inline(always)]
fn map1_generic(o: &mut [f32], x: &[f32], f: &impl Fn(f32) -> f32) {
    for (o, x) in o.iter_mut().zip(x) {
        *o = f(*x);
    }
}

#[inline(always)]
fn map2_generic(o: &mut [f32], x: &[f32], y: &[f32], f: &impl Fn(f32, f32) -> f32) {
    for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
        *o = f(*x, *y);
    }
}

#[inline(always)]
fn map3_generic(o: &mut [f32], x: &[f32], y: &[f32], z: &[f32], f: &impl Fn(f32, f32, f32) -> f32) {
    for (((o, x), y), z) in o.iter_mut().zip(x).zip(y).zip(z) {
        *o = f(*x, *y, *z);
    }
}

#[inline(always)]
fn zip0_generic(o: &mut [f32], f: &impl Fn(f32) -> f32) {
    for o in o.iter_mut() {
        *o = f(*o);
    }
}

#[inline(always)]
fn zip1_generic(o: &mut [f32], x: &[f32], f: &impl Fn(f32, f32) -> f32) {
    for (o, x) in o.iter_mut().zip(x) {
        *o = f(*o, *x);
    }
}

#[inline(always)]
fn zip2_generic(o: &mut [f32], x: &[f32], y: &[f32], f: &impl Fn(f32, f32, f32) -> f32) {
    for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
        *o = f(*o, *x, *y);
    }
}

#[inline(always)]
fn zip3_generic(
    o: &mut [f32],
    x: &[f32],
    y: &[f32],
    z: &[f32],
    f: &impl Fn(f32, f32, f32, f32) -> f32,
) {
    for (((o, x), y), z) in o.iter_mut().zip(x).zip(y).zip(z) {
        *o = f(*o, *x, *y, *z);
    }
}

/// Sums accumulate in 16 f64 lanes: vectorizable (a single float accumulator is a serial
/// dependency the compiler may not reorder) and exact enough for rows of a million terms.
const LANES: usize = 16;

#[inline(always)]
fn sum1_generic(x: &[f32], f: &impl Fn(f32) -> f32) -> f64 {
    let (xc, xr) = x.as_chunks::<LANES>();
    let mut acc = [0f64; LANES];
    for x in xc {
        for l in 0..LANES {
            acc[l] += f(x[l]) as f64;
        }
    }
    let tail: f64 = xr.iter().map(|&x| f(x) as f64).sum();
    acc.iter().sum::<f64>() + tail
}

#[inline(always)]
fn sum2_generic(x: &[f32], y: &[f32], f: &impl Fn(f32, f32) -> f32) -> f64 {
    let n = x.len().min(y.len());
    let (xc, xr) = x[..n].as_chunks::<LANES>();
    let (yc, yr) = y[..n].as_chunks::<LANES>();
    let mut acc = [0f64; LANES];
    for (x, y) in xc.iter().zip(yc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]) as f64;
        }
    }
    let tail: f64 = xr.iter().zip(yr).map(|(&x, &y)| f(x, y) as f64).sum();
    acc.iter().sum::<f64>() + tail
}

#[inline(always)]
fn sum3_generic(x: &[f32], y: &[f32], z: &[f32], f: &impl Fn(f32, f32, f32) -> f32) -> f64 {
    let n = x.len().min(y.len()).min(z.len());
    let (xc, xr) = x[..n].as_chunks::<LANES>();
    let (yc, yr) = y[..n].as_chunks::<LANES>();
    let (zc, zr) = z[..n].as_chunks::<LANES>();
    let mut acc = [0f64; LANES];
    for ((x, y), z) in xc.iter().zip(yc).zip(zc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l], z[l]) as f64;
        }
    }
    let tail: f64 = xr
        .iter()
        .zip(yr)
        .zip(zr)
        .map(|((&x, &y), &z)| f(x, y, z) as f64)
        .sum();
    acc.iter().sum::<f64>() + tail
}

simd_fn!(fn map1_simd = map1_generic(o: &mut [f32], x: &[f32], f: &impl Fn(f32) -> f32));
simd_fn!(fn map2_simd = map2_generic(o: &mut [f32], x: &[f32], y: &[f32], f: &impl Fn(f32, f32) -> f32));
simd_fn!(fn map3_simd = map3_generic(o: &mut [f32], x: &[f32], y: &[f32], z: &[f32], f: &impl Fn(f32, f32, f32) -> f32));
simd_fn!(fn zip0_simd = zip0_generic(o: &mut [f32], f: &impl Fn(f32) -> f32));
simd_fn!(fn zip1_simd = zip1_generic(o: &mut [f32], x: &[f32], f: &impl Fn(f32, f32) -> f32));
simd_fn!(fn zip2_simd = zip2_generic(o: &mut [f32], x: &[f32], y: &[f32], f: &impl Fn(f32, f32, f32) -> f32));
simd_fn!(fn zip3_simd = zip3_generic(o: &mut [f32], x: &[f32], y: &[f32], z: &[f32], f: &impl Fn(f32, f32, f32, f32) -> f32));
simd_fn!(fn sum1_simd = sum1_generic(x: &[f32], f: &impl Fn(f32) -> f32) -> f64);
simd_fn!(fn sum2_simd = sum2_generic(x: &[f32], y: &[f32], f: &impl Fn(f32, f32) -> f32) -> f64);
simd_fn!(fn sum3_simd = sum3_generic(x: &[f32], y: &[f32], z: &[f32], f: &impl Fn(f32, f32, f32) -> f32) -> f64);

/// o[i] = f(x[i]).
#[inline(always)]
pub(super) fn map1(o: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
    map1_simd(o, x, &f)
}

/// o[i] = f(x[i], y[i]).
#[inline(always)]
pub(super) fn map2(o: &mut [f32], x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) {
    map2_simd(o, x, y, &f)
}

/// o[i] = f(x[i], y[i], z[i]).
#[inline(always)]
pub(super) fn map3(
    o: &mut [f32],
    x: &[f32],
    y: &[f32],
    z: &[f32],
    f: impl Fn(f32, f32, f32) -> f32,
) {
    map3_simd(o, x, y, z, &f)
}

/// o[i] = f(o[i]).
#[inline(always)]
pub(super) fn zip0(o: &mut [f32], f: impl Fn(f32) -> f32) {
    zip0_simd(o, &f)
}

/// o[i] = f(o[i], x[i]).
#[inline(always)]
pub(super) fn zip1(o: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32) {
    zip1_simd(o, x, &f)
}

/// o[i] = f(o[i], x[i], y[i]).
#[inline(always)]
pub(super) fn zip2(o: &mut [f32], x: &[f32], y: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    zip2_simd(o, x, y, &f)
}

/// o[i] = f(o[i], x[i], y[i], z[i]).
#[inline(always)]
pub(super) fn zip3(
    o: &mut [f32],
    x: &[f32],
    y: &[f32],
    z: &[f32],
    f: impl Fn(f32, f32, f32, f32) -> f32,
) {
    zip3_simd(o, x, y, z, &f)
}

/// Σ f(x[i]).
#[inline(always)]
pub(super) fn sum1(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    sum1_simd(x, &f)
}

/// Σ f(x[i], y[i]).
#[inline(always)]
pub(super) fn sum2(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    sum2_simd(x, y, &f)
}

/// Σ f(x[i], y[i], z[i]).
#[inline(always)]
pub(super) fn sum3(x: &[f32], y: &[f32], z: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f64 {
    sum3_simd(x, y, z, &f)
}

/// f(x) element-wise into a fresh tensor, in parallel chunks.
fn par_map(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    let mut y = Tensor::for_overwrite(x.shape());
    y.data_mut()
        .par_chunks_mut(CHUNK)
        .zip(x.data().par_chunks(CHUNK))
        .for_each(|(o, x)| map1(o, x, &f));
    y
}

/// o[i] = f(o[i], x[i]) in parallel chunks: the backward passes overwrite the gradient they
/// own rather than stream a third buffer.
fn par_zip(o: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    o.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| zip1(o, x, &f));
}

/// o[i] = f(o[i]) in parallel chunks.
fn par_in_place(o: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    o.par_chunks_mut(CHUNK).for_each(|o| zip0(o, &f));
}
