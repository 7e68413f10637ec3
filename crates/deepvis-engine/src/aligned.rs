//! Growable buffers of 4-byte plain values that start on a 64-byte cache line.
//!
//! The GEMM kernels' operands and results are laid out so that every panel, tile and row
//! starts on a cache line, which only holds if the buffer does: malloc's blocks start 16 bytes
//! into one. AMX tile rows that straddle two lines load six times slower (measured: 45 against
//! 7 cycles per 1 KB tile), and so do AVX-512 loads, about twice.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// Types whose every bit pattern, zeros included, is a valid value of 4 bytes.
pub(crate) trait Plain: Copy + 'static {}
impl Plain for u32 {}
impl Plain for f32 {}

pub(crate) struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> Default for Aligned<T> {
    fn default() -> Self {
        Aligned {
            lines: Vec::new(),
            len: 0,
            _t: PhantomData,
        }
    }
}

impl<T: Plain> Aligned<T> {
    const PER_LINE: usize = 64 / std::mem::size_of::<T>();

    pub fn zeros(len: usize) -> Self {
        let mut v = Aligned::default();
        v.resize(len);
        v
    }

    /// Sets the length; elements past the old length are zero, those below it keep their
    /// values.
    pub fn resize(&mut self, len: usize) {
        let tail = self.len % Self::PER_LINE;
        if len > self.len && tail != 0 {
            // The last line's elements past the length may hold values from a longer use.
            if let Some(last) = self.lines.last_mut() {
                last.0[tail * std::mem::size_of::<T>() / 4..].fill(0);
            }
        }
        self.lines
            .resize(len.div_ceil(Self::PER_LINE), Line([0; 16]));
        self.len = len;
    }

    /// Grows to at least `len` elements.
    pub fn grow(&mut self, len: usize) {
        if self.len < len {
            self.resize(len);
        }
    }
}

impl<T: Plain> Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds at least `len` elements of T (4-byte plain values, all bit
        // patterns valid), contiguous and aligned for T.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Plain> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as `deref`, borrowed uniquely.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_zero_fills_growth() {
        let mut v = Aligned::<f32>::zeros(5);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        v.iter_mut().for_each(|x| *x = 1.0);
        v.resize(3);
        v.resize(40);
        assert_eq!(&v[..3], &[1.0; 3]);
        assert!(v[3..].iter().all(|&x| x == 0.0));
        assert_eq!(v.as_ptr() as usize % 64, 0);
    }
}
