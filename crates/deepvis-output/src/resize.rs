//! Separable image resampling on planar float data.
//!
//! Bilinear follows Pillow's `Image.resize(..., BILINEAR)` (which is also
//! what torchvision's `Resize` with `antialias=True` reproduces): pixel
//! centers at half-integers, edges clamped by dropping and renormalizing
//! out-of-range taps, and when downscaling the triangle kernel is widened by
//! the scale factor so shrinking a photo averages instead of aliasing. When
//! upscaling this is exactly classic bilinear interpolation with
//! `align_corners=False`. Results differ from Pillow only by Pillow's 8-bit
//! intermediate rounding.

use crate::RgbImage;

#[derive(Clone, Copy)]
enum Kernel {
    /// Triangle filter with support 1, widened when downscaling.
    Bilinear,
    /// Exact area coverage: each output pixel is the mean of the input area
    /// it covers, with fractional weights at the borders.
    Area,
}

/// Taps for one output position: first input index and its weights.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

fn taps(in_size: usize, out_size: usize, kernel: Kernel) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    (0..out_size)
        .map(|i| {
            let (start, mut weights) = match kernel {
                Kernel::Bilinear => {
                    let filter_scale = scale.max(1.0);
                    let support = filter_scale;
                    let center = (i as f64 + 0.5) * scale;
                    let lo = ((center - support).floor().max(0.0)) as usize;
                    let hi = ((center + support).ceil() as usize).min(in_size);
                    let w: Vec<f64> = (lo..hi)
                        .map(|j| {
                            let d = (j as f64 + 0.5 - center) / filter_scale;
                            (1.0 - d.abs()).max(0.0)
                        })
                        .collect();
                    (lo, w)
                }
                Kernel::Area => {
                    let a = i as f64 * scale;
                    let b = (i as f64 + 1.0) * scale;
                    let lo = a.floor() as usize;
                    let hi = (b.ceil() as usize).min(in_size).max(lo + 1);
                    let w: Vec<f64> = (lo..hi)
                        .map(|j| {
                            let (j0, j1) = (j as f64, j as f64 + 1.0);
                            (b.min(j1) - a.max(j0)).max(0.0)
                        })
                        .collect();
                    (lo, w)
                }
            };
            let sum: f64 = weights.iter().sum();
            // Sum is positive for every in-range output pixel; the guard only
            // protects against a degenerate all-zero tap set.
            if sum > 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            Taps {
                start,
                weights: weights.into_iter().map(|w| w as f32).collect(),
            }
        })
        .collect()
}

fn resize_planar(
    chw: &[f32],
    h: usize,
    w: usize,
    new_h: usize,
    new_w: usize,
    kernel: Kernel,
) -> Vec<f32> {
    let plane = h * w;
    if plane == 0 || new_h == 0 || new_w == 0 {
        return Vec::new();
    }
    assert!(
        chw.len() % plane == 0,
        "resize: {} values is not a whole number of {h}x{w} planes",
        chw.len()
    );
    let channels = chw.len() / plane;
    let xt = taps(w, new_w, kernel);
    let yt = taps(h, new_h, kernel);
    let mut out = vec![0.0f32; channels * new_h * new_w];
    // Horizontal pass into an h x new_w buffer, then vertical.
    let mut tmp = vec![0.0f32; h * new_w];
    for c in 0..channels {
        let src = &chw[c * plane..(c + 1) * plane];
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for (x, t) in xt.iter().enumerate() {
                tmp[y * new_w + x] = t
                    .weights
                    .iter()
                    .zip(&row[t.start..])
                    .map(|(wt, v)| wt * v)
                    .sum();
            }
        }
        let dst = &mut out[c * new_h * new_w..(c + 1) * new_h * new_w];
        for (y, t) in yt.iter().enumerate() {
            let drow = &mut dst[y * new_w..(y + 1) * new_w];
            for (k, wt) in t.weights.iter().enumerate() {
                let srow = &tmp[(t.start + k) * new_w..(t.start + k + 1) * new_w];
                for (d, s) in drow.iter_mut().zip(srow) {
                    *d += wt * s;
                }
            }
        }
    }
    out
}

