//! Random, differentiable image transforms (Lucid's `optvis.transform`) and Yosinski-style
//! regularizers.
//!
//! Every transform is a linear map with a constant term, drawn anew each step from a seeded
//! generator: each output pixel is a weighted sum of at most four input pixels of the same
//! channel plus a constant (padding, fill). The backward pass scatters with the same weights, so
//! the gradient is the exact vector-Jacobian product back to the untransformed image.
//!
//! Batches: jitter offsets and rotation angles are drawn per image; a scale factor per batch
//! (all images of a batch share one size).
//!
//! Images are planar `[N, C, H, W]` of any channel count C; functions that take `n`, `h` and
//! `w` read C from the length of the data.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PadMode {
    /// Fill with a constant (Lucid's standard set uses 0.5, mid grey).
    Constant(f32),
    /// Mirror without repeating the edge (numpy's "reflect").
    Reflect,
}

/// One step of the transform pipeline.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// Adds `amount` pixels on every side.
    Pad { amount: usize, mode: PadMode },
    /// Lucid's `jitter(d)`: a random crop `d` pixels smaller in each dimension, offset uniform in
    /// 0..=d per image.
    Jitter(usize),
    /// Lucid's `random_scale(scales)`: bilinear resize by a factor drawn from the list (per batch).
    RandomScale(Vec<f32>),
    /// Lucid's `random_rotate(angles)`: bilinear rotation about the centre by an angle in
    /// degrees drawn from the list (per image); corners outside the input read mid grey.
    RandomRotate(Vec<f32>),
    /// A centred crop to `height`×`width` (no-op where the input is not larger).
    Crop { height: usize, width: usize },
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Pad { amount, mode } => match mode {
                PadMode::Constant(c) => write!(f, "pad({amount}, const {c})"),
                PadMode::Reflect => write!(f, "pad({amount}, reflect)"),
            },
            Transform::Jitter(d) => write!(f, "jitter({d})"),
            Transform::RandomScale(s) => write!(
                f,
                "random_scale({:.2}..{:.2}, {} values)",
                s.iter().cloned().fold(f32::INFINITY, f32::min),
                s.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
                s.len()
            ),
            Transform::RandomRotate(a) => write!(
                f,
                "random_rotate({}°..{}°, {} values)",
                a.iter().cloned().fold(f32::INFINITY, f32::min),
                a.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
                a.len()
            ),
            Transform::Crop { height, width } => write!(f, "crop({height}x{width})"),
        }
    }
}

/// Lucid's `standard_transforms`: `pad(12, const 0.5), jitter(8),
/// random_scale([1 + (i − 5)/50 for i in 0..11]), random_rotate(−10..=10 + five more 0s),
/// jitter(4)`.
pub fn lucid_standard() -> Vec<Transform> {
    let mut angles: Vec<f32> = (-10..=10).map(|a| a as f32).collect();
    angles.extend([0.0; 5]);
    vec![
        Transform::Pad {
            amount: 12,
            mode: PadMode::Constant(0.5),
        },
        Transform::Jitter(8),
        Transform::RandomScale((0..11).map(|i| 1.0 + (i as f32 - 5.0) / 50.0).collect()),
        Transform::RandomRotate(angles),
        Transform::Jitter(4),
    ]
}

/// The standard set scaled for images of `size` pixels: Lucid's numbers are for 128 px, so pads
/// and jitters grow or shrink in proportion (at least 1 px each).
pub fn lucid_standard_for(size: usize) -> Vec<Transform> {
    let k = size as f32 / 128.0;
    let px = |v: f32| ((v * k).round() as usize).max(1);
    lucid_standard()
        .into_iter()
        .map(|t| match t {
            Transform::Pad { amount, mode } => Transform::Pad {
                amount: px(amount as f32),
                mode,
            },
            Transform::Jitter(d) => Transform::Jitter(px(d as f32)),
            other => other,
        })
        .collect()
}

type Tap = [(u32, f32); 4];
const NO_TAP: (u32, f32) = (0, 0.0);

