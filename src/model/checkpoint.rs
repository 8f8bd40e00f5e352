//! A checkpoint is a directory: `config.json` (model, vocabulary, data, step, validation NLL),
//! `model.safetensors` (PyTorch-compatible names), and for resuming `optimizer.safetensors` +
//! `trainer.json`. It is written to a temporary sibling and renamed into place, so a crash never
//! leaves half a checkpoint; loading checks every tensor against the config.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::{ModelConfig, MusicModel};
use crate::tokenizer::VOCAB_VERSION;

pub const CHECKPOINT_FORMAT: u32 = 1;
pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_FILE: &str = "trainer.json";
/// A run's samples (`train::samples`): not part of the checkpoint, but carried through its swaps.
pub const SAMPLES_DIR: &str = "samples";

/// What the data a model was trained on looked like.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub root: String,
    pub files: usize,
    pub hours: f64,
    pub train_events: usize,
    pub validation_events: usize,
}

/// `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    pub model: ModelConfig,
    pub vocab_version: u32,
    pub data: DataSummary,
    pub step: u64,
    pub validation_nll: Option<f64>,
    pub train_loss: Option<f64>,
    pub created_by: String,
}

impl CheckpointMeta {
    pub fn new(model: ModelConfig, data: DataSummary) -> Self {
        CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            model,
            vocab_version: VOCAB_VERSION,
            data,
            step: 0,
            validation_nll: None,
            train_loss: None,
            created_by: format!("echoai {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0} is not a checkpoint: it has no {CONFIG_FILE}")]
    NotACheckpoint(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid checkpoint config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: cannot read the tensors: {message}")]
    Tensors { path: PathBuf, message: String },
    #[error("tensor `{name}` has shape {found:?} but the config needs {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("the checkpoint has no tensor `{0}`, which the config needs")]
    MissingTensor(String),
    #[error("the checkpoint has a tensor `{0}` that the config does not describe")]
    UnexpectedTensor(String),
    #[error(
        "the checkpoint has no optimizer state ({OPTIMIZER_FILE}, {TRAINER_FILE}): it cannot be resumed"
    )]
    NotResumable,
    #[error("tensor `{0}` holds NaN or infinite values: the run that wrote it had diverged")]
    NonFinite(String),
    #[error("{0}")]
    Model(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn tensor_err(path: &Path) -> impl FnOnce(candle_core::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::Tensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// What a resumable checkpoint adds to the weights.
pub struct ResumeState<'a> {
    pub optimizer: HashMap<String, Tensor>,
    pub trainer_json: &'a str,
}

/// The modification time and size of a checkpoint's weights: changes whenever a save replaces
/// them, so a cache of loaded models can tell a retrained checkpoint from the one it holds.
pub type WeightsStamp = (std::time::SystemTime, u64);

pub fn weights_stamp(dir: &Path) -> Option<WeightsStamp> {
    let meta = std::fs::metadata(dir.join(MODEL_FILE)).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
}

/// Written last into a staged checkpoint, after every other file is on disk: a staged folder
/// without it is a half-written one.
pub const COMPLETE_MARKER: &str = ".complete";

/// Writes the checkpoint to a temporary sibling, then swaps it into place.
///
/// Order: stage every file in `.NAME.tmp-PID` and fsync each, add [`COMPLETE_MARKER`], fsync the
/// folder; move the old checkpoint aside to `.NAME.old-PID`, rename the staged one into place,
/// fsync the parent, remove the old one. A kill at any instant leaves a complete checkpoint under
/// `dir`, or under a sibling that [`recover`] (run by every load) renames back into place.
pub fn save(
    dir: &Path,
    meta: &CheckpointMeta,
    weights: &HashMap<String, Tensor>,
    resume: Option<ResumeState>,
) -> Result<(), CheckpointError> {
    let tmp = crate::fsutil::temporary_sibling(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let written = write_files(&tmp, meta, weights, resume)
        .and_then(|()| carry_run_marker(dir, &tmp))
        .and_then(|()| carry_samples(dir, &tmp))
        .and_then(|()| write_synced(&tmp.join(COMPLETE_MARKER), b"complete\n"))
        .and_then(|()| sync_dir(&tmp));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // A directory cannot be renamed over a non-empty one: move the old one aside first, so at
    // every moment one complete checkpoint exists under `dir` or a sibling `recover` finds.
    let old = sibling(dir, "old");
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
    sync_dir(parent)?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// `dir/../.NAME.KIND-PID`.
fn sibling(dir: &Path, kind: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.{kind}-{}", std::process::id()))
}

/// Keeps a run's `RUNNING` marker in the folder across the swap.
fn carry_run_marker(dir: &Path, tmp: &Path) -> Result<(), CheckpointError> {
    let marker = dir.join(crate::run_folder::RUN_MARKER);
    match std::fs::read(&marker) {
        Ok(bytes) if bytes.len() <= 4096 => {
            write_synced(&tmp.join(crate::run_folder::RUN_MARKER), &bytes)
        }
        _ => Ok(()),
    }
}

/// Keeps the run's `samples/` across the swap: each file is hard-linked (copied where a link is
/// refused) into the staged folder before it is marked complete, so whichever folder a kill
/// leaves in place holds them. Only plain files with a sample's name are carried: the folder is
/// the run's own.
fn carry_samples(dir: &Path, tmp: &Path) -> Result<(), CheckpointError> {
    let from = dir.join(SAMPLES_DIR);
    let Ok(entries) = std::fs::read_dir(&from) else {
        return Ok(());
    };
    let to = tmp.join(SAMPLES_DIR);
    std::fs::create_dir(&to).map_err(io_err(&to))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_sample = name.to_string_lossy().starts_with("step-")
            && entry.file_type().is_ok_and(|t| t.is_file());
        if !is_sample {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(io_err(&dst))?;
            sync_file(&dst)?;
        }
    }
    sync_dir(&to)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn sync_file(path: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Makes a folder's entries (a rename, a new file) durable. Not every system can open a folder
/// to sync it; there the rename's own ordering is all we get.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    match std::fs::File::open(dir) {
        Ok(f) => f.sync_all().or_else(|e| {
            if e.kind() == std::io::ErrorKind::InvalidInput {
                Ok(())
            } else {
                Err(io_err(dir)(e))
            }
        }),
        Err(_) => Ok(()),
    }
}

/// The staged (`.NAME.tmp-*`) and set-aside (`.NAME.old-*`) siblings of `dir`, of any process.
fn swap_siblings(dir: &Path) -> Vec<PathBuf> {
    let (Some(name), Some(parent)) = (dir.file_name(), dir.parent()) else {
        return Vec::new();
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let name = name.to_string_lossy();
    let (tmp, old) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with(&tmp) || n.starts_with(&old))
                && n.rsplit('-')
                    .next()
                    .is_some_and(|pid| pid.parse::<u32>().is_ok())
        })
        .map(|e| dir.with_file_name(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Finishes a checkpoint swap that a kill interrupted: when `dir` holds no checkpoint but a
/// complete staged or set-aside sibling exists, the newest (by step) is renamed into place.
/// Siblings left over once `dir` is a checkpoint are removed, except another live process's
/// staging folder. Returns what it did, for the log.
pub fn recover(dir: &Path) -> Result<Option<String>, CheckpointError> {
    let siblings = swap_siblings(dir);
    if siblings.is_empty() {
        return Ok(None);
    }
    let mut note = None;
    if !is_complete_checkpoint(dir) {
        let best = siblings
            .iter()
            .filter(|p| is_complete_checkpoint(p))
            .max_by_key(|p| read_meta_only(p).map_or(0, |m| m.step));
        if let Some(best) = best {
            if dir.exists() {
                // Only a folder that holds nothing but a run marker can stand in the way here
                // (check_out_folder refuses anything else); keep it aside rather than delete.
                let aside = sibling(dir, "old");
                std::fs::rename(dir, &aside).map_err(io_err(dir))?;
            }
            std::fs::rename(best, dir).map_err(io_err(dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            note = Some(format!(
                "recovered the checkpoint in {} from an interrupted save ({})",
                dir.display(),
                best.display()
            ));
        }
    }
    if is_complete_checkpoint(dir) {
        for stale in swap_siblings(dir) {
            if staged_by_live_process(&stale) {
                continue;
            }
            let _ = std::fs::remove_dir_all(&stale);
        }
    }
    Ok(note)
}

fn staged_by_live_process(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let pid = name
        .as_deref()
        .and_then(|n| n.rsplit('-').next())
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) if pid == std::process::id() => false,
        Some(pid) => cfg!(target_os = "linux") && Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// A folder that holds a config and weights that were completely written: `dir` itself after a
/// swap, or a staged sibling with its [`COMPLETE_MARKER`].
fn is_complete_checkpoint(dir: &Path) -> bool {
    let staged = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
    is_checkpoint(dir)
        && dir.join(MODEL_FILE).is_file()
        && (!staged || dir.join(COMPLETE_MARKER).is_file() || looks_set_aside(dir))
}

/// A `.NAME.old-PID` folder was a live checkpoint before the swap moved it aside.
fn looks_set_aside(dir: &Path) -> bool {
    dir.file_name()
        .is_some_and(|n| n.to_string_lossy().contains(".old-"))
}

fn write_files(
    dir: &Path,
    meta: &CheckpointMeta,
    weights: &HashMap<String, Tensor>,
    resume: Option<ResumeState>,
) -> Result<(), CheckpointError> {
    let config = serde_json::to_string_pretty(meta).map_err(|e| CheckpointError::Config {
        path: dir.join(CONFIG_FILE),
        message: e.to_string(),
    })?;
    write_synced(&dir.join(CONFIG_FILE), config.as_bytes())?;
    let path = dir.join(MODEL_FILE);
    candle_core::safetensors::save(weights, &path).map_err(tensor_err(&path))?;
    sync_file(&path)?;
    if let Some(resume) = resume {
        let path = dir.join(OPTIMIZER_FILE);
        candle_core::safetensors::save(&resume.optimizer, &path).map_err(tensor_err(&path))?;
        sync_file(&path)?;
        write_synced(&dir.join(TRAINER_FILE), resume.trainer_json.as_bytes())?;
    }
    Ok(())
}

/// Reads and checks `config.json`, first finishing any swap a kill interrupted ([`recover`]).
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    recover(dir)?;
    read_meta_only(dir)
}

fn read_meta_only(dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(CheckpointError::NotACheckpoint(dir.to_path_buf()));
    }
    let text = read_bounded(&path, MAX_CONFIG_JSON_BYTES)?;
    let meta: CheckpointMeta =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
    if meta.vocab_version != VOCAB_VERSION {
        return Err(CheckpointError::Config {
            path,
            message: format!(
                "vocabulary version {} (this build reads {VOCAB_VERSION})",
                meta.vocab_version
            ),
        });
    }
    meta.model
        .validate()
        .map_err(|message| CheckpointError::Config { path, message })?;
    Ok(meta)
}

/// The parameter names and shapes a config needs (from the sizes alone, no allocation).
pub fn expected_shapes(config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>, CheckpointError> {
    config.validate().map_err(CheckpointError::Model)?;
    Ok(config.parameter_shapes())
}

/// Reads `model.safetensors` as f32 tensors on `device` and checks every name and shape.
pub fn load_weights(
    dir: &Path,
    config: &ModelConfig,
    device: &Device,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let path = dir.join(MODEL_FILE);
    if !path.is_file() {
        return Err(CheckpointError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        });
    }
    let tensors = candle_core::safetensors::load(&path, device).map_err(tensor_err(&path))?;
    check_tensors(&tensors, &expected_shapes(config)?)?;
    for (name, t) in &tensors {
        check_finite(name, t, &path)?;
    }
    tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(DType::F32).map_err(tensor_err(&path))?)))
        .collect()
}

