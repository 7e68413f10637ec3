//! The element-wise ops ONNX models need (Unary, Binary, BinaryConst, PRelu, Softmax,
//! LayerNorm): forward passes against naive f64 references written out here (and PyTorch's
//! formulas where ONNX's differ), input gradients against finite differences and, at the
//! kinks of piecewise functions, against PyTorch's choices; shape errors.

mod common;

use common::{analytic, away_from_zero, check_gradient, random, rng};
use deepvis_engine::*;
use rand::Rng;

fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn forward(op: &Op, inputs: &[&Tensor]) -> Tensor {
    op.forward(inputs).expect("forward")
}

/// Values spread over [lo, hi] plus the given specials.
fn sweep(lo: f32, hi: f32, n: usize, specials: &[f32]) -> Tensor {
    let mut v: Vec<f32> = (0..n)
        .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
        .collect();
    v.extend_from_slice(specials);
    let len = v.len();
    tensor(&[len], v)
}

/// Moves values within `margin` of a kink away from it, so that central differences do not
/// straddle it.
fn avoid(mut t: Tensor, kinks: &[f32], margin: f32) -> Tensor {
    for v in t.data_mut() {
        for &k in kinks {
            if (*v - k).abs() < margin {
                *v = k + if *v >= k { margin } else { -margin };
            }
        }
    }
    t
}

fn scaled(mut t: Tensor, s: f32, shift: f32) -> Tensor {
    for v in t.data_mut() {
        *v = *v * s + shift;
    }
    t
}

