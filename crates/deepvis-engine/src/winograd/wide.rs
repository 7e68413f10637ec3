//! The four Winograd transforms, 16 tiles of a tile row at a time in registers.
//!
//! Each image row is loaded once as four vectors, split into tile columns by permutes, and both
//! passes of a 16-tile chunk stay in registers until the transform-domain values are stored.
//! Staging the tile columns through memory instead made the transforms 40 % of a VGG16 step at
//! 512 px. Rows of fewer than 16 tiles (deep layers at small sizes: 7 tiles at 28 px, 4 at
//! 14 px) leave lanes idle, but staging them was slower still: VGG16's 512 → 512 convolution
//! (forward + input gradient, bf16) 4.0 → 3.5 ms at 28 px and 1.44 → 1.12 ms at 14 px once
//! these kernels took them over too.

use super::{a4, at6, b6, bt6, slab, Ptr, WinoGeom};
use crate::lanes::{Lanes, Lanes16};
use crate::simd::prefetch;

/// Whether the image rows of tile row `u` that it shares with its neighbours are already
/// written when it runs (see `grad_output`).
#[derive(Clone, Copy)]
pub(super) struct Neighbours {
    /// The tile row before the block (`u0 − 1`) ran before this block.
    pub before_done: bool,
    /// The tile row after the block (`u1`) ran before this block.
    pub after_done: bool,
}

/// `[e(k₀), e(k₁), …]` for an expression `e` of `i` and the listed indices, unrolled. The
/// kernels build their small arrays this way: not with closures (`array::from_fn`, `map`),
/// which LLVM compiled as functions without the caller's target features, turning every
/// intrinsic into a call; and not by filling a zeroed array, which cost a memset per chunk.
macro_rules! unrolled {
    (|$i:ident| $e:expr; $($k:literal),+) => {
        [$({
            let $i = $k;
            $e
        }),+]
    };
}

/// `unrolled!` over 0..6.
macro_rules! six {
    (|$i:ident| $e:expr) => {
        unrolled!(|$i| $e; 0, 1, 2, 3, 4, 5)
    };
}

/// Columns `k = 0..6` of 16 tiles whose first column is `col0` of `row` (zero outside
/// `0..w`): `d[k][l] = row[col0 + 4l + k]`.
#[inline(always)]
unsafe fn tile_columns<T: Lanes>(row: *const f32, w: usize, col0: isize) -> [T; 6] {
    let (a, p64, p65) = if col0 >= 0 && col0 as usize + 66 <= w {
        let p = row.add(col0 as usize);
        let a = [
            T::load(p),
            T::load(p.add(16)),
            T::load(p.add(32)),
            T::load(p.add(48)),
        ];
        (a, *p.add(64), *p.add(65))
    } else {
        // The padding and the image edges: zeros where the tile leaves the row. (Masked
        // loads: copying the row piece to a buffer first stalled on store forwarding.)
        let p = row.wrapping_offset(col0);
        let lo = (-col0).max(0) as usize;
        let hi = (w as isize - col0).max(0) as usize;
        // (Lane ranges by plain integer closures; the loads themselves are not in a closure,
        // see `six!`.)
        let (lo_q, hi_q) = (
            |q: usize| lo.saturating_sub(16 * q),
            |q: usize| hi.saturating_sub(16 * q),
        );
        let a = [
            T::load_range(p, lo_q(0), hi_q(0)),
            T::load_range(p.wrapping_add(16), lo_q(1), hi_q(1)),
            T::load_range(p.wrapping_add(32), lo_q(2), hi_q(2)),
            T::load_range(p.wrapping_add(48), lo_q(3), hi_q(3)),
        ];
        let at = |q: usize| {
            if (lo..hi).contains(&q) {
                *p.wrapping_add(q)
            } else {
                0.0
            }
        };
        (a, at(64), at(65))
    };
    let [c0, c1, c2, c3] = T::deinterleave4(a);
    // Columns 4 and 5 of tile l are columns 0 and 1 of tile l + 1.
    let (c4, c5) = (c0.shift_down(p64), c1.shift_down(p65));
    [c0, c1, c2, c3, c4, c5]
}

