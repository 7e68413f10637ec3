//! Max, average and adaptive-average pooling with PyTorch's output-size and divisor rules.

use crate::simd::simd_fn;
use crate::{EngineError, Tensor};
use rayon::prelude::*;

/// Output extent of a pooling window along one axis, PyTorch's rule including `ceil_mode`
/// (a last window must start inside the input or the left padding).
fn pool_extent(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil: bool,
) -> Result<usize, EngineError> {
    let span = dilation * (kernel - 1) + 1;
    if input + 2 * pad < span {
        return Err(EngineError::Shape(format!(
            "pooling input extent {input} is smaller than the window {span}"
        )));
    }
    let num = input + 2 * pad - span;
    let mut out = if ceil {
        num.div_ceil(stride)
    } else {
        num / stride
    } + 1;
    if ceil && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq)]
pub struct MaxPool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub ceil_mode: bool,
}

impl MaxPool2d {
    pub fn square(kernel: usize, stride: usize) -> Self {
        MaxPool2d {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (0, 0),
            dilation: (1, 1),
            ceil_mode: false,
        }
    }

    pub fn output_shape(&self, s: &[usize]) -> Result<Vec<usize>, EngineError> {
        let [n, c, h, w] = s[..] else {
            return Err(EngineError::Shape(format!(
                "max-pool expects NCHW input, got {s:?}"
            )));
        };
        Ok(vec![
            n,
            c,
            pool_extent(
                h,
                self.kernel.0,
                self.stride.0,
                self.padding.0,
                self.dilation.0,
                self.ceil_mode,
            )?,
            pool_extent(
                w,
                self.kernel.1,
                self.stride.1,
                self.padding.1,
                self.dilation.1,
                self.ceil_mode,
            )?,
        ])
    }

    /// Calls `f(output_index, argmax_input_index)` per output element of one plane; padding
    /// never wins (it is −∞), and ties go to the first element in scan order, as in PyTorch.
    /// (VGG's 2×2 pool takes the coded path instead: `forward_with_codes`.)
    fn scan_plane(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        mut f: impl FnMut(usize, usize),
    ) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = usize::MAX;
                let mut best_v = f32::NEG_INFINITY;
                for ky in 0..self.kernel.0 {
                    let iy = (oy * self.stride.0 + ky * self.dilation.0) as isize
                        - self.padding.0 as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..self.kernel.1 {
                        let ix = (ox * self.stride.1 + kx * self.dilation.1) as isize
                            - self.padding.1 as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let idx = iy as usize * w + ix as usize;
                        let v = x[idx];
                        if best == usize::MAX || v > best_v || v.is_nan() {
                            best = idx;
                            best_v = v;
                        }
                    }
                }
                f(oy * ow + ox, best);
            }
        }
    }

    /// VGG's pool (2×2, stride 2, no padding), with every window inside the input.
    fn is_2x2(&self, h: usize, w: usize, oh: usize, ow: usize) -> bool {
        self.kernel == (2, 2)
            && self.stride == (2, 2)
            && self.padding == (0, 0)
            && self.dilation == (1, 1)
            && 2 * oh <= h
            && 2 * ow <= w
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        Ok(self.forward_with_codes(x)?.0)
    }

    pub fn backward(&self, x: &Tensor, grad_out: &Tensor) -> Result<Tensor, EngineError> {
        let out_shape = self.output_shape(x.shape())?;
        let (h, w, oh, ow) = (x.shape()[2], x.shape()[3], out_shape[2], out_shape[3]);
        if grad_out.shape() != out_shape {
            return Err(EngineError::Shape(format!(
                "max-pool output gradient {:?}, expected {out_shape:?}",
                grad_out.shape()
            )));
        }
        // The 2×2 path works from codes; a graph keeps them from its forward pass, here they
        // are made again from x.
        if let (_, Some(codes)) = self.forward_with_codes(x)? {
            return self.backward_from_codes(x.shape(), &codes, grad_out, false);
        }
        let mut dx = Tensor::for_overwrite(x.shape());
        // Zeroed plane by plane inside the parallel loop, while the plane is about to be
        // written anyway, rather than in one serial pass over the whole tensor first.
        dx.data_mut()
            .par_chunks_mut(h * w)
            .zip(x.data().par_chunks(h * w))
            .zip(grad_out.data().par_chunks(oh * ow))
            .for_each(|((dp, xp), gp)| {
                dp.fill(0.0);
                self.scan_plane(xp, h, w, oh, ow, |o, i| dp[i] += gp[o]);
            });
        Ok(dx)
    }

    /// Whether input shape `x` takes a coded path (the 2×2 one, or the general one for windows
    /// of at most [`GENERAL_TAPS`] taps), whose codes let the backward pass do without the
    /// input and fold in a ReLU before the pool (`backward_from_codes`).
    pub(crate) fn folds_relu(&self, x: &[usize]) -> bool {
        x.len() == 4
            && self.output_shape(x).is_ok()
            && self.kernel.0 * self.kernel.1 <= GENERAL_TAPS
    }
}

/// Elements per parallel task of the 2×2 pool.
const CHUNK: usize = 1 << 15;

