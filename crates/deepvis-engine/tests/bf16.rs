//! The bf16 precision against the float32 reference: forward values and input gradients of
//! every convolution path, within what rounding the GEMM inputs to 8 significant bits allows.

use deepvis_engine::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(shape: &[usize], r: &mut ChaCha8Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| r.gen_range(-1.0..1.0)).collect(),
    )
    .unwrap()
}

#[allow(clippy::too_many_arguments)]
fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    pad: usize,
    r: &mut ChaCha8Rng,
) -> Conv2d {
    let wn = cout * (cin / groups) * k * k;
    let c = Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: (k, k),
        stride: (stride, stride),
        dilation: (1, 1),
        groups,
        padding: Padding::symmetric(pad),
        weight: (0..wn).map(|_| r.gen_range(-0.5..0.5)).collect(),
        bias: Some((0..cout).map(|_| r.gen_range(-0.5..0.5)).collect()),
        cache: Default::default(),
    };
    c.validate().unwrap();
    c
}

/// max |a − b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let scale = b.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    a.data()
        .iter()
        .zip(b.data())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn bf16_convolutions_match_f32_within_bf16_tolerance() {
    if !bf16_supported() {
        eprintln!("skipped: this CPU lacks AVX512-BF16");
        return;
    }
    let mut r = ChaCha8Rng::seed_from_u64(21);
    // (n, cin, cout, hw, kernel, stride, groups, pad)
    let cases = [
        (1, 3, 64, 20, 3, 1, 1, 1),
        (2, 16, 20, 11, 3, 1, 1, 1),
        (1, 64, 64, 28, 3, 1, 1, 1),
        (1, 128, 96, 14, 3, 1, 1, 1),
        (1, 256, 256, 7, 3, 1, 1, 1),
        // 13 tiles per row: the register-blocked Winograd transforms.
        (2, 32, 40, 52, 3, 1, 1, 1),
        (2, 40, 240, 9, 1, 1, 1, 0),
        (1, 32, 48, 13, 3, 2, 1, 1),
        (1, 24, 36, 10, 3, 1, 3, 1),
        (1, 48, 48, 10, 5, 1, 48, 2),
    ];
    let mut worst = (0f32, 0f32);
    for (i, &(n, cin, cout, hw, k, s, groups, pad)) in cases.iter().enumerate() {
        let c = conv(cin, cout, k, s, groups, pad, &mut r);
        let x = random(&[n, cin, hw, hw], &mut r);
        let want = c
            .forward_with_precision(&x, ConvAlgo::Im2col, Precision::F32)
            .unwrap();
        let g = random(want.shape(), &mut r);
        let dwant = c
            .backward_with_precision(x.shape(), &g, ConvAlgo::Im2col, Precision::F32)
            .unwrap();
        for algo in [ConvAlgo::Im2col, ConvAlgo::Winograd, ConvAlgo::Auto] {
            let y = c.forward_with_precision(&x, algo, Precision::Bf16).unwrap();
            let dx = c
                .backward_with_precision(x.shape(), &g, algo, Precision::Bf16)
                .unwrap();
            let (ef, eb) = (rel_err(&y, &want), rel_err(&dx, &dwant));
            eprintln!("case {i} {algo:?}: forward {ef:.2e}, input gradient {eb:.2e}");
            // Winograd's output transform (coefficients up to 8, summing 36 products) magnifies
            // the rounding of its transform-domain operands about tenfold: ~2e-2 here against
            // ~2e-3 for im2col.
            let winograd = algo != ConvAlgo::Im2col && k == 3 && s == 1 && groups == 1 && {
                algo == ConvAlgo::Winograd || (cin >= 3 && cout >= 16)
            };
            let tol = if winograd { 5e-2 } else { 1e-2 };
            assert!(ef < tol, "case {i} {algo:?} forward: {ef}");
            assert!(eb < tol, "case {i} {algo:?} input gradient: {eb}");
            // Not accidentally float32 all along (depthwise convolutions stay f32, and so do
            // Winograd's GEMMs below 16 input channels).
            if groups != cin && !(winograd && cin < 16) {
                assert!(ef > 1e-6, "case {i} {algo:?}: bf16 looks like f32 ({ef})");
            }
            worst = (worst.0.max(ef), worst.1.max(eb));
        }
    }
    eprintln!(
        "worst relative error: forward {:.2e}, input gradient {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn precision_settings() {
    assert_eq!(Precision::parse("BF16"), Some(Precision::Bf16));
    assert_eq!(Precision::parse("f32"), Some(Precision::F32));
    assert_eq!(Precision::parse("half"), None);
    if bf16_supported() {
        // Setting f32 (the default) keeps other tests in this process unaffected.
        set_precision(Precision::F32).unwrap();
    } else {
        let e = set_precision(Precision::Bf16).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this CPU lacks AVX512-BF16; use --precision f32"
        );
    }
}
