//! Transforms and regularizers: exact vector-Jacobian products (central differences), known
//! values on small images, and the size arithmetic of Lucid's standard set.

use deepvis_render::transform::{
    gaussian_blur, lucid_standard, resize, PadMode, Pipeline, Regularizer, Transform,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(0.0..1.0)).collect()
}

/// Runs the pipeline with a fixed draw (same seed every time) and returns ⟨r, T(x)⟩.
fn loss(p: &mut Pipeline, x: &[f32], n: usize, h: usize, w: usize, r: &[f32]) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    p.forward(x, n, h, w, &mut rng);
    p.output()
        .iter()
        .zip(r)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum()
}

fn check_pipeline(transforms: Vec<Transform>, n: usize, h: usize, w: usize) {
    let label = format!("{transforms:?}");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = rand_vec(&mut rng, n * 3 * h * w);
    let mut p = Pipeline::new(transforms);
    let mut draw = ChaCha8Rng::seed_from_u64(99);
    let (oh, ow) = p.forward(&x, n, h, w, &mut draw);
    assert_eq!(p.output().len(), n * 3 * oh * ow);
    let r: Vec<f32> = (0..n * 3 * oh * ow)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let mut gin = vec![0.0; x.len()];
    p.backward(&r, &mut gin);
    let coords: Vec<usize> = (0..40).map(|_| rng.gen_range(0..x.len())).collect();
    let mut nonzero = 0;
    for i in coords {
        let eps = 0.25f32;
        let mut xp = x.clone();
        xp[i] += eps;
        let mut xm = x.clone();
        xm[i] -= eps;
        let fd =
            (loss(&mut p, &xp, n, h, w, &r) - loss(&mut p, &xm, n, h, w, &r)) / (2.0 * eps as f64);
        assert!(
            (fd - gin[i] as f64).abs() < 1e-4,
            "{label}: coordinate {i}: fd {fd} vs backward {}",
            gin[i]
        );
        nonzero += (fd.abs() > 1e-6) as usize;
    }
    assert!(nonzero > 0, "{label}: no coordinate had any effect");
}

#[test]
fn each_transform_has_exact_vjp() {
    let cases = vec![
        vec![Transform::Pad {
            amount: 3,
            mode: PadMode::Constant(0.5),
        }],
        vec![Transform::Pad {
            amount: 4,
            mode: PadMode::Reflect,
        }],
        vec![Transform::Jitter(3)],
        vec![Transform::RandomScale(vec![0.8, 1.3])],
        vec![Transform::RandomScale(vec![1.1])],
        vec![Transform::RandomRotate(vec![-10.0, 7.0, 25.0])],
        vec![Transform::Crop {
            height: 7,
            width: 5,
        }],
        lucid_standard(),
    ];
    for t in cases {
        check_pipeline(t, 2, 11, 12);
    }
}

#[test]
fn pad_values() {
    // One 1×3 plane [1, 2, 3] (three channels alike), reflect-padded by 2: numpy gives
    // [3, 2, 1, 2, 3, 2, 1] along the row.
    let x: Vec<f32> = [1.0, 2.0, 3.0].repeat(3);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut p = Pipeline::new(vec![Transform::Pad {
        amount: 2,
        mode: PadMode::Reflect,
    }]);
    let (oh, ow) = p.forward(&x, 1, 1, 3, &mut rng);
    assert_eq!((oh, ow), (5, 7));
    assert_eq!(
        &p.output()[2 * 7..3 * 7],
        &[3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]
    );
    let mut p = Pipeline::new(vec![Transform::Pad {
        amount: 1,
        mode: PadMode::Constant(0.5),
    }]);
    p.forward(&x, 1, 1, 3, &mut rng);
    assert_eq!(&p.output()[..5], &[0.5; 5]);
    assert_eq!(&p.output()[5..10], &[0.5, 1.0, 2.0, 3.0, 0.5]);
}

#[test]
fn identity_cases_and_rotation() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x = rand_vec(&mut rng, 3 * 9 * 9);
    for t in [
        Transform::RandomScale(vec![1.0]),
        Transform::RandomRotate(vec![0.0]),
        Transform::Jitter(0),
    ] {
        let mut p = Pipeline::new(vec![t.clone()]);
        p.forward(&x, 1, 9, 9, &mut rng);
        for (a, b) in p.output().iter().zip(&x) {
            assert!((a - b).abs() < 1e-6, "{t}: not the identity");
        }
    }
    // 90° rotation of a square about its centre is an exact permutation: output (y, x) reads
    // input (x, w−1−y) for a counter-clockwise turn of the content.
    let mut p = Pipeline::new(vec![Transform::RandomRotate(vec![90.0])]);
    p.forward(&x, 1, 9, 9, &mut rng);
    let out = p.output();
    for y in 0..9 {
        for xx in 0..9 {
            let v = out[y * 9 + xx];
            let src = x[xx * 9 + (8 - y)];
            let src2 = x[(8 - xx) * 9 + y];
            assert!(
                (v - src).abs() < 1e-5 || (v - src2).abs() < 1e-5,
                "rotation by 90° is not a permutation at ({y}, {xx})"
            );
        }
    }
}

