//! Strided copies shared by the data-movement ops (concat, slice, transpose, pad, reduce):
//! every one of them maps an output position to an input offset by per-axis strides.
//!
//! Work is split by element ranges rather than rows, so a copy made of one long row (a channel
//! concat at batch 1) still spreads over all threads.

use rayon::prelude::*;

/// Elements per parallel task: large enough that the hand-off is amortized.
const CHUNK: usize = 1 << 14;

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Calls `f(flat, offset, len)` for each maximal run of the range `[a, b)` of a row-major
/// walk over `shape` that stays within one row: `flat` is the run's first flat index, `offset`
/// is `base + Σ index·strides` at its first element, `len` its length (the last axis, of
/// stride `strides[rank-1]`, runs inside).
fn runs(
    shape: &[usize],
    base: isize,
    strides: &[isize],
    a: usize,
    b: usize,
    mut f: impl FnMut(usize, isize, usize),
) {
    let rank = shape.len();
    if rank == 0 {
        if a < b {
            f(a, base, 1);
        }
        return;
    }
    let row = shape[rank - 1];
    let mut at = a;
    while at < b {
        let (mut r, col) = (at / row, at % row);
        let mut off = base + col as isize * strides[rank - 1];
        for axis in (0..rank - 1).rev() {
            off += (r % shape[axis]) as isize * strides[axis];
            r /= shape[axis];
        }
        let len = (row - col).min(b - at);
        f(at, off, len);
        at += len;
    }
}

/// `dst[i] = src[base + Σ index(i)·strides]` for every position of `shape` (row-major in
/// `dst`). Strides may be negative or zero; the caller guarantees every offset is in `src`.
pub(crate) fn gather(
    shape: &[usize],
    src: &[f32],
    base: isize,
    strides: &[isize],
    dst: &mut [f32],
) {
    debug_assert_eq!(dst.len(), shape.iter().product::<usize>());
    let inner = strides.last().copied().unwrap_or(1);
    dst.par_chunks_mut(CHUNK).enumerate().for_each(|(k, d)| {
        let a = k * CHUNK;
        runs(shape, base, strides, a, a + d.len(), |flat, off, len| {
            let d = &mut d[flat - a..flat - a + len];
            if inner == 1 {
                let o = off as usize;
                d.copy_from_slice(&src[o..o + len]);
            } else {
                for (j, v) in d.iter_mut().enumerate() {
                    *v = src[(off + j as isize * inner) as usize];
                }
            }
        });
    });
}

/// A pointer into a buffer whose disjoint parts tasks write in parallel.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only used by `scatter`, whose offsets are distinct for distinct source positions.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Through a method, so that closures capture the whole `Shared` (which is `Sync`), not
    /// its raw-pointer field.
    ///
    /// # Safety
    /// `offset` must be within the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `dst[base + Σ index(i)·strides] = src[i]` for every position of `shape` (row-major in
/// `src`). The caller guarantees the map is injective (distinct positions, distinct offsets)
/// and every offset is in `dst`: that is what makes the parallel writes disjoint.
pub(crate) fn scatter(
    shape: &[usize],
    src: &[f32],
    base: isize,
    strides: &[isize],
    dst: &mut [f32],
) {
    debug_assert_eq!(src.len(), shape.iter().product::<usize>());
    let inner = strides.last().copied().unwrap_or(1);
    let n = dst.len();
    let out = Shared(dst.as_mut_ptr());
    src.par_chunks(CHUNK).enumerate().for_each(|(k, s)| {
        let a = k * CHUNK;
        runs(shape, base, strides, a, a + s.len(), |flat, off, len| {
            let s = &s[flat - a..flat - a + len];
            if inner == 1 {
                let o = off as usize;
                assert!(off >= 0 && o + len <= n, "scatter offset out of bounds");
                // SAFETY: in bounds (checked), and no other task writes these positions.
                unsafe { std::slice::from_raw_parts_mut(out.at(o), len) }.copy_from_slice(s);
                return;
            }
            for (j, &v) in s.iter().enumerate() {
                let o = off + j as isize * inner;
                assert!(o >= 0 && (o as usize) < n, "scatter offset out of bounds");
                // SAFETY: `o` is in bounds (checked) and no other position maps to it.
                unsafe { *out.at(o as usize) = v };
            }
        });
    });
}

/// `v *= s` over a large buffer.
pub(crate) fn scale(v: &mut [f32], s: f32) {
    v.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|x| *x *= s));
}
