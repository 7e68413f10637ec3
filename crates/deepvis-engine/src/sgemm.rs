//! float32 GEMM for the Winograd transform-domain products on AVX-512, reading both operands
//! where they lie.
//!
//! Why our own: in those products the left matrix (a transformed weight matrix, up to 512×512)
//! meets only the one block of 64 tiles on the right, so each of its elements is used once per
//! call. `gemm` packs it first all the same — reading it, writing a copy and reading that. Here
//! the kernel broadcasts the left matrix's elements straight from its rows, prefetching the
//! next group of rows, and streams the right matrix's rows (tile-contiguous, the transforms'
//! layout) from L1 and L2. The register tile is `gemm`'s own: 6 rows by 4 vectors of 16
//! columns, 24 accumulators, each kept over the whole depth. Measured on VGG16 at 512 px:
//! features.28 278 → 265 ms per step, features.5 68.6 → 66.9 ms; alone, on 64- to 128-channel
//! products with the weights in cache, 260 against `gemm`'s 230–250 GFLOP/s. Weights too big
//! for L2 against full blocks still go to `gemm` (`winograd::block_gemms` says why).

/// Rows of C per kernel call.
const MR: usize = 6;
/// Columns of C per kernel call: four 16-lane vectors.
const NC: usize = 64;
/// Depth per pass. Up to 1024 the kernel runs the whole depth with its accumulators in
/// registers (a 1024 × 64 panel of the right matrix is 256 KiB, well inside L2); cutting the
/// depth into L1-sized passes of 128 or 256 was 2–7 % slower on 512 × 512 weights, whose rows
/// then arrive in short strided pieces.
const KC: usize = 1024;

/// C[m × n] = A[m × k] · B[k × n], all row-major with leading dimensions `lda`, `ldb`, `ldc`.
///
/// # Safety
/// The CPU must have AVX-512F; each pointer with its leading dimension must address a valid
/// matrix of the given size, and C must not overlap A or B.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    if k == 0 {
        for i in 0..m {
            std::ptr::write_bytes(c.add(i * ldc), 0, n);
        }
        return;
    }
    for kb in (0..k).step_by(KC) {
        let kc = KC.min(k - kb);
        let load_c = kb > 0;
        for j0 in (0..n).step_by(NC) {
            let cols = NC.min(n - j0);
            let nv = cols.div_ceil(16);
            let tail = cols - 16 * (nv - 1);
            let mask: u16 = if tail == 16 { !0 } else { (1u16 << tail) - 1 };
            let bp = b.add(kb * ldb + j0);
            for i0 in (0..m).step_by(MR) {
                let rows = MR.min(m - i0);
                let ap = a.add(i0 * lda + kb);
                let cp = c.add(i0 * ldc + j0);
                macro_rules! call {
                    ($($r:literal, $v:literal);*) => {
                        match (rows, nv) {
                            $(($r, $v) => kernel::<$r, $v>(kc, ap, lda, bp, ldb, cp, ldc, mask, load_c),)*
                            _ => unreachable!("rows ≤ {MR}, vectors ≤ 4"),
                        }
                    };
                }
                call!(6, 4; 6, 3; 6, 2; 6, 1;
                      5, 4; 5, 3; 5, 2; 5, 1;
                      4, 4; 4, 3; 4, 2; 4, 1;
                      3, 4; 3, 3; 3, 2; 3, 1;
                      2, 4; 2, 3; 2, 2; 2, 1;
                      1, 4; 1, 3; 1, 2; 1, 1);
            }
        }
    }
}

/// C[R × 16·NV] (+)= A[R × kc] · B[kc × 16·NV]; the last vector of columns is masked by `mask`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
// Indexed loops over the const bounds: LLVM unrolls them into the 24 named registers.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn kernel<const R: usize, const NV: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mask: u16,
    load_c: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    let mut bp = b;
    let mut ap = a;
    for kk in 0..kc {
        // One line of each row of the next group per 16 steps: its rows arrive in time, where
        // the hardware's prefetcher alone fell behind on six strided streams (188 against 223
        // GFLOP/s with 36 planes of 512 × 512 weights out of cache).
        if kk % 16 == 0 {
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add((R + r) * lda) as *const i8);
            }
        }
        let mut bv = [_mm512_setzero_ps(); NV];
        for v in 0..NV {
            bv[v] = if v + 1 == NV {
                _mm512_maskz_loadu_ps(mask, bp.add(16 * v))
            } else {
                _mm512_loadu_ps(bp.add(16 * v))
            };
        }
        for r in 0..R {
            let av = _mm512_set1_ps(*ap.add(r * lda));
            for v in 0..NV {
                acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
            }
        }
        bp = bp.add(ldb);
        ap = ap.add(1);
    }
    for r in 0..R {
        for v in 0..NV {
            let dst = c.add(r * ldc + 16 * v);
            let m = if v + 1 == NV { mask } else { !0 };
            let mut val = acc[r][v];
            if load_c {
                val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(m, dst));
            }
            _mm512_mask_storeu_ps(dst, m, val);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::test_lcg as lcg;

    /// Against a float64 triple loop, over shapes with every row and column remainder, depths
    /// across the KC boundary, and leading dimensions wider than the matrices.
    #[test]
    fn matches_a_float64_reference() {
        if !is_x86_feature_detected!("avx512f") || !is_x86_feature_detected!("fma") {
            eprintln!("skipped: no AVX-512F");
            return;
        }
        let mut seed = 3;
        for &(m, n, k) in &[
            (6, 64, 128),
            (512, 64, 512),
            (13, 50, 129),
            (1, 1, 1),
            (5, 17, 300),
            (64, 130, 64),
            (7, 16, 0),
            (20, 33, 257),
            (7, 20, 1030),
        ] {
            let (lda, ldb, ldc) = (k + 3, n + 16, n + 5);
            let a: Vec<f32> = (0..m * lda).map(|_| lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..k.max(1) * ldb).map(|_| lcg(&mut seed)).collect();
            let mut c: Vec<f32> = (0..m * ldc).map(|_| lcg(&mut seed)).collect();
            let before = c.clone();
            unsafe {
                sgemm(
                    m,
                    n,
                    k,
                    a.as_ptr(),
                    lda,
                    b.as_ptr(),
                    ldb,
                    c.as_mut_ptr(),
                    ldc,
                )
            };
            for i in 0..m {
                for j in 0..ldc {
                    let got = c[i * ldc + j];
                    if j >= n {
                        assert_eq!(
                            got,
                            before[i * ldc + j],
                            "({m},{n},{k}) wrote past column {n}"
                        );
                        continue;
                    }
                    let want: f64 = (0..k)
                        .map(|p| a[i * lda + p] as f64 * b[p * ldb + j] as f64)
                        .sum();
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * (1.0 + (k as f64).sqrt()),
                        "({m},{n},{k}) at ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
