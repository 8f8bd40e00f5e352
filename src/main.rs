use std::process::ExitCode;

use clap::Parser;
use echoai::cli::{Cli, run};

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// Training allocates and frees the same large buffers (activations, gradients) every step.
/// glibc serves blocks over 128 KiB-32 MiB with fresh `mmap`s and unmaps them on free, so each
/// step paid for zeroing new pages in the kernel: 12 % of a measured training step. Serving
/// them from the heap and not trimming it reuses the memory.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The error and its causes, skipping a cause whose words the message already contains (most of
/// our errors quote their cause, and a chain would repeat it).
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}
