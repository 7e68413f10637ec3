use crate::op::{single, Field, Needs, Operator, Saved};
use crate::{EngineError, Tensor};
use rayon::prelude::*;
use std::any::Any;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    Nearest,
    /// Bilinear on the two spatial axes.
    Linear,
}

/// ONNX Resize's coordinate_transformation_mode: where output index x falls in the input,
/// with `scale` the given scale, or output/input length where a size was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordMode {
    /// (x + 0.5) / scale − 0.5
    HalfPixel,
    /// As `HalfPixel`, but 0 where the output length is 1.
    PytorchHalfPixel,
    /// x · (in − 1) / (out − 1), 0 where the output length is 1.
    AlignCorners,
    /// x / scale
    Asymmetric,
}

/// How `Nearest` rounds the input coordinate (ONNX Resize's nearest_mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// The output's spatial size: per-axis scales (output = floor(input · scale), as ONNX) or a
/// fixed size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeTo {
    Scales(f32, f32),
    Size(usize, usize),
}

/// ONNX Resize (opset 11+) of the two spatial axes of [N, C, H, W], nearest or bilinear, as
/// `F.interpolate` exports it (nearest: asymmetric + floor; bilinear: pytorch_half_pixel or
/// half_pixel, or align_corners). Coordinates are computed in f32, as onnxruntime does, and
/// clamped into the input as onnxruntime and PyTorch do. The receptive field is `Pointwise`:
/// an output value reads at most a 2×2 neighbourhood; the resampling of the grid itself is
/// not modelled.
#[derive(Clone, Debug)]
pub struct Resize {
    pub mode: ResizeMode,
    pub coord: CoordMode,
    pub nearest: NearestMode,
    pub to: ResizeTo,
}

/// One output index's input taps along an axis: (i0, w0), (i1, w1).
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

impl Resize {
    fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize), EngineError> {
        let (oh, ow) = match self.to {
            ResizeTo::Size(oh, ow) => (oh, ow),
            ResizeTo::Scales(sh, sw) => {
                if !(sh > 0.0 && sw > 0.0 && sh.is_finite() && sw.is_finite()) {
                    return Err(EngineError::Shape(format!(
                        "resize scales ({sh}, {sw}) must be positive"
                    )));
                }
                (
                    (h as f32 * sh).floor() as usize,
                    (w as f32 * sw).floor() as usize,
                )
            }
        };
        if oh == 0 || ow == 0 || h == 0 || w == 0 {
            return Err(EngineError::Shape(format!(
                "resize of {h}x{w} to {oh}x{ow} is empty"
            )));
        }
        Ok((oh, ow))
    }

    fn dims(&self, s: &[usize]) -> Result<(usize, usize, usize, usize), EngineError> {
        let [n, c, h, w] = s[..] else {
            return Err(EngineError::Shape(format!(
                "resize expects NCHW input, got {s:?}"
            )));
        };
        let (oh, ow) = self.output_hw(h, w)?;
        Ok((n * c, h * w, oh, ow))
    }

    /// The input coordinate of output index `x` along an axis of `len` input and `out` output
    /// values, with the given scale (if any).
    fn source(&self, x: usize, len: usize, out: usize, scale: Option<f32>) -> f32 {
        let scale = scale.unwrap_or(out as f32 / len as f32);
        let x = x as f32;
        match self.coord {
            CoordMode::HalfPixel => (x + 0.5) / scale - 0.5,
            CoordMode::PytorchHalfPixel if out > 1 => (x + 0.5) / scale - 0.5,
            CoordMode::PytorchHalfPixel => 0.0,
            CoordMode::AlignCorners if out > 1 => x * (len - 1) as f32 / (out - 1) as f32,
            CoordMode::AlignCorners => 0.0,
            CoordMode::Asymmetric => x / scale,
        }
    }

    fn taps(&self, len: usize, out: usize, scale: Option<f32>) -> Vec<Tap> {
        let last = len - 1;
        (0..out)
            .map(|x| {
                let c = self.source(x, len, out, scale);
                match self.mode {
                    ResizeMode::Nearest => {
                        let r = match self.nearest {
                            NearestMode::Floor => c.floor(),
                            NearestMode::Ceil => c.ceil(),
                            NearestMode::RoundPreferFloor if c.fract().abs() == 0.5 => c.floor(),
                            NearestMode::RoundPreferCeil if c.fract().abs() == 0.5 => c.ceil(),
                            _ => c.round(),
                        };
                        let i = (r.max(0.0) as usize).min(last);
                        Tap {
                            i0: i,
                            i1: i,
                            w0: 1.0,
                            w1: 0.0,
                        }
                    }
                    ResizeMode::Linear => {
                        let c = c.clamp(0.0, last as f32);
                        let i0 = (c as usize).min(last);
                        let i1 = (i0 + 1).min(last);
                        let f = c - i0 as f32;
                        Tap {
                            i0,
                            i1,
                            w0: 1.0 - f,
                            w1: f,
                        }
                    }
                }
            })
            .collect()
    }

    fn tables(&self, h: usize, w: usize, oh: usize, ow: usize) -> (Vec<Tap>, Vec<Tap>) {
        let (sh, sw) = match self.to {
            ResizeTo::Scales(sh, sw) => (Some(sh), Some(sw)),
            ResizeTo::Size(..) => (None, None),
        };
        (self.taps(h, oh, sh), self.taps(w, ow, sw))
    }
}

