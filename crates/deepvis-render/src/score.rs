//! The robust score: how strongly an image drives an objective when it is seen slightly
//! differently, as a network would see it in another photo. An image that excites a channel
//! only at one exact pixel alignment (adversarial noise) scores low; a feature that the unit
//! really responds to scores high.
//!
//! Definition (reproduced in PyTorch by `scripts/score_reference.py`):
//!
//! 1. The image (`[C, H, W]` in [0, 1]) is resized to the scoring size `S_h × S_w` (by default
//!    the model's native size) with PyTorch's `interpolate(mode="bilinear",
//!    align_corners=False, antialias=False)`; at that size already, it is used as it is.
//! 2. `N` views (32 by default) are drawn from `seed` by [`sample_views`]: a splitmix64
//!    stream, four uniforms per view in [0, 1) (the top 24 bits of each output / 2²⁴), in the
//!    order angle, scale, dx, dy: angle = (2u − 1)·15°, scale = 0.8 + 0.4u, dx, dy = (2u − 1)·16
//!    pixels of the scoring size.
//! 3. Each view samples the image through the affine map `theta = [[cos a/s, −sin a/s,
//!    dx/(S_w/2)], [sin a/s, cos a/s, dy/(S_h/2)]]` exactly as `F.affine_grid(theta,
//!    align_corners=False)` + `F.grid_sample(mode="bilinear", padding_mode="reflection",
//!    align_corners=False)`: in normalized coordinates, so a view zooms by `1/s`, rotates by `a`
//!    and shifts by (dx, dy) pixels; what falls outside is mirrored in.
//! 4. The score is the mean over the views of the objective's value on that view.
//!
//! The *final* value beside it is the objective on the image as it is (no resize, no view).

use crate::objective::{BatchObjective, Objective};
use crate::{model_normalization, normalized, RenderError};
use deepvis_models::Model;

/// The jitter, scale and rotation ranges of a view.
pub const JITTER_PX: f64 = 16.0;
pub const SCALE_RANGE: (f64, f64) = (0.8, 1.2);
pub const ROTATE_DEG: f64 = 15.0;
/// Views per score by default.
pub const DEFAULT_VIEWS: usize = 32;

/// One random view: the parameters of [`view_theta`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    /// Rotation in degrees.
    pub angle_deg: f64,
    /// Zoom: the view shows the image magnified by `scale` (theta divides by it).
    pub scale: f64,
    /// Shift in pixels of the scoring size.
    pub dx: f64,
    pub dy: f64,
}

/// How a score is taken.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreSettings {
    pub views: usize,
    pub seed: u64,
    /// (height, width) the image is resized to first; None: the model's native size.
    pub size: Option<(usize, usize)>,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings {
            views: DEFAULT_VIEWS,
            seed: 0,
            size: None,
        }
    }
}

/// splitmix64 (Steele et al.), chosen because it is ten lines in any language.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits: exact in float32 too.
    fn uniform(&mut self) -> f64 {
        (self.next() >> 40) as f64 / (1u64 << 24) as f64
    }
}

/// The `n` views drawn from `seed` (see the module documentation).
pub fn sample_views(n: usize, seed: u64) -> Vec<View> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let angle_deg = (2.0 * rng.uniform() - 1.0) * ROTATE_DEG;
            let scale = SCALE_RANGE.0 + (SCALE_RANGE.1 - SCALE_RANGE.0) * rng.uniform();
            let dx = (2.0 * rng.uniform() - 1.0) * JITTER_PX;
            let dy = (2.0 * rng.uniform() - 1.0) * JITTER_PX;
            View {
                angle_deg,
                scale,
                dx,
                dy,
            }
        })
        .collect()
}

/// The view's `affine_grid` matrix for an `h`×`w` image, rounded to float32 as PyTorch holds it.
pub fn view_theta(v: &View, h: usize, w: usize) -> [[f32; 3]; 2] {
    let a = v.angle_deg.to_radians();
    let (c, s) = (a.cos() / v.scale, a.sin() / v.scale);
    [
        [c as f32, -s as f32, (v.dx / (w as f64 / 2.0)) as f32],
        [s as f32, c as f32, (v.dy / (h as f64 / 2.0)) as f32],
    ]
}