/// The values `4l + b` (b = 0..4) of `n` ≤ 64 floats at `src`, zeros beyond, as four columns.
#[inline(always)]
unsafe fn output_columns<T: Lanes>(src: *const f32, n: usize) -> [T; 4] {
    let part = |q: usize| n.saturating_sub(16 * q);
    // (`part` is plain integer arithmetic: fine as a closure.)
    let a = if n >= 64 {
        [
            T::load(src),
            T::load(src.add(16)),
            T::load(src.add(32)),
            T::load(src.add(48)),
        ]
    } else {
        [
            T::load_first(src, part(0)),
            T::load_first(src.add(16), part(1)),
            T::load_first(src.add(32), part(2)),
            T::load_first(src.add(48), part(3)),
        ]
    };
    T::deinterleave4(a)
}

/// Prefetches columns `col0 .. col0 + 66` of `rows` rows from row `y0` of a plane at `plane`
/// (`h` rows of `w`), those inside it.
#[inline(always)]
fn prefetch_rows(plane: *const f32, w: usize, y0: isize, rows: usize, col0: isize, h: usize) {
    let c0 = col0.max(0) as usize;
    let c1 = ((col0 + 66).max(0) as usize).min(w);
    for r in 0..rows as isize {
        let y = y0 + r;
        if y < 0 || y >= h as isize || c0 >= c1 {
            continue;
        }
        let row = plane.wrapping_add(y as usize * w);
        let mut c = c0;
        while c < c1 {
            prefetch(row.wrapping_add(c));
            c += 16;
        }
        prefetch(row.wrapping_add(c1 - 1));
    }
}

/// Prefetches the 16 floats at `p` in each of the 36 transform positions (`slab` apart): the
/// next channel's chunk of a block's M or V, which at deep layers outgrow the L2 cache.
#[inline(always)]
fn prefetch_positions(p: *const f32, slab: usize) {
    for xi in 0..36 {
        prefetch(p.wrapping_add(xi * slab));
    }
}

/// V[ξ][c][t] for the tiles of units [u0, u1) and input channel c (see the parent's
/// `input_transform`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
// `s` indexes the second axis of a [row][column] array: no iterator runs across it.
#[allow(clippy::needless_range_loop)]
unsafe fn input<T: Lanes>(
    g: &WinoGeom,
    x: &[f32],
    u0: usize,
    u1: usize,
    c: usize,
    v: Ptr,
    t: usize,
) {
    let (th, tw) = (g.th(), g.tw());
    let plane = g.h * g.w;
    let v = v.get();
    for u in u0..u1 {
        let (n, i) = (u / th, u % th);
        let xc = x[(n * g.cin + c) * plane..][..plane].as_ptr();
        // The next channel's plane, whose rows this thread is likely to read next: each
        // channel's few rows are too short a stream for the hardware prefetcher, and the
        // loads of the tile rows waited on memory.
        let next = (c + 1 < g.cin).then(|| xc.wrapping_add(plane));
        for j0 in (0..tw).step_by(16) {
            let lanes = (tw - j0).min(16);
            // hor[r][s]: row r of the 16 tiles after Bᵀ across.
            let col0 = (4 * j0) as isize - g.pl as isize;
            if let Some(next) = next {
                prefetch_rows(next, g.w, (4 * i) as isize - g.pt as isize, 6, col0, g.h);
            }
            let hor = six!(|r| {
                let y = (4 * i + r) as isize - g.pt as isize;
                if y < 0 || y >= g.h as isize {
                    [T::zero(); 6]
                } else {
                    bt6(tile_columns::<T>(xc.add(y as usize * g.w), g.w, col0))
                }
            });
            let tb = (u - u0) * tw + j0;
            for s in 0..6 {
                let out = bt6([
                    hor[0][s], hor[1][s], hor[2][s], hor[3][s], hor[4][s], hor[5][s],
                ]);
                for (a, val) in out.into_iter().enumerate() {
                    // SAFETY: (ξ, c, tb..tb + lanes) lies in this block's V and belongs to the
                    // task for channel c.
                    let dst = v.add((a * 6 + s) * slab(g.cin, t) + c * t + tb);
                    val.store_first(dst, lanes);
                }
            }
        }
    }
}