pub fn check_tensors(
    tensors: &HashMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
) -> Result<(), CheckpointError> {
    for (name, shape) in expected {
        let found = tensors
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor(name.clone()))?;
        if found.dims() != shape.as_slice() {
            return Err(CheckpointError::ShapeMismatch {
                name: name.clone(),
                expected: shape.clone(),
                found: found.dims().to_vec(),
            });
        }
    }
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|k| !expected.iter().any(|(n, _)| n == *k))
        .collect();
    extra.sort();
    match extra.first() {
        Some(name) => Err(CheckpointError::UnexpectedTensor((*name).clone())),
        None => Ok(()),
    }
}

/// A model for generation or evaluation: weights as plain tensors, so no autograd graph is built.
pub fn load_for_inference(
    dir: &Path,
    device: &Device,
) -> Result<(MusicModel, CheckpointMeta), CheckpointError> {
    let meta = read_meta(dir)?;
    let weights = load_weights(dir, &meta.model, device)?;
    let vb = VarBuilder::from_tensors(weights, DType::F32, device);
    let model =
        MusicModel::new(&meta.model, vb).map_err(|e| CheckpointError::Model(e.to_string()))?;
    Ok((model, meta))
}

/// Copies a checkpoint's weights into the variables of a training model.
pub fn load_into_varmap(
    dir: &Path,
    config: &ModelConfig,
    varmap: &VarMap,
) -> Result<(), CheckpointError> {
    let device = varmap
        .all_vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let weights = load_weights(dir, config, &device)?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| CheckpointError::Model("poisoned variable map".into()))?;
    for (name, var) in vars.iter() {
        let t = weights
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor(name.clone()))?;
        var.set(t)
            .map_err(|e| CheckpointError::Model(e.to_string()))?;
    }
    Ok(())
}