/// One drawn stage: for each image (or one shared map), per output pixel, four taps into the
/// input plane and a constant; or, for crops (jitters), only where each image's window starts.
struct Stage {
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    /// `[n_maps, oh * ow]`.
    taps: Vec<Tap>,
    bias: Vec<f32>,
    shared: bool,
    /// Only the first tap is used (pads): a faster path.
    single: bool,
    /// A crop: output (y, x) is input (y + oy, x + ox) of its image, whole rows at a time.
    /// Jitters were per-pixel tables rebuilt every step, a third of the transforms' time on
    /// EfficientNet-Lite0 at 224 px, where the network itself is cheap.
    shift: Option<Vec<(usize, usize)>>,
    /// What a pad's table was drawn for: (h, w, amount, mode). A pad draws nothing at random,
    /// so its table is kept while the input size stays.
    drawn_pad: Option<(usize, usize, usize, PadMode)>,
}

impl Stage {
    fn empty() -> Stage {
        Stage {
            ih: 0,
            iw: 0,
            oh: 0,
            ow: 0,
            taps: Vec::new(),
            bias: Vec::new(),
            shared: true,
            single: false,
            shift: None,
            drawn_pad: None,
        }
    }

    /// The sizes and map count of a table stage, its tables as they are.
    fn set_geometry(&mut self, ih: usize, iw: usize, oh: usize, ow: usize, maps: usize) {
        (self.ih, self.iw, self.oh, self.ow) = (ih, iw, oh, ow);
        self.shared = maps == 1;
        self.single = false;
    }

    fn reset(&mut self, ih: usize, iw: usize, oh: usize, ow: usize, maps: usize) {
        self.set_geometry(ih, iw, oh, ow, maps);
        self.shift = None;
        self.drawn_pad = None;
        self.taps.clear();
        self.taps.resize(maps * oh * ow, [NO_TAP; 4]);
        self.bias.clear();
        self.bias.resize(maps * oh * ow, 0.0);
    }

    /// [`Stage::reset`] for a stage whose draw then writes every tap, and either every constant
    /// (rotations) or none (resizes, whose constants stay at the zeros of the last reset): the
    /// tables are not cleared first. A stage always draws the same transform.
    fn reset_overwritten(&mut self, ih: usize, iw: usize, oh: usize, ow: usize, maps: usize) {
        if self.shift.is_some() || self.drawn_pad.is_some() {
            self.reset(ih, iw, oh, ow, maps);
            return;
        }
        let len = maps * oh * ow;
        self.taps.resize(len, [NO_TAP; 4]);
        self.bias.resize(len, 0.0);
        self.set_geometry(ih, iw, oh, ow, maps);
    }

    /// A crop of `oh`×`ow` at per-image (or shared) offsets.
    fn set_shift(
        &mut self,
        ih: usize,
        iw: usize,
        oh: usize,
        ow: usize,
        offsets: Vec<(usize, usize)>,
    ) {
        self.set_geometry(ih, iw, oh, ow, offsets.len());
        self.drawn_pad = None;
        self.shift = Some(offsets);
    }

