//! The folder a training run writes: which folders a run may use, and the marker that records a
//! run in progress, so that a run that died (killed, out of memory, power cut) is reported the
//! next time and offered for resuming.
//!
//! A run writes `RUNNING` (JSON: process id, start time, step) into its folder when it starts,
//! carries it through every checkpoint swap, and removes it when it ends in any orderly way
//! (finished, stopped, or failed with an error it reported). A `RUNNING` whose process is gone
//! therefore means the run died without a word.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::checkpoint::{self, CheckpointMeta};

pub const RUN_MARKER: &str = "RUNNING";

/// What `RUNNING` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMarker {
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// The step the run started (or resumed) from.
    pub start_step: u64,
}

/// A run that did not finish: its marker, and the checkpoint it left (if any).
#[derive(Clone, Debug, PartialEq)]
pub struct UnfinishedRun {
    pub folder: PathBuf,
    pub marker: RunMarker,
    /// The last checkpoint's step, when there is one to resume.
    pub checkpoint_step: Option<u64>,
}

impl UnfinishedRun {
    /// One line for the CLI and the studio.
    pub fn describe(&self) -> String {
        let resume = match self.checkpoint_step {
            Some(step) => format!("its last checkpoint (step {step}) can be resumed"),
            None => "it wrote no checkpoint".to_string(),
        };
        format!(
            "the run in {} did not finish (process {} ended without saving, having started at step {}): {resume}",
            self.folder.display(),
            self.marker.pid,
            self.marker.start_step
        )
    }
}

/// Whether `folder` may take a run: absent, empty, holding only a dead run's marker, or (to
/// resume) a checkpoint. Anything else is someone's folder and is refused untouched.
pub fn check_out_folder(folder: &Path, resume: bool) -> Result<(), String> {
    if let Some(other) = live_run(folder) {
        return Err(format!(
            "{} is being trained by another process ({}); stop it first, or choose another folder",
            folder.display(),
            other.pid
        ));
    }
    checkpoint::recover(folder).map_err(|e| e.to_string())?;
    let is_checkpoint = checkpoint::is_checkpoint(folder);
    if resume {
        return if is_checkpoint {
            Ok(())
        } else {
            Err(format!(
                "cannot resume: {} holds no checkpoint",
                folder.display()
            ))
        };
    }
    if is_checkpoint {
        let died = unfinished_run(folder).map_or(String::new(), |u| format!(" ({})", u.describe()));
        return Err(format!(
            "{} already holds a checkpoint{died}: pass --resume to continue it, or choose another --out",
            folder.display()
        ));
    }
    if !folder.exists() {
        return Ok(());
    }
    if !folder.is_dir() {
        return Err(format!(
            "{} exists and is not a folder: choose another --out",
            folder.display()
        ));
    }
    let entries =
        std::fs::read_dir(folder).map_err(|e| format!("cannot read {}: {e}", folder.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", folder.display()))?;
        if entry.file_name() != RUN_MARKER {
            return Err(format!(
                "{} is not empty and is not a checkpoint (it holds {}): training would replace it, so choose an empty or new folder for --out",
                folder.display(),
                entry.file_name().to_string_lossy()
            ));
        }
    }
    Ok(())
}

/// Writes the marker for a run starting at `start_step` (creating the folder if needed).
pub fn mark_running(folder: &Path, start_step: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    let marker = RunMarker {
        pid: std::process::id(),
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        start_step,
    };
    let json = serde_json::to_vec_pretty(&marker).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&folder.join(RUN_MARKER), &json)
}

/// Removes this process's marker (a run ending in an orderly way).
pub fn mark_ended(folder: &Path) {
    if read_marker(folder).is_some_and(|m| m.pid == std::process::id()) {
        let _ = std::fs::remove_file(folder.join(RUN_MARKER));
    }
}

pub fn read_marker(folder: &Path) -> Option<RunMarker> {
    let text = std::fs::read(folder.join(RUN_MARKER)).ok()?;
    // A marker is at most a few hundred bytes; anything else was not written by us.
    if text.len() > 4096 {
        return None;
    }
    serde_json::from_slice(&text).ok()
}

/// The run that died in `folder`, if its marker outlived its process.
pub fn unfinished_run(folder: &Path) -> Option<UnfinishedRun> {
    let marker = read_marker(folder)?;
    if process_alive(marker.pid) {
        return None;
    }
    let checkpoint_step = checkpoint::read_meta(folder)
        .ok()
        .map(|m: CheckpointMeta| m.step);
    Some(UnfinishedRun {
        folder: folder.to_path_buf(),
        marker,
        checkpoint_step,
    })
}

/// The marker of a run still going in `folder` in another process.
fn live_run(folder: &Path) -> Option<RunMarker> {
    let marker = read_marker(folder)?;
    (marker.pid != std::process::id() && process_alive(marker.pid)).then_some(marker)
}

/// Whether a process with this id is running this same program (Linux: `/proc`). Elsewhere, or
/// when the id now belongs to another program, the run is taken as gone, so a stale marker never
/// locks a folder forever.
fn process_alive(pid: u32) -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    let exe = |p: &str| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    match (exe(&pid.to_string()), exe("self")) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => false,
    }
}
