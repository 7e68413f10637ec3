//! Direct convolution for a handful of output channels (stride 1, no dilation, ungrouped):
//! the shape of a convolution restricted to the channels an objective reads
//! (`Conv2d::select_outputs`). Im2col would write nine copies of the input for a one-row GEMM
//! and Winograd would transform every input channel for almost no GEMM work; here each output
//! row is summed straight from the input rows, one pass over the input per output channel.

use crate::simd::simd_fn;
use rayon::prelude::*;

/// Output channels up to which the direct path is used.
pub(crate) const MAX_OUTPUTS: usize = 4;

/// Geometry: [n, cin, h, w] → [n, cout, oh, ow], kernel kh×kw at stride 1 with top/left
/// padding pt/pl.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NarrowGeom {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub pt: usize,
    pub pl: usize,
}

/// Output rows per parallel task.
const ROWS: usize = 8;

/// dst[o] += wv · src[o + shift] for every o where o + shift lies in src (shift may be < 0).
#[inline(always)]
fn axpy_shifted(dst: &mut [f32], src: &[f32], wv: f32, shift: isize) {
    let lo = (-shift).max(0) as usize;
    let hi = (src.len() as isize - shift).clamp(0, dst.len() as isize) as usize;
    if lo >= hi {
        return;
    }
    let s0 = (lo as isize + shift) as usize;
    for (d, s) in dst[lo..hi].iter_mut().zip(&src[s0..s0 + (hi - lo)]) {
        *d += wv * *s;
    }
}

/// Rows y0.. of output plane (b, o): bias, then every input channel's taps.
#[inline(always)]
fn forward_rows(
    g: &NarrowGeom,
    weight: &[f32],
    bias: f32,
    x: &[f32],
    b: usize,
    o: usize,
    y0: usize,
    out: &mut [f32],
) {
    let (plane, taps) = (g.h * g.w, g.kh * g.kw);
    for (r, row) in out.chunks_mut(g.ow).enumerate() {
        let oy = y0 + r;
        row.fill(bias);
        for c in 0..g.cin {
            let xc = &x[(b * g.cin + c) * plane..][..plane];
            let wk = &weight[(o * g.cin + c) * taps..][..taps];
            for i in 0..g.kh {
                let iy = oy as isize + i as isize - g.pt as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let src = &xc[iy as usize * g.w..][..g.w];
                for j in 0..g.kw {
                    axpy_shifted(row, src, wk[i * g.kw + j], j as isize - g.pl as isize);
                }
            }
        }
    }
}

/// Rows y0.. of input-gradient plane (b, c): every output channel's taps, flipped.
#[inline(always)]
fn backward_rows(
    g: &NarrowGeom,
    weight: &[f32],
    dy: &[f32],
    b: usize,
    c: usize,
    y0: usize,
    out: &mut [f32],
) {
    let (plane, taps) = (g.oh * g.ow, g.kh * g.kw);
    for (r, row) in out.chunks_mut(g.w).enumerate() {
        let iy = y0 + r;
        row.fill(0.0);
        for o in 0..g.cout {
            let dyo = &dy[(b * g.cout + o) * plane..][..plane];
            let wk = &weight[(o * g.cin + c) * taps..][..taps];
            for i in 0..g.kh {
                // oy + i − pt = iy
                let oy = iy as isize + g.pt as isize - i as isize;
                if oy < 0 || oy >= g.oh as isize {
                    continue;
                }
                let src = &dyo[oy as usize * g.ow..][..g.ow];
                for j in 0..g.kw {
                    // ox + j − pl = ix  ⇒  ox = ix − j + pl
                    axpy_shifted(row, src, wk[i * g.kw + j], g.pl as isize - j as isize);
                }
            }
        }
    }
}

simd_fn!(fn forward_rows_simd = forward_rows(g: &NarrowGeom, weight: &[f32], bias: f32, x: &[f32], b: usize, o: usize, y0: usize, out: &mut [f32]));
simd_fn!(fn backward_rows_simd = backward_rows(g: &NarrowGeom, weight: &[f32], dy: &[f32], b: usize, c: usize, y0: usize, out: &mut [f32]));

/// y (every element written) = conv(x) + bias.
pub(crate) fn forward(
    g: &NarrowGeom,
    weight: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
) {
    let plane = g.oh * g.ow;
    y.par_chunks_mut(plane).enumerate().for_each(|(bo, out)| {
        let (b, o) = (bo / g.cout, bo % g.cout);
        let bias = bias.map_or(0.0, |v| v[o]);
        out.par_chunks_mut(ROWS * g.ow)
            .enumerate()
            .for_each(|(t, rows)| forward_rows_simd(g, weight, bias, x, b, o, t * ROWS, rows));
    });
}

/// dx (every element written) = the input gradient for the output gradient dy.
pub(crate) fn backward(g: &NarrowGeom, weight: &[f32], dy: &[f32], dx: &mut [f32]) {
    let plane = g.h * g.w;
    dx.par_chunks_mut(plane).enumerate().for_each(|(bc, out)| {
        let (b, c) = (bc / g.cin, bc % g.cin);
        out.par_chunks_mut(ROWS * g.w)
            .enumerate()
            .for_each(|(t, rows)| backward_rows_simd(g, weight, dy, b, c, t * ROWS, rows));
    });
}
