//! Winograd F(4×4, 3×3) for dense 3×3 stride-1 convolutions, forward and input gradient.
//!
//! Each 4×4 output tile costs 36 multiplies per (input, output) channel pair instead of 144: the
//! 6×6 input tile and the 3×3 kernel are moved to a transform domain (Bᵀ d B, G g Gᵀ) where the
//! convolution is 36 independent channel-mixing GEMMs, and Aᵀ m A brings the result back.
//! The input gradient is the exact adjoint of that computation, so it needs no flipped kernel:
//! only the transposed transform-domain weights (cached beside them, see `WinogradWeights::ut`).
//!
//! Tiles are processed in blocks of whole tile rows, and a block's 36 transform-domain
//! matrices stay cache-sized. The transforms (`wide`) keep 16 tiles of a row in registers.
//!
//! F(6×6, 3×3) would do 20 % fewer GEMM multiplications at 512 px, but the best interpolation
//! points found for it gave 3.4× the mean float32 error of the F(4×4) points used here (see the
//! 1-D transforms; random 64-channel tiles), more than the PyTorch parity tests allow.

mod wide;

use crate::aligned::Aligned;
use crate::bf16::{self, PackedA};
use crate::gemm::{matmul, Epilogue, MatMut, MatRef};
use crate::lanes::Arith;
use crate::Precision;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Transform-domain positions per tile (6×6).
const XI: usize = 36;

/// Transformed weights: U[ξ][out][in] for the 36 positions ξ of the 6×6 transform domain.
pub(crate) struct WinogradWeights {
    pub u: Vec<f32>,
    pub cout: usize,
    pub cin: usize,
    /// bf16 copies of U[ξ] and U[ξ]ᵀ, packed for `bf16::matmul` (made on first bf16 use).
    bf16: OnceLock<Bf16Weights>,
    /// U[ξ]ᵀ stored [in][out] (made on the first f32 input gradient): GEMM packing reads
    /// contiguous rows instead of striding by `cin`, which made the input gradient of 14×14
    /// layers 1.6× slower than their forward pass. Costs as much memory again as `u`.
    ut: OnceLock<Vec<f32>>,
}

struct Bf16Weights {
    forward: Vec<PackedA>,
    backward: Vec<PackedA>,
}

