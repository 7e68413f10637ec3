use crate::storage::Floats;
use crate::EngineError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A dense float32 tensor in row-major order; 4-D tensors are NCHW.
///
/// Large tensors recycle their storage through a process-wide pool when dropped: an
/// optimization loop allocates the same activation sizes every step, and fresh allocations of
/// that size come from mmap, so every step would otherwise page-fault its whole working set in
/// again (the kernel time once exceeded the arithmetic in cheap ops such as ReLU). The storage
/// starts on a cache line (`storage.rs`).
#[derive(Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Floats,
}

impl Clone for Tensor {
    fn clone(&self) -> Self {
        let mut data = buffers::take(self.data.len());
        data.copy_from_slice(&self.data);
        Tensor {
            shape: self.shape.clone(),
            data,
        }
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        buffers::give(std::mem::take(&mut self.data));
    }
}

pub(crate) mod buffers {
    use super::*;

    /// Smaller buffers come from malloc's heap cheaply enough.
    const MIN_POOLED: usize = 32 * 1024;

    struct Pool {
        free: Vec<Floats>,
        bytes: usize,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool {
        free: Vec::new(),
        bytes: 0,
    });
    /// Bytes in pooled-size buffers handed out and not yet returned, and its high-water mark
    /// (see `cap`).
    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// What the pool and the live buffers may hold together: the largest working set seen, but
    /// at least 1 GiB. Held to the working set exactly, the pool must be empty at a step's peak,
    /// so a step's buffers of other sizes keep evicting ones the next step asks for again, and
    /// those come back as fresh, page-faulting memory: VGG16 at 512 px, batch 1, ran 8–23 %
    /// slower for it (features.5 87 against 107 ms, features.14 199 against 242, features.28
    /// 319 against 345), at the same peak RSS (±3 %). Above 1 GiB (a batch of 8 at 512 px) the cap stays the working
    /// set: there, more room bought 15 % but cost 0.4 GB of peak RSS.
    fn cap() -> usize {
        PEAK.load(Ordering::Relaxed)
            .max(FLOOR.load(Ordering::Relaxed))
    }

    /// The least `cap` allows: 1 GiB per pass that runs at the same time (`set_concurrent_passes`).
    static FLOOR: AtomicUsize = AtomicUsize::new(1 << 30);

    pub(crate) fn set_floor(bytes: usize) {
        FLOOR.store(bytes, Ordering::Relaxed);
    }

    fn lock() -> std::sync::MutexGuard<'static, Pool> {
        POOL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of `len` floats with unspecified (but initialized) contents.
    pub(crate) fn take(len: usize) -> Floats {
        if len < MIN_POOLED {
            return Floats::zeroed(len);
        }
        let bytes = len * 4;
        let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
        PEAK.fetch_max(live, Ordering::Relaxed);
        let reused = {
            let mut pool = lock();
            // Best fit among buffers at most half again as large as needed, so a small request
            // never pins a big buffer. Failing that, the largest of those at least half as
            // large, grown in place below: the render loop's random scales change every
            // activation's size from step to step, and exact fits missed 8 times a step at
            // 512 px (33,000 page faults per VGG16 step). Growing a mapped buffer remaps its
            // pages, so only the difference is faulted in. The slack was 1/8: with scales of
            // 0.9–1.1 (areas ±21 %) a buffer grown for one step's size no longer fitted the next
            // step's smaller request, so buffers kept growing, piling up and being let go, and
            // each fresh page costs a fault and a clear (in this VM a fifth of a 512-px VGG16
            // step). With half: 20 steps of 2 filters 15.5–17.6 → 14.6–15.0 s, system time
            // 3.2–6.6 → 1.2 s, peak RSS 3.3 → 2.6 GB; Lite0 at 224 px the same time, RSS 640
            // → 420 MB.
            let fits = |v: &Floats| v.capacity() >= len && v.capacity() <= len + len / 2;
            let grows = |v: &Floats| v.capacity() < len && v.capacity() >= len / 2;
            let best = pool
                .free
                .iter()
                .enumerate()
                .filter(|(_, v)| fits(v))
                .min_by_key(|(_, v)| v.capacity())
                .or_else(|| {
                    pool.free
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| grows(v))
                        .max_by_key(|(_, v)| v.capacity())
                })
                .map(|(i, _)| i);
            best.map(|i| {
                let v = pool.free.remove(i);
                pool.bytes -= v.capacity() * 4;
                v
            })
        };
        if reused.is_none() {
            // A fresh buffer: first let go of pooled ones so that pooled plus live bytes stay
            // within `cap`. Oldest first: the least likely to be asked for again soon.
            let room = cap().saturating_sub(live);
            let mut pool = lock();
            while pool.bytes > room && !pool.free.is_empty() {
                let v = pool.free.remove(0);
                pool.bytes -= v.capacity() * 4;
            }
        }
        match reused {
            Some(mut v) => {
                // Contents are unspecified: never cleared.
                v.set_len(len);
                v
            }
            None => Floats::zeroed(len),
        }
    }

    /// A zero-filled buffer of `len` floats.
    pub(crate) fn take_zeroed(len: usize) -> Floats {
        let mut v = take(len);
        if len >= MIN_POOLED {
            use rayon::prelude::*;
            v.par_chunks_mut(MIN_POOLED).for_each(|c| c.fill(0.0));
        }
        v
    }

    pub(crate) fn give(v: Floats) {
        if v.len() < MIN_POOLED {
            return;
        }
        LIVE.fetch_sub(v.len() * 4, Ordering::Relaxed);
        let bytes = v.capacity() * 4;
        let cap = cap();
        let mut pool = lock();
        pool.bytes += bytes;
        pool.free.push(v);
        while pool.bytes > cap && !pool.free.is_empty() {
            let v = pool.free.remove(0);
            pool.bytes -= v.capacity() * 4;
        }
    }
}

