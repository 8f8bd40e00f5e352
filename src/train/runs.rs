//! The runs a user has trained, read back from their checkpoints: what the studio's runs list
//! shows and overlays. Nothing here is kept only in memory: a restart reads the same folders.

use std::path::{Path, PathBuf};

use super::{RunHistory, TrainConfig, read_trainer_state};
use crate::model::ModelConfig;
use crate::model::checkpoint;

/// One run as its checkpoint describes it.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub folder: PathBuf,
    /// The folder's name: what exports and the list call the run.
    pub name: String,
    pub model: ModelConfig,
    pub parameters: usize,
    /// Steps trained (the checkpoint's) and planned.
    pub step: u64,
    pub total_steps: Option<u64>,
    pub best_validation: Option<f64>,
    pub wall_s: Option<f64>,
    pub device: Option<String>,
    /// The run's settings, when `trainer.json` is there (a run that can be resumed).
    pub config: Option<TrainConfig>,
    pub history: RunHistory,
    /// The sample files under `samples/`, by step.
    pub samples: Vec<super::samples::SampleFile>,
}

impl RunRecord {
    pub fn resumable(&self) -> bool {
        self.config.is_some()
    }
}

/// The display name of a run folder.
pub fn run_name(folder: &Path) -> String {
    folder.file_name().map_or_else(
        || folder.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Reads a run folder: its `config.json`, and `trainer.json` when there is one. A checkpoint
/// without a trainer file (a bundled model) is listed with what `config.json` says.
pub fn read_run(folder: &Path) -> Result<RunRecord, String> {
    let meta = checkpoint::read_meta(folder).map_err(|e| e.to_string())?;
    let state = match checkpoint::read_trainer_json(folder) {
        Err(checkpoint::CheckpointError::NotResumable) => None,
        _ => Some(read_trainer_state(folder, &meta).map_err(|e| e.to_string())?),
    };
    let history = state
        .as_ref()
        .map(|s| s.history.clone())
        .unwrap_or_default();
    let best_validation = history.best_validation().or(meta.validation_nll);
    Ok(RunRecord {
        folder: folder.to_path_buf(),
        name: run_name(folder),
        parameters: meta.model.parameter_count(),
        step: meta.step,
        total_steps: state.as_ref().map(|s| s.config.steps),
        best_validation,
        wall_s: state.as_ref().map(|s| s.elapsed_s),
        device: state
            .as_ref()
            .map(|s| s.device.clone())
            .filter(|d| !d.is_empty()),
        config: state.map(|s| s.config),
        model: meta.model,
        history,
        samples: super::samples::list_samples(folder),
    })
}

/// Every checkpoint folder directly under `root` plus `extra` (folders the user added), each
/// once, newest first; with the folders that could not be read and why.
pub fn list_runs(root: &Path, extra: &[PathBuf]) -> (Vec<RunRecord>, Vec<String>) {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                // Staged and set-aside checkpoints are hidden siblings, not runs.
                .filter(|p| !run_name(p).starts_with('.') && p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    for f in extra {
        if !folders.contains(f) {
            folders.push(f.clone());
        }
    }
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    for folder in folders {
        if !checkpoint::is_checkpoint(&folder) && folder.starts_with(root) {
            // A run that has not written its first checkpoint yet, or someone's folder.
            continue;
        }
        match read_run(&folder) {
            Ok(run) => runs.push((modified(&folder), run)),
            Err(e) => problems.push(format!("{}: {e}", folder.display())),
        }
    }
    runs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
    (runs.into_iter().map(|(_, r)| r).collect(), problems)
}

fn modified(folder: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(folder.join(checkpoint::CONFIG_FILE))
        .and_then(|m| m.modified())
        .ok()
}