impl WinogradWeights {
    /// `weight` in PyTorch's [out, in, 3, 3] layout.
    #[allow(clippy::needless_range_loop)]
    pub fn new(weight: &[f32], cout: usize, cin: usize) -> Self {
        // G for the interpolation points of `bt6`; in f64 so that the only rounding is the
        // final one.
        const G: [[f64; 3]; 6] = [
            [1.0, 0.0, 0.0],
            [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
            [-1.0 / 3.0, 1.0 / 3.0, -1.0 / 3.0],
            [-16.0 / 15.0, -8.0 / 15.0, -4.0 / 15.0],
            [1.0 / 15.0, -2.0 / 15.0, 4.0 / 15.0],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![0f32; XI * cout * cin];
        let plane = cout * cin;
        // Each (out, in) pair writes 36 strided slots; parallel over output channels.
        let ptr = Ptr(u.as_mut_ptr());
        (0..cout).into_par_iter().for_each(|o| {
            for i in 0..cin {
                let g = &weight[(o * cin + i) * 9..][..9];
                let mut t = [[0f64; 3]; 6];
                for (r, row) in G.iter().enumerate() {
                    for c in 0..3 {
                        t[r][c] = (0..3).map(|k| row[k] * g[k * 3 + c] as f64).sum();
                    }
                }
                for r in 0..6 {
                    for s in 0..6 {
                        let v: f64 = (0..3).map(|k| t[r][k] * G[s][k]).sum();
                        // SAFETY: slot (ξ, o, i) is written by this task only.
                        unsafe { *ptr.get().add((r * 6 + s) * plane + o * cin + i) = v as f32 };
                    }
                }
            }
        });
        WinogradWeights {
            u,
            cout,
            cin,
            bf16: OnceLock::new(),
            ut: OnceLock::new(),
        }
    }

    fn transposed(&self) -> &[f32] {
        self.ut.get_or_init(|| {
            let (cout, cin) = (self.cout, self.cin);
            let plane = cout * cin;
            let mut ut = vec![0f32; self.u.len()];
            ut.par_chunks_mut(plane).enumerate().for_each(|(xi, dst)| {
                let src = &self.u[xi * plane..][..plane];
                for i in 0..cin {
                    for o in 0..cout {
                        dst[i * cout + o] = src[o * cin + i];
                    }
                }
            });
            ut
        })
    }

    fn bf16(&self) -> &Bf16Weights {
        self.bf16.get_or_init(|| {
            let (cout, cin) = (self.cout, self.cin);
            let plane = cout * cin;
            let pack = |transpose: bool| -> Vec<PackedA> {
                (0..XI)
                    .into_par_iter()
                    .map(|xi| {
                        let ptr = self.u[xi * plane..].as_ptr();
                        // SAFETY: U[ξ] is a [cout × cin] row-major slab of `u`.
                        unsafe { PackedA::row_major(ptr, cout, cin, transpose) }
                    })
                    .collect()
            };
            Bf16Weights {
                forward: pack(false),
                backward: pack(true),
            }
        })
    }

    /// Bytes held: the f32 transform and any bf16 copies.
    pub fn bytes(&self) -> usize {
        self.u.len() * 4
            + self.ut.get().map_or(0, |t| t.len() * 4)
            + self.bf16.get().map_or(0, |b| {
                b.forward
                    .iter()
                    .chain(&b.backward)
                    .map(PackedA::bytes)
                    .sum()
            })
    }
}

/// Geometry of a Winograd convolution: an [n, cin, h, w] input, a 3×3 kernel with top/left
/// padding pt/pl, and an [n, cout, oh, ow] output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WinoGeom {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub pt: usize,
    pub pl: usize,
}

impl WinoGeom {
    fn th(&self) -> usize {
        self.oh.div_ceil(4)
    }
    fn tw(&self) -> usize {
        self.ow.div_ceil(4)
    }
    /// Tile rows over the whole batch.
    fn units(&self) -> usize {
        self.n * self.th()
    }
    /// Tile rows per block: enough tiles for an efficient GEMM, few enough that the block's
    /// transform-domain data stays near the L2 cache size.
    fn rows_per_block(&self) -> usize {
        // Every block streams all 36 weight matrices once, so wide blocks pay where those are
        // big; up to 128 × 128 channels they are small (≤ 1.2 MB in bf16) and the activations
        // of a wide block (V and M: 36 · t · (cin + cout) floats) crowd the L2 instead.
        // VGG16 at 224 px, bf16, forward + input gradient: 64 → 128 at 112 px 4.3 → 3.9 ms,
        // 128 → 128 at 112 px 6.7 → 6.5 ms. 128 → 256 at 56 px was faster alone with 16-tile
        // blocks, but slower inside a step (2.5 → 3.3 ms), where its 2.4 MB of weights come
        // from memory rather than cache for each of the blocks.
        let target_tiles: usize = if self.cin * self.cout <= 128 * 128 {
            16
        } else {
            64
        };
        let tw = self.tw();
        let least = target_tiles.div_ceil(tw);
        // The GEMMs' columns are tiles, 16 to a vector: a block of 84 or 70 tiles computes 96
        // or 80. Up to twice the target, take the first row count that fills whole vectors.
        let rows = (least..=2 * least)
            .find(|r| (r * tw).is_multiple_of(16) && r * tw <= 2 * target_tiles)
            .unwrap_or(least);
        rows.clamp(1, self.units())
    }
    /// Tile-row ranges: as many blocks as `rows_per_block` asks for, to the nearest whole
    /// number, in near-equal parts. Every block streams all the transform-domain weights, so a
    /// short remainder block costs a full pass over them: VGG16's 512-channel layers at the
    /// render loop's sizes (a 544-px input: 17 or 9 tile rows per plane) took 1.5 and 1.7 times
    /// their time at 512 px for 13 % more pixels, with blocks of 4 + 4 + 4 + 4 + 1 and 8 + 1
    /// tile rows.
    fn blocks(&self) -> Vec<(usize, usize)> {
        let rows = self.rows_per_block();
        let units = self.units();
        if units.is_multiple_of(rows) {
            return (0..units / rows)
                .map(|b| (b * rows, (b + 1) * rows))
                .collect();
        }
        let count = ((units + rows / 2) / rows).max(1);
        (0..count)
            .map(|b| (b * units / count, (b + 1) * units / count))
            .collect()
    }
}

/// Per-thread scratch: the transform-domain input and output of one block.
#[derive(Default)]
struct Scratch {
    v: Aligned<f32>,
    m: Aligned<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `f(i)` for every i in 0..n, spread over the thread pool or on this thread.
fn each(n: usize, par: bool, f: impl Fn(usize) + Send + Sync) {
    if par {
        (0..n).into_par_iter().for_each(f);
    } else {
        (0..n).for_each(f);
    }
}

/// Runs the blocks one after another on this thread, with its scratch buffers; each block then
/// spreads its own work over the pool (`par` = true), for when there are too few blocks to share.
fn blocks_in_turn(blocks: &[(usize, usize)], run: impl Fn((usize, usize), &mut Scratch, bool)) {
    let mut s = Scratch::default();
    SCRATCH.with(|tl| std::mem::swap(&mut s, &mut tl.borrow_mut()));
    for &b in blocks {
        run(b, &mut s, true);
    }
    SCRATCH.with(|tl| std::mem::swap(&mut s, &mut tl.borrow_mut()));
}

/// Floats from the start of one ξ slab of a block's V or M (`rows × t`) to the next: one
/// cache line more than the slab. With `t` a multiple of 16, slabs of 64 or more rows are
/// whole multiples of 4 KiB apart, and the transforms' 36 streams (one per ξ) all fell into
/// the same L1 sets.
pub(super) fn slab(rows: usize, t: usize) -> usize {
    rows * t + 16
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}
impl Ptr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// ---- 1-D transforms -------------------------------------------------------------------------
//
// Interpolation points 0, 1, −1, 1/2, −2 and ∞ rather than the usual 0, ±1, ±2, ∞: in float32
// they give about half the mean and a third of the worst-case error (measured on random 64-
// channel tiles), which keeps VGG16's activations and gradients within the PyTorch parity
// tolerances where ±2 flipped a ReLU that lay within ~1e-6 of zero.

/// Bᵀ·d for one 6-vector.
#[inline(always)]
pub(super) fn bt6<T: Arith>(d: [T; 6]) -> [T; 6] {
    let (d31, d42) = (d[3] - d[1], d[4] - d[2]);
    [
        (d[0] - d[2] * 2.0 + d[4]) + d31 * 1.5,
        (d[4] - d[1]) + d[2] * 0.5 + d[3] * 2.5,
        (d[4] + d[1]) - d[2] * 2.5 + d[3] * 0.5,
        d42 + d31 * 2.0,
        d42 - d31 * 0.5,
        (d[1] - d[3] * 2.0 + d[5]) + d42 * 1.5,
    ]
}

/// B·v (the adjoint of `bt6`).
#[inline(always)]
pub(super) fn b6<T: Arith>(v: [T; 6]) -> [T; 6] {
    [
        v[0],
        v[0] * -1.5 - v[1] + v[2] - v[3] * 2.0 + v[4] * 0.5 + v[5],
        v[0] * -2.0 + v[1] * 0.5 - v[2] * 2.5 - v[3] - v[4] - v[5] * 1.5,
        v[0] * 1.5 + v[1] * 2.5 + v[2] * 0.5 + v[3] * 2.0 - v[4] * 0.5 - v[5] * 2.0,
        v[0] + v[1] + v[2] + v[3] + v[4] + v[5] * 1.5,
        v[5],
    ]
}

/// Aᵀ·m: 6 transform-domain values to 4 outputs.
#[inline(always)]
pub(super) fn at6<T: Arith>(m: [T; 6]) -> [T; 4] {
    let (p, q) = (m[1] + m[2], m[1] - m[2]);
    [
        m[0] + p + m[3] + m[4],
        q + m[3] * 0.5 - m[4] * 2.0,
        p + m[3] * 0.25 + m[4] * 4.0,
        q + m[3] * 0.125 - m[4] * 8.0 + m[5],
    ]
}

/// A·y (the adjoint of `at6`): 4 output gradients to 6 transform-domain values.
#[inline(always)]
pub(super) fn a4<T: Arith>(y: [T; 4]) -> [T; 6] {
    let (e, f) = (y[0] + y[2], y[1] + y[3]);
    [
        y[0],
        e + f,
        e - f,
        y[0] + y[1] * 0.5 + y[2] * 0.25 + y[3] * 0.125,
        y[0] - y[1] * 2.0 + y[2] * 4.0 - y[3] * 8.0,
        y[3],
    ]
}

// ---- drivers ---------------------------------------------------------------------------------

/// The 36 transform-domain GEMMs of one block: dst[ξ] = op(U[ξ]) · src[ξ], where op is the
/// identity (forward: [cout × cin]·[cin × t]) or the transpose (backward). Columns from `nt`
/// (the block's tiles) up to `t` are padding: computed by the float32 kernels (whose tiles
/// are 16 columns wide anyway), skipped by bf16's, which has a kernel for 1 to 4 columns.
#[allow(clippy::too_many_arguments)]
fn block_gemms(
    w: &WinogradWeights,
    src: &[f32],
    dst: &mut [f32],
    nt: usize,
    t: usize,
    transpose: bool,
    par: bool,
    prec: Precision,
) {
    let (cout, cin) = (w.cout, w.cin);
    let (m, k) = if transpose { (cin, cout) } else { (cout, cin) };
    let plane = cout * cin;
    let dst_ptr = Ptr(dst.as_mut_ptr());
    if prec == Precision::Bf16 {
        let packed = w.bf16();
        let packed = if transpose {
            &packed.backward
        } else {
            &packed.forward
        };
        let one = |xi: usize| {
            let rhs = MatRef {
                ptr: src[xi * slab(k, t)..].as_ptr(),
                rs: t as isize,
                cs: 1,
            };
            // SAFETY: as below.
            let out = MatMut {
                ptr: unsafe { dst_ptr.get().add(xi * slab(m, t)) },
                rs: t as isize,
                cs: 1,
            };
            unsafe { bf16::matmul(&packed[xi], nt, rhs, out, false, false, Epilogue::NONE) };
        };
        each(XI, par, one);
        return;
    }
    // op(U[ξ]) row-major: U itself forward, its stored transpose backward.
    let (a, lda) = if transpose {
        (w.transposed(), cout)
    } else {
        (&w.u[..], cin)
    };
    // `gemm` packs the weights before use, which pays only where big weights (512 × 512: 1 MiB
    // per ξ, more than L2) meet full blocks: they are streamed again for every block, and
    // `gemm` reads them in sequence where `sgemm` reads six strided rows at once (VGG16 at
    // 512 px, batch 8: 2578 ms per step with `gemm` there, 2751 ms with `sgemm` everywhere).
    // Smaller weights stay in cache, and short blocks (deep layers at 224 px: 16 or 49 tiles)
    // leave too little work to amortize the packing (features.28 at 224 px: 68 → 62 ms).
    #[cfg(target_arch = "x86_64")]
    if (m * k <= 256 * 256 || t < 64) && crate::simd::simd_level() == crate::simd::SimdLevel::Avx512
    {
        let one = |xi: usize| {
            // SAFETY: AVX-512 is what simd_level() reports; each ξ reads its own U plane and
            // src slab and writes its own [m × t] slab of dst, all inside their buffers.
            unsafe {
                crate::sgemm::sgemm(
                    m,
                    t,
                    k,
                    a[xi * plane..].as_ptr(),
                    lda,
                    src[xi * slab(k, t)..].as_ptr(),
                    t,
                    dst_ptr.get().add(xi * slab(m, t)),
                    t,
                )
            };
        };
        each(XI, par, one);
        return;
    }
    let one = |xi: usize| {
        let lhs = MatRef {
            ptr: a[xi * plane..].as_ptr(),
            rs: lda as isize,
            cs: 1,
        };
        let rhs = MatRef {
            ptr: src[xi * slab(k, t)..].as_ptr(),
            rs: t as isize,
            cs: 1,
        };
        // SAFETY: each ξ writes its own [m × t] slab of dst; all slabs lie inside dst.
        let out = MatMut {
            ptr: unsafe { dst_ptr.get().add(xi * slab(m, t)) },
            rs: t as isize,
            cs: 1,
        };
        unsafe { matmul(m, t, k, out, false, lhs, rhs, gemm::Parallelism::None) };
    };
    each(XI, par, one);
}

pub(crate) fn forward(
    g: &WinoGeom,
    w: &WinogradWeights,
    bias: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
    prec: Precision,
    relu: bool,
) {
    let blocks = g.blocks();
    let y_ptr = Ptr(y.as_mut_ptr());
    let run = |(u0, u1): (usize, usize), s: &mut Scratch, par: bool| {
        // Tile columns padded to the GEMM micro-kernel's 16 lanes; the extra columns hold stale
        // values that only ever reach extra columns of the product, which nobody reads.
        let t = ((u1 - u0) * g.tw()).next_multiple_of(16);
        s.v.grow(XI * slab(g.cin, t));
        s.m.grow(XI * slab(g.cout, t));
        let v_ptr = Ptr(s.v.as_mut_ptr());
        let in_t = |c: usize| wide::input_transform(g, x, u0, u1, c, v_ptr, t);
        each(g.cin, par, in_t);
        block_gemms(w, &s.v, &mut s.m, (u1 - u0) * g.tw(), t, false, par, prec);
        let m = &s.m[..];
        let out_t = |o: usize| {
            let b = bias.map_or(0.0, |b| b[o]);
            wide::output_transform(g, m, u0, u1, o, b, relu, y_ptr, t)
        };
        each(g.cout, par, out_t);
    };
    let threads = rayon::current_num_threads();
    if blocks.len() >= 2 * threads {
        blocks
            .par_iter()
            .for_each(|&b| SCRATCH.with(|s| run(b, &mut s.borrow_mut(), false)));
    } else {
        blocks_in_turn(&blocks, run);
    }
}

/// dx = the input gradient for the output gradient dy (dx's old contents are ignored), or
/// with `relu_out` (the output of a ReLU after this convolution) for dy masked to where that
/// output is positive.
pub(crate) fn backward(
    g: &WinoGeom,
    w: &WinogradWeights,
    dy: &[f32],
    relu_out: Option<&[f32]>,
    dx: &mut [f32],
    prec: Precision,
) {
    let blocks = g.blocks();
    let dx_ptr = Ptr(dx.as_mut_ptr());
    let run = |(u0, u1): (usize, usize), s: &mut Scratch, par: bool, nb: wide::Neighbours| {
        // Tile columns padded to the GEMM micro-kernel's 16 lanes; the extra columns hold stale
        // values that only ever reach extra columns of the product, which nobody reads.
        let t = ((u1 - u0) * g.tw()).next_multiple_of(16);
        s.m.grow(XI * slab(g.cout, t));
        s.v.grow(XI * slab(g.cin, t));
        let m_ptr = Ptr(s.m.as_mut_ptr());
        let in_t = |o: usize| wide::grad_input_transform(g, dy, relu_out, u0, u1, o, m_ptr, t);
        each(g.cout, par, in_t);
        block_gemms(w, &s.m, &mut s.v, (u1 - u0) * g.tw(), t, true, par, prec);
        let v = &s.v[..];
        let out_t = |c: usize| wide::grad_output_transform(g, v, u0, u1, c, dx_ptr, t, nb);
        each(g.cin, par, out_t);
    };
    let threads = rayon::current_num_threads();
    if blocks.len() >= 2 * threads {
        // Neighbouring blocks scatter into two shared input rows; blocks two apart never meet.
        // The even blocks run first, so they write those rows and the odd blocks add to them.
        for phase in 0..2 {
            let nb = wide::Neighbours {
                before_done: phase == 1,
                after_done: phase == 1,
            };
            blocks
                .par_iter()
                .skip(phase)
                .step_by(2)
                .for_each(|&b| SCRATCH.with(|s| run(b, &mut s.borrow_mut(), false, nb)));
        }
    } else {
        let nb = wide::Neighbours {
            before_done: true,
            after_done: false,
        };
        blocks_in_turn(&blocks, |b, s, par| run(b, s, par, nb));
    }
}

#[cfg(test)]
mod tests {
    use super::WinoGeom;

    /// Blocks cover every tile row once, in order, near-equal in size, as many as the
    /// preferred block size asks for to the nearest whole number.
    #[test]
    fn blocks_split_the_tile_rows_evenly() {
        for (n, cin, oh, ow) in [
            (2, 136, 34, 68),
            (1, 512, 34, 34),
            (1, 512, 68, 68),
            (1, 64, 224, 224),
            (3, 16, 9, 11),
        ] {
            let g = WinoGeom {
                n,
                cin,
                cout: cin,
                h: oh,
                w: ow,
                oh,
                ow,
                pt: 1,
                pl: 1,
            };
            let blocks = g.blocks();
            assert_eq!(blocks.first().unwrap().0, 0);
            assert_eq!(blocks.last().unwrap().1, g.units());
            assert!(blocks.windows(2).all(|w| w[0].1 == w[1].0));
            let sizes: Vec<usize> = blocks.iter().map(|(a, b)| b - a).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(*lo > 0 && hi - lo <= 1, "{sizes:?}");
            let rows = g.rows_per_block() as f64;
            assert!(
                (blocks.len() as f64 - g.units() as f64 / rows).abs() <= 0.5 + 1e-9,
                "{sizes:?}"
            );
        }
    }
}