/// erf in f64 by its Taylor series (accurate to ~1e-10 for |x| ≤ 4.5; erfc(4.5) < 3e-10).
fn erf64(x: f64) -> f64 {
    if x.abs() > 4.5 {
        return x.signum();
    }
    let (mut term, mut sum, x2) = (x, x, x * x);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 * sum.abs() {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn relu6_64(x: f64) -> f64 {
    x.clamp(0.0, 6.0)
}

/// The f64 reference of each unary kind (ONNX's definitions).
fn unary_ref(kind: UnaryKind, x: f64) -> f64 {
    use UnaryKind::*;
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    match kind {
        Sigmoid => sig(x),
        Tanh => x.tanh(),
        HardSigmoid { alpha, beta } => (alpha as f64 * x + beta as f64).clamp(0.0, 1.0),
        HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        LeakyRelu { alpha } => {
            if x > 0.0 {
                x
            } else {
                alpha as f64 * x
            }
        }
        Clip { min, max } => x.max(min as f64).min(max as f64),
        Erf => erf64(x),
        Gelu => 0.5 * x * (1.0 + erf64(x / 2f64.sqrt())),
        GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
        Sqrt => x.sqrt(),
        Exp => x.exp(),
        Neg => -x,
        Abs => x.abs(),
        Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        Elu { alpha } => {
            if x > 0.0 {
                x
            } else {
                alpha as f64 * x.exp_m1()
            }
        }
        Silu => x * sig(x),
        Reciprocal => 1.0 / x,
    }
}

fn all_kinds() -> Vec<UnaryKind> {
    use UnaryKind::*;
    vec![
        Sigmoid,
        Tanh,
        HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        HardSigmoid {
            alpha: 1.0 / 6.0,
            beta: 0.5,
        },
        HardSwish,
        LeakyRelu { alpha: 0.01 },
        LeakyRelu { alpha: 0.2 },
        Clip { min: 0.0, max: 6.0 },
        Clip {
            min: -0.5,
            max: f32::INFINITY,
        },
        Clip {
            min: f32::NEG_INFINITY,
            max: 0.25,
        },
        Erf,
        Gelu,
        GeluTanh,
        Sqrt,
        Exp,
        Neg,
        Abs,
        Softplus,
        Elu { alpha: 1.0 },
        Elu { alpha: 0.5 },
        Silu,
        Reciprocal,
    ]
}

/// Inputs in the function's domain, kinks and extremes included.
fn domain(kind: UnaryKind) -> Tensor {
    use UnaryKind::*;
    match kind {
        Sqrt => sweep(0.0, 50.0, 2001, &[1e-30, 1e-6, 0.25, 1e20]),
        Reciprocal => sweep(0.01, 20.0, 2001, &[-1e-3, -3.0, 1e30, -1e-30]),
        Exp => sweep(-100.0, 88.0, 4001, &[1e-7, -1e-7, 88.7, -87.3, -0.5, 0.5]),
        _ => sweep(
            -12.0,
            12.0,
            4001,
            &[
                0.0, -0.0, 1e-4, -1e-4, 1e-8, -1e-8, 0.3, -0.3, 3.0, -3.0, 6.0, -6.0, 20.0, -20.0,
                30.0, -30.0, 100.0, -100.0, 1e30, -1e30,
            ],
        ),
    }
}

#[test]
fn unary_forward_matches_f64_references() {
    for kind in all_kinds() {
        let op = Op::new(Unary(kind));
        let x = domain(kind);
        let y = forward(&op, &[&x]);
        assert_eq!(y.shape(), x.shape());
        for (&xv, &yv) in x.data().iter().zip(y.data()) {
            let want = unary_ref(kind, xv as f64);
            // Within a few float32 ulp of the value, or 1e-6 absolute where it cancels
            // (GELU's tail, erf near ±1).
            let tol = 1e-6f64.max(4e-7 * want.abs());
            let ok = if want.is_infinite() {
                yv as f64 == want
            } else {
                (yv as f64 - want).abs() <= tol
            };
            assert!(ok, "{kind:?}({xv}) = {yv}, want {want}");
        }
    }
}

#[test]
fn functions_keep_relative_accuracy_in_their_tails() {
    use UnaryKind::*;
    // Where the value is tiny, an absolute tolerance would hide a wrong result.
    for (kind, xs) in [
        (Sigmoid, vec![-30.0f32, -50.0, -80.0, -1e-6]),
        (Exp, vec![-30.0, -80.0, 1e-7, -1e-7, 50.0, 85.0]),
        (Softplus, vec![-30.0, -80.0, -15.0, 1e-6]),
        (Tanh, vec![1e-5, -1e-5, 0.5, 0.7, -2.0]),
        (Elu { alpha: 1.0 }, vec![-1e-6, -1e-3, -0.4, -0.6]),
        (Erf, vec![1e-6, -1e-4, 0.1]),
        (Silu, vec![-30.0, -60.0, 1e-6]),
    ] {
        let n = xs.len();
        let x = tensor(&[n], xs);
        let y = forward(&Op::new(Unary(kind)), &[&x]);
        for (&xv, &yv) in x.data().iter().zip(y.data()) {
            let want = unary_ref(kind, xv as f64);
            assert!(
                ((yv as f64 - want) / want).abs() < 2e-6,
                "{kind:?}({xv}) = {yv}, want {want}"
            );
        }
    }
}

#[test]
fn erf_matches_published_values() {
    let xs = [0.5f32, 1.0, 2.0, -0.3, 0.0, 3.0, -1.5, 5.0];
    let want = [
        0.5204998778,
        0.8427007929,
        0.9953222650,
        -0.3286267595,
        0.0,
        0.9999779095,
        -0.9661051465,
        1.0,
    ];
    let x = tensor(&[xs.len()], xs.to_vec());
    let y = forward(&Op::new(Unary(UnaryKind::Erf)), &[&x]);
    for ((&x, &y), &w) in xs.iter().zip(y.data()).zip(&want) {
        assert!((y as f64 - w).abs() < 1e-6, "erf({x}) = {y}, want {w}");
    }
    // The f64 reference of the other tests agrees with the same values.
    for (&x, &w) in [0.5, 1.0, 2.0, -0.3, 0.0, 3.0, -1.5, 5.0].iter().zip(&want) {
        assert!((erf64(x) - w).abs() < 1e-9, "erf64({x}) = {}", erf64(x));
    }
}

#[test]
fn hard_sigmoid_and_hard_swish_follow_pytorch() {
    // torch.nn.functional.hardsigmoid = relu6(x + 3)/6 is ONNX HardSigmoid with alpha 1/6;
    // ONNX's default alpha 0.2 is a different function.
    let x = sweep(-5.0, 5.0, 1001, &[-3.0, 3.0]);
    let torch = Op::new(Unary(UnaryKind::HardSigmoid {
        alpha: 1.0 / 6.0,
        beta: 0.5,
    }));
    let onnx_default = Op::new(Unary(UnaryKind::HardSigmoid {
        alpha: 0.2,
        beta: 0.5,
    }));
    let hswish = Op::new(Unary(UnaryKind::HardSwish));
    let (yt, yd, ys) = (
        forward(&torch, &[&x]),
        forward(&onnx_default, &[&x]),
        forward(&hswish, &[&x]),
    );
    for (i, &v) in x.data().iter().enumerate() {
        let v = v as f64;
        let hs = relu6_64(v + 3.0) / 6.0;
        assert!((yt.data()[i] as f64 - hs).abs() < 1e-7, "hardsigmoid({v})");
        assert!(
            (ys.data()[i] as f64 - v * hs).abs() < 1e-6,
            "hardswish({v})"
        );
        assert!((yd.data()[i] as f64 - (0.2 * v + 0.5).clamp(0.0, 1.0)).abs() < 1e-7);
    }
    assert!(yt
        .data()
        .iter()
        .zip(yd.data())
        .any(|(a, b)| (a - b).abs() > 0.05));
}

#[test]
fn unary_propagates_nan_and_handles_infinite_bounds() {
    use UnaryKind::*;
    let x = tensor(&[3], vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
    for kind in [
        Sigmoid,
        Tanh,
        Exp,
        Erf,
        Gelu,
        Silu,
        Softplus,
        Clip { min: 0.0, max: 6.0 },
        HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        LeakyRelu { alpha: 0.1 },
    ] {
        let y = forward(&Op::new(Unary(kind)), &[&x]);
        assert!(y.data()[0].is_nan(), "{kind:?}(NaN) = {}", y.data()[0]);
    }
    let y = |kind| forward(&Op::new(Unary(kind)), &[&x]).data()[1..].to_vec();
    assert_eq!(y(Sigmoid), [1.0, 0.0]);
    assert_eq!(y(Tanh), [1.0, -1.0]);
    assert_eq!(y(Exp), [f32::INFINITY, 0.0]);
    assert_eq!(y(Erf), [1.0, -1.0]);
    assert_eq!(y(Softplus), [f32::INFINITY, 0.0]);
    assert_eq!(
        y(Clip {
            min: f32::NEG_INFINITY,
            max: f32::INFINITY
        }),
        [f32::INFINITY, f32::NEG_INFINITY]
    );
    // ONNX: min > max gives max everywhere.
    let c = forward(
        &Op::new(Unary(Clip { min: 2.0, max: 1.0 })),
        &[&tensor(&[3], vec![0.0, 1.5, 3.0])],
    );
    assert_eq!(c.data(), [1.0, 1.0, 1.0]);
}

#[test]
fn unary_gradients_match_finite_differences() {
    use UnaryKind::*;
    let mut r = rng(1);
    for kind in all_kinds() {
        let base = away_from_zero(&[2, 3, 5, 7], &mut r);
        let x = match kind {
            Sqrt | Reciprocal => scaled(random(&[2, 3, 5, 7], &mut r), 0.8, 1.2),
            HardSigmoid { .. } | HardSwish => {
                avoid(scaled(base, 5.0, 0.0), &[-3.0, 3.0, -2.5, 2.5], 0.02)
            }
            Clip { min, max } => avoid(scaled(base, 2.0, 0.0), &[min, max], 0.02),
            Exp | Softplus | Sigmoid | Tanh | Silu | Gelu | GeluTanh | Erf | Elu { .. } => {
                scaled(base, 3.0, 0.0)
            }
            _ => base,
        };
        let op = Op::new(Unary(kind));
        check_gradient(&op, &[x], 1e-3, 2e-3, 200);
    }
}

/// The input gradient of `kind` at the points `xs` for an output gradient of ones.
fn unary_grad_at(kind: UnaryKind, xs: &[f32]) -> Vec<f32> {
    let x = tensor(&[xs.len()], xs.to_vec());
    let ones = Tensor::full(&[xs.len()], 1.0);
    analytic(&Op::new(Unary(kind)), &[x], &ones)[0]
        .data()
        .to_vec()
}

#[test]
fn unary_gradients_at_kinks_follow_pytorch() {
    use UnaryKind::*;
    // leaky_relu_backward: x > 0 → 1, else alpha (alpha at 0).
    assert_eq!(
        unary_grad_at(LeakyRelu { alpha: 0.1 }, &[0.0, 1.0, -1.0]),
        [0.1, 1.0, 0.1]
    );
    // hardtanh_backward: strictly inside (min, max).
    assert_eq!(
        unary_grad_at(Clip { min: 0.0, max: 6.0 }, &[0.0, 6.0, 3.0, -1.0, 7.0]),
        [0.0, 0.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(
        unary_grad_at(
            Clip {
                min: 0.0,
                max: f32::INFINITY
            },
            &[0.0, 1e30]
        ),
        [0.0, 1.0]
    );
    // hardsigmoid_backward: 1/6 strictly inside (−3, 3).
    assert_eq!(
        unary_grad_at(
            HardSigmoid {
                alpha: 1.0 / 6.0,
                beta: 0.5
            },
            &[-3.0, 3.0, 0.0]
        ),
        [0.0, 0.0, 1.0 / 6.0]
    );
    // hardswish_backward: 0 below −3, x/3 + 1/2 on [−3, 3], 1 above.
    assert_eq!(
        unary_grad_at(HardSwish, &[-3.0, 3.0, -3.5, 3.5, 0.0]),
        [-0.5, 1.5, 0.0, 1.0, 0.5]
    );
    // abs: sgn(0) = 0.
    assert_eq!(unary_grad_at(Abs, &[0.0, -2.0, 2.0]), [0.0, -1.0, 1.0]);
    // elu_backward: alpha·eˣ for x ≤ 0.
    assert_eq!(unary_grad_at(Elu { alpha: 0.5 }, &[0.0, 1.0]), [0.5, 1.0]);
    // softplus above its threshold 20: exactly 1.
    assert_eq!(unary_grad_at(Softplus, &[25.0, 100.0]), [1.0, 1.0]);
    // sqrt at 0: infinite, as PyTorch's g/(2·√x).
    assert_eq!(unary_grad_at(Sqrt, &[0.0]), [f32::INFINITY]);
}

#[test]
fn unary_needs_follow_what_the_backward_reads() {
    use UnaryKind::*;
    assert_eq!(Unary(Sigmoid).backward_needs(), Needs::OUTPUT);
    assert_eq!(Unary(Exp).backward_needs(), Needs::OUTPUT);
    assert_eq!(Unary(Neg).backward_needs(), Needs::NOTHING);
    assert_eq!(Unary(Gelu).backward_needs(), Needs::INPUTS);
    // Without the kept value the backward pass fails cleanly.
    let s = [4usize];
    let saved = Saved::new("n", vec![&s], vec![None], None);
    assert!(Unary(Sigmoid).backward(&saved, Tensor::zeros(&s)).is_err());
    assert!(Unary(Gelu).backward(&saved, Tensor::zeros(&s)).is_err());
    assert!(Unary(Neg).backward(&saved, Tensor::zeros(&s)).is_ok());
}

#[test]
fn unary_describes_itself() {
    use UnaryKind::*;
    assert_eq!(Unary(Sigmoid).describe(), "Sigmoid");
    assert_eq!(
        Unary(HardSigmoid {
            alpha: 0.2,
            beta: 0.5
        })
        .describe(),
        "HardSigmoid"
    );
    assert_eq!(
        Unary(LeakyRelu { alpha: 0.01 }).describe(),
        "LeakyReLU 0.01"
    );
    assert_eq!(Unary(Clip { min: 0.0, max: 6.0 }).describe(), "Clip [0, 6]");
}

#[test]
fn unary_shape_errors() {
    let op = Unary(UnaryKind::Tanh);
    let x = Tensor::zeros(&[2, 3]);
    assert!(op.output_shape(&[&[2, 3], &[2, 3]]).is_err());
    assert!(op.output_shape(&[]).is_err());
    assert!(op.forward(&[&x, &x]).is_err());
    assert_eq!(op.output_shape(&[&[2, 3]]).unwrap(), [2, 3]);
    let s = [2usize, 3];
    let saved = Saved::new("n", vec![&s], vec![Some(&x)], Some(&x));
    assert!(op.backward(&saved, Tensor::zeros(&[3, 2])).is_err());
}

#[test]
fn large_unary_tensors_run_in_parallel_chunks_alike() {
    // More than one rayon chunk, and lengths that leave vector tails.
    let mut r = rng(2);
    let x = scaled(random(&[3, 7, 61, 53], &mut r), 4.0, 0.0);
    for kind in all_kinds() {
        let x = if matches!(kind, UnaryKind::Sqrt | UnaryKind::Reciprocal) {
            scaled(x.clone(), 0.5, 2.5)
        } else {
            x.clone()
        };
        let y = forward(&Op::new(Unary(kind)), &[&x]);
        for i in (0..x.numel()).step_by(97).chain([x.numel() - 1]) {
            let want = unary_ref(kind, x.data()[i] as f64);
            assert!(
                (y.data()[i] as f64 - want).abs() <= 1e-6f64.max(4e-7 * want.abs()),
                "{kind:?} at {i}"
            );
        }
    }
}

// ---- binary ops ----

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for k in (0..shape.len()).rev() {
        idx[k] = i % shape[k];
        i /= shape[k];
    }
    idx
}

/// The flat index in an operand of `shape` that output index `out` reads (numpy rules).
fn bcast_index(out: &[usize], shape: &[usize]) -> usize {
    let pad = out.len() - shape.len();
    shape.iter().enumerate().fold(0, |off, (i, &d)| {
        off * d + if d == 1 { 0 } else { out[pad + i] }
    })
}

fn bshape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let d = |s: &[usize]| {
                if i + s.len() < r {
                    1
                } else {
                    s[i + s.len() - r]
                }
            };
            d(a).max(d(b))
        })
        .collect()
}

fn kind_ref(kind: BinaryKind, a: f64, b: f64) -> f64 {
    match kind {
        BinaryKind::Add => a + b,
        BinaryKind::Sub => a - b,
        BinaryKind::Mul => a * b,
        BinaryKind::Div => a / b,
        BinaryKind::Pow => a.powf(b),
    }
}

/// a ∘ b by numpy broadcasting, element by element.
fn binary_ref(kind: BinaryKind, a: &Tensor, b: &Tensor) -> (Vec<usize>, Vec<f64>) {
    let out = bshape(a.shape(), b.shape());
    let n = out.iter().product();
    let v = (0..n)
        .map(|i| {
            let idx = unravel(i, &out);
            kind_ref(
                kind,
                a.data()[bcast_index(&idx, a.shape())] as f64,
                b.data()[bcast_index(&idx, b.shape())] as f64,
            )
        })
        .collect();
    (out, v)
}

const KINDS: [BinaryKind; 5] = [
    BinaryKind::Add,
    BinaryKind::Sub,
    BinaryKind::Mul,
    BinaryKind::Div,
    BinaryKind::Pow,
];

/// Shape pairs covering the kernels' cases: equal shapes, one value per channel plane, per
/// channel, scalar, along the last axis, both sides broadcast, size-1 output axes.
fn shape_pairs() -> Vec<(Vec<usize>, Vec<usize>)> {
    let p = |a: &[usize], b: &[usize]| (a.to_vec(), b.to_vec());
    vec![
        p(&[2, 3, 4, 5], &[2, 3, 4, 5]),
        p(&[2, 3, 4, 5], &[2, 3, 1, 1]),
        p(&[2, 3, 4, 5], &[3, 1, 1]),
        p(&[2, 3, 4, 5], &[1, 3, 1, 1]),
        p(&[2, 3, 4, 5], &[]),
        p(&[2, 3, 4, 5], &[1]),
        p(&[2, 3, 4, 5], &[5]),
        p(&[2, 3, 4, 5], &[4, 5]),
        p(&[2, 3, 4, 5], &[2, 1, 1, 1]),
        p(&[2, 3, 4, 5], &[2, 1, 4, 1]),
        p(&[2, 1, 4, 1], &[1, 3, 1, 5]),
        p(&[3, 1, 1], &[2, 3, 4, 5]),
        p(&[1, 3, 1, 5], &[2, 3, 4, 1]),
        p(&[1, 1, 1], &[1, 1, 1]),
        p(&[], &[]),
        p(&[6, 1, 7], &[6, 1, 7]),
        p(&[1, 6, 1, 1], &[1, 6, 1, 1]),
        p(&[3, 4, 5], &[1, 3, 4, 5]), // the output's size, one more axis
        p(&[1, 3, 4, 5], &[3, 4, 5]),
        p(&[1, 3, 1, 5], &[3, 5]),
    ]
}

/// Operands in each kind's comfortable domain: Div away from 0, Pow with a base in (0.5, 2).
fn operands(kind: BinaryKind, sa: &[usize], sb: &[usize], seed: u64) -> (Tensor, Tensor) {
    let mut r = rng(seed);
    let a = random(sa, &mut r);
    let b = random(sb, &mut r);
    match kind {
        BinaryKind::Div => (a, scaled(away_from_zero(sb, &mut r), 1.5, 0.0)),
        BinaryKind::Pow => (scaled(a, 0.75, 1.25), scaled(b, 1.5, 0.0)),
        _ => (a, b),
    }
}

#[test]
fn binary_forward_matches_naive_broadcasting() {
    for kind in KINDS {
        for (k, (sa, sb)) in shape_pairs().into_iter().enumerate() {
            let (a, b) = operands(kind, &sa, &sb, k as u64);
            let op = Op::new(Binary(kind));
            let y = forward(&op, &[&a, &b]);
            let (shape, want) = binary_ref(kind, &a, &b);
            assert_eq!(y.shape(), shape.as_slice(), "{kind:?} {sa:?} {sb:?}");
            assert_eq!(op.output_shape(&[&sa, &sb]).unwrap(), shape);
            for (i, (&g, &w)) in y.data().iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{kind:?} {sa:?} {sb:?} at {i}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn binary_gradients_match_finite_differences() {
    for kind in KINDS {
        for (k, (sa, sb)) in shape_pairs().into_iter().enumerate() {
            let (a, b) = operands(kind, &sa, &sb, 100 + k as u64);
            check_gradient(&Op::new(Binary(kind)), &[a, b], 1e-3, 2e-3, 60);
        }
    }
}

/// The gradients of a ∘ b for output gradient `g`, summed over broadcast positions in f64.
fn binary_grads_ref(kind: BinaryKind, a: &Tensor, b: &Tensor, g: &Tensor) -> [Vec<f64>; 2] {
    let out = g.shape().to_vec();
    let mut ga = vec![0f64; a.numel()];
    let mut gb = vec![0f64; b.numel()];
    for i in 0..g.numel() {
        let idx = unravel(i, &out);
        let (ia, ib) = (bcast_index(&idx, a.shape()), bcast_index(&idx, b.shape()));
        let (x, y, gv) = (a.data()[ia] as f64, b.data()[ib] as f64, g.data()[i] as f64);
        let (da, db) = match kind {
            BinaryKind::Add => (1.0, 1.0),
            BinaryKind::Sub => (1.0, -1.0),
            BinaryKind::Mul => (y, x),
            BinaryKind::Div => (1.0 / y, -x / (y * y)),
            BinaryKind::Pow => (y * x.powf(y - 1.0), x.powf(y) * x.ln()),
        };
        ga[ia] += gv * da;
        gb[ib] += gv * db;
    }
    [ga, gb]
}

#[test]
fn large_broadcast_gradients_sum_like_the_naive_reference() {
    // Several rayon tasks per case: a squeeze-excitation scale, a layer scale, a scalar, a
    // bias along the last axis (the path with per-task partial sums) and a row-broadcast.
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![2, 16, 40, 41], vec![2, 16, 1, 1]),
        (vec![2, 16, 40, 41], vec![16, 1, 1]),
        (vec![2, 16, 40, 41], vec![]),
        (vec![2048, 64], vec![64]),
        (vec![64], vec![2048, 64]),
        (vec![4, 8, 32, 32], vec![4, 1, 32, 32]),
    ];
    for kind in KINDS {
        for (k, (sa, sb)) in cases.iter().enumerate() {
            let (a, b) = operands(kind, sa, sb, 200 + k as u64);
            let op = Op::new(Binary(kind));
            let y = forward(&op, &[&a, &b]);
            let (_, want) = binary_ref(kind, &a, &b);
            for (i, (&g, &w)) in y.data().iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{kind:?} at {i}"
                );
            }
            let g = random(y.shape(), &mut rng(7));
            let grads = analytic(&op, &[a.clone(), b.clone()], &g);
            let refs = binary_grads_ref(kind, &a, &b, &g);
            for (which, (got, want)) in grads.iter().zip(&refs).enumerate() {
                let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                for (i, (&x, &w)) in got.data().iter().zip(want).enumerate() {
                    assert!(
                        (x as f64 - w).abs() <= 2e-5 * scale,
                        "{kind:?} {sa:?} {sb:?}: gradient {which} at {i}: {x} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn pow_gradients_follow_pytorch_at_zero_and_negative_bases() {
    let op = Op::new(Binary(BinaryKind::Pow));
    let a = tensor(&[5], vec![0.0, 0.0, -2.0, 2.0, 0.0]);
    let b = tensor(&[5], vec![2.0, 0.0, 2.0, 0.0, -1.0]);
    let ones = Tensor::full(&[5], 1.0);
    let g = analytic(&op, &[a, b], &ones);
    // ∂/∂a = b·a^(b−1), 0 where b = 0.
    assert_eq!(&g[0].data()[..4], [0.0, 0.0, -4.0, 0.0]);
    // ∂/∂b = a^b·ln a: 0 where a = 0 and b ≥ 0, NaN for a < 0, −∞ at a = 0, b < 0.
    let gb = g[1].data();
    assert_eq!(&gb[..2], [0.0, 0.0]);
    assert!(gb[2].is_nan());
    assert_eq!(gb[3], 2f32.ln());
    assert_eq!(gb[4], f32::NEG_INFINITY);
}

#[test]
fn binary_needs_and_shape_errors() {
    assert_eq!(Binary(BinaryKind::Add).backward_needs(), Needs::NOTHING);
    assert_eq!(Binary(BinaryKind::Sub).backward_needs(), Needs::NOTHING);
    assert_eq!(Binary(BinaryKind::Mul).backward_needs(), Needs::INPUTS);
    assert_eq!(Binary(BinaryKind::Pow).backward_needs(), Needs::INPUTS);
    assert_eq!(Binary(BinaryKind::Mul).receptive_field(), Field::Merge);
    let op = Binary(BinaryKind::Mul);
    let err = op.output_shape(&[&[2, 3], &[4]]).unwrap_err().to_string();
    assert!(
        err.contains("Mul") && err.contains("[2, 3]") && err.contains("[4]"),
        "{err}"
    );
    assert!(op.output_shape(&[&[2, 3, 4], &[3, 1, 5]]).is_err());
    assert!(op.output_shape(&[&[2, 3]]).is_err());
    let (a, b) = (Tensor::zeros(&[2, 3]), Tensor::zeros(&[2]));
    assert!(op.forward(&[&a, &b]).is_err());
    assert!(op.forward(&[&a]).is_err());
    assert_eq!(op.output_shape(&[&[0, 3], &[3]]).unwrap(), [0, 3]);
    let y = op
        .forward(&[&Tensor::zeros(&[0, 3]), &Tensor::zeros(&[3])])
        .unwrap();
    assert_eq!(y.shape(), [0, 3]);
    // A gradient of the wrong shape, or kept inputs that do not match, fail cleanly.
    let (sa, sb) = ([2usize, 3], [3usize]);
    let b3 = Tensor::zeros(&[3]);
    let saved = Saved::new("n", vec![&sa, &sb], vec![Some(&a), Some(&b3)], None);
    assert!(op.backward(&saved, Tensor::zeros(&[3, 2])).is_err());
    let saved = Saved::new("n", vec![&sa, &sb], vec![Some(&a), Some(&b)], None);
    assert!(op.backward(&saved, Tensor::zeros(&[2, 3])).is_err());
}

#[test]
fn binary_const_matches_the_reference_either_way_round() {
    let pairs: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![2, 3, 4, 5], vec![3, 1, 1]),
        (vec![2, 3, 4, 5], vec![]),
        (vec![2, 3, 4, 5], vec![2, 3, 4, 5]),
        (vec![1, 3, 1, 1], vec![1, 3, 4, 5]),
        (vec![2, 3, 4, 5], vec![5]),
    ];
    for kind in KINDS {
        for (k, (sx, sc)) in pairs.iter().enumerate() {
            for constant_first in [false, true] {
                let (sa, sb) = if constant_first { (sc, sx) } else { (sx, sc) };
                let (a, b) = operands(kind, sa, sb, 300 + k as u64);
                let (x, c) = if constant_first { (b, a) } else { (a, b) };
                let op = Op::new(BinaryConst {
                    kind,
                    constant: c.clone(),
                    constant_first,
                });
                let y = forward(&op, &[&x]);
                let (shape, want) = if constant_first {
                    binary_ref(kind, &c, &x)
                } else {
                    binary_ref(kind, &x, &c)
                };
                assert_eq!(y.shape(), shape.as_slice());
                assert_eq!(op.output_shape(&[sx]).unwrap(), shape);
                for (&g, &w) in y.data().iter().zip(&want) {
                    assert!((g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0), "{op:?}");
                }
                check_gradient(&op, &[x], 1e-3, 2e-3, 60);
            }
        }
    }
}

#[test]
fn constant_powers_match_powf() {
    let mut r = rng(5);
    let x = scaled(random(&[3, 4, 5], &mut r), 2.0, 0.0);
    let xpos = scaled(random(&[3, 4, 5], &mut r), 0.9, 1.0);
    for e in [1.0f32, 2.0, 3.0, 0.5, -1.0, 1.5, -2.0] {
        let x = if e.fract() != 0.0 || e < 0.0 {
            &xpos
        } else {
            &x
        };
        let op = Op::new(BinaryConst {
            kind: BinaryKind::Pow,
            constant: tensor(&[], vec![e]),
            constant_first: false,
        });
        let y = forward(&op, &[x]);
        for (&v, &yv) in x.data().iter().zip(y.data()) {
            let want = (v as f64).powf(e as f64);
            assert!(
                (yv as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{v}^{e}"
            );
        }
        check_gradient(&op, std::slice::from_ref(x), 1e-3, 2e-3, 60);
    }
    assert_eq!(
        BinaryConst {
            kind: BinaryKind::Pow,
            constant: tensor(&[], vec![2.0]),
            constant_first: false,
        }
        .describe(),
        "Pow (x ^ 2)"
    );
}

#[test]
fn binary_const_needs_only_what_it_reads() {
    let c = tensor(&[1], vec![2.0]);
    let needs = |kind, constant_first| {
        BinaryConst {
            kind,
            constant: c.clone(),
            constant_first,
        }
        .backward_needs()
    };
    assert_eq!(needs(BinaryKind::Mul, false), Needs::NOTHING);
    assert_eq!(needs(BinaryKind::Mul, true), Needs::NOTHING);
    assert_eq!(needs(BinaryKind::Div, false), Needs::NOTHING);
    assert_eq!(needs(BinaryKind::Div, true), Needs::INPUTS);
    assert_eq!(needs(BinaryKind::Sub, true), Needs::NOTHING);
    assert_eq!(needs(BinaryKind::Pow, false), Needs::INPUTS);
    let op = BinaryConst {
        kind: BinaryKind::Add,
        constant: Tensor::zeros(&[4]),
        constant_first: false,
    };
    assert!(op.output_shape(&[&[2, 3]]).is_err());
    assert!(op.forward(&[&Tensor::zeros(&[2, 3])]).is_err());
    assert!(op.output_shape(&[&[2, 4], &[2, 4]]).is_err());
    assert_eq!(op.receptive_field(), Field::Pointwise);
}

// ---- PRelu ----

#[test]
fn prelu_broadcasts_its_slope_by_numpy_rules() {
    let mut r = rng(9);
    let x = away_from_zero(&[2, 3, 4, 5], &mut r);
    for slope_shape in [
        vec![3, 1, 1],
        vec![1, 3, 1, 1],
        vec![1],
        vec![5],
        vec![4, 5],
        vec![],
    ] {
        let slope = random(&slope_shape, &mut r);
        let op = Op::new(PRelu {
            slope: slope.clone(),
        });
        let y = forward(&op, &[&x]);
        assert_eq!(y.shape(), x.shape());
        for (i, (&v, &got)) in x.data().iter().zip(y.data()).enumerate() {
            let s = slope.data()[bcast_index(&unravel(i, x.shape()), &slope_shape)];
            let want = if v > 0.0 { v } else { s * v };
            assert_eq!(got, want, "slope {slope_shape:?} at {i}");
        }
        check_gradient(&op, std::slice::from_ref(&x), 1e-3, 2e-3, 100);
    }
    // [C] lines up with the last axis, so [3] against [2, 3, 4, 5] does not fit.
    let op = PRelu {
        slope: Tensor::zeros(&[3]),
    };
    let err = op.output_shape(&[&[2, 3, 4, 5]]).unwrap_err().to_string();
    assert!(err.contains("PRelu"), "{err}");
    assert!(op.forward(&[&x]).is_err());
    // Unidirectional: the slope may not widen x.
    let op = PRelu {
        slope: Tensor::zeros(&[2, 1, 5]),
    };
    assert!(op.output_shape(&[&[1, 5]]).is_err());
    // At 0 the slope applies (PyTorch: x > 0 passes the gradient).
    let op = Op::new(PRelu {
        slope: tensor(&[1], vec![0.25]),
    });
    let g = analytic(
        &op,
        &[tensor(&[2], vec![0.0, 1.0])],
        &Tensor::full(&[2], 1.0),
    );
    assert_eq!(g[0].data(), [0.25, 1.0]);
}

// ---- Softmax ----

fn softmax_ref(x: &Tensor, axis: usize) -> Vec<f64> {
    let s = x.shape();
    let inner: usize = s[axis + 1..].iter().product();
    let n = s[axis];
    (0..x.numel())
        .map(|i| {
            let (o, c) = (i / (n * inner), i % inner);
            let at = |k: usize| x.data()[o * n * inner + k * inner + c] as f64;
            let m = (0..n).map(at).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..n).map(|k| (at(k) - m).exp()).sum();
            (x.data()[i] as f64 - m).exp() / sum
        })
        .collect()
}

#[test]
fn softmax_matches_the_reference_on_every_axis() {
    let mut r = rng(11);
    for (shape, axes) in [
        (vec![2, 3, 4, 5], vec![0, 1, 2, 3]),
        (vec![2, 1000], vec![1]),
        (vec![1, 7, 17, 19], vec![1]), // more columns than one block
        (vec![5], vec![0]),
    ] {
        let x = scaled(random(&shape, &mut r), 6.0, 0.0);
        for axis in axes {
            let op = Op::new(Softmax { axis });
            let y = forward(&op, &[&x]);
            for (i, (&g, w)) in y.data().iter().zip(softmax_ref(&x, axis)).enumerate() {
                assert!(
                    (g as f64 - w).abs() < 1e-6 * w.max(1e-2),
                    "{shape:?} axis {axis} at {i}"
                );
            }
            check_gradient(&op, std::slice::from_ref(&x), 1e-3, 2e-3, 100);
        }
    }
}

#[test]
fn softmax_is_stable_for_large_inputs() {
    let x = tensor(&[1, 3], vec![1000.0, 1000.0, -1000.0]);
    let y = forward(&Op::new(Softmax { axis: 1 }), &[&x]);
    assert_eq!(y.data(), [0.5, 0.5, 0.0]);
    let x = tensor(&[3, 1], vec![1000.0, 999.0, 0.0]);
    let y = forward(&Op::new(Softmax { axis: 0 }), &[&x]);
    assert!((y.data()[0] - 0.7310586).abs() < 1e-6);
    let op = Softmax { axis: 2 };
    assert!(op.output_shape(&[&[2, 3]]).is_err());
    assert!(op.forward(&[&Tensor::zeros(&[2, 3])]).is_err());
    assert_eq!(op.backward_needs(), Needs::OUTPUT);
}

#[test]
fn large_softmax_over_channels_and_rows() {
    let mut r = rng(12);
    // Two column ranges per slab, and one slab split into four (a batch of 1).
    for (x, axis) in [
        (scaled(random(&[2, 19, 33, 35], &mut r), 5.0, 0.0), 1),
        (scaled(random(&[2, 19, 33, 35], &mut r), 5.0, 0.0), 3),
        (scaled(random(&[1, 5, 100, 100], &mut r), 5.0, 0.0), 1),
    ] {
        let op = Op::new(Softmax { axis });
        let y = forward(&op, &[&x]);
        let want = softmax_ref(&x, axis);
        for (i, (&g, &w)) in y.data().iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() < 1e-6 * w.max(1e-2),
                "axis {axis} at {i}"
            );
        }
        check_gradient(&op, std::slice::from_ref(&x), 1e-3, 2e-3, 50);
        // Every element of the backward pass against y ⊙ (g − Σ g⊙y) in f64.
        let g = random(x.shape(), &mut r);
        let got = analytic(&op, std::slice::from_ref(&x), &g);
        let s = x.shape();
        let (n, inner) = (s[axis], s[axis + 1..].iter().product::<usize>());
        for (i, &v) in got[0].data().iter().enumerate() {
            let (o, c) = (i / (n * inner), i % inner);
            let at = |k: usize| o * n * inner + k * inner + c;
            let d: f64 = (0..n).map(|k| g.data()[at(k)] as f64 * want[at(k)]).sum();
            let w = want[i] * (g.data()[i] as f64 - d);
            assert!(
                (v as f64 - w).abs() < 1e-6,
                "axis {axis}: gradient at {i}: {v} vs {w}"
            );
        }
    }
}

// ---- LayerNorm ----

fn layer_norm_ref(x: &Tensor, ln: &LayerNorm) -> Vec<f64> {
    let n: usize = x.shape()[ln.axis..].iter().product();
    let mut y = vec![0f64; x.numel()];
    for (row, xs) in x.data().chunks(n).enumerate() {
        let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        for (j, &v) in xs.iter().enumerate() {
            let s = ln.scale.as_ref().map_or(1.0, |s| s[j] as f64);
            let b = ln.bias.as_ref().map_or(0.0, |b| b[j] as f64);
            y[row * n + j] = (v as f64 - mean) / (var + ln.eps as f64).sqrt() * s + b;
        }
    }
    y
}

#[test]
fn layer_norm_matches_the_reference_and_finite_differences() {
    let mut r = rng(13);
    for (shape, axis) in [
        (vec![2, 3, 4, 5], 3),
        (vec![2, 3, 4, 5], 1),
        (vec![2, 3, 4, 5], 2),
        (vec![6, 64], 1),
        (vec![1, 3, 40, 40], 1), // a row much longer than one vector
        (vec![7], 0),
    ] {
        let n: usize = shape[axis..].iter().product();
        for (with_scale, with_bias) in [(true, true), (true, false), (false, true), (false, false)]
        {
            let x = scaled(random(&shape, &mut r), 2.0, 0.5);
            let ln = LayerNorm {
                axis,
                eps: 1e-5,
                scale: with_scale.then(|| (0..n).map(|_| r.gen_range(0.5..1.5)).collect()),
                bias: with_bias.then(|| (0..n).map(|_| r.gen_range(-1.0..1.0)).collect()),
            };
            let want = layer_norm_ref(&x, &ln);
            let op = Op::new(ln);
            let y = forward(&op, &[&x]);
            for (i, (&g, &w)) in y.data().iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() < 2e-5 * w.abs().max(1.0),
                    "{shape:?} {axis} at {i}"
                );
            }
            // Rows of thousands of outputs each move with every input: a wider step keeps the
            // float32 rounding of their sum out of the difference.
            check_gradient(&op, &[x], 5e-3, 3e-3, 80);
        }
    }
}

