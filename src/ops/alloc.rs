//! Settings of mimalloc, the binaries' allocator, for tensor workloads.

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys names no constant for it):
/// between `eager_commit_delay` (14) and `use_numa_nodes` (16).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped for reuse instead of returning it to the kernel after mimalloc's purge
/// delay. Every tensor op allocates its output; once a freed buffer is purged, the next op of that size
/// page-faults it back in and the kernel zeroes every page (`clear_page_erms`: about 9% of a MiniLM
/// scoring batch in `perf`, 2.5% with this). The resident peak is unchanged: this keeps memory that
/// was already in use, it takes no more (but a long-lived `serve` keeps its peak). `MIMALLOC_PURGE_DELAY`
/// in the environment wins.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc 3's purge delay defaults to 1000 ms, and its neighbours to 1 and 0: the index is right.
        let default = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert!(default == 1000 || default == -1, "option {PURGE_DELAY} is {default}, not the purge delay");
        }
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            keep_freed_memory();
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, -1);
        }
    }
}
