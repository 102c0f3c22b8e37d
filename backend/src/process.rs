//! Facts about this process that every binary reports: today its resident
//! memory, for `process_resident_memory_bytes` and the status page.

/// Resident set size of this process, from /proc/self/statm (None where
/// there is no procfs). The page size is taken as 4 KiB, which holds on the
/// x86-64 and common aarch64 Linux hosts this runs on.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
