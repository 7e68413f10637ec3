//! Process-wide allocator settings for long optimization runs.

/// Tells the C allocator to keep freed memory for reuse instead of handing it back to the
/// kernel. Every step allocates and frees the same buffers (the `gemm` crate's packing space,
/// per-op scratch); with glibc's defaults many of those come back as fresh pages, and the page
/// faults cost VGG16 at 512 px about 5–15 % of a step (system time 86 → ~5 ms per step).
/// Buffers of 64 MiB and more still go straight back to the kernel: keeping those too was
/// faster again at 512 px but raised the peak memory of a batch of 8 by 0.6 GB (measured:
/// 5.03 GB against PyTorch's 4.44 GB; with the 64 MiB limit 4.44 GB).
///
/// All threads share the main heap (one arena): the render loop runs its steps on rayon's
/// workers (`on_pool`), and glibc's per-thread arenas cannot hold a 64 MiB activation, so
/// they mapped and faulted it in afresh every step (VGG16 at 512 px: 352 → 414 ms per step,
/// back to 352 with one arena). The engine allocates rarely, so the shared lock costs nothing
/// measurable.
///
/// Call it once, early, from a binary; a library should not change it behind its user's back.
/// On other platforms, or where the user set glibc's own tunables, it does nothing.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The user's own glibc settings win.
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
            || std::env::var_os("GLIBC_TUNABLES").is_some()
        {
            return;
        }
        // Allocations below 64 MiB come from the heap, which is trimmed only when 128 MiB lie
        // free at its top. Failure only leaves the defaults in place.
        // SAFETY: mallopt only changes allocator parameters; it is called before any threads
        // of ours start and takes plain integers.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
