//! Sixteen float32 lanes as one value, for kernels that keep a block of work in registers.
//!
//! The compiler vectorizes plain loops well, but not the stride-4 shuffles that move 4×4
//! Winograd tiles in and out of image rows: written as loops they became dozens of scalar
//! inserts. So the shuffles are explicit here: AVX-512 permutes in [`Zmm`], and loops over
//! arrays in [`Lanes16`] (the AVX2 and portable builds, and the reference for the tests that
//! force those levels).

use std::ops::{Add, Mul, Sub};

/// What the 1-D Winograd transforms need (`a + b`, `a - b`, `a * 2.0`): written once for `f32`
/// and for every lane type.
pub(crate) trait Arith:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f32, Output = Self>
{
}

impl<T> Arith for T where T: Copy + Add<Output = T> + Sub<Output = T> + Mul<f32, Output = T> {}

/// The operations the register-blocked kernels use besides arithmetic.
pub(crate) trait Lanes: Arith {
    fn zero() -> Self;
    fn splat(v: f32) -> Self;
    fn max(self, other: Self) -> Self;
    /// `self` where `y > 0` (or is NaN), zero where `y ≤ 0`: the ReLU's backward pass, with
    /// `y` its output (as `relu_backward`).
    fn where_positive(self, y: Self) -> Self;
    /// # Safety
    /// `p` is valid for reading 16 floats.
    unsafe fn load(p: *const f32) -> Self;
    /// The first `n` (≤ 16) lanes from `p`, zeros beyond.
    /// # Safety
    /// `p` is valid for reading `n` floats.
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        Self::load_range(p, 0, n)
    }
    /// Lanes `lo..hi` (⊆ 0..16) from `p + lane`, zeros elsewhere.
    /// # Safety
    /// `p + lo .. p + hi` is valid for reading; `p` itself may point outside the allocation
    /// (no other lane is touched).
    unsafe fn load_range(p: *const f32, lo: usize, hi: usize) -> Self;
    /// Writes lanes `lo..hi` (⊆ 0..16) to `p + lane`.
    /// # Safety
    /// `p + lo .. p + hi` is valid for writing; `p` itself may point outside the allocation.
    unsafe fn store_range(self, p: *mut f32, lo: usize, hi: usize);
    /// # Safety
    /// `p` is valid for writing 16 floats.
    unsafe fn store(self, p: *mut f32);
    /// Writes the first `n` (≤ 16) lanes.
    /// # Safety
    /// `p` is valid for writing `n` floats.
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        self.store_range(p, 0, n)
    }
    /// From 64 consecutive floats `a` (four vectors), lanes `c[k][l] = a[4l + k]`.
    fn deinterleave4(a: [Self; 4]) -> [Self; 4];
    /// The inverse of `deinterleave4`.
    fn interleave4(c: [Self; 4]) -> [Self; 4];
    /// `[carry, v0, …, v14]`.
    fn shift_up(self, carry: f32) -> Self;
    /// `[v1, …, v15, fill]`.
    fn shift_down(self, fill: f32) -> Self;
    fn lane(self, i: usize) -> f32;
}

/// Portable lanes: loops over an array, vectorized by the compiler for the target it builds.
#[derive(Clone, Copy)]
pub(crate) struct Lanes16([f32; 16]);

impl Add for Lanes16 {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        let mut v = self.0;
        for (a, b) in v.iter_mut().zip(o.0) {
            *a += b;
        }
        Lanes16(v)
    }
}

impl Sub for Lanes16 {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        let mut v = self.0;
        for (a, b) in v.iter_mut().zip(o.0) {
            *a -= b;
        }
        Lanes16(v)
    }
}

impl Mul<f32> for Lanes16 {
    type Output = Self;
    #[inline(always)]
    fn mul(self, c: f32) -> Self {
        let mut v = self.0;
        for a in v.iter_mut() {
            *a *= c;
        }
        Lanes16(v)
    }
}