    /// For a crop: where each output row starts in the output, and where its source starts in
    /// the input, over `n` images of `nc` channels.
    fn shifted_rows<'a>(
        &'a self,
        offsets: &'a [(usize, usize)],
        n: usize,
        nc: usize,
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        let (ip, op) = (self.ih * self.iw, self.oh * self.ow);
        (0..n * nc).flat_map(move |plane| {
            let (oy, ox) = offsets[if self.shared { 0 } else { plane / nc }];
            (0..self.oh).map(move |y| {
                (
                    plane * op + y * self.ow,
                    plane * ip + (y + oy) * self.iw + ox,
                )
            })
        })
    }

    /// `nc` channels per image.
    fn forward(&self, x: &[f32], out: &mut [f32], n: usize, nc: usize) {
        let (ip, op) = (self.ih * self.iw, self.oh * self.ow);
        if let Some(offsets) = &self.shift {
            for (o, i) in self.shifted_rows(offsets, n, nc) {
                out[o..o + self.ow].copy_from_slice(&x[i..i + self.ow]);
            }
            return;
        }
        for b in 0..n {
            let m = if self.shared { 0 } else { b };
            let taps = &self.taps[m * op..(m + 1) * op];
            let bias = &self.bias[m * op..(m + 1) * op];
            for c in 0..nc {
                let src = &x[(b * nc + c) * ip..(b * nc + c + 1) * ip];
                let dst = &mut out[(b * nc + c) * op..(b * nc + c + 1) * op];
                if self.single {
                    for ((d, t), bi) in dst.iter_mut().zip(taps).zip(bias) {
                        *d = bi + t[0].1 * src[t[0].0 as usize];
                    }
                    continue;
                }
                for ((d, t), bi) in dst.iter_mut().zip(taps).zip(bias) {
                    *d = bi
                        + t[0].1 * src[t[0].0 as usize]
                        + t[1].1 * src[t[1].0 as usize]
                        + t[2].1 * src[t[2].0 as usize]
                        + t[3].1 * src[t[3].0 as usize];
                }
            }
        }
    }

    fn backward(&self, g: &[f32], gin: &mut [f32], n: usize, nc: usize) {
        let (ip, op) = (self.ih * self.iw, self.oh * self.ow);
        gin.iter_mut().for_each(|v| *v = 0.0);
        if let Some(offsets) = &self.shift {
            for (o, i) in self.shifted_rows(offsets, n, nc) {
                gin[i..i + self.ow].copy_from_slice(&g[o..o + self.ow]);
            }
            return;
        }
        for b in 0..n {
            let m = if self.shared { 0 } else { b };
            let taps = &self.taps[m * op..(m + 1) * op];
            for c in 0..nc {
                let gs = &g[(b * nc + c) * op..(b * nc + c + 1) * op];
                let dst = &mut gin[(b * nc + c) * ip..(b * nc + c + 1) * ip];
                if self.single {
                    for (gv, t) in gs.iter().zip(taps) {
                        dst[t[0].0 as usize] += t[0].1 * gv;
                    }
                    continue;
                }
                for (gv, t) in gs.iter().zip(taps) {
                    for &(i, w) in t {
                        if w != 0.0 {
                            dst[i as usize] += w * gv;
                        }
                    }
                }
            }
        }
    }
}

/// Bilinear taps at source position (y, x). Outside the input, `fill` (Some) supplies the
/// value, or coordinates clamp to the edge (None).
fn bilinear(y: f32, x: f32, h: usize, w: usize, fill: Option<f32>) -> (Tap, f32) {
    let (y, x) = match fill {
        None => (y.clamp(0.0, (h - 1) as f32), x.clamp(0.0, (w - 1) as f32)),
        Some(_) => (y, x),
    };
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as i64, x0 as i64);
    let mut taps = [NO_TAP; 4];
    let mut bias = 0.0;
    let corners = [
        (y0, x0, (1.0 - fy) * (1.0 - fx)),
        (y0, x0 + 1, (1.0 - fy) * fx),
        (y0 + 1, x0, fy * (1.0 - fx)),
        (y0 + 1, x0 + 1, fy * fx),
    ];
    for (k, (yy, xx, wt)) in corners.into_iter().enumerate() {
        if wt == 0.0 {
            continue;
        }
        let inside = yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w;
        if inside {
            taps[k] = ((yy as usize * w + xx as usize) as u32, wt);
        } else if let Some(f) = fill {
            bias += wt * f;
        } else {
            // Clamped coordinates only step outside with zero weight.
            let (cy, cx) = (yy.clamp(0, h as i64 - 1), xx.clamp(0, w as i64 - 1));
            taps[k] = ((cy as usize * w + cx as usize) as u32, wt);
        }
    }
    (taps, bias)
}

fn reflect(i: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let mut m = i.rem_euclid(period);
    if m >= n as i64 {
        m = period - m;
    }
    m as usize
}

