//! Inputs that are not square RGB: 1, 2 and 4 channels and H ≠ W through the FFT, every
//! parametrization, the transforms and the render loop on ONNX models of such inputs.

use deepvis_models::onnx::{load, InputSpec};
use deepvis_models::{Model, Normalization};
use deepvis_render::fft::{rfft2_freqs, Fft2};
use deepvis_render::param::{Fourier, Maco, Param, ParamKind, Pixel};
use deepvis_render::transform::{lucid_standard, resize, Pipeline, Regularizer};
use deepvis_render::{
    dream, render, seed_init_shaped, seed_settings_hw, BatchObjective, DreamSettings, Init,
    Objective, Preset,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustfft::num_complex::Complex32;
use std::path::PathBuf;

fn rand_vec(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

#[test]
fn fft_of_non_square_images_round_trips_and_matches_the_definition() {
    for (h, w) in [(6, 10), (7, 4), (3, 16), (48 / 8, 192 / 8)] {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let x = rand_vec(&mut rng, h * w, -1.0, 1.0);
        let mut fft = Fft2::new(h, w);
        let wf = w / 2 + 1;
        assert_eq!(
            (fft.height(), fft.width(), fft.spectrum_width()),
            (h, w, wf)
        );
        let mut spec = vec![Complex32::new(0.0, 0.0); h * wf];
        fft.forward(&x, &mut spec);
        // One entry against the DFT's definition: the frequency runs over H in rows and over
        // W in columns (a transposed transform would differ).
        let (m, k) = (1, wf - 1);
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for y in 0..h {
            for xx in 0..w {
                let th = -2.0
                    * std::f64::consts::PI
                    * ((m * y) as f64 / h as f64 + (k * xx) as f64 / w as f64);
                re += x[y * w + xx] as f64 * th.cos();
                im += x[y * w + xx] as f64 * th.sin();
            }
        }
        let s = 1.0 / ((h * w) as f64).sqrt();
        let z = spec[m * wf + k];
        assert!((z.re as f64 - re * s).abs() < 1e-4 && (z.im as f64 - im * s).abs() < 1e-4);
        let mut back = vec![0.0; h * w];
        fft.inverse(&spec, &mut back);
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() < 1e-5, "{h}x{w}: {a} vs {b}");
        }
        // 1/f: rows carry numpy's fftfreq(h), columns rfftfreq(w).
        let f = rfft2_freqs(h, w);
        assert_eq!(f.len(), h * wf);
        let fy = |m: usize| if m <= (h - 1) / 2 { m as f32 } else { m as f32 - h as f32 } / h as f32;
        for m in 0..h {
            for k in 0..wf {
                let want = (fy(m).powi(2) + (k as f32 / w as f32).powi(2)).sqrt();
                assert!((f[m * wf + k] - want).abs() < 1e-6, "{h}x{w} ({m}, {k})");
            }
        }
    }
}

/// Checks `backward` against central differences of ⟨r, forward(p)⟩.
fn check_vjp(param: &mut dyn Param, tol: f64) {
    let (h, w) = param.size();
    let (n, c) = (param.batch(), param.channels());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let r = rand_vec(&mut rng, n * c * h * w, -1.0, 1.0);
    let mut img = vec![0.0; n * c * h * w];
    param.forward(&mut img);
    let mut grad = vec![0.0; param.params().len()];
    param.backward(&r, &mut grad);
    let mut loss = |param: &mut dyn Param| {
        param.forward(&mut img);
        img.iter()
            .zip(&r)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum::<f64>()
    };
    let gmax = grad.iter().fold(0.0f32, |a, b| a.max(b.abs())) as f64;
    assert!(gmax > 0.0, "{}: zero gradient", param.describe());
    let len = param.params().len();
    let eps = 1e-2;
    for _ in 0..24 {
        let i = rng.gen_range(0..len);
        let orig = param.params()[i];
        param.params_mut()[i] = orig + eps;
        let lp = loss(param);
        param.params_mut()[i] = orig - eps;
        let lm = loss(param);
        param.params_mut()[i] = orig;
        let fd = (lp - lm) / (2.0 * eps as f64);
        let an = grad[i] as f64;
        let scale = fd.abs().max(an.abs()).max(0.05 * gmax);
        assert!(
            (fd - an).abs() / scale < tol,
            "{} c={c} {h}x{w}: coordinate {i}: finite difference {fd} vs backward {an}",
            param.describe()
        );
    }
}