impl Lanes for Lanes16 {
    #[inline(always)]
    fn zero() -> Self {
        Lanes16([0.0; 16])
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Lanes16([v; 16])
    }
    #[inline(always)]
    fn where_positive(self, y: Self) -> Self {
        let mut v = self.0;
        for (a, b) in v.iter_mut().zip(y.0) {
            if b <= 0.0 {
                *a = 0.0;
            }
        }
        Lanes16(v)
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        let mut v = self.0;
        for (a, b) in v.iter_mut().zip(o.0) {
            *a = a.max(b);
        }
        Lanes16(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Lanes16(std::ptr::read_unaligned(p as *const [f32; 16]))
    }
    #[inline(always)]
    unsafe fn load_range(p: *const f32, lo: usize, hi: usize) -> Self {
        let mut v = [0.0; 16];
        for (i, d) in v.iter_mut().enumerate().take(hi.min(16)).skip(lo) {
            *d = *p.wrapping_add(i);
        }
        Lanes16(v)
    }
    #[inline(always)]
    unsafe fn store_range(self, p: *mut f32, lo: usize, hi: usize) {
        for (i, &v) in self.0.iter().enumerate().take(hi.min(16)).skip(lo) {
            *p.wrapping_add(i) = v;
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 16], self.0)
    }
    #[inline(always)]
    fn deinterleave4(a: [Self; 4]) -> [Self; 4] {
        let mut c = [Lanes16([0.0; 16]); 4];
        for i in 0..64 {
            c[i % 4].0[i / 4] = a[i / 16].0[i % 16];
        }
        c
    }
    #[inline(always)]
    fn interleave4(c: [Self; 4]) -> [Self; 4] {
        let mut a = [Lanes16([0.0; 16]); 4];
        for i in 0..64 {
            a[i / 16].0[i % 16] = c[i % 4].0[i / 4];
        }
        a
    }
    #[inline(always)]
    fn shift_up(self, carry: f32) -> Self {
        let mut v = [carry; 16];
        v[1..].copy_from_slice(&self.0[..15]);
        Lanes16(v)
    }
    #[inline(always)]
    fn shift_down(self, fill: f32) -> Self {
        let mut v = [fill; 16];
        v[..15].copy_from_slice(&self.0[1..]);
        Lanes16(v)
    }
    #[inline(always)]
    fn lane(self, i: usize) -> f32 {
        self.0[i]
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Zmm;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! Every method here runs AVX-512F instructions. The type is only ever instantiated inside
    //! functions compiled with `#[target_feature(enable = "avx512f", …)]` and called after
    //! `simd_level()` reported AVX-512, which is what makes the `unsafe` blocks sound; the
    //! methods are `#[inline(always)]` so that they inline into those functions.
    use super::Lanes;
    use std::arch::x86_64::*;
    use std::ops::{Add, Mul, Sub};

    #[derive(Clone, Copy)]
    pub(crate) struct Zmm(__m512);

    impl Add for Zmm {
        type Output = Self;
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Zmm(unsafe { _mm512_add_ps(self.0, o.0) })
        }
    }