/// Index (0..4, row-major in the window) and value of the maximum of a 2×2 window, with the
/// rule of `scan_plane`: a later element wins if greater or NaN. Branch-free, so the row loops
/// below vectorize.
#[inline(always)]
fn argmax4(v: [f32; 4]) -> (u32, f32) {
    let (mut bi, mut bv) = (0u32, v[0]);
    for (i, &x) in v.iter().enumerate().skip(1) {
        let take = x > bv || x.is_nan();
        bi = if take { i as u32 } else { bi };
        bv = if take { x } else { bv };
    }
    (bi, bv)
}

/// The 16 windows of the 2×2 pool from output column `ox` of input rows `r0` and `r1`: their
/// maxima, and for taps 1–3 the lanes where that tap won against those before it (argmax4's
/// rule: a later tap wins if greater or NaN).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn windows16(
    r0: *const f32,
    r1: *const f32,
    ox: usize,
) -> (std::arch::x86_64::__m512, [std::arch::x86_64::__mmask16; 3]) {
    use std::arch::x86_64::*;
    // Lane i of (lo, hi) = element i of 32 consecutive floats: even and odd elements.
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let (a0, b0) = (
        _mm512_loadu_ps(r0.add(2 * ox)),
        _mm512_loadu_ps(r0.add(2 * ox + 16)),
    );
    let (a1, b1) = (
        _mm512_loadu_ps(r1.add(2 * ox)),
        _mm512_loadu_ps(r1.add(2 * ox + 16)),
    );
    let t0 = _mm512_permutex2var_ps(a0, even, b0);
    let t1 = _mm512_permutex2var_ps(a0, odd, b0);
    let t2 = _mm512_permutex2var_ps(a1, even, b1);
    let t3 = _mm512_permutex2var_ps(a1, odd, b1);
    let m1 = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(t1, t0) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(t1, t1);
    let best = _mm512_mask_blend_ps(m1, t0, t1);
    let m2 =
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(t2, best) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(t2, t2);
    let best = _mm512_mask_blend_ps(m2, best, t2);
    let m3 =
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(t3, best) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(t3, t3);
    let best = _mm512_mask_blend_ps(m3, best, t3);
    (best, [m1, m2, m3])
}

/// Writes `gv` to the winning tap (`win`) of each of 16 windows and zero to the other three,
/// in rows `d0` and `d1` from column 2·`ox`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scatter16(
    gv: std::arch::x86_64::__m512,
    win: [std::arch::x86_64::__mmask16; 4],
    d0: *mut f32,
    d1: *mut f32,
) {
    use std::arch::x86_64::*;
    // Element 2i of the result is a[i], element 2i + 1 is b[i].
    let inter_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let inter_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let (o0, o1) = (
        _mm512_maskz_mov_ps(win[0], gv),
        _mm512_maskz_mov_ps(win[1], gv),
    );
    let (o2, o3) = (
        _mm512_maskz_mov_ps(win[2], gv),
        _mm512_maskz_mov_ps(win[3], gv),
    );
    _mm512_storeu_ps(d0, _mm512_permutex2var_ps(o0, inter_lo, o1));
    _mm512_storeu_ps(d0.add(16), _mm512_permutex2var_ps(o0, inter_hi, o1));
    _mm512_storeu_ps(d1, _mm512_permutex2var_ps(o2, inter_lo, o3));
    _mm512_storeu_ps(d1.add(16), _mm512_permutex2var_ps(o2, inter_hi, o3));
}

// ---- codes: the 2×2 pool's backward pass without its input -------------------------------
//
// The forward pass notes, per window, which element won (bits 0–1, row-major) and whether the
// maximum is above 0 or NaN (bit 2: what a ReLU before the pool lets through). The backward
// pass then needs one byte per output instead of the input, which a graph would otherwise keep
// for it (at VGG16 `features.4`, 512 px, batch 8: 537 MB) and read again.

/// Bit 2 of a code: the window's maximum is above 0 (or NaN).
const CODE_POSITIVE: u8 = 4;

#[inline(always)]
fn code_of(index: u32, max: f32) -> u8 {
    index as u8 | if max <= 0.0 { 0 } else { CODE_POSITIVE }
}

/// Forward 2×2 pool of one plane into `y` ([oh × ow]) and `codes`, output columns
/// `from..ow` of every row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pool_codes_tail(
    x: &[f32],
    y: &mut [f32],
    codes: &mut [u8],
    w: usize,
    oh: usize,
    ow: usize,
    from: usize,
) {
    for oy in 0..oh {
        let r0 = &x[2 * oy * w..][..2 * ow];
        let r1 = &x[(2 * oy + 1) * w..][..2 * ow];
        for ox in from..ow {
            let (i, v) = argmax4([r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]]);
            y[oy * ow + ox] = v;
            codes[oy * ow + ox] = code_of(i, v);
        }
    }
}

/// The input gradient of one plane ([h × w], every element written) from the codes and the
/// output gradient `g`, output columns `from..ow` (and the row and column no window reaches).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn unpool_codes_tail(
    codes: &[u8],
    g: &[f32],
    through_relu: bool,
    dx: &mut [f32],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    from: usize,
) {
    for oy in 0..oh {
        let (d0, d1) = dx[2 * oy * w..][..2 * w].split_at_mut(w);
        for ox in from..ow {
            let code = codes[oy * ow + ox];
            let i = code & 3;
            let gv = if through_relu && code & CODE_POSITIVE == 0 {
                0.0
            } else {
                g[oy * ow + ox]
            };
            d0[2 * ox] = if i == 0 { gv } else { 0.0 };
            d0[2 * ox + 1] = if i == 1 { gv } else { 0.0 };
            d1[2 * ox] = if i == 2 { gv } else { 0.0 };
            d1[2 * ox + 1] = if i == 3 { gv } else { 0.0 };
        }
        d0[2 * ow..].fill(0.0);
        d1[2 * ow..].fill(0.0);
    }
    dx[2 * oh * w..h * w].fill(0.0);
}

