//! Sampling new music from a model: from START or a primer, with temperature, top-k, top-p and a
//! seed; several variations at once as one batch; events streamed to a callback; cancellable.
//! [`constraints`] steers each draw (key, range, density, dynamics, polyphony, note length).

pub mod constraints;
pub mod music_terms;

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::midi::MAX_PIECE_SECONDS;
use crate::model::{MusicModel, Stepper, WeightPrecision};
use crate::performance::{Note, Performance};
use crate::rng::Rng;
use crate::tokenizer::{self, Decoder, END, START};

pub use constraints::Constraints;
use constraints::SteeringState;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateConfig {
    /// Divides the logits: below 1 is safer, above 1 wilder.
    pub temperature: f64,
    /// Keep only the k most likely events (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of events whose probability reaches p (`None` or 1: all).
    pub top_p: Option<f64>,
    /// Stop after this many seconds of new music.
    pub max_seconds: f64,
    /// The model may not end the piece (END) before this many seconds of new music; 0 lets it
    /// end whenever it likes. The demo corpus is full of one-minute chorales, so without this a
    /// request for 30 s sometimes ends after two.
    pub min_seconds: f64,
    /// Stop after this many new events.
    pub max_events: usize,
    pub seed: u64,
    pub variations: usize,
    /// How the model's weights are held while sampling (bfloat16: faster, not bit-identical).
    #[serde(default)]
    pub precision: WeightPrecision,
    /// How long the primer lasts, silence after its last note included (`None`: until its last
    /// note ends). "Regenerate from here" cuts at the playhead, which may fall in a rest.
    #[serde(default)]
    pub primer_length: Option<f64>,
    /// The new part starts with a note at the primer's end, not with a rest ("Continue": a rest
    /// there would be a gap after the last note).
    #[serde(default)]
    pub open_with_note: bool,
    /// Key, range, density, dynamics, polyphony and note-length limits on every draw.
    #[serde(default)]
    pub constraints: Constraints,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.95),
            max_seconds: 30.0,
            min_seconds: 0.0,
            max_events: 20_000,
            seed: 1,
            variations: 1,
            precision: WeightPrecision::F32,
            primer_length: None,
            open_with_note: false,
            constraints: Constraints::default(),
        }
    }
}

impl GenerateConfig {
    /// Explains the first setting out of range, naming it as the command line does.
    pub fn validate(&self) -> Result<(), String> {
        use crate::bounds::{check, check_positive};
        check_positive("temperature", self.temperature, MAX_TEMPERATURE)?;
        if let Some(p) = self.top_p {
            check_positive("top-p", p, 1.0)?;
        }
        if let Some(k) = self.top_k {
            check("top-k", k, 1..=crate::tokenizer::VOCAB_SIZE)?;
        }
        check("variations", self.variations, 1..=MAX_VARIATIONS)?;
        check_positive("seconds", self.max_seconds, MAX_PIECE_SECONDS)?;
        check("min-seconds", self.min_seconds, 0.0..=MAX_PIECE_SECONDS)?;
        check("max-events", self.max_events, 1..=MAX_EVENTS)?;
        if let Some(l) = self.primer_length {
            check("primer-seconds", l, 0.0..=MAX_PIECE_SECONDS)?;
        }
        self.constraints.validate()
    }
}

/// Upper bounds of [`GenerateConfig::validate`].
pub const MAX_TEMPERATURE: f64 = 100.0;
pub const MAX_VARIATIONS: usize = 64;
pub const MAX_EVENTS: usize = 2_000_000;

/// One generated piece.
#[derive(Clone, Debug, PartialEq)]
pub struct Take {
    /// The primer's notes followed by the new ones.
    pub performance: Performance,
    /// Where the primer ends and the generated music begins, in seconds.
    pub primer_seconds: f64,
    /// The new notes alone, at their times in the piece (on the model's 10 ms grid), for
    /// [`splice`] to join to the primer's own, unquantised notes.
    pub generated: Performance,
    /// The new event ids (not the primer's).
    pub events: Vec<u16>,
    /// Whether the model ended the piece itself (END) rather than hitting a length limit.
    pub ended_by_model: bool,
}

