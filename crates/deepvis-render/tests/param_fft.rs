//! FFT round trips against a naive DFT, and vector-Jacobian products of every parametrization
//! against central differences.

use deepvis_render::fft::{rfft2_freqs, Fft2};
use deepvis_render::param::{color_matrix, Fourier, Maco, Param, ParamKind, Pixel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustfft::num_complex::Complex32;

fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// numpy.fft.rfft2(x, norm="ortho") by the definition, in f64.
fn naive_rfft2(x: &[f32], h: usize, w: usize) -> Vec<(f64, f64)> {
    let wf = w / 2 + 1;
    let mut out = Vec::new();
    for m in 0..h {
        for k in 0..wf {
            let (mut re, mut im) = (0.0, 0.0);
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
            out.push((re * s, im * s));
        }
    }
    out
}

#[test]
fn fft_matches_naive_dft_and_round_trips() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (h, w) in [(8, 8), (6, 7), (5, 10), (1, 4), (9, 3)] {
        let x = rand_vec(&mut rng, h * w);
        let mut f = Fft2::new(h, w);
        let mut spec = vec![Complex32::new(0.0, 0.0); h * (w / 2 + 1)];
        f.forward(&x, &mut spec);
        for (z, (re, im)) in spec.iter().zip(naive_rfft2(&x, h, w)) {
            assert!(
                (z.re as f64 - re).abs() < 1e-4 && (z.im as f64 - im).abs() < 1e-4,
                "{h}x{w}: {z} vs {re}+{im}i"
            );
        }
        let mut back = vec![0.0; h * w];
        f.inverse(&spec, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() < 1e-5, "{h}x{w} round trip: {a} vs {b}");
        }
    }
}

#[test]
fn fft_inverse_adjoint_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (h, w) in [(6, 8), (5, 7)] {
        let wf = w / 2 + 1;
        let mut f = Fft2::new(h, w);
        let spec: Vec<Complex32> = (0..h * wf)
            .map(|_| Complex32::new(rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0)))
            .collect();
        let r = rand_vec(&mut rng, h * w);
        let mut adj = vec![Complex32::new(0.0, 0.0); h * wf];
        f.inverse_adjoint(&r, &mut adj);
        let mut out = vec![0.0; h * w];
        let mut loss = |s: &[Complex32], f: &mut Fft2| {
            f.inverse(s, &mut out);
            out.iter().zip(&r).map(|(a, b)| (a * b) as f64).sum::<f64>()
        };
        // Every coordinate, real and imaginary: the map is linear, so differences are exact.
        for i in 0..h * wf {
            for part in 0..2 {
                let eps = 0.5f32;
                let mut p = spec.clone();
                let mut m = spec.clone();
                if part == 0 {
                    p[i].re += eps;
                    m[i].re -= eps;
                } else {
                    p[i].im += eps;
                    m[i].im -= eps;
                }
                let fd = (loss(&p, &mut f) - loss(&m, &mut f)) / (2.0 * eps as f64);
                let an = if part == 0 { adj[i].re } else { adj[i].im } as f64;
                assert!(
                    (fd - an).abs() < 1e-4,
                    "{h}x{w} entry {i} part {part}: fd {fd} vs {an}"
                );
            }
        }
    }
}

#[test]
fn frequencies_match_numpy() {
    // np.sqrt(np.fft.fftfreq(4)[:, None]**2 + np.fft.rfftfreq(5)**2) at a few entries.
    let f = rfft2_freqs(4, 5);
    assert_eq!(f.len(), 4 * 3);
    assert!((f[0] - 0.0).abs() < 1e-7);
    assert!((f[1] - 0.2).abs() < 1e-7);
    assert!((f[2 * 3] - 0.5).abs() < 1e-7); // fy = -0.5
    assert!((f[3 * 3 + 2] - (0.25f32 * 0.25 + 0.4 * 0.4).sqrt()).abs() < 1e-7);
}

