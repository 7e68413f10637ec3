//! Image parametrizations: how a vector of optimized numbers becomes a batch of RGB images in
//! [0, 1], and how a gradient with respect to those images becomes one with respect to the
//! numbers (the vector-Jacobian product).
//!
//! - [`Pixel`]: the numbers are the pixels (clamped to [0, 1] after each step): the seed method.
//! - [`Fourier`]: Lucid's `fft_image` + `to_valid_rgb`: a half spectrum per colour channel scaled
//!   by 1/f, an orthonormal inverse real FFT, ÷4, Lucid's colour decorrelation matrix, sigmoid.
//! - [`Maco`]: MACO (Fel et al. 2023): only the phase of the spectrum is optimized; the magnitude
//!   is fixed to a natural-image 1/f law; the image is standardized, recorrelated and squashed
//!   by a sigmoid, as Horama does.
//!
//! Images are planar `[N, C, H, W]` with C the model's input channels (3 for RGB); parameters
//! are laid out image by image, so the slice of image `b` is
//! `params[b * per_image()..(b + 1) * per_image()]`. The colour decorrelation is ImageNet's RGB
//! statistics, so it applies only to 3-channel images; other channel counts stay independent.

use crate::fft::{rfft2_freqs, Fft2};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr_lite::normal;
use rustfft::num_complex::Complex32;

/// Lucid's `color_correlation_svd_sqrt`: the square root of the ImageNet colour covariance.
pub const COLOR_CORRELATION_SVD_SQRT: [[f32; 3]; 3] =
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]];

/// [`COLOR_CORRELATION_SVD_SQRT`] divided by its largest column norm, as Lucid uses it:
/// `rgb = M · t` per pixel.
pub fn color_matrix() -> [[f32; 3]; 3] {
    let m = COLOR_CORRELATION_SVD_SQRT;
    let max_norm = (0..3)
        .map(|j| (0..3).map(|i| m[i][j] * m[i][j]).sum::<f32>().sqrt())
        .fold(0.0f32, f32::max);
    let mut out = m;
    for row in out.iter_mut() {
        for v in row.iter_mut() {
            *v /= max_norm;
        }
    }
    out
}