/// What the callback hears as events are sampled.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub variation: usize,
    pub id: u16,
    /// The note this event completed, if it completed one.
    pub note: Option<Note>,
    /// Seconds of new music so far in this variation.
    pub seconds: f64,
    pub decoder: &'a Decoder,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0}")]
    Config(String),
    #[error("cancelled")]
    Cancelled,
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Generates `config.variations` pieces as one batch.
pub fn generate(
    model: &MusicModel,
    primer: Option<&Performance>,
    config: &GenerateConfig,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(Progress),
) -> Result<Vec<Take>, GenerateError> {
    config.validate().map_err(GenerateError::Config)?;
    let batch = config.variations;
    let mut stepper = Stepper::new(model, batch, config.precision)?;

    // The primer is START plus its events, fed through the model; its last logits start sampling.
    let mut prefix = vec![START];
    let mut primer_seconds = primer.map_or(0.0, |p| p.end_time());
    if let Some(p) = primer {
        prefix.extend(tokenizer::encode(p));
        if let Some(length) = config.primer_length.filter(|&l| l > primer_seconds) {
            // The rest between the primer's last note and the cut is part of the primer.
            let mut rest = to_steps(length) - to_steps(primer_seconds);
            while rest > 0 {
                let k = rest.min(tokenizer::MAX_SHIFT_STEPS as u64);
                prefix.push(tokenizer::Event::TimeShift(k as u32).id());
                rest -= k;
            }
            primer_seconds = length;
        }
    }
    let vocab = model.config.vocab_size;
    let mut logits = Vec::new();
    for &id in &prefix {
        if cancel.load(Ordering::Relaxed) {
            return Err(GenerateError::Cancelled);
        }
        logits.clear();
        logits.extend_from_slice(stepper.step(&vec![id as u32; batch])?);
    }

    let mut rngs: Vec<Rng> = (0..batch)
        .map(|v| Rng::new(config.seed.wrapping_add(v as u64 * 0x9e37_79b9)))
        .collect();
    let mut decoders: Vec<Decoder> = (0..batch).map(|_| decoder_after(&prefix)).collect();
    let mut fresh: Vec<Decoder> = (0..batch).map(|_| fresh_decoder(&prefix)).collect();
    let mut events: Vec<Vec<u16>> = vec![Vec::new(); batch];
    let mut done = vec![false; batch];
    let mut ended_by_model = vec![false; batch];
    let primed_with_velocity = prefix.iter().any(|&id| {
        matches!(
            tokenizer::Event::from_id(id),
            Some(tokenizer::Event::Velocity(_))
        )
    });
    let mut has_velocity = vec![primed_with_velocity; batch];
    let mut probs = Vec::with_capacity(tokenizer::VOCAB_SIZE);
    let steering = config.constraints.compile();
    let mut primed = SteeringState::default();
    for &id in &prefix {
        primed.observe(id);
    }
    primed.begin_generation();
    let mut steering_states = vec![primed; batch];
    let mut steered = Vec::with_capacity(vocab);
    for _ in 0..config.max_events {
        if cancel.load(Ordering::Relaxed) {
            return Err(GenerateError::Cancelled);
        }
        let rows: Vec<&[f32]> = logits.chunks_exact(vocab).collect();
        let mut next = Vec::with_capacity(batch);
        for v in 0..batch {
            if done[v] {
                next.push(END as u32);
                continue;
            }
            let allowed = Allowed {
                end: decoders[v].time() - primer_seconds >= config.min_seconds,
                notes: has_velocity[v],
            };
            let must_open = config.open_with_note && steering_states[v].new_notes() == 0;
            let id = if steering.is_active() || must_open {
                steered.clear();
                steered.extend_from_slice(rows[v]);
                match steering.steer(&steering_states[v], &mut steered) {
                    Some(forced) => forced,
                    None => {
                        if must_open {
                            // No time passes (and no END) before the first new NOTE_ON.
                            let shifts = tokenizer::TIME_SHIFT as usize
                                ..tokenizer::TIME_SHIFT as usize
                                    + tokenizer::MAX_SHIFT_STEPS as usize;
                            steered[shifts].fill(f32::NEG_INFINITY);
                            steered[END as usize] = f32::NEG_INFINITY;
                        }
                        sample(&steered, config, allowed, &mut rngs[v], &mut probs)
                    }
                }
            } else {
                sample(rows[v], config, allowed, &mut rngs[v], &mut probs)
            };
            steering_states[v].observe(id);
            has_velocity[v] |= matches!(
                tokenizer::Event::from_id(id),
                Some(tokenizer::Event::Velocity(_))
            );
            let note = decoders[v].push(id);
            fresh[v].push(id);
            events[v].push(id);
            let seconds = decoders[v].time() - primer_seconds;
            if id == END {
                done[v] = true;
                ended_by_model[v] = true;
            } else if seconds >= config.max_seconds {
                done[v] = true;
            }
            on_event(Progress {
                variation: v,
                id,
                note,
                seconds,
                decoder: &decoders[v],
            });
            next.push(id as u32);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        logits.clear();
        logits.extend_from_slice(stepper.step(&next)?);
    }

    // Notes are cut at the length limit, as a player would stop there.
    let limit = primer_seconds + config.max_seconds;
    let finish = |decoder: Decoder| {
        let mut performance = decoder.finish();
        for n in &mut performance.notes {
            n.end = n.end.min(limit.max(n.start + 0.01));
        }
        performance.normalize();
        performance
    };
    Ok(decoders
        .into_iter()
        .zip(fresh)
        .zip(events)
        .zip(ended_by_model)
        .map(|(((decoder, fresh), events), ended_by_model)| Take {
            performance: finish(decoder),
            generated: finish(fresh),
            primer_seconds,
            events,
            ended_by_model,
        })
        .collect())
}

fn to_steps(seconds: f64) -> u64 {
    (seconds.max(0.0) * tokenizer::STEPS_PER_SECOND).round() as u64
}

/// A decoder at the prefix's time and velocity, but holding none of its notes: it collects
/// only what is sampled after.
fn fresh_decoder(prefix: &[u16]) -> Decoder {
    let mut d = Decoder::new();
    let last_velocity = prefix.iter().rev().copied().find(|&id| {
        matches!(
            tokenizer::Event::from_id(id),
            Some(tokenizer::Event::Velocity(_))
        )
    });
    if let Some(id) = last_velocity {
        d.push(id);
    }
    for &id in prefix {
        if let Some(tokenizer::Event::TimeShift(_)) = tokenizer::Event::from_id(id) {
            d.push(id);
        }
    }
    d
}

/// The primer's own notes, exactly as given, followed by a take's new notes: what "Regenerate
/// from here", "Continue" and `--keep-primer` hand back. The new notes are moved by under 5 ms
/// so they start no earlier than the primer's end (the model's grid is 10 ms; the cut need not
/// be on it), and no primer note is changed.
pub fn splice(primer: &Performance, take: &Take) -> Performance {
    let cut = take.primer_seconds;
    let grid = to_steps(cut) as f64 / tokenizer::STEPS_PER_SECOND;
    let shift = (cut - grid).max(0.0);
    let mut notes = primer.first_seconds(cut).notes;
    notes.extend(take.generated.notes.iter().map(|n| Note {
        start: n.start + shift,
        end: n.end + shift,
        ..*n
    }));
    Performance::from_notes(notes)
}

fn decoder_after(prefix: &[u16]) -> Decoder {
    let mut d = Decoder::new();
    for &id in prefix {
        d.push(id);
    }
    d
}

/// Which events the grammar of a piece allows next (START is never allowed).
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    /// END: only after the minimum length.
    pub end: bool,
    /// NOTE_ON and NOTE_OFF: only once a VELOCITY has set the dynamics, as every encoded piece
    /// does. Without this a model may open a piece as if in the middle of one, with releases of
    /// notes never struck and onsets at the decoder's default velocity.
    pub notes: bool,
}