/// A drawn chain of transforms with its buffers, reused from step to step.
pub struct Pipeline {
    transforms: Vec<Transform>,
    stages: Vec<Stage>,
    bufs: Vec<Vec<f32>>,
    gbuf: Vec<f32>,
    n: usize,
    /// Channels per image of the latest forward.
    c: usize,
    in_size: (usize, usize),
    out_size: (usize, usize),
}

impl Pipeline {
    pub fn new(transforms: Vec<Transform>) -> Pipeline {
        let k = transforms.len();
        Pipeline {
            transforms,
            stages: (0..k).map(|_| Stage::empty()).collect(),
            bufs: vec![Vec::new(); k + 1],
            gbuf: Vec::new(),
            n: 0,
            c: 0,
            in_size: (0, 0),
            out_size: (0, 0),
        }
    }

    pub fn transforms(&self) -> &[Transform] {
        &self.transforms
    }

    /// Draws new random parameters and transforms `x` (`[n, C, h, w]`); returns the output
    /// size. The output is [`Pipeline::output`].
    pub fn forward(
        &mut self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        rng: &mut ChaCha8Rng,
    ) -> (usize, usize) {
        self.n = n;
        self.c = x.len() / (n * h * w).max(1);
        self.in_size = (h, w);
        self.bufs[0].clear();
        self.bufs[0].extend_from_slice(x);
        let (mut ch, mut cw) = (h, w);
        for (i, t) in self.transforms.iter().enumerate() {
            let stage = &mut self.stages[i];
            draw(t, stage, n, ch, cw, rng);
            let (oh, ow) = (stage.oh, stage.ow);
            let (before, after) = self.bufs.split_at_mut(i + 1);
            let out = &mut after[0];
            out.resize(n * self.c * oh * ow, 0.0);
            stage.forward(&before[i], out, n, self.c);
            ch = oh;
            cw = ow;
        }
        self.out_size = (ch, cw);
        (ch, cw)
    }

    /// The transformed batch of the latest [`Pipeline::forward`].
    pub fn output(&self) -> &[f32] {
        &self.bufs[self.transforms.len()]
    }

    pub fn output_size(&self) -> (usize, usize) {
        self.out_size
    }

    /// The gradient with respect to the untransformed input, from one with respect to the
    /// output, for the transforms drawn by the latest forward.
    pub fn backward(&mut self, g: &[f32], gin: &mut [f32]) {
        let (n, nc) = (self.n, self.c);
        let k = self.transforms.len();
        if k == 0 {
            gin.copy_from_slice(g);
            return;
        }
        // Walk the stages back, ping-ponging between `gbuf` and the stage input buffers
        // (which the forward pass no longer needs).
        let mut cur = std::mem::take(&mut self.gbuf);
        cur.clear();
        cur.extend_from_slice(g);
        for i in (0..k).rev() {
            let stage = &self.stages[i];
            let mut next = std::mem::take(&mut self.bufs[i]);
            next.resize(n * nc * stage.ih * stage.iw, 0.0);
            stage.backward(&cur, &mut next, n, nc);
            self.bufs[i] = cur;
            cur = next;
        }
        gin.copy_from_slice(&cur);
        self.gbuf = cur;
    }
}

