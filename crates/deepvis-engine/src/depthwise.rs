//! Depthwise convolution (one filter per channel), forward and input gradient.
//!
//! Each plane is first split into its stride phases (sh·sw sub-images of the zero-padded input,
//! `phase[py][px][y'][x'] = padded[y'·sh + py][x'·sw + px]`) with rows of a common width `wq`.
//! Every kernel tap then reads one phase at a fixed offset, so the whole tap is a single
//! contiguous multiply-add over `oh·wq` values, computing `wq − ow` throw-away columns per row.
//! That keeps the inner loop long and branch-free even on 7×7 planes, where a per-row loop
//! spends its time on bounds and loop overhead rather than arithmetic.

use rayon::prelude::*;
use std::cell::RefCell;

#[derive(Clone, Copy, Debug)]
pub(crate) struct DwGeom {
    pub planes: usize,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pt: usize,
    pub pl: usize,
}

impl DwGeom {
    fn hq(&self) -> usize {
        self.oh + (self.kh - 1) * self.dh / self.sh
    }
    fn wq(&self) -> usize {
        self.ow + (self.kw - 1) * self.dw / self.sw
    }
    /// Floats per phase: hq rows of wq plus one row of slack for the last taps' overhang,
    /// and a vector's for the rounding up in `padded_len`.
    fn phase_len(&self) -> usize {
        (self.hq() + 1) * self.wq() + 16
    }
    /// Floats of the zero-padded input row that stride-2 phases are split from and merged into.
    fn wide_row_len(&self) -> usize {
        2 * padded_len(self.wq())
    }
    /// (phase index, offset into it) of tap (ky, kx).
    fn tap(&self, ky: usize, kx: usize) -> (usize, usize) {
        let (y, x) = (ky * self.dh, kx * self.dw);
        (
            (y % self.sh) * self.sw + x % self.sw,
            (y / self.sh) * self.wq() + x / self.sw,
        )
    }
    /// Planes per parallel task: enough work to outweigh a hand-off, and enough tasks for
    /// every thread.
    fn per_task(&self) -> usize {
        let work = (self.oh * self.wq() * self.kh * self.kw).max(1);
        let threads = rayon::current_num_threads();
        (32_768 / work)
            .max(1)
            .min(self.planes.div_ceil(2 * threads).max(1))
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Input index along one axis for phase coordinate q of phase p, if inside the input.
#[inline(always)]
fn source(q: usize, p: usize, s: usize, pad: usize, n: usize) -> Option<usize> {
    (q * s + p).checked_sub(pad).filter(|&i| i < n)
}

use crate::conv::valid_range;
use crate::layers::{bias_act_row, Clamp};
use crate::simd::simd_fn;

/// (weight, source offset) of every kernel tap, in kernel order.
struct Taps {
    n: usize,
    fixed: [(f32, usize); 49],
    more: Vec<(f32, usize)>,
}

impl Taps {
    fn new() -> Self {
        Taps {
            n: 0,
            fixed: [(0.0, 0); 49],
            more: Vec::new(),
        }
    }
    #[inline(always)]
    fn push(&mut self, w: f32, offset: usize) {
        if self.n < self.fixed.len() && self.more.is_empty() {
            self.fixed[self.n] = (w, offset);
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(&self.fixed[..self.n]);
            }
            self.more.push((w, offset));
        }
        self.n += 1;
    }
    fn as_slice(&self) -> &[(f32, usize)] {
        if self.more.is_empty() {
            &self.fixed[..self.n]
        } else {
            &self.more
        }
    }
}

/// dst[i] = init + Σ w · src[offset + i] over `taps`, in tap order, a block of `B` outputs at
/// a time kept in registers across all taps: a pass per tap would load and store every
/// accumulator once per tap.
#[inline(always)]
fn accumulate(dst: &mut [f32], init: f32, taps: &[(f32, usize)], src: &[f32]) {
    #[inline(always)]
    fn blocks<const B: usize>(
        dst: &mut [f32],
        mut i: usize,
        init: f32,
        taps: &[(f32, usize)],
        src: &[f32],
    ) -> usize {
        while i + B <= dst.len() {
            let mut a = [init; B];
            for &(w, off) in taps {
                let s = &src[off + i..][..B];
                for j in 0..B {
                    a[j] += w * s[j];
                }
            }
            dst[i..i + B].copy_from_slice(&a);
            i += B;
        }
        i
    }
    let i = blocks::<64>(dst, 0, init, taps, src);
    let i = blocks::<16>(dst, i, init, taps, src);
    blocks::<1>(dst, i, init, taps, src);
}

/// The two column phases of every row for stride 2 (`phase[py][px][yq][j] = padded[2·yq + py]
/// [2j + px]`): each input row is copied into a zero-padded row, then split into its even and
/// odd columns 16 at a time. Element by element, these strided reads were most of the time of
/// EfficientNet's stride-2 depthwise layers.
#[inline(always)]
fn split_stride2(g: &DwGeom, x: &[f32], phases: &mut [f32], wide: &mut [f32]) {
    let (hq, wq, plen) = (g.hq(), g.wq(), g.phase_len());
    for py in 0..g.sh {
        let (p0, p1) = phases[py * 2 * plen..][..2 * plen].split_at_mut(plen);
        p0[hq * wq..].fill(0.0);
        p1[hq * wq..].fill(0.0);
        for yq in 0..hq {
            let (r0, r1) = (&mut p0[yq * wq..][..wq], &mut p1[yq * wq..][..wq]);
            let Some(iy) = source(yq, py, g.sh, g.pt, g.h) else {
                r0.fill(0.0);
                r1.fill(0.0);
                continue;
            };
            // wide[q] = x[iy][q − pl], zero outside the row.
            let pl = g.pl.min(wide.len());
            let n = g.w.min(wide.len() - pl);
            wide[..pl].fill(0.0);
            wide[pl..pl + n].copy_from_slice(&x[iy * g.w..][..n]);
            wide[pl + n..].fill(0.0);
            let full = wq / 16 * 16;
            for ((a, b), s) in r0[..full]
                .chunks_exact_mut(16)
                .zip(r1[..full].chunks_exact_mut(16))
                .zip(wide.chunks_exact(32))
            {
                for j in 0..16 {
                    a[j] = s[2 * j];
                    b[j] = s[2 * j + 1];
                }
            }
            for j in full..wq {
                r0[j] = wide[2 * j];
                r1[j] = wide[2 * j + 1];
            }
        }
    }
}

/// The inverse for one input row: `row[ix] = phase[(ix + pl) % 2][(ix + pl) / 2]` from the two
/// column phases of its row, zero where no window reaches.
#[inline(always)]
fn merge_stride2(g: &DwGeom, p0: &[f32], p1: &[f32], row: &mut [f32], wide: &mut [f32]) {
    let wq = p0.len();
    let full = wq / 16 * 16;
    for ((a, b), d) in p0[..full]
        .chunks_exact(16)
        .zip(p1[..full].chunks_exact(16))
        .zip(wide.chunks_exact_mut(32))
    {
        for j in 0..16 {
            d[2 * j] = a[j];
            d[2 * j + 1] = b[j];
        }
    }
    for j in full..wq {
        wide[2 * j] = p0[j];
        wide[2 * j + 1] = p1[j];
    }
    let n = g.w.min((2 * wq).saturating_sub(g.pl));
    if n > 0 {
        row[..n].copy_from_slice(&wide[g.pl..g.pl + n]);
    }
    row[n..].fill(0.0);
}

/// `len` rounded up to whole 16-float vectors: the throw-away outputs past the end cost less
/// than a scalar tail (on a 7×7 plane the tail would be a sixth of the work).
fn padded_len(len: usize) -> usize {
    len.next_multiple_of(16)
}

#[inline(always)]
fn forward_plane(g: &DwGeom, w: &[f32], bias: f32, x: &[f32], out: &mut [f32], buf: &mut [f32]) {
    let (hq, wq, plen) = (g.hq(), g.wq(), g.phase_len());
    let (phases, rest) = buf.split_at_mut(g.sh * g.sw * plen);
    let (acc, wide) = rest.split_at_mut(padded_len(g.oh * wq));
    let phase_rows = if g.sw == 2 {
        split_stride2(g, x, phases, wide);
        0..0
    } else {
        0..g.sh
    };
    for py in phase_rows {
        for px in 0..g.sw {
            let ph = &mut phases[(py * g.sw + px) * plen..][..plen];
            ph[hq * wq..].fill(0.0);
            for yq in 0..hq {
                let row = &mut ph[yq * wq..][..wq];
                let Some(iy) = source(yq, py, g.sh, g.pt, g.h) else {
                    row.fill(0.0);
                    continue;
                };
                let src = &x[iy * g.w..][..g.w];
                let (lo, hi) = valid_range(g.w, wq, g.sw, g.pl, px);
                row[..lo].fill(0.0);
                row[hi..].fill(0.0);
                let ix0 = lo * g.sw + px - g.pl;
                if g.sw == 1 {
                    row[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                } else {
                    for (j, d) in row[lo..hi].iter_mut().enumerate() {
                        *d = src[ix0 + j * g.sw];
                    }
                }
            }
        }
    }
    let mut taps = Taps::new();
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let (p, off) = g.tap(ky, kx);
            taps.push(w[ky * g.kw + kx], p * plen + off);
        }
    }
    accumulate(acc, bias, taps.as_slice(), phases);
    for oy in 0..g.oh {
        out[oy * g.ow..][..g.ow].copy_from_slice(&acc[oy * wq..][..g.ow]);
    }
}