#[test]
fn layer_norm_shape_errors() {
    let ln = LayerNorm {
        axis: 1,
        eps: 1e-5,
        scale: Some(vec![1.0; 5]),
        bias: None,
    };
    let err = ln.output_shape(&[&[2, 3, 4]]).unwrap_err().to_string();
    assert!(err.contains("LayerNorm") && err.contains("scale"), "{err}");
    assert_eq!(ln.output_shape(&[&[2, 5]]).unwrap(), [2, 5]);
    assert!(ln.forward(&[&Tensor::zeros(&[2, 3, 4])]).is_err());
    let ln = LayerNorm {
        axis: 2,
        eps: 1e-5,
        scale: None,
        bias: Some(vec![0.0; 3]),
    };
    assert!(ln.output_shape(&[&[2, 3]]).is_err());
    assert!(ln.output_shape(&[&[2, 3], &[2, 3]]).is_err());
    assert_eq!(ln.backward_needs(), Needs::INPUTS);
}

// ---- every instruction set ----

/// Set in the child processes of `every_simd_level_passes_this_suite`.
const SIMD_ENV: &str = "DEEPVIS_SIMD";

#[test]
fn every_simd_level_passes_this_suite() {
    if std::env::var_os(SIMD_ENV).is_some() {
        return;
    }
    // The level is process-wide and tests run in parallel: the narrower paths run the whole
    // suite in child processes.
    let exe = std::env::current_exe().unwrap();
    for level in [SimdLevel::Portable, SimdLevel::Avx2] {
        if level > detected_simd() {
            continue;
        }
        let out = std::process::Command::new(&exe)
            .env(SIMD_ENV, level.name())
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && report.contains("simd_level_follows_the_environment ... ok"),
            "the suite at {SIMD_ENV}={}:\n{report}\n{}",
            level.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn simd_level_follows_the_environment() {
    let wanted = std::env::var(SIMD_ENV)
        .ok()
        .and_then(|v| SimdLevel::from_name(&v))
        .unwrap_or(SimdLevel::Avx512);
    assert_eq!(simd_level(), wanted.min(detected_simd()));
}