fn draw(t: &Transform, s: &mut Stage, n: usize, h: usize, w: usize, rng: &mut ChaCha8Rng) {
    match t {
        Transform::Pad { amount, mode } => {
            let p = *amount;
            let (oh, ow) = (h + 2 * p, w + 2 * p);
            if s.drawn_pad == Some((h, w, p, *mode)) {
                return;
            }
            s.reset(h, w, oh, ow, 1);
            s.single = true;
            s.drawn_pad = Some((h, w, p, *mode));
            for y in 0..oh {
                for x in 0..ow {
                    let (iy, ix) = (y as i64 - p as i64, x as i64 - p as i64);
                    let o = y * ow + x;
                    let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                    if inside {
                        s.taps[o][0] = ((iy as usize * w + ix as usize) as u32, 1.0);
                    } else {
                        match mode {
                            PadMode::Constant(c) => s.bias[o] = *c,
                            PadMode::Reflect => {
                                let (ry, rx) = (reflect(iy, h), reflect(ix, w));
                                s.taps[o][0] = ((ry * w + rx) as u32, 1.0);
                            }
                        }
                    }
                }
            }
        }
        Transform::Jitter(d) => {
            let d = (*d).min(h - 1).min(w - 1);
            let offsets = (0..n)
                .map(|_| (rng.gen_range(0..=d), rng.gen_range(0..=d)))
                .collect();
            s.set_shift(h, w, h - d, w - d, offsets);
        }
        Transform::Crop { height, width } => {
            let (oh, ow) = ((*height).min(h), (*width).min(w));
            s.set_shift(h, w, oh, ow, vec![((h - oh) / 2, (w - ow) / 2)]);
        }
        Transform::RandomScale(scales) => {
            let k = if scales.is_empty() {
                1.0
            } else {
                scales[rng.gen_range(0..scales.len())]
            };
            let oh = ((h as f32 * k).round() as usize).max(1);
            let ow = ((w as f32 * k).round() as usize).max(1);
            s.reset_overwritten(h, w, oh, ow, 1);
            fill_resize(&mut s.taps, h, w, oh, ow);
        }
        Transform::RandomRotate(angles) => {
            // Every tap and constant is written below.
            s.reset_overwritten(h, w, h, w, n);
            for b in 0..n {
                let deg = if angles.is_empty() {
                    0.0
                } else {
                    angles[rng.gen_range(0..angles.len())]
                };
                let (sin, cos) = deg.to_radians().sin_cos();
                let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
                for y in 0..h {
                    for x in 0..w {
                        let (dy, dx) = (y as f32 - cy, x as f32 - cx);
                        // Inverse rotation: where the output pixel comes from.
                        let sx = cos * dx + sin * dy + cx;
                        let sy = -sin * dx + cos * dy + cy;
                        let (taps, bias) = bilinear(sy, sx, h, w, Some(0.5));
                        let o = b * h * w + y * w + x;
                        s.taps[o] = taps;
                        s.bias[o] = bias;
                    }
                }
            }
        }
    }
}

/// Bilinear resize taps with half-pixel centres and clamped edges (PyTorch's
/// `interpolate(mode="bilinear", align_corners=False)` for upsampling).
fn fill_resize(taps: &mut [Tap], h: usize, w: usize, oh: usize, ow: usize) {
    let (ky, kx) = (h as f32 / oh as f32, w as f32 / ow as f32);
    for y in 0..oh {
        let sy = (y as f32 + 0.5) * ky - 0.5;
        for x in 0..ow {
            let sx = (x as f32 + 0.5) * kx - 0.5;
            taps[y * ow + x] = bilinear(sy, sx, h, w, None).0;
        }
    }
}

/// Bilinear resize of `[n, C, h, w]` images to `oh`×`ow` (half-pixel centres, clamped edges).
pub fn resize(x: &[f32], n: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return x.to_vec();
    }
    let nc = x.len() / (n * h * w).max(1);
    if oh < h || ow < w {
        // Downsampling: average over the footprint (area) so detail does not alias.
        return resize_area(x, n * nc, h, w, oh, ow);
    }
    let mut s = Stage::empty();
    s.reset(h, w, oh, ow, 1);
    fill_resize(&mut s.taps, h, w, oh, ow);
    let mut out = vec![0.0; n * nc * oh * ow];
    s.forward(x, &mut out, n, nc);
    out
}