/// Tells the buffer pool how many forward and backward passes run at the same time (one per
/// thread when a caller renders independent images side by side), so that it keeps the same
/// room per pass as for one. With the room of one pass, two 512-px VGG16 passes evicted each
/// other's buffers every step and page-faulted them in again (features.28: 16 000 page
/// faults and 55 ms of system time per pair of steps).
pub fn set_concurrent_passes(passes: usize) {
    buffers::set_floor(passes.max(1) << 30);
}

/// Whether `len` values fill `shape`.
fn check_len(shape: &[usize], len: usize) -> Result<(), EngineError> {
    let numel: usize = shape.iter().product();
    if numel != len {
        return Err(EngineError::Shape(format!(
            "shape {shape:?} needs {numel} values, got {len}"
        )));
    }
    Ok(())
}

impl Tensor {
    /// A tensor holding `data` (copied into the engine's aligned, pooled storage).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, EngineError> {
        Tensor::from_slice(&shape, &data)
    }

    /// A copy of `data` in a buffer from the engine's pool. Per-step inputs built this way
    /// reuse memory; a fresh `Vec` each step came back as page-faulting memory.
    pub fn from_slice(shape: &[usize], data: &[f32]) -> Result<Self, EngineError> {
        check_len(shape, data.len())?;
        let mut buf = buffers::take(data.len());
        buf.copy_from_slice(data);
        Ok(Tensor {
            shape: shape.to_vec(),
            data: buf,
        })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: buffers::take_zeroed(shape.iter().product()),
        }
    }

    pub fn full(shape: &[usize], value: f32) -> Self {
        let mut data = buffers::take(shape.iter().product());
        data.fill(value);
        Tensor {
            shape: shape.to_vec(),
            data,
        }
    }

    /// A tensor whose every element the caller overwrites before reading.
    pub(crate) fn for_overwrite(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: buffers::take(shape.iter().product()),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The values, copied out (the storage goes back to the pool).
    pub fn into_data(self) -> Vec<f32> {
        self.data.to_vec()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// (n, c, h, w) of a 4-D tensor.
    pub fn dims4(&self) -> Result<(usize, usize, usize, usize), EngineError> {
        match self.shape[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => Err(EngineError::Shape(format!(
                "expected a 4-D NCHW tensor, got shape {:?}",
                self.shape
            ))),
        }
    }

    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Self, EngineError> {
        let numel: usize = shape.iter().product();
        if numel != self.data.len() {
            return Err(EngineError::Shape(format!(
                "cannot reshape {:?} to {shape:?}",
                self.shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// The `index`-th item along the batch axis, as a tensor with batch 1.
    pub fn batch_item(&self, index: usize) -> Tensor {
        let per = self.numel() / self.shape[0];
        let mut shape = self.shape.clone();
        shape[0] = 1;
        let mut data = buffers::take(per);
        data.copy_from_slice(&self.data[index * per..(index + 1) * per]);
        Tensor { shape, data }
    }

    pub fn add_assign(&mut self, other: &Tensor) {
        debug_assert_eq!(self.shape, other.shape);
        for (a, b) in self.data.iter_mut().zip(other.data.iter()) {
            *a += *b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_slice_copies_and_checks_the_length() {
        let data: Vec<f32> = (0..6000).map(|i| i as f32 * 0.5).collect();
        let t = Tensor::from_slice(&[2, 3, 1000], &data).unwrap();
        assert_eq!(t.shape(), &[2, 3, 1000]);
        assert_eq!(t.data(), &data[..]);
        assert!(Tensor::from_slice(&[2, 3, 999], &data).is_err());
    }
}
