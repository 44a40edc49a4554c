//! How a role tunes the allocator (mimalloc, src/main.rs) and the kernel's
//! paging of its memory. Each setting is process-wide, and each was
//! measured for the role that sets it (BENCHMARKS.md).

/// Have mimalloc (the allocator, src/main.rs) return freed pages to the OS
/// at once instead of after its purge delay. The day cache's decoded files
/// are allocated on the blocking pool and freed from other threads when
/// evicted; with the delay, the pages were purged only when their thread
/// allocated again, and the resident set of `tally serve` grew to several
/// times the cache budget (1.36 GB against 0.26 GB of cache in the memory
/// benchmark; 0.38 GB with this).
pub(crate) fn purge_freed_memory_at_once() {
    // `mi_option_set` and `mi_option_purge_delay` (15 in `mi_option_t` of
    // both mimalloc v2 and v3; libmimalloc-sys 0.1.49 builds v3): the Rust
    // binding exports them only with its `extended` feature.
    extern "C" {
        fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
    }
    const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;
    // SAFETY: sets an integer option of the linked allocator; mimalloc reads
    // options on its own, so a concurrent reader sees the old or new value.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// No transparent huge pages for this process. mimalloc asks for them on
/// its arenas (`madvise(MADV_HUGEPAGE)`), and the kernel then faults each in
/// as 2 MiB zeroed at once: a batch run, which grows to 1.4 GB in seconds
/// and frees it again, spent 3 to 4 s in the kernel doing that when another
/// process had just freed its memory, against 1.4 to 1.8 s with 4 KiB
/// pages, and no slower otherwise (BENCHMARKS.md, issue 12). Applies to
/// memory mapped before the call too: the kernel checks at each fault.
#[cfg(target_os = "linux")]
pub(crate) fn no_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments only
    // and changes nothing but this process's paging policy.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "transparent huge pages stay on");
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn no_transparent_huge_pages() {}