#[inline(always)]
fn backward_plane(g: &DwGeom, w: &[f32], dy: &[f32], dx: &mut [f32], buf: &mut [f32]) {
    let (hq, wq, plen) = (g.hq(), g.wq(), g.phase_len());
    let (buf, wide) = buf.split_at_mut(buf.len() - g.wide_row_len());
    let (phases, dyq) = buf.split_at_mut(g.sh * g.sw * plen);
    let len = g.oh * wq;
    // dy in rows of wq after `front` zeros, so that every phase element can gather its taps
    // (phase[q] = Σ w · dy[q − offset]) without bounds checks; zero in the throw-away columns.
    let front = (0..g.kh)
        .flat_map(|ky| (0..g.kw).map(move |kx| (ky, kx)))
        .map(|(ky, kx)| g.tap(ky, kx).1)
        .max()
        .unwrap_or(0);
    let dyq = &mut dyq[..front + padded_len(hq * wq)];
    dyq[..front].fill(0.0);
    for oy in 0..g.oh {
        let row = &mut dyq[front + oy * wq..][..wq];
        row[..g.ow].copy_from_slice(&dy[oy * g.ow..][..g.ow]);
        row[g.ow..].fill(0.0);
    }
    dyq[front + len..].fill(0.0);
    for p in 0..g.sh * g.sw {
        let mut taps = Taps::new();
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let (tp, off) = g.tap(ky, kx);
                if tp == p {
                    taps.push(w[ky * g.kw + kx], front - off);
                }
            }
        }
        accumulate(
            &mut phases[p * plen..][..padded_len(hq * wq)],
            0.0,
            taps.as_slice(),
            dyq,
        );
    }
    for iy in 0..g.h {
        let (yq, py) = ((iy + g.pt) / g.sh, (iy + g.pt) % g.sh);
        let row = &mut dx[iy * g.w..][..g.w];
        // Inputs that no output window reaches (past the last window) get no gradient.
        if yq >= g.hq() {
            row.fill(0.0);
            continue;
        }
        if g.sw == 1 {
            let (lo, hi) = valid_range(g.w, wq, 1, g.pl, 0);
            let src = &phases[py * plen + yq * wq..][..wq];
            row.fill(0.0);
            row[lo - g.pl..][..hi - lo].copy_from_slice(&src[lo..hi]);
            continue;
        }
        if g.sw == 2 {
            let p0 = &phases[py * 2 * plen + yq * wq..][..wq];
            let p1 = &phases[(py * 2 + 1) * plen + yq * wq..][..wq];
            merge_stride2(g, p0, p1, row, wide);
            continue;
        }
        row.fill(0.0);
        for px in 0..g.sw {
            let (lo, hi) = valid_range(g.w, wq, g.sw, g.pl, px);
            let src = &phases[(py * g.sw + px) * plen + yq * wq..][..wq];
            let ix0 = lo * g.sw + px - g.pl;
            for (j, s) in src[lo..hi].iter().enumerate() {
                row[ix0 + j * g.sw] = *s;
            }
        }
    }
}