fn invert3(m: [[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let m: [[f64; 3]; 3] = m.map(|r| r.map(|v| v as f64));
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let mut inv = [[0f32; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let (a, b) = ((j + 1) % 3, (j + 2) % 3);
            let (c, d) = ((i + 1) % 3, (i + 2) % 3);
            inv[i][j] = ((m[a][c] * m[b][d] - m[a][d] * m[b][c]) / det) as f32;
        }
    }
    inv
}

/// `out[i] = Σ_j m[i][j] · x[j]` for every pixel of a planar 3-channel image.
fn mix_colors(m: &[[f32; 3]; 3], x: &[f32], out: &mut [f32], plane: usize) {
    for p in 0..plane {
        let (a, b, c) = (x[p], x[plane + p], x[2 * plane + p]);
        for i in 0..3 {
            out[i * plane + p] = m[i][0] * a + m[i][1] * b + m[i][2] * c;
        }
    }
}

fn transpose3(m: [[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let mut t = m;
    for (i, row) in t.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = m[j][i];
        }
    }
    t
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn logit(y: f32) -> f32 {
    let y = y.clamp(1e-3, 1.0 - 1e-3);
    (y / (1.0 - y)).ln()
}

/// A differentiable map from parameters to a batch of images in [0, 1].
pub trait Param: Send {
    /// Images in the batch.
    fn batch(&self) -> usize;
    /// Channels of each image.
    fn channels(&self) -> usize;
    /// (height, width) of the images.
    fn size(&self) -> (usize, usize);
    /// Parameters per image.
    fn per_image(&self) -> usize;
    fn params(&self) -> &[f32];
    fn params_mut(&mut self) -> &mut [f32];
    /// Writes the images `[N, C, H, W]` into `out`, keeping what [`Param::backward`] needs.
    fn forward(&mut self, out: &mut [f32]);
    /// Gradient with respect to the parameters of `⟨grad_image, images⟩`, at the parameters of
    /// the latest [`Param::forward`].
    fn backward(&mut self, grad_image: &[f32], grad_params: &mut [f32]);
    /// Called after each optimizer step (the pixel parametrization clamps to [0, 1]).
    fn project(&mut self) {}
    /// Re-targets the parametrization to `h`×`w` images and sets its parameters so that it
    /// renders `images` (`[N, C, h, w]` in [0, 1]) as closely as it can: exactly for
    /// pixel and Fourier (up to sigmoid saturation), the phase only for MACO.
    fn set_images(&mut self, images: &[f32], h: usize, w: usize);
    /// A short description for logs.
    fn describe(&self) -> String;
}

/// Which parametrization to build.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamKind {
    /// Raw pixels, clamped to [0, 1] after each step.
    Pixel,
    /// Lucid's Fourier image: 1/f^decay_power scaled spectrum, optional colour decorrelation,
    /// sigmoid.
    Fourier { decay_power: f32, decorrelate: bool },
    /// MACO: phase-only Fourier image with a fixed 1/f magnitude.
    Maco,
}

impl ParamKind {
    /// Lucid's default `image(…, fft=True, decorrelate=True)`.
    pub const FOURIER: ParamKind = ParamKind::Fourier {
        decay_power: 1.0,
        decorrelate: true,
    };

    /// A parametrization of `n` RGB images `h`×`w` with a seeded random start (Lucid's:
    /// spectrum ~ N(0, 0.01²); MACO: uniform phase; pixel: grey 0.5 ± 0.1 uniform noise).
    pub fn build(self, n: usize, h: usize, w: usize, rng: &mut ChaCha8Rng) -> Box<dyn Param> {
        self.build_shaped([n, 3, h, w], rng)
    }

    /// [`ParamKind::build`] for `[n, c, h, w]` images.
    pub fn build_shaped(self, [n, c, h, w]: [usize; 4], rng: &mut ChaCha8Rng) -> Box<dyn Param> {
        match self {
            ParamKind::Pixel => {
                let data = (0..n * c * h * w)
                    .map(|_| 0.5 + rng.gen_range(-0.1..0.1))
                    .collect();
                Box::new(Pixel::with_channels(n, c, h, w, data))
            }
            ParamKind::Fourier {
                decay_power,
                decorrelate,
            } => Box::new(Fourier::random_shaped(
                [n, c, h, w],
                decay_power,
                decorrelate,
                0.01,
                rng,
            )),
            ParamKind::Maco => Box::new(Maco::random_shaped([n, c, h, w], rng)),
        }
    }
}

impl std::fmt::Display for ParamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamKind::Pixel => write!(f, "pixel"),
            ParamKind::Fourier {
                decay_power,
                decorrelate,
            } => write!(
                f,
                "fourier(decay {decay_power}{})",
                if *decorrelate { ", decorrelated" } else { "" }
            ),
            ParamKind::Maco => write!(f, "maco"),
        }
    }
}

/// The pixel parametrization: the parameters are the image.
pub struct Pixel {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    data: Vec<f32>,
}

impl Pixel {
    /// `n` RGB images.
    pub fn new(n: usize, h: usize, w: usize, data: Vec<f32>) -> Pixel {
        Pixel::with_channels(n, 3, h, w, data)
    }

    /// `n` images of `c` channels.
    pub fn with_channels(n: usize, c: usize, h: usize, w: usize, data: Vec<f32>) -> Pixel {
        assert_eq!(data.len(), n * c * h * w);
        Pixel { n, c, h, w, data }
    }
}