    impl Sub for Zmm {
        type Output = Self;
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Zmm(unsafe { _mm512_sub_ps(self.0, o.0) })
        }
    }

    impl Mul<f32> for Zmm {
        type Output = Self;
        #[inline(always)]
        fn mul(self, c: f32) -> Self {
            Zmm(unsafe { _mm512_mul_ps(self.0, _mm512_set1_ps(c)) })
        }
    }

    use crate::simd::lanes as mask;

    /// Lanes lo..hi.
    #[inline(always)]
    fn range_mask(lo: usize, hi: usize) -> __mmask16 {
        mask(hi) & !mask(lo)
    }

    #[inline(always)]
    fn idx(v: [i32; 16]) -> __m512i {
        // SAFETY: an unaligned load of 16 integers from an array of 16.
        unsafe { _mm512_loadu_si512(v.as_ptr() as *const _) }
    }

    /// Permute indices joining the low (`lo`) or the high (`hi`) 8 lanes of two vectors.
    #[inline(always)]
    fn halves() -> (__m512i, __m512i) {
        (
            idx([0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]),
            idx([8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31]),
        )
    }

    impl Lanes for Zmm {
        #[inline(always)]
        fn zero() -> Self {
            Zmm(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            Zmm(unsafe { _mm512_set1_ps(v) })
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            Zmm(unsafe { _mm512_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn where_positive(self, y: Self) -> Self {
            // "Not less or equal", unordered: true for NaN, as `relu_backward` keeps it.
            unsafe {
                let keep = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(y.0, _mm512_setzero_ps());
                Zmm(_mm512_maskz_mov_ps(keep, self.0))
            }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Zmm(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_range(p: *const f32, lo: usize, hi: usize) -> Self {
            // Masked-off lanes are not accessed (AVX-512 suppresses their faults).
            Zmm(_mm512_maskz_loadu_ps(range_mask(lo, hi), p))
        }
        #[inline(always)]
        unsafe fn store_range(self, p: *mut f32, lo: usize, hi: usize) {
            _mm512_mask_storeu_ps(p, range_mask(lo, hi), self.0)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        fn deinterleave4(a: [Self; 4]) -> [Self; 4] {
            // Two rounds of two-source permutes: first (k = 0, 1) and (k = 2, 3) of 8 lanes
            // each, then the halves of lanes 0–7 and 8–15 joined.
            let k01 = idx([0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29]);
            let k23 = idx([2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31]);
            let (lo, hi) = halves();
            unsafe {
                let b0 = _mm512_permutex2var_ps(a[0].0, k01, a[1].0);
                let b1 = _mm512_permutex2var_ps(a[0].0, k23, a[1].0);
                let b2 = _mm512_permutex2var_ps(a[2].0, k01, a[3].0);
                let b3 = _mm512_permutex2var_ps(a[2].0, k23, a[3].0);
                [
                    Zmm(_mm512_permutex2var_ps(b0, lo, b2)),
                    Zmm(_mm512_permutex2var_ps(b0, hi, b2)),
                    Zmm(_mm512_permutex2var_ps(b1, lo, b3)),
                    Zmm(_mm512_permutex2var_ps(b1, hi, b3)),
                ]
            }
        }
        #[inline(always)]
        fn interleave4(c: [Self; 4]) -> [Self; 4] {
            let (lo, hi) = halves();
            // b0 = [c0 0–7 | c1 0–7], b1 = [c2 0–7 | c3 0–7]; lane l of the output quad q
            // gathers (c0, c1, c2, c3)[l] at 8·(k mod 2) + l of b(k / 2).
            let q0 = idx([0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27]);
            let q1 = idx([4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31]);
            unsafe {
                let b0 = _mm512_permutex2var_ps(c[0].0, lo, c[1].0);
                let b1 = _mm512_permutex2var_ps(c[2].0, lo, c[3].0);
                let b2 = _mm512_permutex2var_ps(c[0].0, hi, c[1].0);
                let b3 = _mm512_permutex2var_ps(c[2].0, hi, c[3].0);
                [
                    Zmm(_mm512_permutex2var_ps(b0, q0, b1)),
                    Zmm(_mm512_permutex2var_ps(b0, q1, b1)),
                    Zmm(_mm512_permutex2var_ps(b2, q0, b3)),
                    Zmm(_mm512_permutex2var_ps(b2, q1, b3)),
                ]
            }
        }
        #[inline(always)]
        fn shift_up(self, carry: f32) -> Self {
            unsafe {
                let c = _mm512_castps_si512(_mm512_set1_ps(carry));
                let v = _mm512_castps_si512(self.0);
                Zmm(_mm512_castsi512_ps(_mm512_alignr_epi32::<15>(v, c)))
            }
        }
        #[inline(always)]
        fn shift_down(self, fill: f32) -> Self {
            unsafe {
                let f = _mm512_castps_si512(_mm512_set1_ps(fill));
                let v = _mm512_castps_si512(self.0);
                Zmm(_mm512_castsi512_ps(_mm512_alignr_epi32::<1>(f, v)))
            }
        }
        #[inline(always)]
        fn lane(self, i: usize) -> f32 {
            let mut a = [0f32; 16];
            unsafe { _mm512_storeu_ps(a.as_mut_ptr(), self.0) };
            a[i]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(base: f32) -> [Lanes16; 4] {
        std::array::from_fn(|q| Lanes16(std::array::from_fn(|i| base + (16 * q + i) as f32)))
    }

    #[test]
    fn portable_shuffles_move_the_lanes_they_name() {
        let c = Lanes16::deinterleave4(iota(0.0));
        for k in 0..4 {
            for l in 0..16 {
                assert_eq!(c[k].0[l], (4 * l + k) as f32);
            }
        }
        let back = Lanes16::interleave4(c);
        for q in 0..4 {
            for i in 0..16 {
                assert_eq!(back[q].0[i], (16 * q + i) as f32);
            }
        }
        let up = c[0].shift_up(-1.0);
        let down = c[0].shift_down(-2.0);
        assert_eq!((up.0[0], up.0[1], up.0[15]), (-1.0, 0.0, 56.0));
        assert_eq!((down.0[0], down.0[14], down.0[15]), (4.0, 60.0, -2.0));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_shuffles_match_the_portable_ones() {
        if crate::simd::detected_simd() < crate::simd::SimdLevel::Avx512 {
            return;
        }
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
        unsafe fn check() {
            let flat: Vec<f32> = (0..80).map(|i| (i * 7 % 23) as f32 - 3.5).collect();
            let p: [Lanes16; 4] = std::array::from_fn(|q| Lanes16::load(flat[16 * q..].as_ptr()));
            let z: [Zmm; 4] = std::array::from_fn(|q| Zmm::load(flat[16 * q..].as_ptr()));
            let same = |a: Zmm, b: Lanes16, what: &str| {
                let mut v = [0f32; 16];
                a.store(v.as_mut_ptr());
                assert_eq!(v, b.0, "{what}");
            };
            let (pc, zc) = (Lanes16::deinterleave4(p), Zmm::deinterleave4(z));
            for k in 0..4 {
                same(zc[k], pc[k], "deinterleave4");
            }
            let (pi, zi) = (Lanes16::interleave4(pc), Zmm::interleave4(zc));
            for q in 0..4 {
                same(zi[q], pi[q], "interleave4");
            }
            same(z[1].shift_up(9.0), p[1].shift_up(9.0), "shift_up");
            same(z[2].shift_down(8.0), p[2].shift_down(8.0), "shift_down");
            for n in [0, 1, 7, 16] {
                same(
                    Zmm::load_first(flat.as_ptr(), n),
                    Lanes16::load_first(flat.as_ptr(), n),
                    "load_first",
                );
                let mut a = [1f32; 16];
                let mut b = [1f32; 16];
                z[3].store_first(a.as_mut_ptr(), n);
                p[3].store_first(b.as_mut_ptr(), n);
                assert_eq!(a, b, "store_first {n}");
            }
            for (lo, hi) in [(0, 16), (1, 16), (3, 9), (0, 2), (5, 5)] {
                let src = flat[16..].as_ptr();
                same(
                    Zmm::load_range(src, lo, hi),
                    Lanes16::load_range(src, lo, hi),
                    "load_range",
                );
                let mut a = [1f32; 16];
                let mut b = [1f32; 16];
                z[2].store_range(a.as_mut_ptr(), lo, hi);
                p[2].store_range(b.as_mut_ptr(), lo, hi);
                assert_eq!(a, b, "store_range {lo}..{hi}");
            }
            assert_eq!(z[0].lane(5), p[0].lane(5));
            same(
                z[0].max(z[1]) - z[2] * 2.0 + z[3],
                p[0].max(p[1]) - p[2] * 2.0 + p[3],
                "ops",
            );
        }
        // SAFETY: checked above that the CPU has AVX-512.
        unsafe { check() }
    }
}