#[inline(always)]
fn pool_codes_plane(x: &[f32], y: &mut [f32], codes: &mut [u8], w: usize, oh: usize, ow: usize) {
    pool_codes_tail(x, y, codes, w, oh, ow, 0)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn unpool_codes_plane(
    codes: &[u8],
    g: &[f32],
    through_relu: bool,
    dx: &mut [f32],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) {
    unpool_codes_tail(codes, g, through_relu, dx, h, w, oh, ow, 0)
}

simd_fn!(fn pool_codes_loops = pool_codes_plane(
    x: &[f32],
    y: &mut [f32],
    codes: &mut [u8],
    w: usize,
    oh: usize,
    ow: usize,
));

simd_fn!(fn unpool_codes_loops = unpool_codes_plane(
    codes: &[u8],
    g: &[f32],
    through_relu: bool,
    dx: &mut [f32],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
));

/// `pool_codes_plane`, 16 windows at a time with AVX-512 intrinsics: plain loops leave the
/// stride-2 reads and writes to gathers and scalar stores, which made the backward pass run at
/// half the memory bandwidth of the element-wise passes around it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
unsafe fn pool_codes_avx512(
    x: &[f32],
    y: &mut [f32],
    codes: &mut [u8],
    w: usize,
    oh: usize,
    ow: usize,
) {
    use std::arch::x86_64::*;
    let vec_end = ow / 16 * 16;
    for oy in 0..oh {
        let r0 = x.as_ptr().add(2 * oy * w);
        let r1 = x.as_ptr().add((2 * oy + 1) * w);
        for ox in (0..vec_end).step_by(16) {
            let (best, [m1, m2, m3]) = windows16(r0, r1, ox);
            _mm512_storeu_ps(y.as_mut_ptr().add(oy * ow + ox), best);
            let index = _mm512_mask_mov_epi32(_mm512_setzero_si512(), m1, _mm512_set1_epi32(1));
            let index = _mm512_mask_mov_epi32(index, m2, _mm512_set1_epi32(2));
            let index = _mm512_mask_mov_epi32(index, m3, _mm512_set1_epi32(3));
            // Not (≤ 0): above 0 or NaN.
            let positive = !_mm512_cmp_ps_mask::<_CMP_LE_OQ>(best, _mm512_setzero_ps());
            let flag = _mm512_set1_epi32(CODE_POSITIVE as i32);
            let code = _mm512_mask_or_epi32(index, positive, index, flag);
            let dst = codes.as_mut_ptr().add(oy * ow + ox) as *mut __m128i;
            _mm_storeu_si128(dst, _mm512_cvtepi32_epi8(code));
        }
    }
    pool_codes_tail(x, y, codes, w, oh, ow, vec_end);
}

/// `unpool_codes_plane`, 16 windows at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn unpool_codes_avx512(
    codes: &[u8],
    g: &[f32],
    through_relu: bool,
    dx: &mut [f32],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) {
    use std::arch::x86_64::*;
    let vec_end = ow / 16 * 16;
    for oy in 0..oh {
        for ox in (0..vec_end).step_by(16) {
            let code = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                codes.as_ptr().add(oy * ow + ox) as *const __m128i
            ));
            let mut gv = _mm512_loadu_ps(g.as_ptr().add(oy * ow + ox));
            if through_relu {
                let dead = _mm512_testn_epi32_mask(code, _mm512_set1_epi32(CODE_POSITIVE as i32));
                gv = _mm512_mask_mov_ps(gv, dead, _mm512_setzero_ps());
            }
            let index = _mm512_and_si512(code, _mm512_set1_epi32(3));
            let tap = |k: i32| _mm512_cmpeq_epi32_mask(index, _mm512_set1_epi32(k));
            let d0 = dx.as_mut_ptr().add(2 * oy * w + 2 * ox);
            let d1 = dx.as_mut_ptr().add((2 * oy + 1) * w + 2 * ox);
            scatter16(gv, [tap(0), tap(1), tap(2), tap(3)], d0, d1);
        }
    }
    unpool_codes_tail(codes, g, through_relu, dx, h, w, oh, ow, vec_end);
}

// ---- codes for any window: GoogLeNet's and Inception's 3×3 pools ------------------------
//
// The same idea as the 2×2 codes, for windows of any size, stride, padding, dilation and ceil
// mode: a code holds the winning tap (ky·kw + kx, bits 0–6) and whether the maximum is above 0
// or NaN (bit 7). `scan_plane` found each window's maximum element by element with bounds
// checks on every tap, and the backward pass scanned the input again: a third of a GoogLeNet
// step. Here the loops run tap by tap over a whole output row, whose in-bounds columns are
// known in advance, so the compiler vectorizes them.

/// The most taps a window may have for the general coded path (the tap index has 7 bits).
const GENERAL_TAPS: usize = 127;

/// Bit 7 of a general code: the window's maximum is above 0 (or NaN).
const GENERAL_POSITIVE: u8 = 0x80;

