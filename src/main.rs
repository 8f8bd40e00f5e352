use std::process::ExitCode;

use clap::Parser;
use echoai::cli::{Cli, Command, run};

fn main() -> ExitCode {
    keep_freed_memory();
    fix_thread_count();
    quiet_library_backtraces();
    let cli = Cli::parse();
    die_quietly_on_a_closed_pipe(&cli.command);
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

/// candle asks for its thread count on every parallel op and, unless `RAYON_NUM_THREADS` is
/// set, counts physical cores by reading `/proc/cpuinfo` each time (2,800 opens in 200 steps of
/// candle-op generation, measured with strace). Setting the variable once to that same count
/// answers it from the environment; rayon's pool then also has one thread per physical core,
/// which is what the compute-bound kernels want.
fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = num_cpus::get_physical().max(1);
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", cores.to_string()) };
    }
}

/// candle attaches a backtrace to its errors whenever `RUST_BACKTRACE` is set, as it often is
/// on a Rust user's machine, and prints it as part of the message. Errors are one clear line;
/// `RUST_LIB_BACKTRACE=0` stops library backtraces while panics keep theirs.
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// The error and its causes, skipping a cause whose words the message already contains (most of
/// our errors quote their cause, and a chain would repeat it).
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        // Only a cause's first line: the rest is a backtrace when one was captured anyway.
        let part = cause
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// Report commands end quietly when their reader goes away (`echoai stats --json | head`), as
/// Unix tools do: with Rust's default (SIGPIPE ignored) their next `println!` panicked. Commands
/// that train or write files keep the default, so they finish what they are writing.
fn die_quietly_on_a_closed_pipe(command: &Option<Command>) {
    #[cfg(unix)]
    if matches!(
        command,
        Some(
            Command::Stats { .. }
                | Command::Corpus { .. }
                | Command::Ports
                | Command::Eval(_)
                | Command::Bench { .. }
        )
    ) {
        // SAFETY: restores the default disposition of one signal before other threads start.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}
