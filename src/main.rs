fn main() -> std::process::ExitCode {
    pin_large_allocations_to_mmap();
    phigate::cli::main()
}

/// sled allocates a fresh 512 KiB log buffer for every log write and frees the old one
/// later. glibc's adaptive mmap threshold grows past that size after the first free, so
/// those buffers then come from (and fragment) the heap arenas: RSS grew by ~20 MB per
/// 2,000 messages in the benchmark. A fixed threshold keeps them mmapped and returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn pin_large_allocations_to_mmap() {
    // SAFETY: mallopt only adjusts allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_large_allocations_to_mmap() {}