/// y[n, o, rows of units u0..u1] from M[ξ][o][t], plus bias, then ReLU if `relu`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
// `s` indexes the second axis of a [row][column] array: no iterator runs across it.
#[allow(clippy::needless_range_loop)]
unsafe fn output<T: Lanes>(
    g: &WinoGeom,
    m: &[f32],
    u0: usize,
    u1: usize,
    o: usize,
    bias: f32,
    relu: bool,
    y: Ptr,
    t: usize,
) {
    let (th, tw) = (g.th(), g.tw());
    let plane = g.oh * g.ow;
    let (y, m) = (y.get(), m.as_ptr());
    let bias = T::splat(bias);
    for u in u0..u1 {
        let (n, i) = (u / th, u % th);
        // The next channel's output rows, which this thread is likely to write next (a
        // store to a line not in cache waits for it as a load would).
        let next = (o + 1 < g.cout).then(|| y.wrapping_add((n * g.cout + o + 1) * plane));
        for j0 in (0..tw).step_by(16) {
            let lanes = (tw - j0).min(16);
            let tb = (u - u0) * tw + j0;
            if let Some(next) = next {
                prefetch_rows(next, g.ow, (4 * i) as isize, 4, (4 * j0) as isize, g.oh);
                prefetch_positions(m.wrapping_add((o + 1) * t + tb), slab(g.cout, t));
            }
            // down[s][a]: column s of the 16 tiles after Aᵀ down.
            let down = six!(|s| at6(six!(|r| T::load_first(
                m.add((r * 6 + s) * slab(g.cout, t) + o * t + tb),
                lanes
            ))));
            for a in 0..4 {
                let oy = 4 * i + a;
                if oy >= g.oh {
                    break;
                }
                let mut out = at6([
                    down[0][a], down[1][a], down[2][a], down[3][a], down[4][a], down[5][a],
                ]);
                for v in out.iter_mut() {
                    *v = *v + bias;
                    if relu {
                        *v = v.max(T::zero());
                    }
                }
                let quads = T::interleave4(out);
                // SAFETY: output row (n, o, oy) belongs to this task alone; at most the
                // `avail` values left in the row are written.
                let dst = y.add((n * g.cout + o) * plane + oy * g.ow + 4 * j0);
                let avail = g.ow - 4 * j0;
                for (q, v) in quads.into_iter().enumerate() {
                    if avail >= 16 * (q + 1) {
                        v.store(dst.add(16 * q));
                    } else if avail > 16 * q {
                        v.store_first(dst.add(16 * q), avail - 16 * q);
                    }
                }
            }
        }
    }
}

