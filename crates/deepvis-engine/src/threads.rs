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
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
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
}
