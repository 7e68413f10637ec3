//! Every op's input gradient against central finite differences, and every op's forward pass
//! against a naive reference written out here in f64.

use deepvis_engine::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random(shape: &[usize], r: &mut ChaCha8Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| r.gen_range(-1.0..1.0)).collect(),
    )
    .unwrap()
}

/// Values bounded away from zero, so ReLU kinks stay farther than the finite-difference step.
fn away_from_zero(shape: &[usize], r: &mut ChaCha8Rng) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            let v: f32 = r.gen_range(0.05..1.0);
            if r.gen_bool(0.5) {
                v
            } else {
                -v
            }
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum()
}

/// Checks `backward(x, r)` = ∇ₓ ⟨r, forward(x)⟩ at `probes` coordinates by central differences.
fn check_gradient(
    x: &Tensor,
    forward: impl Fn(&Tensor) -> Tensor,
    backward: impl Fn(&Tensor, &Tensor) -> Tensor,
    eps: f32,
    probes: usize,
    seed: u64,
) {
    let mut r = rng(seed);
    let y = forward(x);
    let proj = random(y.shape(), &mut r);
    let grad = backward(x, &proj);
    assert_eq!(grad.shape(), x.shape());
    let scale = grad
        .data()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-3);
    for _ in 0..probes {
        let i = r.gen_range(0..x.numel());
        let mut plus = x.clone();
        plus.data_mut()[i] += eps;
        let mut minus = x.clone();
        minus.data_mut()[i] -= eps;
        let fd = (dot(&proj, &forward(&plus)) - dot(&proj, &forward(&minus))) / (2.0 * eps as f64);
        let an = grad.data()[i] as f64;
        let err = (fd - an).abs();
        assert!(
            err <= 2e-3 * scale as f64 + 1e-3 * an.abs(),
            "coordinate {i}: analytic {an}, finite difference {fd}"
        );
    }
}

