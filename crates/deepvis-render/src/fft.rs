//! Orthonormal 2-D real FFTs (numpy's `rfft2`/`irfft2` with `norm="ortho"`) on reusable plans
//! and buffers, and the weights that turn a forward transform into the adjoint of the inverse.

use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

/// Plans and scratch space for `h`×`w` images and their `h`×(`w`/2+1) half spectra.
pub struct Fft2 {
    h: usize,
    w: usize,
    wf: usize,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
    work: Vec<Complex32>,
    row_real: Vec<f32>,
    row_spec: Vec<Complex32>,
    col: Vec<Complex32>,
    scratch: Vec<Complex32>,
}

impl Fft2 {
    pub fn new(h: usize, w: usize) -> Fft2 {
        assert!(h > 0 && w > 0, "empty FFT");
        let mut rp = RealFftPlanner::<f32>::new();
        let mut cp = FftPlanner::<f32>::new();
        let r2c = rp.plan_fft_forward(w);
        let c2r = rp.plan_fft_inverse(w);
        let col_fwd = cp.plan_fft_forward(h);
        let col_inv = cp.plan_fft_inverse(h);
        let wf = w / 2 + 1;
        let scratch_len = [
            r2c.get_scratch_len(),
            c2r.get_scratch_len(),
            col_fwd.get_inplace_scratch_len(),
            col_inv.get_inplace_scratch_len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        Fft2 {
            h,
            w,
            wf,
            r2c,
            c2r,
            col_fwd,
            col_inv,
            work: vec![Complex32::new(0.0, 0.0); h * wf],
            row_real: vec![0.0; w],
            row_spec: vec![Complex32::new(0.0, 0.0); wf],
            col: vec![Complex32::new(0.0, 0.0); h],
            scratch: vec![Complex32::new(0.0, 0.0); scratch_len],
        }
    }

    pub fn height(&self) -> usize {
        self.h
    }

    pub fn width(&self) -> usize {
        self.w
    }

    /// Columns of the half spectrum: `w / 2 + 1`.
    pub fn spectrum_width(&self) -> usize {
        self.wf
    }

    /// Orthonormal inverse: half spectrum `[h, w/2+1]` → real image `[h, w]`. The imaginary parts
    /// that a real image cannot hold (DC and, for even `w`, Nyquist columns after the column
    /// transform) are dropped, so this is a real-linear map of all its inputs.
    pub fn inverse(&mut self, spec: &[Complex32], out: &mut [f32]) {
        let (h, w, wf) = (self.h, self.w, self.wf);
        debug_assert_eq!(spec.len(), h * wf);
        debug_assert_eq!(out.len(), h * w);
        self.work.copy_from_slice(spec);
        for k in 0..wf {
            for m in 0..h {
                self.col[m] = self.work[m * wf + k];
            }
            self.col_inv
                .process_with_scratch(&mut self.col, &mut self.scratch);
            for m in 0..h {
                self.work[m * wf + k] = self.col[m];
            }
        }
        let norm = 1.0 / ((h * w) as f32).sqrt();
        for m in 0..h {
            self.row_spec
                .copy_from_slice(&self.work[m * wf..(m + 1) * wf]);
            self.row_spec[0].im = 0.0;
            if w % 2 == 0 {
                self.row_spec[wf - 1].im = 0.0;
            }
            self.c2r
                .process_with_scratch(&mut self.row_spec, &mut self.row_real, &mut self.scratch)
                .expect("c2r with valid lengths");
            for (o, v) in out[m * w..(m + 1) * w].iter_mut().zip(&self.row_real) {
                *o = v * norm;
            }
        }
    }

    /// Orthonormal forward: real image `[h, w]` → half spectrum `[h, w/2+1]`.
    pub fn forward(&mut self, img: &[f32], spec: &mut [Complex32]) {
        let (h, w, wf) = (self.h, self.w, self.wf);
        debug_assert_eq!(img.len(), h * w);
        debug_assert_eq!(spec.len(), h * wf);
        for m in 0..h {
            self.row_real.copy_from_slice(&img[m * w..(m + 1) * w]);
            self.r2c
                .process_with_scratch(
                    &mut self.row_real,
                    &mut spec[m * wf..(m + 1) * wf],
                    &mut self.scratch,
                )
                .expect("r2c with valid lengths");
        }
        let norm = 1.0 / ((h * w) as f32).sqrt();
        for k in 0..wf {
            for m in 0..h {
                self.col[m] = spec[m * wf + k];
            }
            self.col_fwd
                .process_with_scratch(&mut self.col, &mut self.scratch);
            for m in 0..h {
                spec[m * wf + k] = self.col[m] * norm;
            }
        }
    }

    /// The adjoint of [`Fft2::inverse`] applied to `grad` (a gradient with respect to the
    /// image): the gradient with respect to the real and imaginary parts of the spectrum.
    /// It is the forward transform with interior columns counted twice (each stands for itself
    /// and its conjugate mirror).
    pub fn inverse_adjoint(&mut self, grad: &[f32], spec_grad: &mut [Complex32]) {
        self.forward(grad, spec_grad);
        let (wf, w) = (self.wf, self.w);
        for row in spec_grad.chunks_mut(wf) {
            for (k, v) in row.iter_mut().enumerate() {
                let mirrored = k != 0 && !(w % 2 == 0 && k == wf - 1);
                if mirrored {
                    *v *= 2.0;
                }
            }
        }
    }
}

/// Spatial frequency magnitude (cycles per pixel) of each half-spectrum entry, `[h, w/2+1]`,
/// as Lucid's `rfft2d_freqs`.
pub fn rfft2_freqs(h: usize, w: usize) -> Vec<f32> {
    let wf = w / 2 + 1;
    let fy = |m: usize| {
        let m = m as f32;
        let h = h as f32;
        if m < (h / 2.0).ceil() {
            m / h
        } else {
            (m - h) / h
        }
    };
    let mut out = Vec::with_capacity(h * wf);
    for m in 0..h {
        for k in 0..wf {
            let fx = k as f32 / w as f32;
            out.push((fy(m) * fy(m) + fx * fx).sqrt());
        }
    }
    out
}