/// dM[ξ][o][t] = A dY Aᵀ for the 4×4 output-gradient tiles (see the parent's
/// `grad_input_transform`).
#[inline(always)]
// `s` indexes the second axis of a [row][column] array: no iterator runs across it.
#[allow(clippy::needless_range_loop)]
#[allow(clippy::too_many_arguments)]
unsafe fn grad_input<T: Lanes>(
    g: &WinoGeom,
    dy: &[f32],
    relu_out: Option<&[f32]>,
    u0: usize,
    u1: usize,
    o: usize,
    dm: Ptr,
    t: usize,
) {
    let (th, tw) = (g.th(), g.tw());
    let plane = g.oh * g.ow;
    let dm = dm.get();
    for u in u0..u1 {
        let (n, i) = (u / th, u % th);
        let dyo = dy[(n * g.cout + o) * plane..][..plane].as_ptr();
        let yo = relu_out.map(|y| y[(n * g.cout + o) * plane..][..plane].as_ptr());
        // As in `input`: the next channel's rows, ahead of time.
        let more = o + 1 < g.cout;
        for j0 in (0..tw).step_by(16) {
            let lanes = (tw - j0).min(16);
            if more {
                let col0 = (4 * j0) as isize;
                prefetch_rows(
                    dyo.wrapping_add(plane),
                    g.ow,
                    (4 * i) as isize,
                    4,
                    col0,
                    g.oh,
                );
                if let Some(yo) = yo {
                    prefetch_rows(
                        yo.wrapping_add(plane),
                        g.ow,
                        (4 * i) as isize,
                        4,
                        col0,
                        g.oh,
                    );
                }
            }
            // hor[a][s]: output row a of the 16 tiles after A across.
            let hor = unrolled!(|a| {
                let oy = 4 * i + a;
                if oy >= g.oh {
                    [T::zero(); 6]
                } else {
                    let (at, n) = (oy * g.ow + 4 * j0, g.ow - 4 * j0);
                    let d = output_columns::<T>(dyo.add(at), n);
                    a4(match yo {
                        // The ReLU's backward pass, fused: no sweep of its own over dy.
                        Some(yo) => {
                            let y = output_columns::<T>(yo.add(at), n);
                            unrolled!(|k| d[k].where_positive(y[k]); 0, 1, 2, 3)
                        }
                        None => d,
                    })
                }
            }; 0, 1, 2, 3);
            let tb = (u - u0) * tw + j0;
            for s in 0..6 {
                let out = a4([hor[0][s], hor[1][s], hor[2][s], hor[3][s]]);
                for (r, val) in out.into_iter().enumerate() {
                    // SAFETY: (ξ, o, tb..tb + lanes) lies in this block's dM and belongs to the
                    // task for channel o.
                    val.store_first(dm.add((r * 6 + s) * slab(g.cout, t) + o * t + tb), lanes);
                }
            }
        }
    }
}

/// dx[n, c] from B dV Bᵀ on the overlapping 6×6 input tiles (see the parent's
/// `grad_output_transform`), with no need for a zeroed dx: an input row is written by the
/// first tile row to reach it and added to by the second.
///
/// Tile row u shares its rows 0–1 with u − 1 and its rows 4–5 with u + 1. Inside a block
/// the rows run in order; at the block's ends `nb` says whether the neighbouring block ran
/// first.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn grad_output<T: Lanes>(
    g: &WinoGeom,
    dv: &[f32],
    u0: usize,
    u1: usize,
    c: usize,
    dx: Ptr,
    t: usize,
    nb: Neighbours,
) {
    let (th, tw) = (g.th(), g.tw());
    let plane = g.h * g.w;
    let (dx, dv) = (dx.get(), dv.as_ptr());
    for u in u0..u1 {
        let (n, i) = (u / th, u % th);
        let adds = |r: usize| match r {
            0 | 1 => i > 0 && (u > u0 || nb.before_done),
            4 | 5 => i + 1 < th && u + 1 == u1 && nb.after_done,
            _ => false,
        };
        // Columns 4 and 5 of the previous chunk's last tile, per row r.
        let mut carry = [[0f32; 2]; 6];
        // As in `output`: the next channel's rows of dx, ahead of their writes.
        let next = (c + 1 < g.cin).then(|| dx.wrapping_add((n * g.cin + c + 1) * plane));
        for j0 in (0..tw).step_by(16) {
            let lanes = (tw - j0).min(16);
            let tb = (u - u0) * tw + j0;
            if let Some(next) = next {
                let col0 = (4 * j0) as isize - g.pl as isize;
                prefetch_rows(next, g.w, (4 * i) as isize - g.pt as isize, 6, col0, g.h);
                prefetch_positions(dv.wrapping_add((c + 1) * t + tb), slab(g.cin, t));
            }
            // vert[k][r]: column k of the 16 tiles after B down.
            let vert = six!(|k| b6(six!(|a| T::load_first(
                dv.add((a * 6 + k) * slab(g.cin, t) + c * t + tb),
                lanes
            ))));
            for r in 0..6 {
                let y = (4 * i + r) as isize - g.pt as isize;
                if y < 0 || y >= g.h as isize {
                    continue;
                }
                let [c0, c1, c2, c3, c4, c5] = b6([
                    vert[0][r], vert[1][r], vert[2][r], vert[3][r], vert[4][r], vert[5][r],
                ]);
                // Tiles overlap by two columns: 4 and 5 of tile l land on 0 and 1 of l + 1.
                let c0 = c0 + c4.shift_up(carry[r][0]);
                let c1 = c1 + c5.shift_up(carry[r][1]);
                carry[r] = [c4.lane(lanes - 1), c5.lane(lanes - 1)];
                let quads = T::interleave4([c0, c1, c2, c3]);
                // SAFETY: the row (n, c, y) is touched by this task only while it runs (see
                // the parent's `backward`).
                let row = dx.add((n * g.cin + c) * plane + y as usize * g.w);
                let add = adds(r);
                let col0 = (4 * j0) as isize - g.pl as isize;
                if lanes == 16 && col0 >= 0 && col0 as usize + 64 <= g.w {
                    let dst = row.add(col0 as usize);
                    for (q, v) in quads.into_iter().enumerate() {
                        let d = dst.add(16 * q);
                        if add {
                            (T::load(d) + v).store(d);
                        } else {
                            v.store(d);
                        }
                    }
                } else {
                    // Columns col0 + 0..4·lanes, clipped to the row.
                    let p = row.wrapping_offset(col0);
                    let lo = (-col0).max(0) as usize;
                    let hi = ((g.w as isize - col0).max(0) as usize).min(4 * lanes);
                    for (q, v) in quads.into_iter().enumerate() {
                        let (d, lo, hi) = (
                            p.wrapping_add(16 * q),
                            lo.saturating_sub(16 * q),
                            hi.saturating_sub(16 * q),
                        );
                        if lo >= hi.min(16) {
                            continue;
                        }
                        let v = if add { T::load_range(d, lo, hi) + v } else { v };
                        v.store_range(d, lo, hi);
                    }
                }
                if j0 + lanes == tw {
                    // The last tile's columns 4 and 5 reach past the tile grid.
                    emit(row, g.w, col0 + 4 * lanes as isize, &carry[r], add);
                }
            }
        }
    }
}

