//! How much memory this process holds, as the kernel counts it: for the training progress line
//! and `echoai bench`, so a leak shows in the figures people already read.

/// Peak resident set size (`VmHWM`) in bytes, where the system reports it (Linux).
pub fn peak_resident_bytes() -> Option<u64> {
    status_field("VmHWM:")
}

/// Current resident set size (`VmRSS`) in bytes, where the system reports it (Linux).
pub fn resident_bytes() -> Option<u64> {
    status_field("VmRSS:")
}

/// The machine's memory (`MemTotal`) in bytes, where the system reports it (Linux).
pub fn total_memory_bytes() -> Option<u64> {
    kib_field("/proc/meminfo", "MemTotal:")
}

/// A `kB` line of `/proc/self/status`.
fn status_field(name: &str) -> Option<u64> {
    kib_field("/proc/self/status", name)
}

fn kib_field(file: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `812 MB`, `1.42 GB`: for progress lines.
pub fn format_bytes(bytes: u64) -> String {
    let mb = bytes as f64 / 1e6;
    if mb >= 1000.0 {
        format!("{:.2} GB", mb / 1000.0)
    } else {
        format!("{mb:.0} MB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_megabytes_and_gigabytes() {
        assert_eq!(format_bytes(812_400_000), "812 MB");
        assert_eq!(format_bytes(1_424_000_000), "1.42 GB");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_peak_is_at_least_what_is_resident_now() {
        let now = resident_bytes().expect("VmRSS on Linux");
        let peak = peak_resident_bytes().expect("VmHWM on Linux");
        assert!(now > 0 && peak >= now, "now {now}, peak {peak}");
    }
}
