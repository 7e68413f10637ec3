//! The float storage of tensors: it starts on a 64-byte cache line, and on Linux large blocks
//! are mapped directly so that growing one remaps its pages instead of copying them.
//!
//! A `Vec<f32>` from malloc starts 16 bytes into a cache line, and so does every row of a
//! tensor whose rows are a whole number of lines long (56 × 56 or 28 × 28 planes). The AMX
//! kernel stores its 16 × 16 result tiles straight into those rows, and a tile row that
//! straddles two lines stores six times slower; with aligned storage ResNet50's bf16 step to
//! `layer3` went 38 → 35 ms. `Layout` alignment alone cannot keep the other property the
//! buffer pool relies on: the system allocator's `realloc` copies over-aligned blocks into
//! fresh memory, while growing a mapping keeps the pages already faulted in (see `tensor.rs`).

use std::ptr::NonNull;

/// Blocks of at least this many bytes are mapped (Linux); smaller ones come from the heap.
const MAPPED_BYTES: usize = 128 * 1024;
const ALIGN: usize = 64;

/// A fixed-capacity run of initialized floats (every element up to the capacity holds a
/// value), of which the first `len` are in use.
pub(crate) struct Floats {
    ptr: NonNull<f32>,
    len: usize,
    cap: usize,
}

// SAFETY: `Floats` owns its block exclusively, like a `Vec<f32>`.
unsafe impl Send for Floats {}
unsafe impl Sync for Floats {}

impl Floats {
    pub fn new() -> Self {
        Floats {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut f = Floats::new();
        f.ptr = alloc_zeroed(len);
        f.len = len;
        f.cap = len;
        f
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the length to `len`, growing the block if needed. The elements' values are
    /// unspecified: those below the old length keep theirs (when the block grows in place),
    /// the others hold earlier values or zero.
    pub fn set_len(&mut self, len: usize) {
        if len > self.cap {
            self.ptr = grow(self.ptr, self.cap, len);
            self.cap = len;
        }
        self.len = len;
    }
}

impl Default for Floats {
    fn default() -> Self {
        Floats::new()
    }
}

impl Drop for Floats {
    fn drop(&mut self) {
        free(self.ptr, self.cap);
    }
}

impl std::ops::Deref for Floats {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `ptr` holds `cap` ≥ `len` initialized floats (or is dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Floats {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as `deref`, borrowed uniquely.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for Floats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl PartialEq for Floats {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

fn bytes(len: usize) -> usize {
    len.checked_mul(4)
        .expect("a tensor larger than the address space")
}

fn mapped(len: usize) -> bool {
    cfg!(target_os = "linux") && bytes(len) >= MAPPED_BYTES
}

fn heap_layout(len: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(bytes(len), ALIGN).expect("a tensor larger than isize")
}

/// A zeroed block of `len` floats.
fn alloc_zeroed(len: usize) -> NonNull<f32> {
    if len == 0 {
        return NonNull::dangling();
    }
    #[cfg(target_os = "linux")]
    if mapped(len) {
        // SAFETY: a fresh private anonymous mapping; the kernel zero-fills its pages.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes(len),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(heap_layout(len));
        }
        return NonNull::new(p as *mut f32).expect("mmap returned null");
    }
    let layout = heap_layout(len);
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
    NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

fn free(ptr: NonNull<f32>, cap: usize) {
    if cap == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    if mapped(cap) {
        // SAFETY: `ptr` is the start of a mapping of exactly `bytes(cap)` bytes, ours alone.
        unsafe { libc::munmap(ptr.as_ptr() as *mut libc::c_void, bytes(cap)) };
        return;
    }
    // SAFETY: allocated by `alloc_zeroed` with this layout.
    unsafe { std::alloc::dealloc(ptr.as_ptr() as *mut u8, heap_layout(cap)) };
}

/// The block `ptr` of `cap` floats grown to `len` > `cap`, its contents initialized.
fn grow(ptr: NonNull<f32>, cap: usize, len: usize) -> NonNull<f32> {
    #[cfg(target_os = "linux")]
    if mapped(cap) {
        // SAFETY: `ptr` is a mapping of `bytes(cap)` bytes that we own; the kernel moves or
        // extends it, keeping its pages and zero-filling the new ones.
        let p = unsafe {
            libc::mremap(
                ptr.as_ptr() as *mut libc::c_void,
                bytes(cap),
                bytes(len),
                libc::MREMAP_MAYMOVE,
            )
        };
        if p == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(heap_layout(len));
        }
        return NonNull::new(p as *mut f32).expect("mremap returned null");
    }
    // The contents need not survive (they are unspecified), so no copy.
    free(ptr, cap);
    alloc_zeroed(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_start_on_a_line_and_grow_keeping_their_values() {
        for len in [1, 5, 1000, MAPPED_BYTES / 4 - 1, MAPPED_BYTES / 4, 300_000] {
            let mut f = Floats::zeroed(len);
            assert_eq!(f.as_ptr() as usize % ALIGN, 0, "{len}");
            assert!(f.iter().all(|&v| v == 0.0));
            f.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
            f.set_len(len / 2);
            assert_eq!(f.len(), len / 2);
            f.set_len(3 * len + 7);
            assert_eq!(f.as_ptr() as usize % ALIGN, 0, "{len} grown");
            assert_eq!(f.len(), 3 * len + 7);
            if mapped(len) {
                // Remapped: the values stay.
                assert!(f[..len].iter().enumerate().all(|(i, &v)| v == i as f32));
            }
            assert!(f[len..].iter().all(|&v| v == 0.0));
        }
        assert_eq!(Floats::new().len(), 0);
    }
}