simd_fn!(fn forward_plane_simd = forward_plane(
    g: &DwGeom,
    w: &[f32],
    bias: f32,
    x: &[f32],
    out: &mut [f32],
    buf: &mut [f32],
));
simd_fn!(fn backward_plane_simd = backward_plane(
    g: &DwGeom,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    buf: &mut [f32],
));

/// y (every element overwritten) = clamp(depthwise convolution of x, plus bias): the clamp
/// (a ReLU or ReLU6 fused after it) runs on each plane or block while it is still in cache.
pub(crate) fn forward(
    g: &DwGeom,
    weight: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
    clamp: Clamp,
) {
    if g.blocked_forward() {
        return forward_blocked(g, weight, bias, x, y, clamp);
    }
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let per = g.per_task();
    let scratch = g.sh * g.sw * g.phase_len() + padded_len(g.oh * g.wq()) + g.wide_row_len();
    y.par_chunks_mut(plane_out * per)
        .enumerate()
        .for_each(|(t, outs)| {
            with_scratch(scratch, |buf| {
                for (i, out) in outs.chunks_mut(plane_out).enumerate() {
                    let nc = t * per + i;
                    let c = nc % g.channels;
                    let w = &weight[c * taps..][..taps];
                    let b = bias.map_or(0.0, |b| b[c]);
                    let src = &x[nc * plane_in..][..plane_in];
                    forward_plane_simd(g, w, b, src, out, buf);
                    if clamp != Clamp::None {
                        bias_act_row(out, 0.0, clamp);
                    }
                }
            })
        });
}