impl Param for Pixel {
    fn batch(&self) -> usize {
        self.n
    }
    fn channels(&self) -> usize {
        self.c
    }
    fn size(&self) -> (usize, usize) {
        (self.h, self.w)
    }
    fn per_image(&self) -> usize {
        self.c * self.h * self.w
    }
    fn params(&self) -> &[f32] {
        &self.data
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    fn forward(&mut self, out: &mut [f32]) {
        out.copy_from_slice(&self.data);
    }
    fn backward(&mut self, grad_image: &[f32], grad_params: &mut [f32]) {
        grad_params.copy_from_slice(grad_image);
    }
    fn project(&mut self) {
        self.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    }
    fn set_images(&mut self, images: &[f32], h: usize, w: usize) {
        assert_eq!(images.len(), self.n * self.c * h * w);
        self.h = h;
        self.w = w;
        self.data.clear();
        self.data.extend_from_slice(images);
    }
    fn describe(&self) -> String {
        "pixel".into()
    }
}

/// Shared machinery of the spectral parametrizations.
struct Spectral {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    fft: Fft2,
    spec: Vec<Complex32>,
    spec_grad: Vec<Complex32>,
    plane: Vec<f32>,
    /// The pre-colour image of the latest forward, `[N, C, H, W]`.
    pre: Vec<f32>,
    /// The sigmoid output of the latest forward.
    out: Vec<f32>,
    /// The gradient with respect to `pre` of the latest backward.
    pre_grad: Vec<f32>,
    /// Scratch of one image for the backward pass.
    tmp: Vec<f32>,
    /// Whether decorrelation was asked for (it is kept across `set_images`).
    decorrelate: bool,
    /// The colour matrix: only for 3-channel images (ImageNet's RGB statistics say nothing
    /// about other channels); None leaves channels as they are.
    color: Option<[[f32; 3]; 3]>,
}

impl Spectral {
    fn new([n, c, h, w]: [usize; 4], decorrelate: bool) -> Spectral {
        let fft = Fft2::new(h, w);
        let wf = fft.spectrum_width();
        Spectral {
            n,
            c,
            h,
            w,
            fft,
            spec: vec![Complex32::new(0.0, 0.0); h * wf],
            spec_grad: vec![Complex32::new(0.0, 0.0); h * wf],
            plane: vec![0.0; h * w],
            pre: vec![0.0; n * c * h * w],
            out: vec![0.0; n * c * h * w],
            pre_grad: vec![0.0; n * c * h * w],
            tmp: vec![0.0; c * h * w],
            decorrelate,
            color: (decorrelate && c == 3).then(color_matrix),
        }
    }

    fn wf(&self) -> usize {
        self.fft.spectrum_width()
    }

    /// `out = sigmoid(color · pre)` per image; stores the result for the backward pass.
    fn colorize(&mut self, out: &mut [f32]) {
        let per = self.c * self.h * self.w;
        let plane = self.h * self.w;
        for (pre, o) in self.pre.chunks(per).zip(self.out.chunks_mut(per)) {
            match &self.color {
                Some(m) => mix_colors(m, pre, o, plane),
                None => o.copy_from_slice(pre),
            }
            o.iter_mut().for_each(|v| *v = sigmoid(*v));
        }
        out.copy_from_slice(&self.out);
    }

    /// Gradient with respect to `pre` from one with respect to the output, into `pre_grad`.
    fn colorize_backward(&mut self, grad: &[f32]) {
        let per = self.c * self.h * self.w;
        let plane = self.h * self.w;
        let ct = self.color.map(transpose3);
        for ((g, s), pg) in grad
            .chunks(per)
            .zip(self.out.chunks(per))
            .zip(self.pre_grad.chunks_mut(per))
        {
            match &ct {
                Some(ct) => {
                    for ((t, g), s) in self.tmp.iter_mut().zip(g).zip(s) {
                        *t = g * s * (1.0 - s);
                    }
                    mix_colors(ct, &self.tmp, pg, plane);
                }
                None => {
                    for ((t, g), s) in pg.iter_mut().zip(g).zip(s) {
                        *t = g * s * (1.0 - s);
                    }
                }
            }
        }
    }