/// The named tensors of a variable map, detached, for saving.
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .map(|vars| {
            vars.iter()
                .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
                .collect()
        })
        .unwrap_or_default()
}

/// `optimizer.safetensors`: AdamW's moments.
pub fn load_optimizer_moments(
    dir: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let opt = dir.join(OPTIMIZER_FILE);
    if !opt.is_file() || !dir.join(TRAINER_FILE).is_file() {
        return Err(CheckpointError::NotResumable);
    }
    let tensors = candle_core::safetensors::load(&opt, device).map_err(tensor_err(&opt))?;
    for (name, t) in &tensors {
        check_finite(name, t, &opt)?;
    }
    Ok(tensors)
}

/// `trainer.json`'s text (at most [`MAX_TRAINER_JSON_BYTES`]).
pub fn read_trainer_json(dir: &Path) -> Result<String, CheckpointError> {
    let trainer = dir.join(TRAINER_FILE);
    if !trainer.is_file() || !dir.join(OPTIMIZER_FILE).is_file() {
        return Err(CheckpointError::NotResumable);
    }
    read_bounded(&trainer, MAX_TRAINER_JSON_BYTES)
}

/// A training run's state with its full loss history stays far below this.
pub const MAX_TRAINER_JSON_BYTES: u64 = 256 * 1024 * 1024;
/// `config.json` is a few hundred bytes.
pub const MAX_CONFIG_JSON_BYTES: u64 = 1024 * 1024;

fn read_bounded(path: &Path, limit: u64) -> Result<String, CheckpointError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(io_err(path))?;
    if text.len() as u64 > limit {
        return Err(CheckpointError::Config {
            path: path.to_path_buf(),
            message: format!("larger than the {limit}-byte limit for this file"),
        });
    }
    Ok(text)
}

/// Refuses a tensor holding NaN or an infinity: such weights generate noise without a word.
fn check_finite(name: &str, t: &Tensor, path: &Path) -> Result<(), CheckpointError> {
    let values = t
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(tensor_err(path))?;
    if values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(CheckpointError::NonFinite(name.to_string()))
    }
}