#[test]
fn jitter_is_a_shifted_crop_and_lucid_sizes() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = rand_vec(&mut rng, 3 * 10 * 10);
    let mut p = Pipeline::new(vec![Transform::Jitter(4)]);
    let (oh, ow) = p.forward(&x, 1, 10, 10, &mut rng);
    assert_eq!((oh, ow), (6, 6));
    let out = p.output().to_vec();
    // Find the offset by matching the first pixel and check the whole crop.
    let found = (0..=4)
        .flat_map(|dy| (0..=4).map(move |dx| (dy, dx)))
        .any(|(dy, dx)| {
            (0..6).all(|y| (0..6).all(|xx| out[y * 6 + xx] == x[(y + dy) * 10 + xx + dx]))
        });
    assert!(found);
    // Lucid's set at 128: 128 + 24 − 8 = 144, scaled by 0.9..1.1, rotated, − 4.
    let mut p = Pipeline::new(lucid_standard());
    let img = vec![0.5; 3 * 128 * 128];
    for _ in 0..20 {
        let (oh, ow) = p.forward(&img, 1, 128, 128, &mut rng);
        assert_eq!(oh, ow);
        assert!((126..=155).contains(&oh), "size {oh}");
        // A grey image stays grey: padding and rotation fill with 0.5.
        assert!(p.output().iter().all(|v| (v - 0.5).abs() < 1e-5));
    }
}

#[test]
fn resize_matches_hand_values() {
    // Upsampling [0, 1] to 4 px with half-pixel centres: [0, 0.25, 0.75, 1].
    let x: Vec<f32> = [0.0, 1.0].repeat(3);
    let y = resize(&x, 1, 1, 2, 1, 4);
    assert_eq!(&y[..4], &[0.0, 0.25, 0.75, 1.0]);
    // Area downsampling of [0, 1, 2, 3] to 2 px: [0.5, 2.5].
    let x: Vec<f32> = [0.0, 1.0, 2.0, 3.0].repeat(3);
    let y = resize(&x, 1, 1, 4, 1, 2);
    assert_eq!(&y[..2], &[0.5, 2.5]);
}

#[test]
fn penalties_have_exact_gradients() {
    let (n, h, w) = (2, 5, 6);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x = rand_vec(&mut rng, n * 3 * h * w);
    for reg in [
        Regularizer::L2 { weight: 0.7 },
        Regularizer::TotalVariation { weight: 1.3 },
    ] {
        let mut v = vec![0.0; n];
        let mut g = vec![0.0; x.len()];
        reg.penalty(&x, n, h, w, &mut v, &mut g);
        let total = |x: &[f32]| {
            let mut v = vec![0.0; n];
            let mut g = vec![0.0; x.len()];
            reg.penalty(x, n, h, w, &mut v, &mut g);
            v.iter().map(|a| *a as f64).sum::<f64>()
        };
        for i in (0..x.len()).step_by(7) {
            let eps = 1e-3;
            let mut xp = x.clone();
            xp[i] += eps;
            let mut xm = x.clone();
            xm[i] -= eps;
            let fd = (total(&xp) - total(&xm)) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() < 2e-3,
                "{reg}: coordinate {i}: fd {fd} vs {}",
                g[i]
            );
        }
    }
    // Hand value: TV of one 1×2 image with channels [0, 1], [0, 0], [0, 0] is 1 / (1·2).
    let x = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let mut v = vec![0.0];
    let mut g = vec![0.0; 6];
    Regularizer::TotalVariation { weight: 1.0 }.penalty(&x, 1, 1, 2, &mut v, &mut g);
    assert!((v[0] - 0.5).abs() < 1e-6);
    assert_eq!(&g[..2], &[-0.5, 0.5]);
}

#[test]
fn image_operations() {
    // Blur keeps a constant image and the mean of a delta (away from the edges).
    let (h, w) = (21, 21);
    let mut x = vec![0.0; 3 * h * w];
    x[10 * w + 10] = 1.0;
    gaussian_blur(&mut x, 3, h, w, 1.5);
    let s: f32 = x[..h * w].iter().sum();
    assert!((s - 1.0).abs() < 1e-4 && x[10 * w + 10] < 0.2 && x[10 * w + 11] > 0.0);
    // Clipping by norm greys the weakest pixels only.
    let mut img = vec![0.5; 3 * 4];
    for (p, d) in [0.0f32, 0.1, 0.3, 0.4].iter().enumerate() {
        img[p] = 0.5 + d;
    }
    let r = Regularizer::ClipNorm {
        percentile: 50.0,
        every: 1,
    };
    assert!(r.apply(0, &mut img, &[0.0; 12], 1, 2, 2));
    assert_eq!(&img[..4], &[0.5, 0.5, 0.8, 0.9]);
    let r = Regularizer::Blur {
        sigma: 1.0,
        every: 3,
    };
    assert!(!r.apply(0, &mut img, &[0.0; 12], 1, 2, 2));
    assert!(r.apply(2, &mut img, &[0.0; 12], 1, 2, 2));
}