/// One pool's window geometry on one input plane size.
struct General {
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// Per tap column kx: the output columns whose tap kx falls inside the input.
    columns: Vec<(usize, usize)>,
    /// Per output column: the first tap column inside the input (PyTorch's initial argmax).
    first_column: Vec<u8>,
    /// With stride 1 and `ow == w`: per tap column, per output, whether the tap is inside the
    /// input's columns.
    flat_masks: Option<Vec<bool>>,
}

/// The range of outputs `o < outputs` with `o·stride + offset − pad` in `0..input`.
fn inside(
    outputs: usize,
    input: usize,
    stride: usize,
    offset: usize,
    pad: usize,
) -> (usize, usize) {
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    let hi = if input + pad > offset {
        ((input + pad - offset - 1) / stride + 1).min(outputs)
    } else {
        0
    };
    (lo.min(hi), hi)
}

impl General {
    fn new(pool: &MaxPool2d, h: usize, w: usize, oh: usize, ow: usize) -> Self {
        let columns: Vec<(usize, usize)> = (0..pool.kernel.1)
            .map(|kx| inside(ow, w, pool.stride.1, kx * pool.dilation.1, pool.padding.1))
            .collect();
        let first_column = (0..ow)
            .map(|ox| {
                columns
                    .iter()
                    .position(|&(lo, hi)| (lo..hi).contains(&ox))
                    .unwrap_or(0) as u8
            })
            .collect();
        let flat_masks = (pool.stride == (1, 1) && ow == w).then(|| {
            columns
                .iter()
                .flat_map(|&(lo, hi)| {
                    (0..oh).flat_map(move |_| (0..ow).map(move |ox| (lo..hi).contains(&ox)))
                })
                .collect()
        });
        General {
            kernel: pool.kernel,
            stride: pool.stride,
            padding: pool.padding,
            dilation: pool.dilation,
            h,
            w,
            oh,
            ow,
            columns,
            first_column,
            flat_masks,
        }
    }

    /// The input row of tap row `ky` for output row `oy`, if inside the input.
    #[inline(always)]
    fn row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride.0 + ky * self.dilation.0)
            .checked_sub(self.padding.0)
            .filter(|&iy| iy < self.h)
    }
}

/// Pools one plane `x` ([h × w]) into `y` and `codes` ([oh × ow]) with PyTorch's rule: the
/// initial argmax is the window's first element inside the input, and a later element wins
/// if greater or NaN (padding never wins).
#[inline(always)]
fn general_pool_plane(g: &General, x: &[f32], y: &mut [f32], codes: &mut [u8]) {
    let (kh, kw) = g.kernel;
    y.fill(f32::NEG_INFINITY);
    for oy in 0..g.oh {
        let first_row = (0..kh).find(|&ky| g.row(oy, ky).is_some()).unwrap_or(0);
        for (c, &kx) in codes[oy * g.ow..][..g.ow].iter_mut().zip(&g.first_column) {
            *c = (first_row * kw) as u8 + kx;
        }
    }
    #[inline(always)]
    fn take(y: &mut [f32], codes: &mut [u8], x: impl Iterator<Item = f32>, tap: u8) {
        for ((b, c), v) in y.iter_mut().zip(codes.iter_mut()).zip(x) {
            let take = v > *b || v.is_nan();
            *b = if take { v } else { *b };
            *c = if take { tap } else { *c };
        }
    }
    if let Some(masks) = &g.flat_masks {
        // Stride 1 and rows as long as the input's: output o reads input o + shift, so each tap
        // is one pass over the plane's valid rows (GoogLeNet's 14×14 planes are too narrow to
        // vectorize row by row); columns that wrap into the next row are masked out.
        let (p0, p1) = (g.padding.0 as isize, g.padding.1 as isize);
        let plane = (g.h * g.w) as isize;
        for ky in 0..kh {
            let (lo, hi) = inside(g.oh, g.h, 1, ky * g.dilation.0, g.padding.0);
            for kx in 0..kw {
                let tap = (ky * kw + kx) as u8;
                let shift = (ky * g.dilation.0) as isize * g.w as isize - p0 * g.w as isize
                    + (kx * g.dilation.1) as isize
                    - p1;
                let from = ((lo * g.ow) as isize).max(-shift) as usize;
                let to = ((hi * g.ow) as isize).min(plane - shift).max(from as isize) as usize;
                let xs = &x[(from as isize + shift) as usize..][..to - from];
                let mask = &masks[kx * g.oh * g.ow..][from..to];
                let (y, codes) = (&mut y[from..to], &mut codes[from..to]);
                for (((b, c), &v), &m) in y.iter_mut().zip(codes.iter_mut()).zip(xs).zip(mask) {
                    let take = m && (v > *b || v.is_nan());
                    *b = if take { v } else { *b };
                    *c = if take { tap } else { *c };
                }
            }
        }
    } else {
        for oy in 0..g.oh {
            let y = &mut y[oy * g.ow..][..g.ow];
            let codes = &mut codes[oy * g.ow..][..g.ow];
            for ky in 0..kh {
                let Some(iy) = g.row(oy, ky) else { continue };
                let row = &x[iy * g.w..][..g.w];
                for (kx, &(lo, hi)) in g.columns.iter().enumerate() {
                    let tap = (ky * kw + kx) as u8;
                    // Column of output `lo` in the input; then one stride per output.
                    let start = lo * g.stride.1 + kx * g.dilation.1 - g.padding.1;
                    let (y, codes) = (&mut y[lo..hi], &mut codes[lo..hi]);
                    let n = hi - lo;
                    match g.stride.1 {
                        1 => take(y, codes, row[start..start + n].iter().copied(), tap),
                        2 => take_stride2(y, codes, &row[start..], tap),
                        s => take(y, codes, row[start..].iter().step_by(s).copied(), tap),
                    }
                }
            }
        }
    }
    for (c, &b) in codes.iter_mut().zip(y.iter()) {
        // Not (≤ 0): above 0 or NaN.
        *c |= if b <= 0.0 { 0 } else { GENERAL_POSITIVE };
    }
}