#[test]
fn every_parametrization_has_c_channels_and_exact_gradients() {
    for (c, h, w) in [(1, 6, 10), (4, 7, 5), (2, 8, 3), (3, 5, 9)] {
        let mut rng = ChaCha8Rng::seed_from_u64(c as u64);
        let mut p = Pixel::with_channels(2, c, h, w, rand_vec(&mut rng, 2 * c * h * w, 0.0, 1.0));
        assert_eq!((p.channels(), p.per_image()), (c, c * h * w));
        check_vjp(&mut p, 1e-3);
        let mut f = Fourier::random_shaped([2, c, h, w], 1.0, true, 0.3, &mut rng);
        assert_eq!(f.channels(), c);
        assert_eq!(f.per_image(), c * h * (w / 2 + 1) * 2);
        check_vjp(&mut f, 2e-2);
        let mut m = Maco::random_shaped([2, c, h, w], &mut rng);
        assert_eq!(m.per_image(), c * h * (w / 2 + 1));
        check_vjp(&mut m, 2e-2);
        for kind in [ParamKind::Pixel, ParamKind::FOURIER, ParamKind::Maco] {
            let p = kind.build_shaped([3, c, h, w], &mut rng);
            assert_eq!((p.batch(), p.channels(), p.size()), (3, c, (h, w)));
        }
    }
}