    /// The pre-colour images that would render as `images`.
    fn uncolorize(&self, images: &[f32]) -> Vec<f32> {
        let per = self.c * self.h * self.w;
        let plane = self.h * self.w;
        let logits: Vec<f32> = images.iter().map(|&v| logit(v)).collect();
        let Some(color) = self.color else {
            return logits;
        };
        let inv = invert3(color);
        let mut pre = vec![0.0; images.len()];
        for (l, p) in logits.chunks(per).zip(pre.chunks_mut(per)) {
            mix_colors(&inv, l, p, plane);
        }
        pre
    }
}

/// Lucid's Fourier parametrization (`fft_image` followed by `to_valid_rgb`).
pub struct Fourier {
    s: Spectral,
    decay_power: f32,
    /// Per half-spectrum entry: 1 / max(f, 1/max(h, w))^decay_power.
    scale: Vec<f32>,
    /// `[N, C, H, W/2+1, 2]`: real and imaginary parts.
    params: Vec<f32>,
}

/// Lucid divides the inverse FFT by this "magic" constant.
const FOURIER_MAGIC: f32 = 4.0;

fn spectrum_scale(h: usize, w: usize, decay_power: f32) -> Vec<f32> {
    let floor = 1.0 / h.max(w) as f32;
    rfft2_freqs(h, w)
        .into_iter()
        .map(|f| 1.0 / f.max(floor).powf(decay_power))
        .collect()
}

impl Fourier {
    /// `n` RGB images.
    pub fn random(
        n: usize,
        h: usize,
        w: usize,
        decay_power: f32,
        decorrelate: bool,
        sd: f32,
        rng: &mut ChaCha8Rng,
    ) -> Fourier {
        Fourier::random_shaped([n, 3, h, w], decay_power, decorrelate, sd, rng)
    }

    /// `[n, c, h, w]` images, their spectra ~ N(0, sd²); decorrelated only where c = 3.
    pub fn random_shaped(
        shape: [usize; 4],
        decay_power: f32,
        decorrelate: bool,
        sd: f32,
        rng: &mut ChaCha8Rng,
    ) -> Fourier {
        let [n, c, h, w] = shape;
        let s = Spectral::new(shape, decorrelate);
        let len = n * c * h * s.wf() * 2;
        let params = (0..len).map(|_| sd * normal(rng)).collect();
        Fourier {
            scale: spectrum_scale(h, w, decay_power),
            s,
            decay_power,
            params,
        }
    }
}

impl Param for Fourier {
    fn batch(&self) -> usize {
        self.s.n
    }
    fn channels(&self) -> usize {
        self.s.c
    }
    fn size(&self) -> (usize, usize) {
        (self.s.h, self.s.w)
    }
    fn per_image(&self) -> usize {
        self.s.c * self.s.h * self.s.wf() * 2
    }
    fn params(&self) -> &[f32] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }
    fn forward(&mut self, out: &mut [f32]) {
        let s = &mut self.s;
        let plane = s.h * s.w;
        let spec_len = s.spec.len();
        for (i, chunk) in self.params.chunks(2 * spec_len).enumerate() {
            for ((z, p), sc) in s.spec.iter_mut().zip(chunk.chunks(2)).zip(&self.scale) {
                *z = Complex32::new(p[0] * sc, p[1] * sc);
            }
            s.fft.inverse(&s.spec, &mut s.plane);
            for (d, v) in s.pre[i * plane..(i + 1) * plane].iter_mut().zip(&s.plane) {
                *d = v / FOURIER_MAGIC;
            }
        }
        s.colorize(out);
    }
    fn backward(&mut self, grad_image: &[f32], grad_params: &mut [f32]) {
        let s = &mut self.s;
        let plane = s.h * s.w;
        s.colorize_backward(grad_image);
        let spec_len = s.spec.len();
        for (i, chunk) in grad_params.chunks_mut(2 * spec_len).enumerate() {
            for (d, v) in s
                .plane
                .iter_mut()
                .zip(&s.pre_grad[i * plane..(i + 1) * plane])
            {
                *d = v / FOURIER_MAGIC;
            }
            s.fft.inverse_adjoint(&s.plane, &mut s.spec_grad);
            for ((p, z), sc) in chunk.chunks_mut(2).zip(&s.spec_grad).zip(&self.scale) {
                p[0] = z.re * sc;
                p[1] = z.im * sc;
            }
        }
    }
    fn set_images(&mut self, images: &[f32], h: usize, w: usize) {
        let (n, c) = (self.s.n, self.s.c);
        assert_eq!(images.len(), n * c * h * w);
        self.s = Spectral::new([n, c, h, w], self.s.decorrelate);
        self.scale = spectrum_scale(h, w, self.decay_power);
        let pre = self.s.uncolorize(images);
        let s = &mut self.s;
        let spec_len = s.spec.len();
        self.params.resize(n * c * spec_len * 2, 0.0);
        let plane = h * w;
        for (i, chunk) in self.params.chunks_mut(2 * spec_len).enumerate() {
            for (d, v) in s.plane.iter_mut().zip(&pre[i * plane..(i + 1) * plane]) {
                *d = v * FOURIER_MAGIC;
            }
            s.fft.forward(&s.plane, &mut s.spec);
            for ((p, z), sc) in chunk.chunks_mut(2).zip(&s.spec).zip(&self.scale) {
                p[0] = z.re / sc;
                p[1] = z.im / sc;
            }
        }
    }
    fn describe(&self) -> String {
        format!(
            "fourier(decay {}{})",
            self.decay_power,
            if self.s.color.is_some() {
                ", decorrelated"
            } else {
                ""
            }
        )
    }
}

