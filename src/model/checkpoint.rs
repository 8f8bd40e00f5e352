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

pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
}

/// Writes the checkpoint to a temporary sibling, then swaps it into place.
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
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let written = write_files(&tmp, meta, weights, resume);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // A directory cannot be renamed over a non-empty one: move the old one aside first, so at
    // every moment one complete checkpoint exists under `dir` or its `.old` sibling.
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
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
    let path = dir.join(CONFIG_FILE);
    std::fs::write(&path, config).map_err(io_err(&path))?;
    let path = dir.join(MODEL_FILE);
    candle_core::safetensors::save(weights, &path).map_err(tensor_err(&path))?;
    if let Some(resume) = resume {
        let path = dir.join(OPTIMIZER_FILE);
        candle_core::safetensors::save(&resume.optimizer, &path).map_err(tensor_err(&path))?;
        let path = dir.join(TRAINER_FILE);
        std::fs::write(&path, resume.trainer_json).map_err(io_err(&path))?;
    }
    Ok(())
}

pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(CheckpointError::NotACheckpoint(dir.to_path_buf()));
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
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

/// The parameter names and shapes a config needs, from a model built on the CPU.
pub fn expected_shapes(config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>, CheckpointError> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    MusicModel::new(config, vb).map_err(|e| CheckpointError::Model(e.to_string()))?;
    let mut shapes: Vec<(String, Vec<usize>)> = varmap
        .data()
        .lock()
        .map_err(|_| CheckpointError::Model("poisoned variable map".into()))?
        .iter()
        .map(|(name, var)| (name.clone(), var.dims().to_vec()))
        .collect();
    shapes.sort();
    Ok(shapes)
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

pub fn load_optimizer(
    dir: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, String), CheckpointError> {
    let opt = dir.join(OPTIMIZER_FILE);
    let trainer = dir.join(TRAINER_FILE);
    if !opt.is_file() || !trainer.is_file() {
        return Err(CheckpointError::NotResumable);
    }
    let tensors = candle_core::safetensors::load(&opt, device).map_err(tensor_err(&opt))?;
    let json = std::fs::read_to_string(&trainer).map_err(io_err(&trainer))?;
    Ok((tensors, json))
}