/// Box-filter downsampling with fractional footprints, of `planes` planes.
fn resize_area(x: &[f32], planes: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let weights = |inn: usize, out: usize| -> Vec<Vec<(usize, f32)>> {
        let k = inn as f32 / out as f32;
        (0..out)
            .map(|o| {
                let (a, b) = (o as f32 * k, (o + 1) as f32 * k);
                let mut v = Vec::new();
                let mut i = a.floor() as usize;
                while (i as f32) < b && i < inn {
                    let lo = a.max(i as f32);
                    let hi = b.min(i as f32 + 1.0);
                    if hi > lo {
                        v.push((i, (hi - lo) / k));
                    }
                    i += 1;
                }
                v
            })
            .collect()
    };
    let (wy, wx) = (weights(h, oh), weights(w, ow));
    let mut out = vec![0.0; planes * oh * ow];
    for p in 0..planes {
        let src = &x[p * h * w..(p + 1) * h * w];
        let dst = &mut out[p * oh * ow..(p + 1) * oh * ow];
        for (y, ry) in wy.iter().enumerate() {
            for (xx, rx) in wx.iter().enumerate() {
                let mut s = 0.0;
                for &(iy, a) in ry {
                    for &(ix, b) in rx {
                        s += a * b * src[iy * w + ix];
                    }
                }
                dst[y * ow + xx] = s;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Regularizers

/// Regularizers of Yosinski et al. 2015 ("Understanding Neural Networks Through Deep
/// Visualization") and Mahendran & Vedaldi's total variation. Penalties are subtracted from the
/// objective (their gradient flows through any parametrization); the image operations rewrite
/// the image every `every` steps (exact for the pixel parametrization, re-fitted for the others).
#[derive(Clone, Debug, PartialEq)]
pub enum Regularizer {
    /// Penalty `weight · mean((x − 0.5)²)` per image: L2 decay towards grey.
    L2 { weight: f32 },
    /// Penalty `weight · mean over pixels of Σ_c |x(y,x+1) − x(y,x)| + |x(y+1,x) − x(y,x)|`.
    TotalVariation { weight: f32 },
    /// Gaussian blur of the image every `every` steps.
    Blur { sigma: f32, every: usize },
    /// Pixels whose colour norm ‖x − 0.5‖ is below the given percentile (0–100) of the image
    /// become grey, every `every` steps.
    ClipNorm { percentile: f32, every: usize },
    /// Pixels whose contribution |Σ_c (x − 0.5) · ∂objective/∂x| is below the given percentile
    /// become grey, every `every` steps.
    ClipContribution { percentile: f32, every: usize },
}

impl fmt::Display for Regularizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Regularizer::L2 { weight } => write!(f, "l2({weight})"),
            Regularizer::TotalVariation { weight } => write!(f, "tv({weight})"),
            Regularizer::Blur { sigma, every } => write!(f, "blur(σ {sigma}, every {every})"),
            Regularizer::ClipNorm { percentile, every } => {
                write!(f, "clip_norm({percentile}%, every {every})")
            }
            Regularizer::ClipContribution { percentile, every } => {
                write!(f, "clip_contribution({percentile}%, every {every})")
            }
        }
    }
}

impl Regularizer {
    /// Whether this is a penalty (with a gradient) rather than an image operation.
    pub fn is_penalty(&self) -> bool {
        matches!(
            self,
            Regularizer::L2 { .. } | Regularizer::TotalVariation { .. }
        )
    }

    /// Adds the penalty's value per image to `values` and its gradient to `grad` (both of the
    /// penalty itself, to be subtracted from the objective). Image operations add nothing.
    pub fn penalty(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        values: &mut [f32],
        grad: &mut [f32],
    ) {
        let nc = x.len() / (n * h * w).max(1);
        let per = nc * h * w;
        match self {
            Regularizer::L2 { weight } => {
                for b in 0..n {
                    let xs = &x[b * per..(b + 1) * per];
                    let gs = &mut grad[b * per..(b + 1) * per];
                    let mut s = 0.0f64;
                    let k = 2.0 * weight / per as f32;
                    for (g, v) in gs.iter_mut().zip(xs) {
                        let d = v - 0.5;
                        s += (d * d) as f64;
                        *g += k * d;
                    }
                    values[b] += weight * (s / per as f64) as f32;
                }
            }
            Regularizer::TotalVariation { weight } => {
                let k = weight / (h * w) as f32;
                for b in 0..n {
                    let mut s = 0.0f64;
                    for c in 0..nc {
                        let off = (b * nc + c) * h * w;
                        let xs = &x[off..off + h * w];
                        let gs = &mut grad[off..off + h * w];
                        for y in 0..h {
                            for xx in 0..w {
                                let i = y * w + xx;
                                if xx + 1 < w {
                                    let d = xs[i + 1] - xs[i];
                                    s += d.abs() as f64;
                                    let sg = k * d.signum() * (d != 0.0) as u8 as f32;
                                    gs[i + 1] += sg;
                                    gs[i] -= sg;
                                }
                                if y + 1 < h {
                                    let d = xs[i + w] - xs[i];
                                    s += d.abs() as f64;
                                    let sg = k * d.signum() * (d != 0.0) as u8 as f32;
                                    gs[i + w] += sg;
                                    gs[i] -= sg;
                                }
                            }
                        }
                    }
                    values[b] += k * s as f32;
                }
            }
            _ => {}
        }
    }

    /// Applies an image operation due at `step` (0-based) in place; returns whether it did.
    /// `grad` is the latest gradient of the objective with respect to the image.
    pub fn apply(
        &self,
        step: usize,
        x: &mut [f32],
        grad: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> bool {
        let due = |every: usize| every > 0 && (step + 1) % every == 0;
        let plane = h * w;
        let nc = x.len() / (n * plane).max(1);
        let per = nc * plane;
        match self {
            Regularizer::Blur { sigma, every } if due(*every) => {
                gaussian_blur(x, n * nc, h, w, *sigma);
                true
            }
            Regularizer::ClipNorm { percentile, every } if due(*every) => {
                for b in 0..n {
                    let img = &mut x[b * per..(b + 1) * per];
                    let norms: Vec<f32> = (0..plane)
                        .map(|p| {
                            (0..nc)
                                .map(|c| (img[c * plane + p] - 0.5).powi(2))
                                .sum::<f32>()
                                .sqrt()
                        })
                        .collect();
                    clip_below(img, &norms, *percentile, plane);
                }
                true
            }
            Regularizer::ClipContribution { percentile, every } if due(*every) => {
                for b in 0..n {
                    let g = &grad[b * per..(b + 1) * per];
                    let img = &mut x[b * per..(b + 1) * per];
                    let contrib: Vec<f32> = (0..plane)
                        .map(|p| {
                            (0..nc)
                                .map(|c| (img[c * plane + p] - 0.5) * g[c * plane + p])
                                .sum::<f32>()
                                .abs()
                        })
                        .collect();
                    clip_below(img, &contrib, *percentile, plane);
                }
                true
            }
            _ => false,
        }
    }
}

fn clip_below(img: &mut [f32], score: &[f32], percentile: f32, plane: usize) {
    let mut sorted = score.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let k = ((percentile / 100.0) * plane as f32).floor() as usize;
    if k == 0 {
        return;
    }
    let threshold = sorted[(k - 1).min(plane - 1)];
    for p in 0..plane {
        if score[p] <= threshold {
            for c in 0..img.len() / plane {
                img[c * plane + p] = 0.5;
            }
        }
    }
}

/// Separable Gaussian blur of `planes` planes of `h`×`w`, edges clamped.
pub fn gaussian_blur(x: &mut [f32], planes: usize, h: usize, w: usize, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let r = (3.0 * sigma).ceil() as i64;
    let mut k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    let mut tmp = vec![0.0; h * w];
    for p in 0..planes {
        let img = &mut x[p * h * w..(p + 1) * h * w];
        for y in 0..h {
            for xx in 0..w {
                let mut s = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let ix = (xx as i64 + j as i64 - r).clamp(0, w as i64 - 1) as usize;
                    s += kv * img[y * w + ix];
                }
                tmp[y * w + xx] = s;
            }
        }
        for y in 0..h {
            for xx in 0..w {
                let mut s = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let iy = (y as i64 + j as i64 - r).clamp(0, h as i64 - 1) as usize;
                    s += kv * tmp[iy * w + xx];
                }
                img[y * w + xx] = s;
            }
        }
    }
}