/// row[col0 + q] (+)= vals[q] where 0 ≤ col0 + q < w.
#[inline(always)]
unsafe fn emit(row: *mut f32, w: usize, col0: isize, vals: &[f32], add: bool) {
    for (q, &v) in vals.iter().enumerate() {
        let col = col0 + q as isize;
        if col >= 0 && (col as usize) < w {
            let d = row.add(col as usize);
            *d = if add { *d + v } else { v };
        }
    }
}

/// `fn $name(args)` running `$kernel::<Zmm>` compiled for AVX-512, or `$kernel::<Lanes16>`
/// for AVX2 or the portable baseline, as `simd_level()` says.
macro_rules! lanes_fn {
    (fn $name:ident = $kernel:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        #[allow(clippy::too_many_arguments)]
        pub(super) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) {
                    $kernel::<crate::lanes::Zmm>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn narrow($($arg: $ty),*) {
                    $kernel::<Lanes16>($($arg),*)
                }
                match crate::simd::simd_level() {
                    // SAFETY: simd_level() never exceeds what the CPU reports; the pointer
                    // arguments' contracts are the callers' (see each kernel).
                    crate::simd::SimdLevel::Avx512 => return unsafe { wide($($arg),*) },
                    crate::simd::SimdLevel::Avx2 => return unsafe { narrow($($arg),*) },
                    crate::simd::SimdLevel::Portable => {}
                }
            }
            // SAFETY: as above.
            unsafe { $kernel::<Lanes16>($($arg),*) }
        }
    };
}

lanes_fn!(fn input_transform = input(g: &WinoGeom, x: &[f32], u0: usize, u1: usize, c: usize, v: Ptr, t: usize));
lanes_fn!(fn output_transform = output(g: &WinoGeom, m: &[f32], u0: usize, u1: usize, o: usize, bias: f32, relu: bool, y: Ptr, t: usize));
lanes_fn!(fn grad_input_transform = grad_input(g: &WinoGeom, dy: &[f32], relu_out: Option<&[f32]>, u0: usize, u1: usize, o: usize, dm: Ptr, t: usize));
lanes_fn!(fn grad_output_transform = grad_output(g: &WinoGeom, dv: &[f32], u0: usize, u1: usize, c: usize, dx: Ptr, t: usize, nb: Neighbours));