/// `take` of `general_pool_plane` over every second element of `x`, for outputs `y`/`codes`.
/// LLVM leaves stride-2 reads with a select to scalar code, which was most of a GoogLeNet stem
/// pool's time; the AVX-512 kernel deinterleaves 32 loaded floats with one shuffle instead,
/// with masked loads and stores for the last (on 14-wide rows, the only) partial vector.
#[inline(always)]
fn take_stride2(y: &mut [f32], codes: &mut [u8], x: &[f32], tap: u8) {
    let n = y.len().min(codes.len());
    if n == 0 {
        return;
    }
    let x = &x[..2 * (n - 1) + 1];
    #[cfg(target_arch = "x86_64")]
    if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
        // SAFETY: the CPU has the features; the kernel masks every access to x[..2n − 1],
        // y[..n] and codes[..n].
        unsafe { take_stride2_avx512(&mut y[..n], &mut codes[..n], x, tap) };
        return;
    }
    for i in 0..n {
        let v = x[2 * i];
        let (b, c) = (&mut y[i], &mut codes[i]);
        let take = v > *b || v.is_nan();
        *b = if take { v } else { *b };
        *c = if take { tap } else { *c };
    }
}

/// `take_stride2` for `y.len() == codes.len()` outputs and `x.len() == 2 · y.len() − 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
unsafe fn take_stride2_avx512(y: &mut [f32], codes: &mut [u8], x: &[f32], tap: u8) {
    use crate::simd::lanes;
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let taps = _mm_set1_epi8(tap as i8);
    let n = y.len();
    for o in (0..n).step_by(16) {
        let outputs = lanes(n - o);
        let avail = x.len() - 2 * o;
        let (a, b) = (
            _mm512_maskz_loadu_ps(lanes(avail), x.as_ptr().add(2 * o)),
            // wrapping_add: past the end when no lane is read.
            _mm512_maskz_loadu_ps(
                lanes(avail.saturating_sub(16)),
                x.as_ptr().wrapping_add(2 * o + 16),
            ),
        );
        let xs = _mm512_permutex2var_ps(a, even, b);
        let best = _mm512_maskz_loadu_ps(outputs, y.as_ptr().add(o));
        let take = outputs
            & (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(xs, best)
                | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(xs, xs));
        _mm512_mask_storeu_ps(y.as_mut_ptr().add(o), take, xs);
        _mm_mask_storeu_epi8(codes.as_mut_ptr().add(o) as *mut i8, take, taps);
    }
}

simd_fn!(fn general_pool_loops = general_pool_plane(
    g: &General,
    x: &[f32],
    y: &mut [f32],
    codes: &mut [u8],
));

/// The input gradient of one plane from the codes of `general_pool_plane`: each window's
/// gradient to its winning element (summed where windows overlap), and through a ReLU before
/// the pool not at all where the maximum was ≤ 0.
fn general_unpool_plane(
    g: &General,
    codes: &[u8],
    grad: &[f32],
    through_relu: bool,
    dx: &mut [f32],
) {
    dx.fill(0.0);
    let kw = g.kernel.1;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let code = codes[oy * g.ow + ox];
            if through_relu && code & GENERAL_POSITIVE == 0 {
                continue;
            }
            let tap = (code & !GENERAL_POSITIVE) as usize;
            let (ky, kx) = (tap / kw, tap % kw);
            // The code names a tap inside the input: the forward pass only ever chose those.
            let iy = oy * g.stride.0 + ky * g.dilation.0 - g.padding.0;
            let ix = ox * g.stride.1 + kx * g.dilation.1 - g.padding.1;
            dx[iy * g.w + ix] += grad[oy * g.ow + ox];
        }
    }
}

