//! Borrowing a CPU tensor's values without copying them out (the backward passes of the
//! hand-written ops read tens of megabytes of activations and weights per training step), and the
//! other small pieces every hand-written op needs.

use candle_core::{CpuStorage, Error, Layout, Result, Storage, Tensor, WithDType, bail};

/// An op's input storage as a typed slice in row-major order; `what` names it in errors.
pub fn storage_values<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what} must be contiguous")
    };
    let values = storage
        .as_slice::<T>()
        .map_err(|_| Error::Msg(format!("{what} must be {:?}", T::DTYPE)))?;
    Ok(&values[start..end])
}

/// The error for a lock poisoned by a panic elsewhere.
pub fn poisoned(op: &str) -> Error {
    Error::Msg(format!("{op}: poisoned lock"))
}

/// What a custom op's forward kept for its backward, taken once: a second backward, or one
/// after an inference forward, is an error.
pub fn take_saved<T>(slot: &std::sync::Mutex<Option<T>>, op: &str) -> Result<T> {
    match slot.lock().map_err(|_| poisoned(op))?.take() {
        Some(saved) => Ok(saved),
        None => Err(Error::Msg(format!(
            "{op}: backward without a training forward (or run twice)"
        ))),
    }
}

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

/// Runs `f` on a contiguous CPU f32 tensor's own values, mutably, in place: for updates that
/// would otherwise build a new tensor of the same size and copy it back (the optimizer's
/// weights and moments). Other tensors that share the storage see the change, as with
/// `Var::set`. `f` must not touch `t` again (its storage is locked while `f` runs).
pub fn with_values_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    struct Run<F, R> {
        f: std::cell::Cell<Option<F>>,
        out: std::cell::Cell<Option<Result<R>>>,
    }
    impl<F: FnOnce(&mut [f32]) -> Result<R>, R> candle_core::InplaceOp1 for Run<F, R> {
        fn name(&self) -> &'static str {
            "with_values_mut"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
            let Some((start, end)) = layout.contiguous_offsets() else {
                bail!("expected a contiguous tensor")
            };
            let CpuStorage::F32(values) = storage else {
                bail!("expected an f32 tensor")
            };
            if let Some(f) = self.f.take() {
                self.out.set(Some(f(&mut values[start..end])));
            }
            Ok(())
        }
    }
    let run = Run {
        f: std::cell::Cell::new(Some(f)),
        out: std::cell::Cell::new(None),
    };
    t.inplace_op1(&run)?;
    run.out
        .take()
        .unwrap_or_else(|| Err(Error::Msg("with_values_mut: the update did not run".into())))
}

/// The address of the first value of a CPU tensor's whole storage (not of its view): two
/// tensors with different addresses do not share storage.
pub fn storage_address(t: &Tensor) -> Result<usize> {
    let (storage, _) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("expected a CPU tensor")
    };
    Ok(cpu.as_slice::<f32>()?.as_ptr() as usize)
}