/// dx (every element overwritten) = the input gradient for the output gradient dy.
pub(crate) fn backward(g: &DwGeom, weight: &[f32], dy: &[f32], dx: &mut [f32]) {
    if g.blocked_backward() {
        return backward_blocked(g, weight, dy, dx);
    }
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let per = g.per_task();
    // Phases, then dy with up to a phase's worth of leading zeros.
    let scratch = (g.sh * g.sw + 2) * g.phase_len() + g.wide_row_len();
    dx.par_chunks_mut(plane_in * per)
        .enumerate()
        .for_each(|(t, dxs)| {
            with_scratch(scratch, |buf| {
                for (i, din) in dxs.chunks_mut(plane_in).enumerate() {
                    let nc = t * per + i;
                    let c = nc % g.channels;
                    let w = &weight[c * taps..][..taps];
                    let src = &dy[nc * plane_out..][..plane_out];
                    backward_plane_simd(g, w, src, din, buf);
                }
            })
        });
}

/// Channels per task of the channel-blocked kernel: one AVX-512 register of float32.
const LANES: usize = 16;

/// Output widths up to this go channel-blocked. On small planes (EfficientNet's 7² stage) the
/// per-plane kernel above spends its time on set-up and on throw-away columns (a 5×5 kernel on
/// a 7-wide plane computes 11 columns for 7); vectorizing across 16 channels instead keeps
/// every lane useful. Measured on EfficientNet-Lite0: 1.3–1.4× faster at 7², slower from 14²
/// on, where interleaving the channels costs more than it saves.
const BLOCKED_MAX_WIDTH: usize = 8;