impl MaxPool2d {
    /// The pooled output, and on the 2×2 path (where [`MaxPool2d::folds_relu`]) the codes
    /// with which [`MaxPool2d::backward_from_codes`] does without the input.
    pub(crate) fn forward_with_codes(
        &self,
        x: &Tensor,
    ) -> Result<(Tensor, Option<Vec<u8>>), EngineError> {
        let out_shape = self.output_shape(x.shape())?;
        let (h, w, oh, ow) = (x.shape()[2], x.shape()[3], out_shape[2], out_shape[3]);
        let mut y = Tensor::for_overwrite(&out_shape);
        if !self.folds_relu(x.shape()) {
            // scan_plane visits every output element once.
            y.data_mut()
                .par_chunks_mut(oh * ow)
                .zip(x.data().par_chunks(h * w))
                .for_each(|(yp, xp)| {
                    self.scan_plane(xp, h, w, oh, ow, |o, i| yp[o] = xp[i]);
                });
            return Ok((y, None));
        }
        let mut codes = vec![0u8; y.data().len()];
        let general = (!self.is_2x2(h, w, oh, ow)).then(|| General::new(self, h, w, oh, ow));
        let planes = (CHUNK / (h * w).max(1)).max(1);
        y.data_mut()
            .par_chunks_mut(oh * ow * planes)
            .zip(codes.par_chunks_mut(oh * ow * planes))
            .zip(x.data().par_chunks(h * w * planes))
            .for_each(|((yp, cp), xp)| {
                for ((yp, cp), xp) in yp
                    .chunks_mut(oh * ow)
                    .zip(cp.chunks_mut(oh * ow))
                    .zip(xp.chunks(h * w))
                {
                    if let Some(g) = &general {
                        general_pool_loops(g, xp, yp, cp);
                        continue;
                    }
                    #[cfg(target_arch = "x86_64")]
                    if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
                        // SAFETY: the CPU has the features; accesses stay inside the rows the
                        // portable loop touches (16 windows = 32 input columns ≤ 2·ow).
                        unsafe { pool_codes_avx512(xp, yp, cp, w, oh, ow) };
                        continue;
                    }
                    pool_codes_loops(xp, yp, cp, w, oh, ow);
                }
            });
        Ok((y, Some(codes)))
    }

    /// The input gradient from the codes of `forward_with_codes`, for input shape `input`;
    /// through a ReLU before the pool if `through_relu`: a window then passes its gradient only
    /// where its maximum is positive, so the ReLU's own backward pass, a sweep over the larger
    /// tensor, is not needed.
    pub(crate) fn backward_from_codes(
        &self,
        input: &[usize],
        codes: &[u8],
        grad_out: &Tensor,
        through_relu: bool,
    ) -> Result<Tensor, EngineError> {
        let out_shape = self.output_shape(input)?;
        if !self.folds_relu(input)
            || grad_out.shape() != out_shape
            || codes.len() != grad_out.data().len()
        {
            return Err(EngineError::Shape(format!(
                "max-pool codes for input {input:?} do not fit an output gradient {:?}",
                grad_out.shape()
            )));
        }
        let (h, w, oh, ow) = (input[2], input[3], out_shape[2], out_shape[3]);
        let mut dx = Tensor::for_overwrite(input);
        let planes = (CHUNK / (h * w).max(1)).max(1);
        let general = (!self.is_2x2(h, w, oh, ow)).then(|| General::new(self, h, w, oh, ow));
        dx.data_mut()
            .par_chunks_mut(h * w * planes)
            .zip(codes.par_chunks(oh * ow * planes))
            .zip(grad_out.data().par_chunks(oh * ow * planes))
            .for_each(|((dp, cp), gp)| {
                for ((dp, cp), gp) in dp
                    .chunks_mut(h * w)
                    .zip(cp.chunks(oh * ow))
                    .zip(gp.chunks(oh * ow))
                {
                    if let Some(g) = &general {
                        general_unpool_plane(g, cp, gp, through_relu, dp);
                        continue;
                    }
                    #[cfg(target_arch = "x86_64")]
                    if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
                        // SAFETY: as in `forward_with_codes`.
                        unsafe { unpool_codes_avx512(cp, gp, through_relu, dp, h, w, oh, ow) };
                        continue;
                    }
                    unpool_codes_loops(cp, gp, through_relu, dp, h, w, oh, ow);
                }
            });
        Ok(dx)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AvgPool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub ceil_mode: bool,
    pub count_include_pad: bool,
}

impl AvgPool2d {
    pub fn output_shape(&self, s: &[usize]) -> Result<Vec<usize>, EngineError> {
        let [n, c, h, w] = s[..] else {
            return Err(EngineError::Shape(format!(
                "avg-pool expects NCHW input, got {s:?}"
            )));
        };
        Ok(vec![
            n,
            c,
            pool_extent(
                h,
                self.kernel.0,
                self.stride.0,
                self.padding.0,
                1,
                self.ceil_mode,
            )?,
            pool_extent(
                w,
                self.kernel.1,
                self.stride.1,
                self.padding.1,
                1,
                self.ceil_mode,
            )?,
        ])
    }

    /// Window [start, end) along one axis clipped to the input, and PyTorch's divisor extent
    /// (which counts padding but not the part past it that `ceil_mode` adds).
    fn window(&self, o: usize, axis: usize, input: usize) -> (usize, usize, usize) {
        let (k, s, p) = [
            (self.kernel.0, self.stride.0, self.padding.0),
            (self.kernel.1, self.stride.1, self.padding.1),
        ][axis];
        let start = (o * s) as isize - p as isize;
        let end = (start + k as isize).min((input + p) as isize);
        let pool = (end - start) as usize;
        let (a, b) = (start.max(0) as usize, end.min(input as isize) as usize);
        (a, b, pool)
    }