/// Resizes a planar CHW image (any channel count) with Pillow-style bilinear
/// filtering; see the module docs for the exact semantics.
///
/// Returns an empty vector if either size is zero.
///
/// # Panics
/// If `chw.len()` is not a multiple of `h * w`.
pub fn resize_bilinear_planar(
    chw: &[f32],
    h: usize,
    w: usize,
    new_h: usize,
    new_w: usize,
) -> Vec<f32> {
    resize_planar(chw, h, w, new_h, new_w, Kernel::Bilinear)
}

/// Resizes a planar CHW image by exact area averaging (a box filter with
/// fractional coverage). Meant for downscaling, where it gives the cleanest
/// thumbnails.
///
/// # Panics
/// If `chw.len()` is not a multiple of `h * w`.
pub fn resize_area_planar(chw: &[f32], h: usize, w: usize, new_h: usize, new_w: usize) -> Vec<f32> {
    resize_planar(chw, h, w, new_h, new_w, Kernel::Area)
}

impl RgbImage {
    /// Area-averaged resize to `new_width` x `new_height` (both at least 1).
    pub fn resize_area(&self, new_width: u32, new_height: u32) -> RgbImage {
        let (new_width, new_height) = (new_width.max(1), new_height.max(1));
        if (new_width, new_height) == (self.width, self.height) {
            return self.clone();
        }
        let out = resize_area_planar(
            &self.to_planar_f32(),
            self.height as usize,
            self.width as usize,
            new_height as usize,
            new_width as usize,
        );
        RgbImage::from_planar_f32(&out, new_height as usize, new_width as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-5, "index {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let chw = vec![0.375f32; 3 * 7 * 5];
        for (nh, nw) in [(14, 10), (3, 2), (7, 5), (1, 1), (20, 3)] {
            let out = resize_bilinear_planar(&chw, 7, 5, nh, nw);
            assert_eq!(out.len(), 3 * nh * nw);
            assert!(out.iter().all(|v| (v - 0.375).abs() < 1e-6), "{nh}x{nw}");
            let out = resize_area_planar(&chw, 7, 5, nh, nw);
            assert!(out.iter().all(|v| (v - 0.375).abs() < 1e-6), "{nh}x{nw}");
        }
    }

    #[test]
    fn upscale_2x2_matches_bilinear() {
        // [[0, 1], [2, 3]] -> 4x4. With align_corners=False the sample
        // positions are -0.25, 0.25, 0.75, 1.25 (clamped to [0, 1]), so each
        // axis interpolates with weights 0, 0.25, 0.75, 1.
        let out = resize_bilinear_planar(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        #[rustfmt::skip]
        let want = [
            0.0, 0.25, 0.75, 1.0,
            0.5, 0.75, 1.25, 1.5,
            1.5, 1.75, 2.25, 2.5,
            2.0, 2.25, 2.75, 3.0,
        ];
        assert_close(&out, &want);
    }

    #[test]
    fn downscale_averages_instead_of_aliasing() {
        // A 1-pixel checkerboard shrunk 4x must come out near its mean;
        // point-sampled bilinear would return pure 0s or 1s.
        let (h, w) = (16, 16);
        let chw: Vec<f32> = (0..h * w).map(|i| ((i / w + i % w) % 2) as f32).collect();
        let out = resize_bilinear_planar(&chw, h, w, 4, 4);
        assert!(out.iter().all(|v| (v - 0.5).abs() < 0.1), "{out:?}");
    }

    #[test]
    fn area_downscale_exact_means() {
        // 1x4 row [0, 1, 2, 3] -> 1x2 gives pairwise means; -> 1x3 uses
        // fractional coverage: [0 + 1/3*1] / (4/3) etc.
        let out = resize_area_planar(&[0.0, 1.0, 2.0, 3.0], 1, 4, 1, 2);
        assert_close(&out, &[0.5, 2.5]);
        let out = resize_area_planar(&[0.0, 1.0, 2.0, 3.0], 1, 4, 1, 3);
        assert_close(&out, &[0.25, 1.5, 2.75]);
    }

    #[test]
    fn rgb_resize_area() {
        let mut img = RgbImage::new(4, 2, [0, 0, 0]);
        img.put_pixel(0, 0, [255, 255, 255]);
        img.put_pixel(1, 0, [255, 255, 255]);
        let small = img.resize_area(2, 1);
        assert_eq!((small.width, small.height), (2, 1));
        assert_eq!(small.pixel(0, 0), [128, 128, 128]);
        assert_eq!(small.pixel(1, 0), [0, 0, 0]);
    }
}
