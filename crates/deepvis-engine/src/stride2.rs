//! Every second element of a row, read into or added from a contiguous row: im2col and
//! col2im of stride-2 convolutions (ResNet's and GoogLeNet's stems, ResNet's downsampling
//! convolutions). LLVM leaves these loops scalar; with AVX-512 one shuffle deinterleaves 32
//! loaded floats, and masked loads and stores handle a row's last partial vector.

/// `dst[i] = src[2i]` for every `i < dst.len()`; `src.len() == 2·dst.len() − 1`.
pub(crate) fn gather(dst: &mut [f32], src: &[f32]) {
    assert_eq!(src.len() + 1, 2 * dst.len(), "stride-2 gather lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
        // SAFETY: the CPU has the features; the kernel masks every access to the slices.
        unsafe { avx512::gather(dst, src) };
        return;
    }
    for (i, d) in dst.iter_mut().enumerate() {
        *d = src[2 * i];
    }
}

/// `dst[2i] += src[i]` for every `i < src.len()`, the odd elements untouched;
/// `dst.len() == 2·src.len() − 1`.
pub(crate) fn scatter_add(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len() + 1, 2 * src.len(), "stride-2 scatter lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
        // SAFETY: as in `gather`.
        unsafe { avx512::scatter_add(dst, src) };
        return;
    }
    for (i, s) in src.iter().enumerate() {
        dst[2 * i] += *s;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::simd::lanes;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    pub(super) unsafe fn gather(dst: &mut [f32], src: &[f32]) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for o in (0..dst.len()).step_by(16) {
            let avail = src.len() - 2 * o;
            let a = _mm512_maskz_loadu_ps(lanes(avail), src.as_ptr().add(2 * o));
            // wrapping_add: past the end when no lane is read.
            let b = _mm512_maskz_loadu_ps(
                lanes(avail.saturating_sub(16)),
                src.as_ptr().wrapping_add(2 * o + 16),
            );
            let v = _mm512_permutex2var_ps(a, even, b);
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(o), lanes(dst.len() - o), v);
        }
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    pub(super) unsafe fn scatter_add(dst: &mut [f32], src: &[f32]) {
        // Even lanes of a 16-lane vector.
        const EVEN: __mmask16 = 0x5555;
        for o in (0..src.len()).step_by(8) {
            // Eight source values spread over the even lanes of 16 destination floats.
            let count = (src.len() - o).min(8);
            let s = _mm512_maskz_loadu_ps(lanes(count), src.as_ptr().add(o));
            let spread = _mm512_maskz_expand_ps(EVEN, s);
            let m = lanes(dst.len() - 2 * o);
            let d = _mm512_maskz_loadu_ps(m, dst.as_ptr().add(2 * o));
            // Only the even lanes are added: odd ones (another tap's) keep their bits.
            let sum = _mm512_mask_add_ps(d, EVEN, d, spread);
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(2 * o), m, sum);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Against the loops by their definition, at every length up to past two vectors, on
    /// whichever level this CPU runs (the portable loops where it has no AVX-512).
    #[test]
    fn stride2_gather_and_scatter_match_their_definition() {
        for n in 1..40usize {
            let src: Vec<f32> = (0..2 * n - 1).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut got = vec![f32::NAN; n];
            super::gather(&mut got, &src);
            let want: Vec<f32> = (0..n).map(|i| src[2 * i]).collect();
            assert_eq!(got, want, "gather, n = {n}");

            let add: Vec<f32> = (0..n).map(|i| i as f32 + 0.25).collect();
            let mut dst: Vec<f32> = (0..2 * n - 1).map(|i| -(i as f32)).collect();
            let mut want = dst.clone();
            for i in 0..n {
                want[2 * i] += add[i];
            }
            super::scatter_add(&mut dst, &add);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dst), bits(&want), "scatter_add, n = {n}");
        }
    }
}