    fn for_each_window(
        &self,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        mut f: impl FnMut(usize, (usize, usize), (usize, usize), f32),
    ) {
        for oy in 0..oh {
            let (y0, y1, py) = self.window(oy, 0, h);
            for ox in 0..ow {
                let (x0, x1, px) = self.window(ox, 1, w);
                let count = if self.count_include_pad {
                    py * px
                } else {
                    (y1 - y0) * (x1 - x0)
                };
                f(oy * ow + ox, (y0, y1), (x0, x1), 1.0 / count.max(1) as f32);
            }
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let out_shape = self.output_shape(x.shape())?;
        let (h, w, oh, ow) = (x.shape()[2], x.shape()[3], out_shape[2], out_shape[3]);
        let mut y = Tensor::zeros(&out_shape);
        y.data_mut()
            .par_chunks_mut(oh * ow)
            .zip(x.data().par_chunks(h * w))
            .for_each(|(yp, xp)| {
                self.for_each_window(h, w, oh, ow, |o, (y0, y1), (x0, x1), scale| {
                    let mut acc = 0.0;
                    for iy in y0..y1 {
                        acc += xp[iy * w + x0..iy * w + x1].iter().sum::<f32>();
                    }
                    yp[o] = acc * scale;
                });
            });
        Ok(y)
    }

    pub fn backward(
        &self,
        input_shape: &[usize],
        grad_out: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let out_shape = self.output_shape(input_shape)?;
        let (h, w, oh, ow) = (input_shape[2], input_shape[3], out_shape[2], out_shape[3]);
        let mut dx = Tensor::zeros(input_shape);
        dx.data_mut()
            .par_chunks_mut(h * w)
            .zip(grad_out.data().par_chunks(oh * ow))
            .for_each(|(dp, gp)| {
                self.for_each_window(h, w, oh, ow, |o, (y0, y1), (x0, x1), scale| {
                    let g = gp[o] * scale;
                    for iy in y0..y1 {
                        dp[iy * w + x0..iy * w + x1]
                            .iter_mut()
                            .for_each(|d| *d += g);
                    }
                });
            });
        Ok(dx)
    }
}

/// PyTorch's AdaptiveAvgPool2d: output cell i covers [floor(i·H/out), ceil((i+1)·H/out)).
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveAvgPool2d {
    pub output: (usize, usize),
}

impl AdaptiveAvgPool2d {
    fn bounds(i: usize, input: usize, out: usize) -> (usize, usize) {
        ((i * input) / out, ((i + 1) * input).div_ceil(out))
    }

    pub fn output_shape(&self, s: &[usize]) -> Result<Vec<usize>, EngineError> {
        let [n, c, _, _] = s[..] else {
            return Err(EngineError::Shape(format!(
                "adaptive avg-pool expects NCHW input, got {s:?}"
            )));
        };
        Ok(vec![n, c, self.output.0, self.output.1])
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let out_shape = self.output_shape(x.shape())?;
        let (h, w) = (x.shape()[2], x.shape()[3]);
        let (oh, ow) = self.output;
        let mut y = Tensor::zeros(&out_shape);
        y.data_mut()
            .par_chunks_mut(oh * ow)
            .zip(x.data().par_chunks(h * w))
            .for_each(|(yp, xp)| {
                for oy in 0..oh {
                    let (y0, y1) = Self::bounds(oy, h, oh);
                    for ox in 0..ow {
                        let (x0, x1) = Self::bounds(ox, w, ow);
                        let mut acc = 0.0;
                        for iy in y0..y1 {
                            acc += xp[iy * w + x0..iy * w + x1].iter().sum::<f32>();
                        }
                        yp[oy * ow + ox] = acc / ((y1 - y0) * (x1 - x0)) as f32;
                    }
                }
            });
        Ok(y)
    }

    pub fn backward(
        &self,
        input_shape: &[usize],
        grad_out: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let mut dx = Tensor::zeros(input_shape);
        self.backward_add(input_shape, grad_out, &mut dx)?;
        Ok(dx)
    }