#[test]
fn color_matrix_is_lucids() {
    let m = color_matrix();
    // max column norm of the svd sqrt is sqrt(0.26² + 0.27² + 0.27²).
    let k = (0.26f32 * 0.26 + 0.27 * 0.27 + 0.27 * 0.27).sqrt();
    assert!((m[0][0] - 0.26 / k).abs() < 1e-6);
    assert!((m[2][1] + 0.09 / k).abs() < 1e-6);
    let col0: f32 = (0..3).map(|i| m[i][0] * m[i][0]).sum::<f32>().sqrt();
    assert!((col0 - 1.0).abs() < 1e-6);
}

/// Checks `backward` against central differences of ⟨r, forward(p)⟩ on `coords`.
fn check_vjp(param: &mut dyn Param, coords: &[usize], eps: f32, tol: f64) {
    let (h, w) = param.size();
    let n = param.batch();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let r = rand_vec(&mut rng, n * 3 * h * w);
    let mut img = vec![0.0; n * 3 * h * w];
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
    let mut checked = 0;
    for &i in coords {
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
            "{}: coordinate {i}: finite difference {fd} vs backward {an}",
            param.describe()
        );
        checked += 1;
    }
    assert!(checked > 0);
}

fn coords(len: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..k).map(|_| rng.gen_range(0..len)).collect()
}

#[test]
fn pixel_vjp() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut p = Pixel::new(2, 5, 6, rand_vec(&mut rng, 2 * 3 * 30));
    let len = p.params().len();
    check_vjp(&mut p, &coords(len, 10, 1), 1e-2, 1e-3);
}

#[test]
fn fourier_vjp_even_and_odd_sizes() {
    for (h, w, decorrelate) in [(8, 8, true), (7, 9, true), (6, 5, false)] {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        // A large start so the sigmoid is well away from linear.
        let mut p = Fourier::random(2, h, w, 1.0, decorrelate, 0.3, &mut rng);
        let len = p.params().len();
        let mut cs = coords(len, 24, 2);
        // DC, the first column and (even widths) the Nyquist column of the first image.
        let wf = w / 2 + 1;
        cs.extend([0, 1, 2 * (wf - 1), 2 * (wf - 1) + 1, 2 * wf, 2 * wf + 1]);
        check_vjp(&mut p, &cs, 1e-2, 2e-2);
    }
}

#[test]
fn maco_vjp() {
    for (h, w) in [(8, 8), (7, 6)] {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut p = Maco::random(2, h, w, &mut rng);
        let len = p.params().len();
        check_vjp(&mut p, &coords(len, 24, 3), 1e-2, 2e-2);
    }
}

#[test]
fn set_images_reproduces_images() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (h, w) = (10, 12);
    let target: Vec<f32> = (0..2 * 3 * h * w)
        .map(|_| rng.gen_range(0.05..0.95))
        .collect();
    for kind in [
        ParamKind::Pixel,
        ParamKind::FOURIER,
        ParamKind::Fourier {
            decay_power: 1.0,
            decorrelate: false,
        },
    ] {
        let mut p = kind.build(2, 4, 4, &mut rng);
        p.set_images(&target, h, w);
        assert_eq!(p.size(), (h, w));
        let mut out = vec![0.0; target.len()];
        p.forward(&mut out);
        for (a, b) in out.iter().zip(&target) {
            assert!((a - b).abs() < 1e-3, "{kind}: {a} vs {b}");
        }
    }
}

#[test]
fn fourier_images_are_in_range_and_smooth() {
    // The 1/f scaling makes neighbouring pixels of a random Fourier image far more alike than
    // those of white noise.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut p = Fourier::random(1, 32, 32, 1.0, true, 1.0, &mut rng);
    let mut img = vec![0.0; 3 * 32 * 32];
    p.forward(&mut img);
    assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
    let mean = img.iter().sum::<f32>() / img.len() as f32;
    let var: f32 = img.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / img.len() as f32;
    let diff: f32 = (0..32 * 31)
        .map(|i| {
            let (y, x) = (i / 31, i % 31);
            (img[y * 32 + x + 1] - img[y * 32 + x]).powi(2)
        })
        .sum::<f32>()
        / (32.0 * 31.0);
    assert!(
        diff < 0.5 * 2.0 * var,
        "neighbour difference {diff} vs variance {var}"
    );
}