#[test]
fn fourier_images_of_any_shape_invert_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for (c, h, w) in [(1, 10, 24), (4, 12, 7), (3, 6, 16)] {
        let target = rand_vec(&mut rng, 2 * c * h * w, 0.05, 0.95);
        for kind in [
            ParamKind::Pixel,
            ParamKind::FOURIER,
            ParamKind::Fourier {
                decay_power: 1.0,
                decorrelate: false,
            },
        ] {
            // Built at another size: set_images re-targets it.
            let mut p = kind.build_shaped([2, c, 4, 4], &mut rng);
            p.set_images(&target, h, w);
            assert_eq!(p.size(), (h, w));
            let mut out = vec![0.0; target.len()];
            p.forward(&mut out);
            for (a, b) in out.iter().zip(&target) {
                assert!((a - b).abs() < 1e-3, "{kind} c={c} {h}x{w}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn decorrelation_is_for_rgb_only() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let rgb = Fourier::random_shaped([1, 3, 8, 8], 1.0, true, 0.3, &mut rng);
    assert!(rgb.describe().contains("decorrelated"));
    for c in [1, 2, 4] {
        let mut p = Fourier::random_shaped([1, c, 8, 12], 1.0, true, 0.3, &mut rng);
        assert!(!p.describe().contains("decorrelated"), "c={c}");
        // Channels stay independent: changing channel 0's spectrum changes channel 0 only.
        let plane = 8 * 12;
        let mut a = vec![0.0; c * plane];
        p.forward(&mut a);
        p.params_mut()[2] += 0.5;
        let mut b = vec![0.0; c * plane];
        p.forward(&mut b);
        assert!(a[..plane] != b[..plane], "c={c}: channel 0 did not change");
        assert_eq!(a[plane..], b[plane..], "c={c}: other channels changed");
        // The same spectrum gives the same plane as an undecorrelated 1-channel image.
        let mut q = Fourier::random_shaped([1, c, 8, 12], 1.0, false, 0.3, &mut rng);
        q.params_mut().copy_from_slice(p.params());
        let mut d = vec![0.0; c * plane];
        q.forward(&mut d);
        assert_eq!(b, d, "c={c}");
    }
}

#[test]
fn transforms_and_regularizers_treat_every_channel_alike() {
    // A 4-channel image whose channels are one plane: each output channel is that plane's.
    let (h, w) = (20, 36);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let plane = rand_vec(&mut rng, h * w, 0.0, 1.0);
    let four: Vec<f32> = (0..4).flat_map(|_| plane.clone()).collect();
    let mut p4 = Pipeline::new(lucid_standard());
    let mut p1 = Pipeline::new(lucid_standard());
    let (oh, ow) = p4.forward(&four, 1, h, w, &mut ChaCha8Rng::seed_from_u64(9));
    assert_eq!(
        p1.forward(&plane, 1, h, w, &mut ChaCha8Rng::seed_from_u64(9)),
        (oh, ow)
    );
    let op = oh * ow;
    assert_eq!(p4.output().len(), 4 * op);
    for c in 0..4 {
        assert_eq!(&p4.output()[c * op..(c + 1) * op], p1.output());
    }
    // The backward pass is the adjoint: ⟨T x, r⟩ = ⟨x, Tᵀ r⟩.
    let x = rand_vec(&mut rng, 4 * h * w, 0.0, 1.0);
    let mut draw = ChaCha8Rng::seed_from_u64(5);
    let mut p = Pipeline::new(lucid_standard());
    let (oh, ow) = p.forward(&x, 1, h, w, &mut draw);
    let bias = {
        let mut q = Pipeline::new(lucid_standard());
        q.forward(
            &vec![0.0; x.len()],
            1,
            h,
            w,
            &mut ChaCha8Rng::seed_from_u64(5),
        );
        q.output().to_vec()
    };
    let r = rand_vec(&mut rng, 4 * oh * ow, -1.0, 1.0);
    let mut gin = vec![0.0; x.len()];
    p.backward(&r, &mut gin);
    let lhs: f64 = p
        .output()
        .iter()
        .zip(&bias)
        .zip(&r)
        .map(|((y, b), r)| ((y - b) * r) as f64)
        .sum();
    let rhs: f64 = x.iter().zip(&gin).map(|(a, b)| (a * b) as f64).sum();
    assert!(
        (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
        "{lhs} vs {rhs}"
    );
    // Resizing and regularizers see every channel.
    let up = resize(&x, 1, h, w, 2 * h, 3 * w);
    assert_eq!(up.len(), 4 * 2 * h * 3 * w);
    let down = resize(&x, 1, h, w, h / 2, w / 3);
    assert_eq!(down.len(), 4 * (h / 2) * (w / 3));
    let mut vals = vec![0.0; 1];
    let mut g = vec![0.0; x.len()];
    Regularizer::TotalVariation { weight: 1.0 }.penalty(&x, 1, h, w, &mut vals, &mut g);
    assert!(
        g[3 * h * w..].iter().any(|v| *v != 0.0),
        "channel 3 has no gradient"
    );
    let mut img = x.clone();
    Regularizer::ClipNorm {
        percentile: 50.0,
        every: 1,
    }
    .apply(0, &mut img, &g, 1, h, w);
    let grey = (0..h * w).filter(|&p| (0..4).all(|c| img[c * h * w + p] == 0.5));
    assert_eq!(grey.count(), h * w / 2);
}

fn onnx(name: &str, normalization: Option<Normalization>) -> Model {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/onnx")
        .join(name);
    let spec = InputSpec {
        size: None,
        normalization,
    };
    load(&path, &spec).expect("fixture loads").model
}

#[test]
fn renders_a_grayscale_and_a_wide_model_at_their_native_sizes() {
    let gray = onnx("gray28.ts.onnx", None);
    assert_eq!((gray.info.channels, gray.info.native_size), (1, (28, 28)));
    let obj = BatchObjective::PerImage(
        [0, 1]
            .iter()
            .map(|c| Objective::parse(&format!("3:{c}"), &gray).unwrap())
            .collect(),
    );
    let settings = Preset::Default.settings_hw(gray.info.native_size, Some(24), 0);
    let out = render(&gray, &obj, 2, &settings, Init::Random, |_| {}).unwrap();
    assert_eq!((out.channels, out.height, out.width), (1, 28, 28));
    assert_eq!(out.images.len(), 2 * 28 * 28);
    for b in 0..2 {
        assert!(out.final_values[b] > out.initial[b], "gray image {b}");
    }
    // The seed method from C-channel start images.
    let seed = render(
        &gray,
        &obj,
        2,
        &seed_settings_hw((28, 28), 6, 9.0, 1),
        Init::Images(seed_init_shaped([1, 28, 28], 1, &[0, 1])),
        |_| {},
    )
    .unwrap();
    assert!(seed.final_values[0] > seed.initial[0]);

    let wide = onnx("wide48x192.ts.onnx", None);
    assert_eq!(wide.info.native_size, (48, 192));
    let obj = BatchObjective::Shared(Objective::parse("conv2:3", &wide).unwrap());
    for preset in [Preset::Default, Preset::Maco] {
        let settings = preset.settings_hw((48, 192), Some(16), 2);
        let out = render(&wide, &obj, 1, &settings, Init::Random, |_| {}).unwrap();
        assert_eq!((out.channels, out.height, out.width), (3, 48, 192));
        assert!(out.final_values[0] > out.initial[0], "{preset:?}");
    }
    // Octaves keep the aspect ratio.
    let octaves = deepvis_render::default_octaves_hw((96, 384), 16);
    assert_eq!(octaves.len(), 3);
    assert_eq!(octaves[0].hw(), (48, 192));
    assert_eq!(octaves[2].hw(), (96, 384));
}

#[test]
fn normalization_lengths_are_checked_against_the_channels() {
    let bad = onnx(
        "gray28.ts.onnx",
        Some(Normalization::per_channel(vec![0.1, 0.2], vec![0.5])),
    );
    let obj = BatchObjective::Shared(Objective::parse("3:0", &bad).unwrap());
    let err = render(
        &bad,
        &obj,
        1,
        &Preset::Default.settings(28, Some(2), 0),
        Init::Random,
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("2 mean values") && !err.contains('\n'),
        "{err}"
    );
    // One value stands for every channel; ImageNet's RGB statistics become grey ones.
    let one = Normalization::per_channel(vec![0.5], vec![0.25]);
    assert_eq!(one.for_channels(4).unwrap().channel(3), (0.5, 0.25));
    let grey = deepvis_models::IMAGENET.for_channels(1).unwrap();
    assert_eq!(grey, deepvis_models::IMAGENET_GREY);
    assert_eq!(
        deepvis_models::IMAGENET.for_channels(3).unwrap(),
        deepvis_models::IMAGENET
    );
}

#[test]
fn dream_works_on_grayscale_photos() {
    let gray = onnx("gray28.ts.onnx", None);
    let (h, w) = (40, 56);
    let photo: Vec<f32> = (0..h * w)
        .map(|i| 0.5 + 0.3 * ((i % w) as f32 * 0.2).sin())
        .collect();
    let obj = Objective::parse("layer(3)", &gray).unwrap();
    let settings = DreamSettings {
        octaves: 1,
        steps_per_octave: 4,
        jitter: 4,
        ..DreamSettings::default()
    };
    let out = dream(&gray, &obj, &photo, h, w, &settings, |_| {}).unwrap();
    assert_eq!(out.len(), h * w);
    let bo = BatchObjective::Shared(obj);
    let before = deepvis_render::evaluate(&gray, &bo, &photo, 1, h, w).unwrap()[0];
    let after = deepvis_render::evaluate(&gray, &bo, &out, 1, h, w).unwrap()[0];
    assert!(after > before, "{before} → {after}");
}