/// Draws one id from logits with temperature, top-k and top-p, among the `allowed` events.
pub fn sample(
    logits: &[f32],
    config: &GenerateConfig,
    allowed: Allowed,
    rng: &mut Rng,
    probs: &mut Vec<(f64, u16)>,
) -> u16 {
    probs.clear();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    for (id, &l) in logits.iter().enumerate() {
        let id16 = id as u16;
        let forbidden = id16 == START
            || (id16 == END && !allowed.end)
            || (id16 < tokenizer::TIME_SHIFT && !allowed.notes);
        if forbidden || !l.is_finite() {
            continue;
        }
        probs.push((((l as f64 - max) / config.temperature).exp(), id as u16));
    }
    if probs.is_empty() {
        return END;
    }
    probs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    if let Some(k) = config.top_k {
        probs.truncate(k.max(1));
    }
    let total: f64 = probs.iter().map(|p| p.0).sum();
    if let Some(p) = config.top_p.filter(|&p| p < 1.0) {
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (i, &(w, _)) in probs.iter().enumerate() {
            cumulative += w / total;
            if cumulative >= p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().map(|p| p.0).sum();
    let mut target = rng.next_f64() * total;
    for &(w, id) in probs.iter() {
        if target < w {
            return id;
        }
        target -= w;
    }
    probs.last().map_or(END, |p| p.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANY: Allowed = Allowed {
        end: true,
        notes: true,
    };

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let mut logits = vec![0.0f32; tokenizer::VOCAB_SIZE];
        logits[60] = 10.0;
        logits[START as usize] = 100.0;
        logits[61] = 9.0;
        let mut rng = Rng::new(3);
        let mut probs = Vec::new();
        let greedy = GenerateConfig {
            top_k: Some(1),
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &greedy, ANY, &mut rng, &mut probs), 60);
        }
        let nucleus = GenerateConfig {
            top_p: Some(0.5),
            top_k: None,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &nucleus, ANY, &mut rng, &mut probs), 60);
        }
        let wide = GenerateConfig {
            top_p: Some(0.99),
            top_k: Some(2),
            ..Default::default()
        };
        let draws: Vec<u16> = (0..200)
            .map(|_| sample(&logits, &wide, ANY, &mut rng, &mut probs))
            .collect();
        assert!(draws.contains(&60) && draws.contains(&61));
        assert!(draws.iter().all(|&d| d == 60 || d == 61));
    }

    #[test]
    fn end_is_held_back_until_allowed() {
        let mut logits = vec![0.0f32; tokenizer::VOCAB_SIZE];
        logits[END as usize] = 50.0;
        let mut rng = Rng::new(1);
        let mut probs = Vec::new();
        let config = GenerateConfig::default();
        for _ in 0..50 {
            assert_ne!(
                sample(
                    &logits,
                    &config,
                    Allowed {
                        end: false,
                        notes: true
                    },
                    &mut rng,
                    &mut probs
                ),
                END
            );
        }
        assert_eq!(sample(&logits, &config, ANY, &mut rng, &mut probs), END);
        // Before any VELOCITY, no note event is drawn however likely.
        let mut logits = vec![0.0f32; tokenizer::VOCAB_SIZE];
        logits[60] = 50.0;
        logits[128 + 60] = 50.0;
        for _ in 0..50 {
            let id = sample(
                &logits,
                &config,
                Allowed {
                    end: true,
                    notes: false,
                },
                &mut rng,
                &mut probs,
            );
            assert!(id >= tokenizer::TIME_SHIFT, "{id}");
        }
    }
}