    /// `backward`, added into `dx` (shaped like the input).
    pub fn backward_add(
        &self,
        input_shape: &[usize],
        grad_out: &Tensor,
        dx: &mut Tensor,
    ) -> Result<(), EngineError> {
        let out_shape = self.output_shape(input_shape)?;
        if dx.shape() != input_shape || grad_out.shape() != out_shape {
            return Err(EngineError::Shape(format!(
                "adaptive avg-pool gradient {:?} into {:?} for input {input_shape:?}",
                grad_out.shape(),
                dx.shape()
            )));
        }
        let (h, w) = (input_shape[2], input_shape[3]);
        let (oh, ow) = self.output;
        dx.data_mut()
            .par_chunks_mut(h * w)
            .zip(grad_out.data().par_chunks(oh * ow))
            .for_each(|(dp, gp)| {
                for oy in 0..oh {
                    let (y0, y1) = Self::bounds(oy, h, oh);
                    for ox in 0..ow {
                        let (x0, x1) = Self::bounds(ox, w, ow);
                        let g = gp[oy * ow + ox] / ((y1 - y0) * (x1 - x0)) as f32;
                        for iy in y0..y1 {
                            dp[iy * w + x0..iy * w + x1]
                                .iter_mut()
                                .for_each(|d| *d += g);
                        }
                    }
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool by its rule spelled out: per window the maximum, a later element winning if
    /// greater or NaN; backward, the gradient to that element alone, and through a ReLU not at
    /// all where the maximum is ≤ 0.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f32],
        g: &[f32],
        relu: bool,
        w: usize,
        oh: usize,
        ow: usize,
        dx: &mut [f32],
    ) -> Vec<f32> {
        dx.fill(0.0);
        let mut y = vec![0f32; oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let taps =
                    [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(r, c)| (2 * oy + r) * w + 2 * ox + c);
                let mut best = taps[0];
                for &i in &taps[1..] {
                    if x[i] > x[best] || x[i].is_nan() {
                        best = i;
                    }
                }
                y[oy * ow + ox] = x[best];
                if !(relu && x[best] <= 0.0) {
                    dx[best] = g[oy * ow + ox];
                }
            }
        }
        y
    }

    /// The coded 2×2 pool against `naive`, bit for bit, forward and backward with and without
    /// the folded ReLU: on ties, NaNs, all-zero and negative windows, odd sizes, and both the
    /// portable loops and (where the CPU has it) the AVX-512 kernels.
    #[test]
    fn pool_codes_follow_the_pools_rule() {
        let values = [-1.0, 0.0, 0.0, 1.0, 1.0, 2.0, f32::NAN];
        let mut seed = 7u64;
        let mut pick = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for (h, w) in [(6, 40), (5, 7), (4, 66), (2, 2)] {
            let (oh, ow) = (h / 2, w / 2);
            let x: Vec<f32> = (0..h * w).map(|_| values[pick() % values.len()]).collect();
            let g: Vec<f32> = (0..oh * ow).map(|_| (pick() % 100) as f32 - 50.0).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let mut paths: Vec<(&str, bool)> = vec![("portable", false)];
            #[cfg(target_arch = "x86_64")]
            if crate::simd::detected_simd() == crate::simd::SimdLevel::Avx512 {
                paths.push(("avx512", true));
            }
            for (name, wide) in paths {
                let (mut y, mut codes) = (vec![0f32; oh * ow], vec![0u8; oh * ow]);
                #[cfg(target_arch = "x86_64")]
                if wide {
                    unsafe { pool_codes_avx512(&x, &mut y, &mut codes, w, oh, ow) };
                }
                if !wide {
                    pool_codes_plane(&x, &mut y, &mut codes, w, oh, ow);
                }
                for relu in [false, true] {
                    let mut want = vec![f32::NAN; h * w];
                    let want_y = naive(&x, &g, relu, w, oh, ow, &mut want);
                    assert_eq!(bits(&y), bits(&want_y), "{name} {h}×{w} forward");
                    let mut got = vec![f32::NAN; h * w];
                    #[cfg(target_arch = "x86_64")]
                    if wide {
                        unsafe { unpool_codes_avx512(&codes, &g, relu, &mut got, h, w, oh, ow) };
                    }
                    if !wide {
                        unpool_codes_plane(&codes, &g, relu, &mut got, h, w, oh, ow);
                    }
                    assert_eq!(bits(&got), bits(&want), "{name} {h}×{w} relu {relu}");
                }
            }
        }
    }

    /// The general coded pool against `scan_plane` (the rule element by element, with bounds
    /// checks), bit for bit, forward and backward with and without the folded ReLU: windows
    /// with padding, strides, dilation and ceil mode (whose last window hangs over the edge),
    /// on ties, NaNs, negative and −∞ windows.
    #[test]
    fn general_codes_follow_the_pools_rule() {
        let values = [-1.0, 0.0, 0.0, 1.0, 1.0, 2.0, f32::NAN, f32::NEG_INFINITY];
        let mut seed = 11u64;
        let mut pick = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let pools = [
            // (kernel, stride, padding, dilation, ceil)
            ((3, 3), (1, 1), (1, 1), (1, 1), true),
            ((3, 3), (1, 1), (2, 2), (2, 2), false),
            ((3, 2), (1, 1), (1, 0), (1, 1), false),
            ((3, 3), (2, 2), (0, 0), (1, 1), true),
            ((3, 3), (2, 2), (1, 1), (1, 1), false),
            ((2, 3), (1, 2), (1, 0), (1, 1), true),
            ((3, 2), (2, 1), (1, 1), (2, 1), false),
            ((5, 5), (3, 3), (2, 2), (1, 1), true),
            ((2, 2), (2, 2), (0, 0), (1, 1), true),
        ];
        for (kernel, stride, padding, dilation, ceil_mode) in pools {
            let pool = MaxPool2d {
                kernel,
                stride,
                padding,
                dilation,
                ceil_mode,
            };
            for (h, w) in [(7, 9), (14, 14), (5, 40), (6, 6), (4, 101)] {
                let Ok(out) = pool.output_shape(&[1, 1, h, w]) else {
                    continue;
                };
                let (oh, ow) = (out[2], out[3]);
                let x: Vec<f32> = (0..h * w).map(|_| values[pick() % values.len()]).collect();
                let g: Vec<f32> = (0..oh * ow).map(|_| (pick() % 100) as f32 - 50.0).collect();
                let geometry = General::new(&pool, h, w, oh, ow);
                let (mut y, mut codes) = (vec![0f32; oh * ow], vec![0u8; oh * ow]);
                general_pool_loops(&geometry, &x, &mut y, &mut codes);
                let mut want_y = vec![0f32; oh * ow];
                let mut argmax = vec![0usize; oh * ow];
                pool.scan_plane(&x, h, w, oh, ow, |o, i| {
                    want_y[o] = x[i];
                    argmax[o] = i;
                });
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let case = format!("{pool:?} on {h}×{w}");
                assert_eq!(bits(&y), bits(&want_y), "{case} forward");
                for relu in [false, true] {
                    let mut want = vec![0f32; h * w];
                    for o in 0..oh * ow {
                        if !(relu && want_y[o] <= 0.0) {
                            want[argmax[o]] += g[o];
                        }
                    }
                    let mut got = vec![f32::NAN; h * w];
                    general_unpool_plane(&geometry, &codes, &g, relu, &mut got);
                    assert_eq!(bits(&got), bits(&want), "{case} backward, relu {relu}");
                }
            }
        }
    }
}
