//! Hearing a model learn: every N steps (and on demand) a run makes two short pieces from its
//! current weights, with fixed seeds so that one step's samples compare with another's: one from
//! silence, one continuing a fixed primer from the validation split. They are written atomically
//! to `<run>/samples/step-NNNNN-silence.mid` and `step-NNNNN-primer.mid`, and carried through
//! every checkpoint swap.
//!
//! Where they are made is [`Sampling`]: on the training thread between steps with the CPU
//! stepper (no second copy of the weights), or in a job on a CPU copy of the weights while
//! training goes on (`sample_job.rs`). Either way the files are written by the training thread
//! between steps, so nothing races a checkpoint swap.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::generate::{GenerateConfig, generate};
use crate::model::MusicModel;
use crate::performance::Performance;
use crate::tokenizer::{Decoder, START};

/// The folder, inside a run's folder, that holds its samples.
pub const SAMPLES_DIR: &str = crate::model::checkpoint::SAMPLES_DIR;
/// Seconds of new music in each sample.
pub const SAMPLE_SECONDS: f64 = 10.0;
/// Seconds of the validation piece the primed sample continues.
pub const PRIMER_SECONDS: f64 = 5.0;
/// The seeds of the two samples: the same at every step, so only the weights change.
const SEED_FROM_SILENCE: u64 = 1;
const SEED_FROM_PRIMER: u64 = 2;

/// Where a run makes its samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// In a job: measured on 2 CPU cores, a job hid about a third of the sampling time that
    /// inline sampling adds (`docs/BENCHMARKS.md`), and on a GPU the CPU is otherwise idle.
    #[default]
    Auto,
    /// On the training thread, between steps.
    Inline,
    /// In a job on a snapshot of the weights, while training goes on.
    Job,
}

impl Sampling {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Self::Auto),
            "inline" => Some(Self::Inline),
            "job" => Some(Self::Job),
            _ => None,
        }
    }

    /// Whether a run on `device` samples in a job.
    pub fn in_job(self) -> bool {
        self != Self::Inline
    }
}

/// One sample file of a run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SampleFile {
    pub step: u64,
    /// `silence` or `primer`.
    pub kind: String,
    pub path: PathBuf,
}

/// `step-00500-silence.mid` for step 500 (five digits at least, so names sort by step).
pub fn sample_name(step: u64, kind: &str) -> String {
    format!("step-{step:05}-{kind}.mid")
}

/// The run's samples, by step then kind (files named otherwise are left out, never touched).
pub fn list_samples(run: &Path) -> Vec<SampleFile> {
    let Ok(entries) = std::fs::read_dir(run.join(SAMPLES_DIR)) else {
        return Vec::new();
    };
    let mut found: Vec<SampleFile> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("step-")?.strip_suffix(".mid")?;
            let (step, kind) = rest.split_once('-')?;
            Some(SampleFile {
                step: step.parse().ok()?,
                kind: kind.to_string(),
                path: e.path(),
            })
        })
        .collect();
    found.sort();
    found
}

/// The first `seconds` of the first piece of `stream` (the validation split), as the primer.
pub fn fixed_primer(stream: &[u16], seconds: f64) -> Option<Performance> {
    let start = stream.iter().position(|&id| id == START)?;
    let mut decoder = Decoder::new();
    for &id in &stream[start..] {
        if decoder.time() >= seconds || (id == START && decoder.time() > 0.0) {
            break;
        }
        decoder.push(id);
    }
    let mut primer = decoder.finish();
    for n in &mut primer.notes {
        n.end = n.end.min(seconds.max(n.start + 0.01));
    }
    primer.normalize();
    (!primer.notes.is_empty()).then_some(primer)
}

/// Makes and writes the two samples of `step`; returns the files written.
pub fn write_samples(
    model: &MusicModel,
    run: &Path,
    step: u64,
    primer: Option<&Performance>,
) -> Result<Vec<PathBuf>, String> {
    let takes = make_samples(model, step, primer)?;
    write_sample_files(run, step, &takes)
}

/// The two samples of `step` (`silence`, and `primer` when there is one), in memory.
pub fn make_samples(
    model: &MusicModel,
    step: u64,
    primer: Option<&Performance>,
) -> Result<Vec<(&'static str, Performance)>, String> {
    let never = AtomicBool::new(false);
    let mut made = Vec::new();
    let jobs = [
        ("silence", None, SEED_FROM_SILENCE),
        ("primer", primer, SEED_FROM_PRIMER),
    ];
    for (kind, primer, seed) in jobs {
        if kind == "primer" && primer.is_none() {
            continue;
        }
        let config = GenerateConfig {
            max_seconds: SAMPLE_SECONDS,
            min_seconds: SAMPLE_SECONDS,
            // An early model may play chords without time passing; this bounds the cost.
            max_events: 4000,
            seed,
            ..GenerateConfig::default()
        };
        let takes = generate(model, primer, &config, &never, &mut |_| {})
            .map_err(|e| format!("sampling at step {step}: {e}"))?;
        if let Some(take) = takes.into_iter().next() {
            made.push((kind, take.performance));
        }
    }
    Ok(made)
}

/// Writes samples made by [`make_samples`] into the run's `samples/` folder. Only the training
/// thread calls this, between steps, so a file never lands in a folder a checkpoint swap is
/// moving aside.
pub fn write_sample_files(
    run: &Path,
    step: u64,
    takes: &[(&'static str, Performance)],
) -> Result<Vec<PathBuf>, String> {
    let dir = run.join(SAMPLES_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (kind, performance) in takes {
        let path = dir.join(sample_name(step, kind));
        crate::midi::write_midi(performance, &path).map_err(|e| e.to_string())?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_files_are_listed_by_step_and_others_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let samples = dir.path().join(SAMPLES_DIR);
        std::fs::create_dir(&samples).unwrap();
        for name in [
            sample_name(1000, "silence"),
            sample_name(500, "primer"),
            sample_name(500, "silence"),
            "notes.txt".into(),
            "step-x-silence.mid".into(),
        ] {
            std::fs::write(samples.join(name), b"").unwrap();
        }
        let found: Vec<(u64, String)> = list_samples(dir.path())
            .into_iter()
            .map(|s| (s.step, s.kind))
            .collect();
        assert_eq!(
            found,
            vec![
                (500, "primer".into()),
                (500, "silence".into()),
                (1000, "silence".into())
            ]
        );
    }

    #[test]
    fn the_primer_is_the_start_of_the_first_piece() {
        let perf =
            crate::midi::read_midi(std::path::Path::new("assets/corpus/piano/fur-elise.mid"))
                .unwrap();
        let mut stream = vec![5u16, 6];
        stream.extend(crate::tokenizer::encode_piece(&perf));
        let primer = fixed_primer(&stream, 5.0).unwrap();
        assert!(primer.end_time() <= 5.0 + 1e-9);
        assert!(primer.end_time() > 3.0, "{}", primer.end_time());
        assert_eq!(primer.notes[0].pitch, perf.notes[0].pitch);
    }
}