/// MACO: phase-only spectral parametrization with a fixed magnitude.
pub struct Maco {
    s: Spectral,
    magnitude: Vec<f32>,
    /// `[N, C, H, W/2+1]` phases.
    phase: Vec<f32>,
    /// Per image: mean and (std + eps) of the latest forward's pre-standardized image.
    stats: Vec<(f32, f32, f32)>,
    raw: Vec<f32>,
}

const MACO_EPS: f32 = 1e-5;

/// The fixed MACO magnitude: natural images have an amplitude spectrum close to 1/f, so
/// 1 / max(f, 1/max(h, w)).
pub fn maco_magnitude(h: usize, w: usize) -> Vec<f32> {
    spectrum_scale(h, w, 1.0)
}

impl Maco {
    /// `n` RGB images.
    pub fn random(n: usize, h: usize, w: usize, rng: &mut ChaCha8Rng) -> Maco {
        Maco::random_shaped([n, 3, h, w], rng)
    }

    /// `[n, c, h, w]` images with uniform random phases; decorrelated only where c = 3.
    pub fn random_shaped(shape: [usize; 4], rng: &mut ChaCha8Rng) -> Maco {
        let [n, c, h, w] = shape;
        let s = Spectral::new(shape, true);
        let len = n * c * h * s.wf();
        let phase = (0..len)
            .map(|_| rng.gen_range(-std::f32::consts::PI..std::f32::consts::PI))
            .collect();
        Maco {
            magnitude: maco_magnitude(h, w),
            raw: vec![0.0; n * c * h * w],
            stats: vec![(0.0, 1.0, 1.0); n],
            s,
            phase,
        }
    }
}