/// `out[o] = init + Σ_t w[t] · src[base(o) + off[t]]` for the outputs `o = (oy, ox)` of an
/// `oh × ow` grid, `base(o) = ((oy·sy + y0)·width + ox·sx + x0)·LANES`, all vectors of LANES
/// channels; four outputs of a row at a time share each weight load.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gather_taps(
    src: &[f32],
    width: usize,
    (y0, x0): (usize, usize),
    (sy, sx): (usize, usize),
    (oh, ow): (usize, usize),
    taps: &[(usize, [f32; LANES])],
    init: &[f32; LANES],
    out: &mut [f32],
) {
    for oy in 0..oh {
        let row = (oy * sy + y0) * width + x0;
        let mut ox = 0;
        while ox + 4 <= ow {
            let mut acc = [*init; 4];
            for (off, w) in taps {
                for (j, a) in acc.iter_mut().enumerate() {
                    let s = &src[(row + (ox + j) * sx) * LANES + off..][..LANES];
                    for l in 0..LANES {
                        a[l] += w[l] * s[l];
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                out[(oy * ow + ox + j) * LANES..][..LANES].copy_from_slice(a);
            }
            ox += 4;
        }
        while ox < ow {
            let mut a = *init;
            for (off, w) in taps {
                let s = &src[(row + ox * sx) * LANES + off..][..LANES];
                for l in 0..LANES {
                    a[l] += w[l] * s[l];
                }
            }
            out[(oy * ow + ox) * LANES..][..LANES].copy_from_slice(&a);
            ox += 1;
        }
    }
}

/// Interleaves `planes` (each `h × w`, at most LANES of them) into `dst`, a zeroed grid of
/// LANES-channel vectors `width` wide, with the plane's (0, 0) at (top, left); the callers size
/// the grid to hold the planes whole.
#[inline(always)]
fn interleave(
    planes: &[f32],
    h: usize,
    w: usize,
    dst: &mut [f32],
    width: usize,
    top: usize,
    left: usize,
) {
    for (l, plane) in planes.chunks_exact(h * w).enumerate() {
        for y in 0..h {
            let d = ((y + top) * width + left) * LANES + l;
            for (x, v) in plane[y * w..][..w].iter().enumerate() {
                dst[d + x * LANES] = *v;
            }
        }
    }
}

/// Plane `l` of `planes` (each `len` long) = lane `l` of the vectors in `src`.
#[inline(always)]
fn deinterleave(src: &[f32], planes: &mut [f32], len: usize) {
    for (l, plane) in planes.chunks_exact_mut(len).enumerate() {
        for (p, v) in plane.iter_mut().enumerate() {
            *v = src[p * LANES + l];
        }
    }
}

/// Per-lane weights of each tap (ky, kx) for channels `c0..c0 + n`, with the kernel rotated by
/// 180° if `flip`, at offset `off(ky, kx)`; lanes past `n` are zero.
fn lane_taps(
    g: &DwGeom,
    weight: &[f32],
    c0: usize,
    n: usize,
    flip: bool,
    off: impl Fn(usize, usize) -> usize,
    taps: &mut Vec<(usize, [f32; LANES])>,
) {
    let k = g.kh * g.kw;
    taps.clear();
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let t = if flip {
                k - 1 - (ky * g.kw + kx)
            } else {
                ky * g.kw + kx
            };
            let mut w = [0.0; LANES];
            for (l, v) in w.iter_mut().enumerate().take(n) {
                *v = weight[(c0 + l) * k + t];
            }
            taps.push((off(ky, kx), w));
        }
    }
}

fn forward_block(
    g: &DwGeom,
    taps: &[(usize, [f32; LANES])],
    init: &[f32; LANES],
    x: &[f32],
    y: &mut [f32],
    buf: &mut [f32],
) {
    let (hp, wp) = g.padded_in();
    let (src, out) = buf.split_at_mut(hp * wp * LANES);
    src.fill(0.0);
    interleave(x, g.h, g.w, src, wp, g.pt, g.pl);
    gather_taps(src, wp, (0, 0), (g.sh, g.sw), (g.oh, g.ow), taps, init, out);
    deinterleave(out, y, g.oh * g.ow);
}

fn backward_block(
    g: &DwGeom,
    taps: &[(usize, [f32; LANES])],
    dy: &[f32],
    dx: &mut [f32],
    buf: &mut [f32],
) {
    // Stride 1: dx[iy][ix] = Σ w[kh−1−ky'][kw−1−kx'] · dy[iy + pt + ky'·dh − (kh−1)·dh][…], a
    // forward pass with the flipped kernel over dy shifted by (kh−1)·dh and zero-padded.
    let (hq, wq) = g.padded_dy();
    let (src, out) = buf.split_at_mut(hq * wq * LANES);
    src.fill(0.0);
    interleave(
        dy,
        g.oh,
        g.ow,
        src,
        wq,
        (g.kh - 1) * g.dh,
        (g.kw - 1) * g.dw,
    );
    gather_taps(
        src,
        wq,
        (g.pt, g.pl),
        (1, 1),
        (g.h, g.w),
        taps,
        &[0.0; LANES],
        out,
    );
    deinterleave(out, dx, g.h * g.w);
}