impl Operator for Resize {
    fn describe(&self) -> String {
        let to = match self.to {
            ResizeTo::Scales(sh, sw) => format!("x{sh}x{sw}"),
            ResizeTo::Size(oh, ow) => format!("to {oh}x{ow}"),
        };
        format!("Resize {:?} {:?} {to}", self.mode, self.coord)
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        let s = single("resize", inputs)?;
        let (_, _, oh, ow) = self.dims(s)?;
        Ok(vec![s[0], s[1], oh, ow])
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = single("resize", inputs)?;
        let s = x.shape();
        let (_, plane, oh, ow) = self.dims(s)?;
        let (h, w) = (s[2], s[3]);
        let (ty, tx) = self.tables(h, w, oh, ow);
        let mut y = Tensor::for_overwrite(&[s[0], s[1], oh, ow]);
        let nearest = self.mode == ResizeMode::Nearest;
        // Separably: the two input rows blended into one row first, then sampled along it.
        y.data_mut()
            .par_chunks_mut(oh * ow)
            .zip(x.data().par_chunks(plane))
            .for_each_init(
                || vec![0f32; w],
                |row, (yp, xp)| {
                    for (oy, a) in ty.iter().enumerate() {
                        let (done, rest) = yp.split_at_mut(oy * ow);
                        let yr = &mut rest[..ow];
                        if nearest {
                            if oy > 0 && ty[oy - 1].i0 == a.i0 {
                                yr.copy_from_slice(&done[(oy - 1) * ow..]);
                                continue;
                            }
                            let r = &xp[a.i0 * w..][..w];
                            for (v, b) in yr.iter_mut().zip(&tx) {
                                *v = r[b.i0];
                            }
                            continue;
                        }
                        let (r0, r1) = (&xp[a.i0 * w..][..w], &xp[a.i1 * w..][..w]);
                        for ((t, &p), &q) in row.iter_mut().zip(r0).zip(r1) {
                            *t = a.w0 * p + a.w1 * q;
                        }
                        for (v, b) in yr.iter_mut().zip(&tx) {
                            *v = b.w0 * row[b.i0] + b.w1 * row[b.i1];
                        }
                    }
                },
            );
        Ok(y)
    }

    fn backward_needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let s = saved.input_shape(0);
        let (_, plane, oh, ow) = self.dims(s)?;
        if grad.shape() != [s[0], s[1], oh, ow] {
            return Err(EngineError::Shape(format!(
                "resize output gradient has shape {:?}, expected {:?}",
                grad.shape(),
                [s[0], s[1], oh, ow]
            )));
        }
        let (h, w) = (s[2], s[3]);
        let (ty, tx) = self.tables(h, w, oh, ow);
        let mut dx = Tensor::zeros(s);
        // Per input column, the output columns that read it and with what weight (as offsets
        // `back` into `readers`): the horizontal adjoint as a gather, without the
        // read-modify-write chains of a scatter.
        let mut readers: Vec<Vec<(usize, f32)>> = vec![Vec::new(); w];
        for (ox, b) in tx.iter().enumerate() {
            readers[b.i0].push((ox, b.w0));
            if b.w1 != 0.0 {
                readers[b.i1].push((ox, b.w1));
            }
        }
        let back: Vec<usize> = std::iter::once(0)
            .chain(readers.iter().scan(0, |n, r| {
                *n += r.len();
                Some(*n)
            }))
            .collect();
        let readers: Vec<(usize, f32)> = readers.into_iter().flatten().collect();
        // The adjoint of the separable forward pass: each output row's gradient is gathered
        // into one input-length row, which then adds into the (one or two) input rows it was
        // blended from. One plane per task: planes never share.
        dx.data_mut()
            .par_chunks_mut(plane)
            .zip(grad.data().par_chunks(oh * ow))
            .for_each_init(
                || vec![0f32; w],
                |row, (dp, gp)| {
                    for (gr, a) in gp.chunks(ow).zip(&ty) {
                        for (t, taps) in row.iter_mut().zip(back.windows(2)) {
                            *t = readers[taps[0]..taps[1]]
                                .iter()
                                .map(|&(ox, wt)| wt * gr[ox])
                                .sum();
                        }
                        for (i, wt) in [(a.i0, a.w0), (a.i1, a.w1)] {
                            if wt != 0.0 {
                                dp[i * w..][..w]
                                    .iter_mut()
                                    .zip(row.iter())
                                    .for_each(|(d, &t)| *d += wt * t);
                            }
                        }
                    }
                },
            );
        Ok(vec![dx])
    }

    fn receptive_field(&self) -> Field {
        Field::Pointwise
    }

    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