/// Straightforward convolution in f64, PyTorch semantics, with explicit per-side padding.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &Tensor,
    c: &Conv2d,
    pads: (usize, usize, usize, usize),
) -> (Vec<usize>, Vec<f64>) {
    let (n, cin, h, w) = x.dims4().unwrap();
    let (pt, pb, pl, pr) = pads;
    let (kh, kw) = c.kernel;
    let oh = (h + pt + pb - c.dilation.0 * (kh - 1) - 1) / c.stride.0 + 1;
    let ow = (w + pl + pr - c.dilation.1 * (kw - 1) - 1) / c.stride.1 + 1;
    let (cin_g, cout_g) = (cin / c.groups, c.out_channels / c.groups);
    let mut out = vec![0f64; n * c.out_channels * oh * ow];
    for b in 0..n {
        for o in 0..c.out_channels {
            let g = o / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = c.bias.as_ref().map_or(0.0, |b| b[o] as f64);
                    for ci in 0..cin_g {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy =
                                    (oy * c.stride.0 + ky * c.dilation.0) as isize - pt as isize;
                                let ix =
                                    (ox * c.stride.1 + kx * c.dilation.1) as isize - pl as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x.data()[((b * cin + g * cin_g + ci) * h + iy as usize)
                                    * w
                                    + ix as usize];
                                let wv = c.weight[((o * cin_g + ci) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((b * c.out_channels + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    (vec![n, c.out_channels, oh, ow], out)
}

struct ConvCase {
    n: usize,
    cin: usize,
    cout: usize,
    hw: (usize, usize),
    k: (usize, usize),
    stride: usize,
    dilation: usize,
    groups: usize,
    padding: Padding,
    /// The per-side padding PyTorch/TF would use for this case, for the naive reference.
    pads: (usize, usize, usize, usize),
}

fn conv_of(case: &ConvCase, r: &mut ChaCha8Rng) -> Conv2d {
    let wn = case.cout * (case.cin / case.groups) * case.k.0 * case.k.1;
    let conv = Conv2d {
        in_channels: case.cin,
        out_channels: case.cout,
        kernel: case.k,
        stride: (case.stride, case.stride),
        dilation: (case.dilation, case.dilation),
        groups: case.groups,
        padding: case.padding,
        weight: (0..wn).map(|_| r.gen_range(-0.5..0.5)).collect(),
        bias: Some((0..case.cout).map(|_| r.gen_range(-0.5..0.5)).collect()),
        cache: Default::default(),
    };
    conv.validate().unwrap();
    conv
}

fn conv_cases() -> Vec<ConvCase> {
    let p = Padding::symmetric;
    vec![
        // A few output channels from many inputs (the direct `narrow` path): 3×3 pad 1, a 5×5
        // with uneven explicit padding, and a 2×3 without padding.
        ConvCase {
            n: 2,
            cin: 20,
            cout: 1,
            hw: (19, 13),
            k: (3, 3),
            stride: 1,
            dilation: 1,
            groups: 1,
            padding: p(1),
            pads: (1, 1, 1, 1),
        },
        ConvCase {
            n: 1,
            cin: 16,
            cout: 3,
            hw: (11, 14),
            k: (5, 5),
            stride: 1,
            dilation: 1,
            groups: 1,
            padding: Padding::Explicit {
                top: 2,
                bottom: 1,
                left: 0,
                right: 3,
            },
            pads: (2, 1, 0, 3),
        },
        ConvCase {
            n: 1,
            cin: 17,
            cout: 4,
            hw: (9, 10),
            k: (2, 3),
            stride: 1,
            dilation: 1,
            groups: 1,
            padding: p(0),
            pads: (0, 0, 0, 0),
        },
        // VGG-style 3×3, stride 1, pad 1.
        ConvCase {
            n: 2,
            cin: 3,
            cout: 5,
            hw: (9, 11),
            k: (3, 3),
            stride: 1,
            dilation: 1,
            groups: 1,
            padding: p(1),
            pads: (1, 1, 1, 1),
        },
        // Big enough for several im2col row tiles (and the two-phase col2im schedule).
        ConvCase {
            n: 1,
            cin: 64,
            cout: 8,
            hw: (70, 64),
            k: (3, 3),
            stride: 1,
            dilation: 1,
            groups: 1,
            padding: p(1),
            pads: (1, 1, 1, 1),
        },
        // AlexNet-style 11×11 stride 4, pad 2.
        ConvCase {
            n: 1,
            cin: 3,
            cout: 4,
            hw: (31, 29),
            k: (11, 11),
            stride: 4,
            dilation: 1,
            groups: 1,
            padding: p(2),
            pads: (2, 2, 2, 2),
        },
        // Stride 2, no padding, rectangular kernel.
        ConvCase {
            n: 1,
            cin: 4,
            cout: 6,
            hw: (10, 9),
            k: (3, 2),
            stride: 2,
            dilation: 1,
            groups: 1,
            padding: p(0),
            pads: (0, 0, 0, 0),
        },
        // Dilation.
        ConvCase {
            n: 1,
            cin: 3,
            cout: 4,
            hw: (12, 12),
            k: (3, 3),
            stride: 1,
            dilation: 2,
            groups: 1,
            padding: p(2),
            pads: (2, 2, 2, 2),
        },
        // Grouped.
        ConvCase {
            n: 2,
            cin: 6,
            cout: 9,
            hw: (8, 7),
            k: (3, 3),
            stride: 1,
            dilation: 1,
            groups: 3,
            padding: p(1),
            pads: (1, 1, 1, 1),
        },
        // Depthwise 3×3 stride 2 with TF "SAME" (asymmetric: 0 top/left, 1 bottom/right at even size).
        ConvCase {
            n: 2,
            cin: 5,
            cout: 5,
            hw: (12, 10),
            k: (3, 3),
            stride: 2,
            dilation: 1,
            groups: 5,
            padding: Padding::Same,
            pads: (0, 1, 0, 1),
        },
        // Depthwise 5×5 stride 1 SAME.
        ConvCase {
            n: 1,
            cin: 4,
            cout: 4,
            hw: (9, 9),
            k: (5, 5),
            stride: 1,
            dilation: 1,
            groups: 4,
            padding: Padding::Same,
            pads: (2, 2, 2, 2),
        },
        // Depthwise 5×5 stride 2 SAME at odd size: pad 2 each side... (9 → 5, total 4).
        ConvCase {
            n: 1,
            cin: 3,
            cout: 3,
            hw: (9, 9),
            k: (5, 5),
            stride: 2,
            dilation: 1,
            groups: 3,
            padding: Padding::Same,
            pads: (2, 2, 2, 2),
        },
        // Depthwise 5×5 stride 2 SAME at even size: 1 top/left, 2 bottom/right.
        ConvCase {
            n: 1,
            cin: 3,
            cout: 3,
            hw: (14, 14),
            k: (5, 5),
            stride: 2,
            dilation: 1,
            groups: 3,
            padding: Padding::Same,
            pads: (1, 2, 1, 2),
        },
        // Dense 3×3 stride 2 SAME (EfficientNet stem) at even size.
        ConvCase {
            n: 1,
            cin: 3,
            cout: 4,
            hw: (16, 16),
            k: (3, 3),
            stride: 2,
            dilation: 1,
            groups: 1,
            padding: Padding::Same,
            pads: (0, 1, 0, 1),
        },
        // Pointwise (1×1): the im2col-free path.
        ConvCase {
            n: 2,
            cin: 7,
            cout: 5,
            hw: (6, 5),
            k: (1, 1),
            stride: 1,
            dilation: 1,
            groups: 1,
            padding: Padding::Same,
            pads: (0, 0, 0, 0),
        },
        // Asymmetric explicit padding.
        ConvCase {
            n: 1,
            cin: 2,
            cout: 3,
            hw: (7, 8),
            k: (3, 3),
            stride: 1,
            dilation: 1,
            groups: 1,
            padding: Padding::Explicit {
                top: 0,
                bottom: 2,
                left: 1,
                right: 0,
            },
            pads: (0, 2, 1, 0),
        },
        // Depthwise, dilated, batch 2, on more planes than threads.
        ConvCase {
            n: 2,
            cin: 7,
            cout: 7,
            hw: (11, 9),
            k: (3, 3),
            stride: 1,
            dilation: 2,
            groups: 7,
            padding: p(2),
            pads: (2, 2, 2, 2),
        },
        // Depthwise on planes wider than 32 outputs: the per-plane kernel (narrower ones are
        // channel-blocked), stride 1 and stride 2 SAME.
        ConvCase {
            n: 1,
            cin: 3,
            cout: 3,
            hw: (6, 37),
            k: (3, 3),
            stride: 1,
            dilation: 1,
            groups: 3,
            padding: p(1),
            pads: (1, 1, 1, 1),
        },
        ConvCase {
            n: 2,
            cin: 2,
            cout: 2,
            hw: (7, 70),
            k: (5, 5),
            stride: 2,
            dilation: 1,
            groups: 2,
            padding: Padding::Same,
            pads: (2, 2, 1, 2),
        },
        // Channel-blocked with more channels than one block of 16, and a partial block, batch 2:
        // stride 1 (the flipped-kernel backward) and stride 2 (the scattering backward).
        ConvCase {
            n: 2,
            cin: 21,
            cout: 21,
            hw: (7, 7),
            k: (5, 5),
            stride: 1,
            dilation: 1,
            groups: 21,
            padding: Padding::Same,
            pads: (2, 2, 2, 2),
        },
        ConvCase {
            n: 2,
            cin: 18,
            cout: 18,
            hw: (8, 8),
            k: (3, 3),
            stride: 2,
            dilation: 1,
            groups: 18,
            padding: Padding::Same,
            pads: (0, 1, 0, 1),
        },
        // Channel-blocked, dilated, with uneven explicit padding.
        ConvCase {
            n: 1,
            cin: 17,
            cout: 17,
            hw: (8, 6),
            k: (3, 3),
            stride: 1,
            dilation: 2,
            groups: 17,
            padding: Padding::Explicit {
                top: 2,
                bottom: 1,
                left: 0,
                right: 2,
            },
            pads: (2, 1, 0, 2),
        },
        // Depthwise stride 3 with input rows and columns that no window reaches.
        ConvCase {
            n: 1,
            cin: 4,
            cout: 4,
            hw: (11, 12),
            k: (3, 3),
            stride: 3,
            dilation: 1,
            groups: 4,
            padding: Padding::Explicit {
                top: 1,
                bottom: 0,
                left: 0,
                right: 1,
            },
            pads: (1, 0, 0, 1),
        },
    ]
}

#[test]
fn conv_forward_matches_naive_reference() {
    let mut r = rng(1);
    for (i, case) in conv_cases().iter().enumerate() {
        let conv = conv_of(case, &mut r);
        let x = random(&[case.n, case.cin, case.hw.0, case.hw.1], &mut r);
        let y = conv.forward(&x).unwrap();
        let (shape, want) = naive_conv(&x, &conv, case.pads);
        assert_eq!(y.shape(), &shape[..], "case {i}");
        for (j, (a, b)) in y.data().iter().zip(&want).enumerate() {
            assert!(
                (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                "case {i} element {j}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn conv_input_gradient_matches_finite_differences() {
    let mut r = rng(2);
    for (i, case) in conv_cases().iter().enumerate() {
        let conv = conv_of(case, &mut r);
        let x = random(&[case.n, case.cin, case.hw.0, case.hw.1], &mut r);
        check_gradient(
            &x,
            |x| conv.forward(x).unwrap(),
            |x, g| conv.backward(x.shape(), g).unwrap(),
            1e-2,
            60,
            100 + i as u64,
        );
    }
}

#[test]
fn conv_gradient_is_the_exact_adjoint() {
    // ⟨conv(x), g⟩ = ⟨x, conv_backward(g)⟩ for linear (bias-free) convs, over every element at once.
    let mut r = rng(3);
    for (i, case) in conv_cases().iter().enumerate() {
        let mut conv = conv_of(case, &mut r);
        conv.bias = None;
        let x = random(&[case.n, case.cin, case.hw.0, case.hw.1], &mut r);
        let y = conv.forward(&x).unwrap();
        let g = random(y.shape(), &mut r);
        let dx = conv.backward(x.shape(), &g).unwrap();
        let (lhs, rhs) = (dot(&y, &g), dot(&x, &dx));
        assert!(
            (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
            "case {i}: {lhs} vs {rhs}"
        );
    }
}

/// Depthwise convolutions on random geometries: both kernels (per plane and channel-blocked),
/// every stride phase, tails and paddings wider than the kernel; forward against the naive
/// reference, backward as its exact adjoint.
#[test]
fn depthwise_matches_the_reference_on_random_geometries() {
    let mut r = rng(17);
    let mut tried = 0;
    while tried < 150 {
        let k = [1, 3, 5][r.gen_range(0..3)];
        let (stride, dilation) = (r.gen_range(1..4), r.gen_range(1..3));
        let pads = (
            r.gen_range(0..k + 1),
            r.gen_range(0..k + 1),
            r.gen_range(0..k + 1),
            r.gen_range(0..k + 1),
        );
        let hw = (r.gen_range(1..24), r.gen_range(1..48));
        let span = dilation * (k - 1) + 1;
        if hw.0 + pads.0 + pads.1 < span || hw.1 + pads.2 + pads.3 < span {
            continue;
        }
        tried += 1;
        let c = r.gen_range(1..40);
        let case = ConvCase {
            n: r.gen_range(1..3),
            cin: c,
            cout: c,
            hw,
            k: (k, k),
            stride,
            dilation,
            groups: c,
            padding: Padding::Explicit {
                top: pads.0,
                bottom: pads.1,
                left: pads.2,
                right: pads.3,
            },
            pads,
        };
        let mut conv = conv_of(&case, &mut r);
        let x = random(&[case.n, c, hw.0, hw.1], &mut r);
        let y = conv.forward(&x).unwrap();
        let (shape, want) = naive_conv(&x, &conv, pads);
        assert_eq!(
            y.shape(),
            &shape[..],
            "{tried}: {hw:?} k{k} s{stride} d{dilation} {pads:?}"
        );
        for (a, b) in y.data().iter().zip(&want) {
            assert!(
                (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                "{tried}: {hw:?} k{k} s{stride} d{dilation} {pads:?}: {a} vs {b}"
            );
        }
        conv.bias = None;
        let y = conv.forward(&x).unwrap();
        let g = random(y.shape(), &mut r);
        let dx = conv.backward(x.shape(), &g).unwrap();
        let (lhs, rhs) = (dot(&y, &g), dot(&x, &dx));
        assert!(
            (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
            "{tried}: {hw:?} k{k} s{stride} d{dilation} {pads:?}: {lhs} vs {rhs}"
        );
    }
}

#[test]
fn conv_rejects_wrong_channels() {
    let mut r = rng(4);
    let conv = conv_of(&conv_cases()[0], &mut r);
    let x = random(&[1, 4, 5, 5], &mut r);
    assert!(conv.forward(&x).is_err());
}

#[test]
fn max_pool_forward_and_gradient() {
    let mut r = rng(5);
    let pools = [
        MaxPool2d::square(2, 2),
        MaxPool2d {
            kernel: (3, 3),
            stride: (2, 2),
            padding: (0, 0),
            dilation: (1, 1),
            ceil_mode: true,
        },
        MaxPool2d {
            kernel: (3, 3),
            stride: (2, 2),
            padding: (1, 1),
            dilation: (1, 1),
            ceil_mode: false,
        },
    ];
    for (i, pool) in pools.iter().enumerate() {
        // Distinct values 0.01 apart: no near-tie within a window can flip under the FD step.
        let mut values: Vec<f32> = (0..432).map(|v| v as f32 * 0.01 - 2.0).collect();
        for j in (1..values.len()).rev() {
            values.swap(j, r.gen_range(0..=j));
        }
        let x = Tensor::new(vec![2, 3, 9, 8], values).unwrap();
        let y = pool.forward(&x).unwrap();
        // Shapes as PyTorch computes them.
        let want = [[2, 3, 4, 4], [2, 3, 4, 4], [2, 3, 5, 4]][i];
        assert_eq!(y.shape(), &want, "pool {i}");
        // Every output is the max of its window.
        let (oh, ow) = (want[2], want[3]);
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..pool.kernel.0 {
                    for kx in 0..pool.kernel.1 {
                        let iy = (oy * pool.stride.0 + ky) as isize - pool.padding.0 as isize;
                        let ix = (ox * pool.stride.1 + kx) as isize - pool.padding.1 as isize;
                        if iy >= 0 && ix >= 0 && iy < 9 && ix < 8 {
                            m = m.max(x.data()[iy as usize * 8 + ix as usize]);
                        }
                    }
                }
                assert_eq!(y.data()[oy * ow + ox], m);
            }
        }
        check_gradient(
            &x,
            |x| pool.forward(x).unwrap(),
            |x, g| pool.backward(x, g).unwrap(),
            1e-3,
            60,
            200 + i as u64,
        );
    }
}

#[test]
fn avg_pools_forward_and_gradient() {
    let mut r = rng(6);
    let x = random(&[2, 3, 7, 9], &mut r);
    let pools = [
        AvgPool2d {
            kernel: (2, 2),
            stride: (2, 2),
            padding: (0, 0),
            ceil_mode: false,
            count_include_pad: true,
        },
        AvgPool2d {
            kernel: (3, 3),
            stride: (2, 2),
            padding: (1, 1),
            ceil_mode: true,
            count_include_pad: true,
        },
        AvgPool2d {
            kernel: (3, 3),
            stride: (2, 2),
            padding: (1, 1),
            ceil_mode: false,
            count_include_pad: false,
        },
    ];
    for (i, pool) in pools.iter().enumerate() {
        check_gradient(
            &x,
            |x| pool.forward(x).unwrap(),
            |x, g| pool.backward(x.shape(), g).unwrap(),
            1e-2,
            40,
            300 + i as u64,
        );
    }
    // Corner of a padded window that counts padding: one real element of nine... PyTorch divides
    // the top-left 3×3 window at padding 1 by 9 with count_include_pad, by 4 without.
    let ones = Tensor::full(&[1, 1, 7, 9], 1.0);
    assert!((pools[1].forward(&ones).unwrap().data()[0] - 4.0 / 9.0).abs() < 1e-6);
    assert!((pools[2].forward(&ones).unwrap().data()[0] - 1.0).abs() < 1e-6);

    for out in [(1, 1), (3, 4), (7, 9)] {
        let pool = AdaptiveAvgPool2d { output: out };
        check_gradient(
            &x,
            |x| pool.forward(x).unwrap(),
            |x, g| pool.backward(x.shape(), g).unwrap(),
            1e-2,
            40,
            310,
        );
    }
    // Global average: the mean of each plane.
    let g = AdaptiveAvgPool2d { output: (1, 1) }.forward(&x).unwrap();
    let mean0: f32 = x.data()[..63].iter().sum::<f32>() / 63.0;
    assert!((g.data()[0] - mean0).abs() < 1e-5);
    // PyTorch's adaptive bins for 7 → 3: [0,3), [2,5), [4,7).
    let ramp = Tensor::new(vec![1, 1, 7, 1], (0..7).map(|v| v as f32).collect()).unwrap();
    let a = AdaptiveAvgPool2d { output: (3, 1) }.forward(&ramp).unwrap();
    assert_eq!(a.data(), &[1.0, 3.0, 5.0]);
}

#[test]
fn elementwise_and_dense_gradients() {
    let mut r = rng(7);
    let x = away_from_zero(&[2, 3, 5, 4], &mut r);
    check_gradient(&x, relu, |x, g| relu_backward(&relu(x), g), 1e-3, 60, 400);
    let x6 = Tensor::new(
        x.shape().to_vec(),
        x.data().iter().map(|v| v * 8.0 + 3.0).collect(),
    )
    .unwrap();
    check_gradient(&x6, relu6, relu6_backward, 1e-3, 60, 401);
    assert_eq!(
        relu6(&Tensor::new(vec![3], vec![-1.0, 3.0, 7.5]).unwrap()).data(),
        &[0.0, 3.0, 6.0]
    );

    let bn = ChannelAffine::from_batch_norm(
        &[1.0, 2.0, 0.5],
        &[0.1, -0.2, 0.3],
        &[0.5, -1.0, 2.0],
        &[4.0, 0.25, 1.0],
        0.0,
    );
    let y = bn.forward(&x).unwrap();
    // (x − mean) / sqrt(var) · weight + bias, element 0 is channel 0.
    assert!((y.data()[0] - ((x.data()[0] - 0.5) / 2.0 + 0.1)).abs() < 1e-6);
    check_gradient(
        &x,
        |x| bn.forward(x).unwrap(),
        |_, g| bn.backward(g).unwrap(),
        1e-2,
        40,
        402,
    );

    let lin = Linear {
        in_features: 60,
        out_features: 7,
        weight: (0..420).map(|_| r.gen_range(-0.5..0.5)).collect(),
        bias: Some((0..7).map(|_| r.gen_range(-0.5..0.5)).collect()),
    };
    let flat = random(&[2, 60], &mut r);
    let y = lin.forward(&flat).unwrap();
    let want: f32 = (0..60)
        .map(|i| flat.data()[60 + i] * lin.weight[3 * 60 + i])
        .sum::<f32>()
        + lin.bias.as_ref().unwrap()[3];
    assert!((y.data()[7 + 3] - want).abs() < 1e-5);
    check_gradient(
        &flat,
        |x| lin.forward(x).unwrap(),
        |_, g| lin.backward(g).unwrap(),
        1e-2,
        40,
        403,
    );
}

/// A residual block: conv → bn → relu6 → depthwise → bn → relu → add(input) → pool → flatten
/// → linear, differentiated through the graph as a whole (both batch norms run fused with
/// their activation).
#[test]
fn graph_gradient_through_a_residual_network() {
    let mut r = rng(8);
    let case = |cin, cout, k, groups, stride| ConvCase {
        n: 2,
        cin,
        cout,
        hw: (8, 8),
        k: (k, k),
        stride,
        dilation: 1,
        groups,
        padding: Padding::Same,
        pads: (0, 0, 0, 0),
    };
    let mut g = Graph::new();
    let c1 = g.then("conv", conv_of(&case(3, 4, 3, 1, 1), &mut r));
    g.then(
        "bn",
        ChannelAffine {
            scale: vec![1.5, 0.7, 1.1, 0.9],
            shift: vec![0.1, 0.2, -0.1, 0.0],
        },
    );
    g.then("act", Relu6);
    g.then("dw", conv_of(&case(4, 4, 3, 4, 1), &mut r));
    g.then(
        "bn2",
        ChannelAffine {
            scale: vec![0.8, -1.2, 1.3, 0.6],
            shift: vec![0.3, 0.1, -0.2, 0.05],
        },
    );
    let dw = g.then("act2", Relu);
    g.push("add", Add, &[dw, c1]);
    g.then("relu", Relu);
    g.then("pool", MaxPool2d::square(2, 2));
    g.then("gap", AdaptiveAvgPool2d { output: (2, 2) });
    g.then("flat", Flatten);
    g.then("drop", Identity);
    let fc = g.then(
        "fc",
        Linear {
            in_features: 16,
            out_features: 3,
            weight: (0..48).map(|_| r.gen_range(-1.0..1.0)).collect(),
            bias: None,
        },
    );
    let x = random(&[2, 3, 8, 8], &mut r);
    for target in [c1, dw, fc] {
        check_gradient(
            &x,
            |x| g.forward(x.clone(), target).unwrap().output().clone(),
            |x, gy| {
                let t = g.forward(x.clone(), target).unwrap();
                g.backward(&t, gy.clone()).unwrap()
            },
            1e-3,
            50,
            500 + target as u64,
        );
    }
    assert_eq!(
        g.shapes(&[2, 3, 8, 8], fc).unwrap()[fc].as_deref(),
        Some(&[2usize, 3][..])
    );
}

/// A loss over two nodes at once equals the sum of the two single-node gradients.
#[test]
fn backward_multi_sums_the_gradients_of_several_nodes() {
    let mut r = rng(9);
    let case = ConvCase {
        n: 1,
        cin: 3,
        cout: 4,
        hw: (6, 6),
        k: (3, 3),
        stride: 1,
        dilation: 1,
        groups: 1,
        padding: Padding::symmetric(1),
        pads: (1, 1, 1, 1),
    };
    let mut g = Graph::new();
    let a = g.then("a", conv_of(&case, &mut r));
    g.then("relu", Relu);
    let case2 = ConvCase { cin: 4, ..case };
    let b = g.then("b", conv_of(&case2, &mut r));
    let x = away_from_zero(&[1, 3, 6, 6], &mut r);
    let trace = g.forward_multi(x.clone(), &[b, a]).unwrap();
    assert_eq!(trace.targets(), &[a, b]);
    let ga = random(trace.value(a).unwrap().shape(), &mut r);
    let gb = random(trace.value(b).unwrap().shape(), &mut r);
    let both = g
        .backward_multi(&trace, vec![(a, ga.clone()), (b, gb.clone())])
        .unwrap();
    let only_a = g.backward(&g.forward(x.clone(), a).unwrap(), ga).unwrap();
    let only_b = g.backward(&g.forward(x, b).unwrap(), gb).unwrap();
    for ((s, p), q) in both.data().iter().zip(only_a.data()).zip(only_b.data()) {
        assert!((s - (p + q)).abs() < 1e-5);
    }
}

/// Dense 3×3 stride-1 convolutions with at least 16 channels: the cases `ConvAlgo::Auto` sends
/// to Winograd. Output sizes not divisible by the 4×4 tile, padding 0/1/SAME/asymmetric, batch
/// > 1, blocks spanning two images, and enough tile rows for the parallel-block schedule.
fn winograd_cases() -> Vec<ConvCase> {
    let p = Padding::symmetric;
    let case = |n, cin, cout, hw, padding, pads| ConvCase {
        n,
        cin,
        cout,
        hw,
        k: (3, 3),
        stride: 1,
        dilation: 1,
        groups: 1,
        padding,
        pads,
    };
    vec![
        case(2, 16, 20, (9, 11), p(1), (1, 1, 1, 1)),
        case(1, 17, 16, (13, 8), p(0), (0, 0, 0, 0)),
        case(3, 16, 16, (4, 4), p(1), (1, 1, 1, 1)),
        case(2, 16, 18, (14, 14), p(1), (1, 1, 1, 1)),
        case(1, 32, 24, (70, 66), p(1), (1, 1, 1, 1)),
        case(2, 16, 16, (10, 7), Padding::Same, (1, 1, 1, 1)),
        case(
            1,
            16,
            19,
            (7, 9),
            Padding::Explicit {
                top: 0,
                bottom: 2,
                left: 1,
                right: 0,
            },
            (0, 2, 1, 0),
        ),
        case(1, 16, 16, (3, 5), p(1), (1, 1, 1, 1)),
        // Tile rows of 16 tiles or more, which fill the transforms' vectors: two full chunks
        // of 16 tiles and one of a single tile; exactly one chunk, unpadded, two images;
        // enough tile rows for the parallel-block schedule; padding on one side only.
        case(1, 16, 16, (9, 130), p(1), (1, 1, 1, 1)),
        case(2, 16, 17, (21, 66), p(0), (0, 0, 0, 0)),
        case(2, 16, 16, (60, 256), p(1), (1, 1, 1, 1)),
        // Wide enough channels for 64-tile blocks: 9 tile rows of 17 per image, 18 in all,
        // split into 5 near-equal blocks rather than 4 + a remainder.
        case(2, 136, 136, (34, 68), p(1), (1, 1, 1, 1)),
        case(
            1,
            16,
            16,
            (10, 70),
            Padding::Explicit {
                top: 2,
                bottom: 0,
                left: 2,
                right: 0,
            },
            (2, 0, 2, 0),
        ),
    ]
}

const ALGOS: [ConvAlgo; 3] = [ConvAlgo::Im2col, ConvAlgo::Winograd, ConvAlgo::Auto];

#[test]
fn every_conv_algorithm_matches_the_naive_reference() {
    let mut r = rng(11);
    for (i, case) in conv_cases().iter().chain(&winograd_cases()).enumerate() {
        let conv = conv_of(case, &mut r);
        let x = random(&[case.n, case.cin, case.hw.0, case.hw.1], &mut r);
        let (shape, want) = naive_conv(&x, &conv, case.pads);
        for algo in ALGOS {
            let y = conv.forward_with(&x, algo).unwrap();
            assert_eq!(y.shape(), &shape[..], "case {i} {algo:?}");
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (j, (a, b)) in y.data().iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-5 * (1.0 + scale),
                    "case {i} {algo:?} element {j}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn every_conv_algorithm_has_the_reference_input_gradient() {
    let mut r = rng(12);
    for (i, case) in conv_cases().iter().chain(&winograd_cases()).enumerate() {
        let mut conv = conv_of(case, &mut r);
        conv.bias = None;
        let x = random(&[case.n, case.cin, case.hw.0, case.hw.1], &mut r);
        let shape = conv.output_shape(x.shape()).unwrap();
        let g = random(&shape, &mut r);
        let want = conv.backward_with(x.shape(), &g, ConvAlgo::Im2col).unwrap();
        let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        for algo in ALGOS {
            // Each algorithm's gradient is the adjoint of its own forward pass...
            let y = conv.forward_with(&x, algo).unwrap();
            let dx = conv.backward_with(x.shape(), &g, algo).unwrap();
            let (lhs, rhs) = (dot(&y, &g), dot(&x, &dx));
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                "case {i} {algo:?}: {lhs} vs {rhs}"
            );
            // ...and agrees with the reference path element by element.
            for (j, (a, b)) in dx.data().iter().zip(want.data()).enumerate() {
                assert!(
                    ((a - b) as f64).abs() < 1e-5 * (1.0 + scale),
                    "case {i} {algo:?} element {j}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn winograd_input_gradient_matches_finite_differences() {
    let mut r = rng(13);
    for (i, case) in winograd_cases().iter().enumerate() {
        let conv = conv_of(case, &mut r);
        let x = random(&[case.n, case.cin, case.hw.0, case.hw.1], &mut r);
        check_gradient(
            &x,
            |x| conv.forward_with(x, ConvAlgo::Winograd).unwrap(),
            |x, g| {
                conv.backward_with(x.shape(), g, ConvAlgo::Winograd)
                    .unwrap()
            },
            1e-2,
            30,
            200 + i as u64,
        );
    }
}

#[test]
fn winograd_cache_follows_weight_changes() {
    let mut r = rng(14);
    let case = &winograd_cases()[0];
    let mut conv = conv_of(case, &mut r);
    let x = random(&[case.n, case.cin, case.hw.0, case.hw.1], &mut r);
    let before = conv.forward_with(&x, ConvAlgo::Winograd).unwrap();
    conv.weight = conv.weight.iter().map(|w| -w).collect();
    let after = conv.forward_with(&x, ConvAlgo::Winograd).unwrap();
    let reference = conv.forward_with(&x, ConvAlgo::Im2col).unwrap();
    assert_ne!(before, after);
    for (a, b) in after.data().iter().zip(reference.data()) {
        assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// Conv2d → ReLU and (sigmoid →) batch norm → ReLU6 run fused unless the first node's output
/// is wanted:
/// values and input gradients must be the same either way, bit for bit.
#[test]
fn fused_pairs_match_the_unfused_graph() {
    let mut r = rng(15);
    let case = ConvCase {
        n: 2,
        cin: 3,
        cout: 6,
        hw: (9, 8),
        k: (3, 3),
        stride: 1,
        dilation: 1,
        groups: 1,
        padding: Padding::symmetric(1),
        pads: (1, 1, 1, 1),
    };
    let mut g = Graph::new();
    let conv = g.then("conv", conv_of(&case, &mut r));
    g.then("relu", Relu);
    let case2 = ConvCase {
        cin: 6,
        cout: 5,
        ..case
    };
    g.then("conv2", conv_of(&case2, &mut r));
    // Not a convolution before the batch norm, which would fold the norm into itself.
    g.then("conv2.act", Unary(UnaryKind::Sigmoid));
    let bn = g.then(
        "bn",
        ChannelAffine {
            scale: (0..5).map(|_| r.gen_range(0.5..3.0)).collect(),
            shift: (0..5).map(|_| r.gen_range(-1.0..4.0)).collect(),
        },
    );
    let last = g.then("relu6", Relu6);
    let x = random(&[2, 3, 9, 8], &mut r);
    let fused = g.forward(x.clone(), last).unwrap();
    assert!(fused.value(conv).is_none() && fused.value(bn).is_none());
    let seed = random(fused.output().shape(), &mut r);
    let dx_fused = g.backward(&fused, seed.clone()).unwrap();
    // Asking for the first nodes' outputs turns both fusions off.
    let plain = g.forward_multi(x, &[conv, bn, last]).unwrap();
    assert!(plain.value(conv).is_some() && plain.value(bn).is_some());
    assert_eq!(plain.output().data(), fused.output().data());
    let dx_plain = g.backward(&plain, seed).unwrap();
    assert_eq!(dx_plain.data(), dx_fused.data());
    // A gradient seeded at a fused-away node still flows.
    let extra = random(plain.value(bn).unwrap().shape(), &mut r);
    let both = g
        .backward_multi(
            &fused,
            vec![
                (last, Tensor::zeros(fused.output().shape())),
                (bn, extra.clone()),
            ],
        )
        .unwrap();
    let want = g.backward_multi(&plain, vec![(bn, extra)]).unwrap();
    assert_eq!(both.data(), want.data());
}

/// Winograd convolutions followed by a ReLU mask the output gradient while transforming it
/// (`Conv2d::backward_relu`); that must give exactly what masking it first gives.
#[test]
fn a_relu_after_a_winograd_conv_is_masked_in_its_backward() {
    let mut r = rng(16);
    let case = ConvCase {
        n: 2,
        cin: 16,
        cout: 16,
        hw: (13, 22),
        k: (3, 3),
        stride: 1,
        dilation: 1,
        groups: 1,
        padding: Padding::symmetric(1),
        pads: (1, 1, 1, 1),
    };
    let mut g = Graph::new();
    let conv = g.then("conv", conv_of(&case, &mut r));
    g.then("relu", Relu);
    let conv2 = g.then("conv2", conv_of(&case, &mut r));
    let last = g.then("relu2", Relu);
    let x = random(&[2, 16, 13, 22], &mut r);
    let fused = g.forward(x.clone(), last).unwrap();
    assert!(fused.value(conv).is_none() && fused.value(conv2).is_none());
    // About half the gradient is masked: the ReLUs' outputs are zero there.
    let zeros = fused.output().data().iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > fused.output().data().len() / 4, "{zeros}");
    let seed = random(fused.output().shape(), &mut r);
    let dx_fused = g.backward(&fused, seed.clone()).unwrap();
    let plain = g.forward_multi(x, &[conv, conv2, last]).unwrap();
    let dx_plain = g.backward(&plain, seed).unwrap();
    assert_eq!(dx_plain.data(), dx_fused.data());
}

/// The 2×2 max pool's tie and NaN rules, as PyTorch's: ties go to the first element of the
/// window in scan order, and a NaN wins.
#[test]
fn max_pool_2x2_ties_and_nans() {
    let pool = MaxPool2d::square(2, 2);
    let nan = f32::NAN;
    #[rustfmt::skip]
    let x = Tensor::new(vec![1, 1, 3, 5], vec![
        1.0, 1.0, 0.0, 2.0, 9.0,
        1.0, 1.0, nan, 2.0, 9.0,
        7.0, 7.0, 7.0, 7.0, 7.0,
    ]).unwrap();
    let y = pool.forward(&x).unwrap();
    assert_eq!(y.shape(), &[1, 1, 1, 2]);
    assert_eq!(y.data()[0], 1.0);
    assert!(y.data()[1].is_nan());
    let dx = pool
        .backward(&x, &Tensor::new(vec![1, 1, 1, 2], vec![3.0, 5.0]).unwrap())
        .unwrap();
    #[rustfmt::skip]
    let want = [
        3.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 5.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(dx.data(), &want);
}

/// Set in the child processes of `every_simd_level_passes_this_suite`.
const SIMD_ENV: &str = "DEEPVIS_SIMD";

#[test]
fn every_simd_level_passes_this_suite() {
    if std::env::var_os(SIMD_ENV).is_some() {
        return; // a child run: `simd_level_follows_the_environment` checks the level.
    }
    // This machine's own level ran above; the narrower paths run the same suite in child
    // processes (the level is process-wide, and tests run in parallel).
    let exe = std::env::current_exe().unwrap();
    for level in [SimdLevel::Portable, SimdLevel::Avx2] {
        if level > detected_simd() {
            continue;
        }
        let out = std::process::Command::new(&exe)
            .env(SIMD_ENV, level.name())
            .args(["--test-threads", "2"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the suite failed with {SIMD_ENV}={}:\n{}\n{}",
            level.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains("simd_level_follows_the_environment ... ok"),
            "{report}"
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

#[test]
fn computing_only_the_read_channels_changes_nothing_they_feed() {
    let mut r = rng(31);
    let case = ConvCase {
        n: 2,
        cin: 3,
        cout: 8,
        hw: (12, 12),
        k: (3, 3),
        stride: 1,
        dilation: 1,
        groups: 1,
        padding: Padding::symmetric(1),
        pads: (1, 1, 1, 1),
    };
    let mut g = Graph::new();
    g.then("conv", conv_of(&case, &mut r));
    g.then("relu", Relu);
    let conv2 = g.then(
        "conv2",
        conv_of(
            &ConvCase {
                cin: 8,
                cout: 16,
                ..case
            },
            &mut r,
        ),
    );
    let relu2 = g.then("relu2", Relu);
    let x = random(&[2, 3, 12, 12], &mut r);
    // (The algorithm is process-wide and tests run in parallel, so this one keeps `Auto`.)
    for target in [conv2, relu2] {
        let full = g.forward(x.clone(), target).unwrap();
        // Image 0 reads channel 11, image 1 channels 3 and 11 (in any order, repeated).
        let chosen = [11, 3, 11];
        let part = g.forward_channels(x.clone(), &[target], &chosen).unwrap();
        assert_eq!(part.computed_channels(target), Some(&[3, 11][..]));
        assert_eq!(full.computed_channels(target), None);
        let plane = 144;
        let (f, p) = (full.output().data(), part.output().data());
        let mut seed = Tensor::zeros(full.output().shape());
        for (b, chs) in [(0usize, &[11usize][..]), (1, &[3, 11][..])] {
            for &c in chs {
                let at = (b * 16 + c) * plane;
                for k in 0..plane {
                    assert!((f[at + k] - p[at + k]).abs() <= 1e-5 * f[at + k].abs().max(1.0));
                    seed.data_mut()[at + k] = r.gen_range(-1.0..1.0);
                }
            }
        }
        // Channels that were not computed read as zero.
        assert!(p[(16 + 5) * plane..][..plane].iter().all(|&v| v == 0.0));
        let dx_full = g.backward(&full, seed.clone()).unwrap();
        let dx_part = g.backward(&part, seed).unwrap();
        for (a, b) in dx_full.data().iter().zip(dx_part.data()) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
    // Not a convolution: the whole output, as forward_multi.
    let pool = g.then("pool", MaxPool2d::square(2, 2));
    let t = g.forward_channels(x, &[pool], &[1]).unwrap();
    assert_eq!(t.computed_channels(pool), None);
}

#[test]
fn max_pool_2x2_wide_rows_with_ties_and_nans_match_a_naive_reference() {
    // Wide enough for several 16-window vectors plus a remainder, odd height and width, values
    // from a small set (ties everywhere) and some NaNs.
    let mut r = rng(41);
    let (n, c, h, w) = (2, 3, 7, 75);
    let data: Vec<f32> = (0..n * c * h * w)
        .map(|_| match r.gen_range(0..20) {
            0 => f32::NAN,
            k => (k % 4) as f32 - 1.0,
        })
        .collect();
    let x = Tensor::new(vec![n, c, h, w], data.clone()).unwrap();
    let pool = MaxPool2d::square(2, 2);
    let y = pool.forward(&x).unwrap();
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(y.shape(), &[n, c, oh, ow]);
    let g = random(&[n, c, oh, ow], &mut r);
    let dx = pool.backward(&x, &g).unwrap();
    let mut want_dx = vec![0f32; data.len()];
    for p in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                // The first of the window's maxima in row-major order; a NaN after it wins.
                let at = |k: usize| p * h * w + (2 * oy + k / 2) * w + 2 * ox + k % 2;
                let mut best = 0;
                for k in 1..4 {
                    let (v, b) = (data[at(k)], data[at(best)]);
                    if v > b || v.is_nan() {
                        best = k;
                    }
                }
                let got = y.data()[(p * oh + oy) * ow + ox];
                let want = data[at(best)];
                assert!(
                    got == want || (got.is_nan() && want.is_nan()),
                    "{p} {oy} {ox}"
                );
                want_dx[at(best)] = g.data()[(p * oh + oy) * ow + ox];
            }
        }
    }
    assert_eq!(dx.data(), &want_dx[..]);
}

#[test]
fn a_relu_before_a_max_pool_is_folded_into_the_pools_backward() {
    let mut r = rng(21);
    // Wide enough for the 16-window vector path as well as the remainder.
    let case = ConvCase {
        n: 2,
        cin: 3,
        cout: 4,
        hw: (8, 42),
        k: (3, 3),
        stride: 1,
        dilation: 1,
        groups: 1,
        padding: Padding::symmetric(1),
        pads: (1, 1, 1, 1),
    };
    let conv = conv_of(&case, &mut r);
    let conv2 = conv_of(
        &ConvCase {
            cin: 4,
            cout: 3,
            hw: (4, 21),
            ..case
        },
        &mut r,
    );
    let pool = MaxPool2d::square(2, 2);
    let mut g = Graph::new();
    g.then("conv", conv.clone());
    let relu_node = g.then("relu", Relu);
    g.then("pool", pool.clone());
    let last = g.then("conv2", conv2.clone());
    let x = random(&[2, 3, 8, 42], &mut r);
    // The same chain op by op, with the ReLU's own backward pass.
    let y = relu(&conv.forward(&x).unwrap());
    let seed = random(&[2, 3, 4, 21], &mut r);
    let gp = conv2.backward(&[2, 4, 4, 21], &seed).unwrap();
    let by_hand = |gy: Tensor| conv.backward(x.shape(), &relu_backward(&y, &gy)).unwrap();
    let want = by_hand(pool.backward(&y, &gp).unwrap());
    // Negative pre-activations make all-zero windows, whose gradient the fold must drop.
    assert!(y.data().iter().filter(|&&v| v == 0.0).count() > y.numel() / 4);
    let trace = g.forward(x.clone(), last).unwrap();
    let got = g.backward(&trace, seed.clone()).unwrap();
    assert_eq!(got.data(), want.data());
    // Seeded at the ReLU as well, the fold is off: the seed must pass the ReLU's own mask.
    let extra = random(y.shape(), &mut r);
    let trace = g.forward_multi(x.clone(), &[relu_node, last]).unwrap();
    let got = g
        .backward_multi(&trace, vec![(last, seed), (relu_node, extra.clone())])
        .unwrap();
    let mut gy = pool.backward(&y, &gp).unwrap();
    gy.add_assign(&extra);
    assert_eq!(got.data(), by_hand(gy).data());
}

/// A value read by several ops gets the sum of their gradients, also where an op adds its
/// gradient into the sum directly (`Operator::backward_accumulate`): squeeze-excitation's pool
/// beside its product, a 1×1 convolution (with a batch norm folded in, and one fused with a
/// ReLU), and an im2col convolution (dilated, so not Winograd). Checked by finite differences.
#[test]
fn gradients_of_a_value_with_several_readers_add_up() {
    let mut r = rng(31);
    let case = |cin, cout, k: usize, dilation: usize| ConvCase {
        n: 2,
        cin,
        cout,
        hw: (7, 9),
        k: (k, k),
        stride: 1,
        dilation,
        groups: 1,
        padding: Padding::symmetric(dilation * (k / 2)),
        pads: (0, 0, 0, 0),
    };
    let mut g = Graph::new();
    let c0 = g.then("c0", conv_of(&case(3, 8, 3, 1), &mut r));
    let x = g.then("c0.act", Unary(UnaryKind::Tanh));
    let pool = g.push("se.pool", AdaptiveAvgPool2d { output: (1, 1) }, &[x]);
    g.then("se.fc", conv_of(&case(8, 8, 1, 1), &mut r));
    let gate = g.then("se.gate", Unary(UnaryKind::Sigmoid));
    let se = g.push("se", Binary(BinaryKind::Mul), &[gate, x]);
    let a = g.push("a", conv_of(&case(8, 8, 1, 1), &mut r), &[x]);
    let a = g.push(
        "a.bn",
        ChannelAffine {
            scale: (0..8).map(|_| r.gen_range(-2.0..2.0)).collect(),
            shift: (0..8).map(|_| r.gen_range(-1.0..1.0)).collect(),
        },
        &[a],
    );
    let b = g.push("b", conv_of(&case(8, 8, 1, 1), &mut r), &[x]);
    let b = g.push("b.relu", Relu, &[b]);
    let d = g.push("d", conv_of(&case(8, 8, 3, 2), &mut r), &[x]);
    let out = g.push("sum", Add, &[se, a, b, d]);
    let x0 = random(&[2, 3, 7, 9], &mut r);
    let trace = g.forward(x0.clone(), out).unwrap();
    assert!(trace.value(c0).is_none() && trace.value(pool).is_none());
    check_gradient(
        &x0,
        |x| g.forward(x.clone(), out).unwrap().output().clone(),
        |x, gy| {
            let t = g.forward(x.clone(), out).unwrap();
            g.backward(&t, gy.clone()).unwrap()
        },
        1e-3,
        60,
        77,
    );
}