simd_fn!(fn forward_block_simd = forward_block(
    g: &DwGeom,
    taps: &[(usize, [f32; LANES])],
    init: &[f32; LANES],
    x: &[f32],
    y: &mut [f32],
    buf: &mut [f32],
));
simd_fn!(fn backward_block_simd = backward_block(
    g: &DwGeom,
    taps: &[(usize, [f32; LANES])],
    dy: &[f32],
    dx: &mut [f32],
    buf: &mut [f32],
));

impl DwGeom {
    fn blocked_forward(&self) -> bool {
        self.ow <= BLOCKED_MAX_WIDTH
    }
    /// Strided backward passes scatter; measured slower than the per-plane kernel's phases.
    fn blocked_backward(&self) -> bool {
        self.blocked_forward() && self.sh == 1 && self.sw == 1
    }
    /// The zero-padded input grid every forward window reads: rows up to the last window's
    /// end, and at least the input's.
    fn padded_in(&self) -> (usize, usize) {
        (
            ((self.oh - 1) * self.sh + (self.kh - 1) * self.dh + 1).max(self.h + self.pt),
            ((self.ow - 1) * self.sw + (self.kw - 1) * self.dw + 1).max(self.w + self.pl),
        )
    }
    /// The grid of dy shifted by the kernel's extent, for the stride-1 backward pass.
    fn padded_dy(&self) -> (usize, usize) {
        (
            (self.h + self.pt).max(self.oh) + (self.kh - 1) * self.dh,
            (self.w + self.pl).max(self.ow) + (self.kw - 1) * self.dw,
        )
    }
}

/// Runs `f(c0, n, planes_in, planes_out)` for every block of up to LANES channels of every
/// image, in parallel.
fn for_channel_blocks(
    g: &DwGeom,
    (plane_in, plane_out): (usize, usize),
    src: &[f32],
    dst: &mut [f32],
    f: impl Fn(usize, usize, &[f32], &mut [f32]) + Sync,
) {
    let c = g.channels;
    dst.par_chunks_mut(c * plane_out)
        .zip(src.par_chunks(c * plane_in))
        .for_each(|(dst, src)| {
            dst.par_chunks_mut(LANES * plane_out)
                .zip(src.par_chunks(LANES * plane_in))
                .enumerate()
                .for_each(|(b, (d, s))| f(b * LANES, d.len() / plane_out, s, d));
        });
}

thread_local! {
    static TAPS: RefCell<Vec<(usize, [f32; LANES])>> = const { RefCell::new(Vec::new()) };
}

fn forward_blocked(
    g: &DwGeom,
    weight: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
    clamp: Clamp,
) {
    let (hp, wp) = g.padded_in();
    let scratch = (hp * wp + g.oh * g.ow) * LANES;
    let off = |ky: usize, kx: usize| (ky * g.dh * wp + kx * g.dw) * LANES;
    for_channel_blocks(g, (g.h * g.w, g.oh * g.ow), x, y, |c0, n, x, y| {
        let mut init = [0.0; LANES];
        if let Some(b) = bias {
            init[..n].copy_from_slice(&b[c0..c0 + n]);
        }
        TAPS.with(|t| {
            let mut taps = t.borrow_mut();
            lane_taps(g, weight, c0, n, false, off, &mut taps);
            with_scratch(scratch, |buf| {
                forward_block_simd(g, &taps, &init, x, y, buf)
            });
        });
        if clamp != Clamp::None {
            bias_act_row(y, 0.0, clamp);
        }
    });
}

fn backward_blocked(g: &DwGeom, weight: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (hq, wq) = g.padded_dy();
    let scratch = (hq * wq + g.h * g.w) * LANES;
    let off = |ky: usize, kx: usize| (ky * g.dh * wq + kx * g.dw) * LANES;
    for_channel_blocks(g, (g.oh * g.ow, g.h * g.w), dy, dx, |c0, n, dy, dx| {
        TAPS.with(|t| {
            let mut taps = t.borrow_mut();
            lane_taps(g, weight, c0, n, true, off, &mut taps);
            with_scratch(scratch, |buf| backward_block_simd(g, &taps, dy, dx, buf));
        });
    });
}
