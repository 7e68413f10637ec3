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
    /// Floats per phase: hq rows of wq plus one row of slack for the last taps' overhang.
    fn phase_len(&self) -> usize {
        (self.hq() + 1) * self.wq()
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

#[inline(always)]
fn forward_plane(g: &DwGeom, w: &[f32], bias: f32, x: &[f32], out: &mut [f32], buf: &mut [f32]) {
    let (hq, wq, plen) = (g.hq(), g.wq(), g.phase_len());
    let (phases, acc) = buf.split_at_mut(g.sh * g.sw * plen);
    for py in 0..g.sh {
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
    let len = g.oh * wq;
    let acc = &mut acc[..len];
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
    let (phases, dyq) = buf.split_at_mut(g.sh * g.sw * plen);
    let len = g.oh * wq;
    // dy in rows of wq after `front` zeros, so that every phase element can gather its taps
    // (phase[q] = Σ w · dy[q − offset]) without bounds checks; zero in the throw-away columns.
    let front = (0..g.kh)
        .flat_map(|ky| (0..g.kw).map(move |kx| (ky, kx)))
        .map(|(ky, kx)| g.tap(ky, kx).1)
        .max()
        .unwrap_or(0);
    let dyq = &mut dyq[..front + hq * wq];
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
            &mut phases[p * plen..][..hq * wq],
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

/// y (every element overwritten) = depthwise convolution of x, plus bias.
pub(crate) fn forward(g: &DwGeom, weight: &[f32], bias: Option<&[f32]>, x: &[f32], y: &mut [f32]) {
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let per = g.per_task();
    let scratch = g.sh * g.sw * g.phase_len() + g.oh * g.wq();
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
                }
            })
        });
}

/// dx (every element overwritten) = the input gradient for the output gradient dy.
pub(crate) fn backward(g: &DwGeom, weight: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let per = g.per_task();
    // Phases, then dy with up to a phase's worth of leading zeros.
    let scratch = (g.sh * g.sw + 2) * g.phase_len();
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
