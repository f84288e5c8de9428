//! Facts about the machine a benchmark ran on, and the process's peak memory (Linux `/proc`;
//! `None` elsewhere).

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub fn peak_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&text)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..].trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Reset the peak to the current RSS (writing 5 to /proc/self/clear_refs), so the next reading
/// is the peak of the work in between. Returns false where that is not possible; the reading is
/// then the peak since the process started.
pub fn reset_peak_memory() -> bool {
    // The binary's allocator (mimalloc) keeps freed pages for reuse; hand them back first, or a
    // row's peak would include what earlier rows left cached.
    // SAFETY: mi_collect only releases memory mimalloc holds no live allocation in.
    unsafe { libmimalloc_sys::mi_collect(true) };
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tvisword\nVmPeak:\t  10 kB\nVmHWM:\t  306524 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(306524 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }
}
