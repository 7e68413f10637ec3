//! Where the engine's parallel work starts from.

/// Runs `f` on a worker of rayon's pool, or right here if this thread already is one.
///
/// Every parallel op started from a thread outside the pool is a cold hand-off: the caller
/// sleeps on a latch and a worker has to wake up, then the caller again. A step runs a few
/// hundred small ops, and on EfficientNet-Lite0 those hand-offs cost a quarter of the step
/// (14.8 → 11.0 ms measured with the whole step inside). Started from a worker, the same ops
/// split and join among workers that are already awake. The render loop and
/// `objective_and_grad` wrap each step in it; `Graph` itself does not, so a caller that runs
/// many small passes should do the same.
///
/// The pool's threads also flush subnormal floats to zero (`flush_subnormals`).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        flush_subnormals();
        f()
    } else {
        rayon::scope(|_| {
            flush_subnormals();
            f()
        })
    }
}

thread_local! {
    static FLUSHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets flush-to-zero and denormals-are-zero on every thread of the current rayon pool (once
/// per pool; call it from one of its workers). Values below 1.2e-38 then count as zero. An
/// optimization step's gradients shrink layer by layer, and an FMA that meets a subnormal
/// operand takes a microcode path about a hundred times slower: 277 of the 200,704 output
/// gradients of ResNet50's `layer3.0.conv1` were subnormal, and its float32 step took 102 ms
/// instead of 63 (the bf16 path never saw it: its rounding flushes them already). No image
/// can depend on magnitudes that small.
fn flush_subnormals() {
    if FLUSHING.with(|f| f.get()) {
        return;
    }
    rayon::broadcast(|_| {
        set_flush_here();
        FLUSHING.with(|f| f.set(true));
    });
}

/// FTZ and DAZ on this thread.
fn set_flush_here() {
    #[cfg(target_arch = "x86_64")]
    {
        // Inline assembly because `_mm_setcsr` is deprecated: Rust assumes the default float
        // environment, and these two bits only change what happens to subnormals.
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr stores the 4-byte control register into `csr`; ldmxcsr loads it back
        // with the FTZ (bit 15) and DAZ (bit 6) bits set.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= (1 << 15) | (1 << 6);
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::on_pool;

    #[test]
    fn runs_on_a_worker_and_returns_its_value() {
        assert!(
            rayon::current_thread_index().is_none(),
            "tests start outside the pool"
        );
        let (on_worker, v) = on_pool(|| (rayon::current_thread_index().is_some(), 41 + 1));
        assert!(on_worker);
        assert_eq!(v, 42);
        // Nested: already on a worker, so it runs in place on the same one.
        let same = on_pool(|| {
            let outer = rayon::current_thread_index();
            on_pool(|| rayon::current_thread_index() == outer)
        });
        assert!(same);
    }

    #[test]
    fn the_pool_flushes_subnormals_to_zero() {
        let tiny = std::hint::black_box(f32::MIN_POSITIVE / 4.0);
        assert!(tiny.is_subnormal());
        // Outside the pool (the test thread) the default environment keeps it.
        assert!((std::hint::black_box(tiny) * std::hint::black_box(1.0f32)).is_subnormal());
        let on_workers = rayon::broadcast(|_| {
            on_pool(|| std::hint::black_box(tiny) * std::hint::black_box(1.0f32))
        });
        #[cfg(target_arch = "x86_64")]
        assert!(on_workers.iter().all(|&v| v == 0.0), "{on_workers:?}");
        let _ = on_workers;
    }
}
