//! Borrowing a CPU tensor's values without copying them out (the backward passes of the
//! hand-written ops read tens of megabytes of activations and weights per training step).

use candle_core::{Result, Storage, Tensor, WithDType, bail};

/// Runs `f` on the tensor's values in row-major order: borrowed when the tensor is a contiguous
/// CPU tensor of type `T`, else from a contiguous copy.
pub fn with_values<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    if !t.is_contiguous() {
        return with_values(&t.contiguous()?, f);
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("expected a CPU tensor")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("expected a contiguous tensor")
    };
    f(&cpu.as_slice::<T>()?[start..end])
}