impl Param for Maco {
    fn batch(&self) -> usize {
        self.s.n
    }
    fn channels(&self) -> usize {
        self.s.c
    }
    fn size(&self) -> (usize, usize) {
        (self.s.h, self.s.w)
    }
    fn per_image(&self) -> usize {
        self.s.c * self.s.h * self.s.wf()
    }
    fn params(&self) -> &[f32] {
        &self.phase
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.phase
    }
    fn forward(&mut self, out: &mut [f32]) {
        let s = &mut self.s;
        let plane = s.h * s.w;
        let spec_len = s.spec.len();
        for (c, ph) in self.phase.chunks(spec_len).enumerate() {
            for ((z, p), m) in s.spec.iter_mut().zip(ph).zip(&self.magnitude) {
                *z = Complex32::new(m * p.cos(), m * p.sin());
            }
            s.fft
                .inverse(&s.spec, &mut self.raw[c * plane..(c + 1) * plane]);
        }
        let per = s.c * plane;
        for (b, (raw, pre)) in self.raw.chunks(per).zip(s.pre.chunks_mut(per)).enumerate() {
            let len = raw.len() as f64;
            let mean = raw.iter().map(|&v| v as f64).sum::<f64>() / len;
            let var = raw.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len;
            let std = var.sqrt() as f32;
            let denom = std + MACO_EPS;
            let mean = mean as f32;
            self.stats[b] = (mean, std, denom);
            for (p, r) in pre.iter_mut().zip(raw) {
                *p = (r - mean) / denom;
            }
        }
        s.colorize(out);
    }
    fn backward(&mut self, grad_image: &[f32], grad_params: &mut [f32]) {
        let s = &mut self.s;
        let plane = s.h * s.w;
        let per = s.c * plane;
        s.colorize_backward(grad_image);
        let gz = &mut s.pre_grad;
        // Standardization: z = (t - mean) / (std + eps).
        for (b, (g, raw)) in gz.chunks_mut(per).zip(self.raw.chunks(per)).enumerate() {
            let (mean, std, denom) = self.stats[b];
            let len = g.len() as f32;
            let gmean = g.iter().map(|&v| v as f64).sum::<f64>() as f32 / len;
            let gd: f64 = g
                .iter()
                .zip(raw)
                .map(|(&gv, &r)| gv as f64 * (r - mean) as f64)
                .sum();
            let k = if std > 0.0 {
                gd as f32 / (denom * denom * len * std)
            } else {
                0.0
            };
            for (gv, &r) in g.iter_mut().zip(raw) {
                *gv = (*gv - gmean) / denom - k * (r - mean);
            }
        }
        let spec_len = s.spec.len();
        for (c, (gp, ph)) in grad_params
            .chunks_mut(spec_len)
            .zip(self.phase.chunks(spec_len))
            .enumerate()
        {
            s.fft
                .inverse_adjoint(&s.pre_grad[c * plane..(c + 1) * plane], &mut s.spec_grad);
            for (((o, z), p), m) in gp.iter_mut().zip(&s.spec_grad).zip(ph).zip(&self.magnitude) {
                *o = m * (z.im * p.cos() - z.re * p.sin());
            }
        }
    }
    fn set_images(&mut self, images: &[f32], h: usize, w: usize) {
        let (n, c) = (self.s.n, self.s.c);
        assert_eq!(images.len(), n * c * h * w);
        self.s = Spectral::new([n, c, h, w], true);
        self.magnitude = maco_magnitude(h, w);
        self.raw = vec![0.0; n * c * h * w];
        let pre = self.s.uncolorize(images);
        let s = &mut self.s;
        let spec_len = s.spec.len();
        self.phase.resize(n * c * spec_len, 0.0);
        let plane = h * w;
        for (c, ph) in self.phase.chunks_mut(spec_len).enumerate() {
            s.fft.forward(&pre[c * plane..(c + 1) * plane], &mut s.spec);
            for (p, z) in ph.iter_mut().zip(&s.spec) {
                *p = z.im.atan2(z.re);
            }
        }
    }
    fn describe(&self) -> String {
        "maco(1/f magnitude)".into()
    }
}

/// A minimal standard normal sampler (Box–Muller), so no extra dependency is needed.
mod rand_distr_lite {
    use rand::Rng;
    use rand_chacha::ChaCha8Rng;

    pub fn normal(rng: &mut ChaCha8Rng) -> f32 {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

pub use rand_distr_lite::normal as standard_normal;
