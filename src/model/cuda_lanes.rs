//! Streams that run independent rows of a recurrence side by side on one GPU.
//!
//! A step of the LSTM recurrence is one small GEMM (`B x 4H x H`) and one pointwise kernel, and
//! at a large batch that GEMM still covers only part of the card. The sequences of a batch are
//! independent, so the batch can be cut into row blocks that step on their own streams
//! ("lanes") at the same time. Lane 0 is candle's stream. Other lanes wait for it before they
//! start and it waits for them at the end, so every buffer the op frees (stream-ordered, on
//! candle's stream) outlives the work on every lane.
//!
//! `ECHOAI_CUDA_LSTM_LANES` (1 to 4, default 2) sets how many; a lane gets at least
//! [`MIN_ROWS`] sequences.

use std::sync::{Arc, Mutex};

use candle_core::cuda::cudarc;
use candle_core::{CudaDevice, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::CudaStream;

/// Fewer sequences than this per lane and the extra launches cost more than the overlap gains.
pub const MIN_ROWS: usize = 32;
const MAX_LANES: usize = 4;

/// A stream with its own cuBLAS handle.
pub struct Lane {
    pub stream: Arc<CudaStream>,
    pub blas: Arc<CudaBlas>,
}

/// Rows `start .. start + rows` of the batch, on `lane`.
pub struct RowBlock {
    pub lane: Arc<Lane>,
    pub start: usize,
    pub rows: usize,
}

fn wanted_lanes() -> usize {
    std::env::var("ECHOAI_CUDA_LSTM_LANES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(2)
        .clamp(1, MAX_LANES)
}

type SideLanes = Vec<(candle_core::cuda::DeviceId, Vec<Arc<Lane>>)>;

/// The extra lanes of `dev`, made once per device and kept for the process.
fn side_lanes(dev: &CudaDevice, count: usize) -> Result<Vec<Arc<Lane>>> {
    static SIDE: Mutex<SideLanes> = Mutex::new(Vec::new());
    let mut side = SIDE
        .lock()
        .map_err(|_| candle_core::Error::Msg("CUDA lanes: a lock was poisoned".into()))?;
    let index = match side.iter().position(|(id, _)| *id == dev.id()) {
        Some(i) => i,
        None => {
            side.push((dev.id(), Vec::new()));
            side.len() - 1
        }
    };
    let lanes = &mut side[index].1;
    while lanes.len() < count {
        let stream = dev
            .cuda_stream()
            .context()
            .new_stream()
            .map_err(|e| candle_core::Error::Msg(format!("CUDA lanes: new stream: {e}")))?;
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| candle_core::Error::Msg(format!("CUDA lanes: cuBLAS: {e:?}")))?;
        lanes.push(Arc::new(Lane {
            stream,
            blas: Arc::new(blas),
        }));
    }
    Ok(lanes[..count].to_vec())
}

/// The batch of `b` sequences cut into row blocks, one per lane, after every extra lane has
/// been made to wait for the work already on candle's stream.
pub fn fork(dev: &CudaDevice, b: usize) -> Result<Vec<RowBlock>> {
    let count = wanted_lanes().min(b / MIN_ROWS).max(1);
    let main = Arc::new(Lane {
        stream: dev.cuda_stream(),
        blas: dev.cublas_handle(),
    });
    let mut lanes = vec![main];
    lanes.extend(side_lanes(dev, count - 1)?);
    let mut blocks = Vec::with_capacity(count);
    for (i, lane) in lanes.into_iter().enumerate() {
        let (start, end) = (b * i / count, b * (i + 1) / count);
        if i > 0 {
            lane.stream
                .join(&dev.cuda_stream())
                .map_err(|e| candle_core::Error::Msg(format!("CUDA lanes: fork: {e}")))?;
        }
        blocks.push(RowBlock {
            lane,
            start,
            rows: end - start,
        });
    }
    Ok(blocks)
}

/// Makes candle's stream wait for everything launched on the other lanes.
pub fn join(dev: &CudaDevice, blocks: &[RowBlock]) -> Result<()> {
    let main = dev.cuda_stream();
    for block in blocks.iter().skip(1) {
        main.join(&block.lane.stream)
            .map_err(|e| candle_core::Error::Msg(format!("CUDA lanes: join: {e}")))?;
    }
    Ok(())
}