/// PyTorch's `reflect_coordinates` + `clip_coordinates` for align_corners=False: mirror about
/// the pixel edges −0.5 and `size` − 0.5, then clamp to the pixel centres.
fn reflect(x: f32, size: usize) -> f32 {
    let (min, span) = (-0.5f32, size as f32);
    let a = (x - min).abs();
    let extra = a % span;
    let flips = (a / span).floor() as i64;
    let r = if flips % 2 == 0 {
        extra + min
    } else {
        span - extra + min
    };
    r.clamp(0.0, (size - 1) as f32)
}

/// One view of planar `[c, h, w]` `src` into `out` (same shape): `affine_grid` +
/// `grid_sample(bilinear, reflection, align_corners=False)`.
pub fn warp(src: &[f32], c: usize, h: usize, w: usize, theta: &[[f32; 3]; 2], out: &mut [f32]) {
    let plane = h * w;
    for y in 0..h {
        let gy = (2 * y + 1) as f32 / h as f32 - 1.0;
        for x in 0..w {
            let gx = (2 * x + 1) as f32 / w as f32 - 1.0;
            let sx = theta[0][0] * gx + theta[0][1] * gy + theta[0][2];
            let sy = theta[1][0] * gx + theta[1][1] * gy + theta[1][2];
            let ix = reflect(((sx + 1.0) * w as f32 - 1.0) / 2.0, w);
            let iy = reflect(((sy + 1.0) * h as f32 - 1.0) / 2.0, h);
            let (x0, y0) = (ix.floor(), iy.floor());
            let (fx, fy) = (ix - x0, iy - y0);
            let (x0, y0) = (x0 as usize, y0 as usize);
            // After clipping, a right/bottom neighbour past the edge has weight 0.
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let weights = [
                ((1.0 - fx) * (1.0 - fy), y0 * w + x0),
                (fx * (1.0 - fy), y0 * w + x1),
                ((1.0 - fx) * fy, y1 * w + x0),
                (fx * fy, y1 * w + x1),
            ];
            for ch in 0..c {
                let p = &src[ch * plane..(ch + 1) * plane];
                out[ch * plane + y * w + x] = weights.iter().map(|&(k, i)| k * p[i]).sum();
            }
        }
    }
}

