//! A step loop recorded as one CUDA graph and launched once, instead of launching its ~2T
//! kernels and products one by one (opt-in, `ECHOAI_CUDA_GRAPH=1`, while it is measured).
//!
//! A recurrence step at these sizes takes the GPU less time than the host takes to issue it, so
//! the per-launch cost on the host bounds a step. Recording still costs a little per node, and
//! instantiating the graph costs more; whether that beats launching one by one is what the
//! switch measures. Where recording fails (a driver or cuBLAS that does not support capture),
//! the loop runs as plain launches and graphs stay off for the process.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::cuda::cudarc;
use candle_core::{CudaDevice, Result};
use cudarc::driver::sys;

static FAILED: AtomicBool = AtomicBool::new(false);

fn wanted() -> bool {
    !FAILED.load(Ordering::Relaxed)
        && std::env::var_os("ECHOAI_CUDA_GRAPH").is_some_and(|v| v == "1")
}

/// Runs `body`, which only enqueues work on candle's stream, recorded as one graph when graphs
/// are on. `body` may run twice: once recorded (nothing executes), then plainly if that failed.
pub fn run_recorded(dev: &CudaDevice, mut body: impl FnMut() -> Result<()>) -> Result<()> {
    if !wanted() {
        return body();
    }
    let stream = dev.cuda_stream();
    if stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .is_err()
    {
        FAILED.store(true, Ordering::Relaxed);
        return body();
    }
    let recorded = body();
    let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    match (recorded, ended) {
        (Ok(()), Ok(Some(graph))) => {
            // Dropping the graph after its launch is safe: the driver frees an executable graph
            // that is still running once it completes.
            graph
                .launch()
                .map_err(|e| candle_core::Error::Msg(format!("CUDA graph launch: {e}")))
        }
        (recorded, ended) => {
            FAILED.store(true, Ordering::Relaxed);
            eprintln!(
                "CUDA graphs are off for this run: recording the step loop failed ({}); \
                 launching its steps one by one",
                match (recorded, ended) {
                    (Err(e), _) => e.to_string(),
                    (_, Err(e)) => e.to_string(),
                    _ => "no graph".to_string(),
                }
            );
            body()
        }
    }
}
