//! Background work for the studio: each job runs on its own thread, reports typed messages over
//! a channel, asks the UI to repaint after each, and can be cancelled. The UI polls; it never waits.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

pub struct JobSender<M> {
    tx: Sender<M>,
    ctx: Option<egui::Context>,
}

impl<M> JobSender<M> {
    /// Sends a message and wakes the UI; false once the UI has dropped the job.
    pub fn send(&self, message: M) -> bool {
        let sent = self.tx.send(message).is_ok();
        if let Some(ctx) = &self.ctx {
            ctx.request_repaint();
        }
        sent
    }

    /// Sends a message and wakes the UI within `within`, not at once: many of these in a burst
    /// (training steps) cost one repaint per `within`, however fast they come.
    pub fn send_unhurried(&self, message: M, within: std::time::Duration) -> bool {
        let sent = self.tx.send(message).is_ok();
        if let Some(ctx) = &self.ctx {
            ctx.request_repaint_after(within);
        }
        sent
    }
}

pub struct Job<M> {
    rx: Receiver<M>,
    cancel: Arc<AtomicBool>,
    finished: bool,
    /// What the work panicked with, if it did: the panel shows it instead of waiting forever.
    panic: Arc<Mutex<Option<String>>>,
}

impl<M: Send + 'static> Job<M> {
    pub fn spawn(
        ctx: Option<egui::Context>,
        name: &str,
        work: impl FnOnce(JobSender<M>, Arc<AtomicBool>) + Send + 'static,
    ) -> Job<M> {
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let repaint = ctx.clone();
        let sender = JobSender { tx, ctx };
        let panic = Arc::new(Mutex::new(None));
        let caught = panic.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(sender, flag)));
                if let Err(payload) = result {
                    let text = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "an unknown error".into());
                    if let Ok(mut slot) = caught.lock() {
                        *slot = Some(text);
                    }
                    if let Some(ctx) = repaint {
                        ctx.request_repaint();
                    }
                }
            });
        let panic = if let Err(e) = &spawned {
            Arc::new(Mutex::new(Some(format!("cannot start a thread: {e}"))))
        } else {
            panic
        };
        Job {
            rx,
            cancel,
            finished: spawned.is_err(),
            panic,
        }
    }

    /// Once finished: why the work stopped unexpectedly (a panic), if it did.
    pub fn failure(&self) -> Option<String> {
        self.panic.lock().ok().and_then(|p| p.clone())
    }

    /// Messages that arrived since the last poll; marks the job finished when its thread is gone.
    pub fn poll(&mut self) -> Vec<M> {
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(m) => out.push(m),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.finished = true;
                    break;
                }
            }
        }
        out
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }
}