/// PyTorch's `interpolate(mode="bilinear", align_corners=False, antialias=False)` of planar
/// `[c, h, w]` to `oh`×`ow`.
pub fn resize_like_torch(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return src.to_vec();
    }
    let taps = |inn: usize, out: usize| -> Vec<(usize, usize, f32)> {
        let k = inn as f32 / out as f32;
        (0..out)
            .map(|o| {
                let s = ((o as f32 + 0.5) * k - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(inn - 1);
                let i1 = (i0 + 1).min(inn - 1);
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    let mut out = vec![0.0; c * oh * ow];
    for ch in 0..c {
        let p = &src[ch * h * w..(ch + 1) * h * w];
        for (y, &(y0, y1, ly)) in ty.iter().enumerate() {
            for (x, &(x0, x1, lx)) in tx.iter().enumerate() {
                let top = (1.0 - lx) * p[y0 * w + x0] + lx * p[y0 * w + x1];
                let bottom = (1.0 - lx) * p[y1 * w + x0] + lx * p[y1 * w + x1];
                out[(ch * oh + y) * ow + x] = (1.0 - ly) * top + ly * bottom;
            }
        }
    }
    out
}

/// Views evaluated per forward pass at most: bounds the memory of a score whatever N is.
const CHUNK: usize = 8;

/// Pass bytes (`crate::pass_bytes`) a chunk of views aims at. As for the renders' batches
/// (the CLI's `BATCH_BYTES`), several images per pass pay only while each is small: VGG16 →
/// `features.28` at 512 px scored 32 views in 5.0 s wall one at a time against 6.3 s eight at
/// a time, EfficientNet-Lite0 at 224 px the same either way.
const CHUNK_BYTES: u64 = 256 << 20;

/// Views per forward pass for `objective` on `h`×`w` images.
fn chunk_len(model: &Model, objective: &Objective, (h, w): (usize, usize)) -> usize {
    let deepest = objective.nodes().into_iter().max();
    let bytes = deepest.and_then(|n| crate::pass_bytes(model, n, (h, w)).ok());
    bytes.map_or(CHUNK, |b| {
        ((CHUNK_BYTES / b.max(1)) as usize).clamp(1, CHUNK)
    })
}

/// The robust score of each image of `[n, C, h, w]` (C: the model's input channels) for its
/// objective (`objective.of(b)` for image b).
pub fn robust_scores(
    model: &Model,
    objective: &BatchObjective,
    images: &[f32],
    n: usize,
    (h, w): (usize, usize),
    settings: &ScoreSettings,
) -> Result<Vec<f32>, RenderError> {
    let c = model.info.channels;
    if images.len() != n * c * h * w || h == 0 || w == 0 {
        return Err(RenderError::Invalid(format!(
            "{} values for {n} images of {c}×{h}×{w}",
            images.len()
        )));
    }
    if settings.views == 0 {
        return Err(RenderError::Invalid(
            "a robust score needs at least one view".into(),
        ));
    }
    let (sh, sw) = settings.size.unwrap_or(model.info.native_size);
    let views = sample_views(settings.views, settings.seed);
    let per = c * h * w;
    (0..n)
        .map(|b| {
            let img = resize_like_torch(&images[b * per..(b + 1) * per], c, h, w, sh, sw);
            score_one(model, objective.of(b), &img, (sh, sw), &views)
        })
        .collect()
}

/// The robust score of one `[C, h, w]` image, already at the scoring size.
fn score_one(
    model: &Model,
    objective: &Objective,
    img: &[f32],
    (h, w): (usize, usize),
    views: &[View],
) -> Result<f32, RenderError> {
    let norm = model_normalization(model)?;
    let c = model.info.channels;
    let per = c * h * w;
    let shared = BatchObjective::Shared(objective.clone());
    let mut total = 0.0f64;
    let chunk_len = chunk_len(model, objective, (h, w));
    let mut batch = vec![0.0f32; chunk_len.min(views.len()) * per];
    for chunk in views.chunks(chunk_len) {
        let k = chunk.len();
        for (i, v) in chunk.iter().enumerate() {
            warp(
                img,
                c,
                h,
                w,
                &view_theta(v, h, w),
                &mut batch[i * per..(i + 1) * per],
            );
        }
        let x = normalized(&batch[..k * per], [k, c, h, w], &norm)?;
        let values = deepvis_engine::on_pool(|| {
            let trace = shared.trace_values(&model.graph, x)?;
            Ok::<_, RenderError>(shared.evaluate(&trace, k, false)?.0)
        })?;
        total += values.iter().map(|&v| v as f64).sum::<f64>();
    }
    Ok((total / views.len() as f64) as f32)
}

/// How alike images `[n, C, h, w]` are at `layer`: the cosine similarity of the Gram matrices
/// of their activations (the measure Lucid's diversity term lowers), `[i][j]`, 1 on the diagonal.
pub fn gram_similarity(
    model: &Model,
    layer: deepvis_engine::NodeId,
    images: &[f32],
    n: usize,
    (h, w): (usize, usize),
) -> Result<Vec<Vec<f32>>, RenderError> {
    let norm = model_normalization(model)?;
    let x = normalized(images, [n, model.info.channels, h, w], &norm)?;
    let trace = deepvis_engine::on_pool(|| model.graph.forward(x, layer))?;
    let t = trace.output();
    let s = t.shape();
    let (c, plane) = (s[1], s[2..].iter().product::<usize>());
    let grams: Vec<Vec<f64>> = (0..n)
        .map(|b| {
            let a = &t.data()[b * c * plane..(b + 1) * c * plane];
            let mut g = vec![0.0f64; c * c];
            for i in 0..c {
                for j in i..c {
                    let v: f64 = a[i * plane..(i + 1) * plane]
                        .iter()
                        .zip(&a[j * plane..(j + 1) * plane])
                        .map(|(x, y)| *x as f64 * *y as f64)
                        .sum();
                    g[i * c + j] = v;
                    g[j * c + i] = v;
                }
            }
            let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
            g.iter_mut().for_each(|v| *v /= norm);
            g
        })
        .collect();
    Ok((0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    grams[i]
                        .iter()
                        .zip(&grams[j])
                        .map(|(a, b)| a * b)
                        .sum::<f64>() as f32
                })
                .collect()
        })
        .collect())
}
