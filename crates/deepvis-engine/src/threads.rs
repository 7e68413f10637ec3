//! Where the engine's parallel work starts from.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
/// The pool's threads also flush subnormal floats to zero (`flush_subnormals`), and while
/// this is the only such call running, the other workers stay awake for it (`keep_awake`).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        flush_subnormals();
        return f();
    }
    let alone = ACTIVE.fetch_add(1, Ordering::SeqCst) == 0;
    let _leave = OnDrop(|| {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    });
    let done = AtomicBool::new(false);
    let done = &done;
    rayon::scope(|s| {
        flush_subnormals();
        // Set even if `f` panics: the scope waits for its spawned spinners before it returns.
        let _done = OnDrop(|| done.store(true, Ordering::Release));
        if alone {
            let caller = rayon::current_thread_index();
            for _ in 1..rayon::current_num_threads() {
                s.spawn(move |_| keep_awake(caller, done));
            }
        }
        f()
    })
}

/// `on_pool` calls running now, process-wide.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SPINNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Runs the pool's work on this worker until `done`, instead of letting it sleep whenever the
/// pass has nothing to split. A rayon worker that finds no work for some tens of microseconds
/// sleeps on a futex, and each parallel op after a serial stretch has to wake it: in an
/// EfficientNet-B0 step (hundreds of small ops) a tenth of the samples were the kernel's
/// wake-ups and context switches, and kept awake, the step went 21.7 → 19.3 ms.
///
/// It stands down where it could hold up work below it on the stack: on the caller's own
/// thread (which pops it only when it has nothing else), on a worker already keeping awake
/// (a job it ran may wait for a second spinner), and as soon as another `on_pool` starts
/// (two passes side by side keep both workers busy anyway, and a spinner of one pass run by a
/// worker waiting inside the other would hold that pass up). Spinners are spawned before the
/// pass's first job, so an idle worker steals a spinner (the oldest job) before any of them.
fn keep_awake(caller: Option<usize>, done: &AtomicBool) {
    if rayon::current_thread_index() == caller || SPINNING.with(|s| s.get()) {
        return;
    }
    SPINNING.with(|s| s.set(true));
    let _reset = OnDrop(|| SPINNING.with(|s| s.set(false)));
    let mut idle = 0u32;
    while !done.load(Ordering::Acquire) && ACTIVE.load(Ordering::Relaxed) == 1 {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle = 0;
            continue;
        }
        idle += 1;
        // Let other runnable threads on this core in now and then.
        if idle.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
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

    /// Passes one at a time (spinners keep the other workers awake) and from several threads
    /// at once, with nested parallel work and a panic in some, all finish with the right
    /// results: no spinner holds a pass up.
    #[test]
    fn concurrent_and_panicking_passes_finish() {
        fn passes(t: u64) {
            use rayon::prelude::*;
            for i in 0..200u64 {
                let sum = on_pool(|| {
                    (0..1000u64)
                        .into_par_iter()
                        .map(|k| (0..k % 7).into_par_iter().map(|j| j + i).sum::<u64>())
                        .sum::<u64>()
                });
                let want: u64 = (0..1000u64)
                    .map(|k| (0..k % 7).map(|j| j + i).sum::<u64>())
                    .sum();
                assert_eq!(sum, want, "thread {t} pass {i}");
                if i % 50 == 7 {
                    let r = std::panic::catch_unwind(|| on_pool(|| panic!("pass {i}")));
                    assert!(r.is_err());
                }
            }
        }
        passes(0);
        let threads: Vec<_> = (1..5)
            .map(|t| std::thread::spawn(move || passes(t)))
            .collect();
        for t in threads {
            t.join().unwrap();
        }
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
