//! Sampling-time constraints: a key lock, a pitch range, a target density, a dynamics range, a
//! polyphony limit and a maximum note length. They are masks and biases on the model's logits
//! applied just before each draw, so they work with every model and checkpoint; the CLI and the
//! studio both fill a [`Constraints`] and [`super::generate`] applies it in one place.

use serde::{Deserialize, Serialize};

use super::music_terms::{Scale, note_name};
use crate::tokenizer::{
    self, Event, MAX_SHIFT_STEPS, NOTE_OFF, NOTE_ON, STEPS_PER_SECOND, TIME_SHIFT, VELOCITY,
    VELOCITY_BINS,
};

/// A note may sound at most this long unless the user says otherwise: model-generated notes held
/// for 7 s were seen, and a note that never ends is the worst thing a take can hand to a DAW.
pub const DEFAULT_MAX_NOTE_SECONDS: f64 = 5.0;
pub const MAX_DENSITY: f64 = 50.0;
pub const MAX_KEY_STRENGTH: f64 = 50.0;
pub const MAX_NOTE_SECONDS: f64 = 60.0;
/// Density steering: logit bias per note of deficit, and its limit. Tuned on the bundled models
/// (docs/BENCHMARKS.md): one note behind moves NOTE_ON against TIME_SHIFT by e^0.5 each way. A
/// gain of 0.5 left `--density 4` 14 % high on the bundled attention model; 1.0 brought it to 6 %.
const DENSITY_GAIN: f64 = 1.0;
const DENSITY_MAX_BIAS: f64 = 8.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Constraints {
    /// Notes outside this scale are never struck (or, with `key_strength`, struck less often).
    pub key: Option<Scale>,
    /// `None`: the key lock is hard. Otherwise the lock is a bias: this much is taken from the
    /// logit of every NOTE_ON outside the scale (in nats: 2.3 makes them 10x less likely).
    pub key_strength: Option<f64>,
    /// Lowest and highest pitch a new note may have.
    pub range: Option<(u8, u8)>,
    /// Target notes per second, steered in a closed loop from the density so far.
    pub density: Option<f64>,
    /// Lowest and highest velocity (as the model's velocity bins decode them).
    pub velocity: Option<(u8, u8)>,
    /// No NOTE_ON while this many notes sound.
    pub max_polyphony: Option<usize>,
    /// A note sounding this long is ended by a forced NOTE_OFF (`None`: no limit).
    pub max_note_seconds: Option<f64>,
}

impl Default for Constraints {
    fn default() -> Self {
        Constraints {
            key: None,
            key_strength: None,
            range: None,
            density: None,
            velocity: None,
            max_polyphony: None,
            max_note_seconds: Some(DEFAULT_MAX_NOTE_SECONDS),
        }
    }
}

impl Constraints {
    /// No constraint at all, not even the note-length limit: the model's own distribution.
    pub fn none() -> Self {
        Constraints {
            max_note_seconds: None,
            ..Default::default()
        }
    }

    /// Explains the first setting out of range, named as the command line spells it.
    pub fn validate(&self) -> Result<(), String> {
        use crate::bounds::{check, check_positive};
        if let Some(s) = self.key_strength {
            check("key-strength", s, 0.0..=MAX_KEY_STRENGTH)?;
            if self.key.is_none() {
                return Err("key-strength needs a key (--key \"C minor\")".into());
            }
        }
        if let Some(scale) = self.key {
            check(
                "key mode",
                scale.mode as usize,
                0..=super::music_terms::MODES.len() - 1,
            )?;
            check("key tonic", scale.tonic, 0..=11)?;
        }
        if let Some((lo, hi)) = self.range {
            check("range", hi, lo..=127)?;
        }
        if let Some(d) = self.density {
            check_positive("density", d, MAX_DENSITY)?;
        }
        if let Some((lo, hi)) = self.velocity {
            check("velocity", lo, 1..=127)?;
            check("velocity", hi, lo..=127)?;
            if !(0..VELOCITY_BINS).any(|b| (lo..=hi).contains(&tokenizer::bin_velocity(b))) {
                return Err(format!(
                    "velocity {lo}..{hi} holds none of the model's velocities (3, 7, 11, ..., 123, \
                     127): widen it to span at least 4"
                ));
            }
        }
        if let Some(n) = self.max_polyphony {
            check("max-polyphony", n, 1..=128)?;
        }
        if let Some(s) = self.max_note_seconds {
            check("max-note-seconds", s, 0.05..=MAX_NOTE_SECONDS)?;
        }
        if let (Some(scale), Some((lo, hi)), None) = (self.key, self.range, self.key_strength)
            && !(lo..=hi).any(|p| scale.contains(p))
        {
            return Err(format!(
                "no note of {} lies in {}..{}",
                scale.name(),
                note_name(lo),
                note_name(hi)
            ));
        }
        Ok(())
    }

    /// Whether anything changes the model's distribution.
    pub fn is_active(&self) -> bool {
        *self != Constraints::none()
    }

    /// "key C minor, range C2..C6, ..." for a take's description; empty when none is set.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(scale) = self.key {
            parts.push(match self.key_strength {
                None => format!("key {}", scale.name()),
                Some(s) => format!("key {} (strength {s})", scale.name()),
            });
        }
        if let Some((lo, hi)) = self.range {
            parts.push(format!("range {}..{}", note_name(lo), note_name(hi)));
        }
        if let Some(d) = self.density {
            parts.push(format!("density {d} notes/s"));
        }
        if let Some((lo, hi)) = self.velocity {
            parts.push(format!("velocity {lo}..{hi}"));
        }
        if let Some(n) = self.max_polyphony {
            parts.push(format!("max polyphony {n}"));
        }
        if let Some(s) = self.max_note_seconds {
            parts.push(format!("notes at most {s} s"));
        }
        parts.join(", ")
    }

    /// The per-id tables the sampler reads at every step.
    pub fn compile(&self) -> Steering {
        let mut note_on_bias = [0f32; 128];
        for (pitch, bias) in note_on_bias.iter_mut().enumerate() {
            let p = pitch as u8;
            let in_range = self.range.is_none_or(|(lo, hi)| (lo..=hi).contains(&p));
            let in_key = self.key.is_none_or(|k| k.contains(p));
            *bias = if !in_range {
                f32::NEG_INFINITY
            } else if in_key {
                0.0
            } else {
                match self.key_strength {
                    None => f32::NEG_INFINITY,
                    Some(s) => -(s as f32),
                }
            };
        }
        let mut velocity_allowed = [true; VELOCITY_BINS as usize];
        if let Some((lo, hi)) = self.velocity {
            for (b, allowed) in velocity_allowed.iter_mut().enumerate() {
                *allowed = (lo..=hi).contains(&tokenizer::bin_velocity(b as u8));
            }
        }
        Steering {
            active: self.is_active(),
            note_on_bias,
            velocity_allowed,
            velocity_limited: self.velocity.is_some(),
            max_polyphony: self.max_polyphony,
            max_note_steps: self
                .max_note_seconds
                .map(|s| ((s * STEPS_PER_SECOND).round() as u64).max(1)),
            density: self.density,
        }
    }
}

/// [`Constraints`] as tables, shared by every variation of a batch.
#[derive(Clone, Debug)]
pub struct Steering {
    active: bool,
    /// Added to each NOTE_ON logit: 0, a soft key's penalty, or -inf (masked).
    note_on_bias: [f32; 128],
    velocity_allowed: [bool; VELOCITY_BINS as usize],
    velocity_limited: bool,
    max_polyphony: Option<usize>,
    max_note_steps: Option<u64>,
    density: Option<f64>,
}

/// What one variation has played so far, as the constraints need it.
#[derive(Clone, Debug)]
pub struct SteeringState {
    /// Time in 10 ms steps since START (primer included).
    step: u64,
    /// Where the new music began.
    generation_start: u64,
    /// Onset step of every sounding pitch.
    onset: [Option<u64>; 128],
    sounding: usize,
    new_notes: usize,
    velocity_bin: Option<u8>,
}

impl Default for SteeringState {
    fn default() -> Self {
        SteeringState {
            step: 0,
            generation_start: 0,
            onset: [None; 128],
            sounding: 0,
            new_notes: 0,
            velocity_bin: None,
        }
    }
}

impl SteeringState {
    /// Follows one event (the primer's or a sampled one).
    pub fn observe(&mut self, id: u16) {
        match Event::from_id(id) {
            Some(Event::NoteOn(p)) => {
                if self.onset[p as usize].replace(self.step).is_none() {
                    self.sounding += 1;
                }
                self.new_notes += 1;
            }
            Some(Event::NoteOff(p)) => {
                // A release of a key not sounding changes nothing.
                let released = self.onset[p as usize].take();
                self.sounding -= usize::from(released.is_some());
            }
            Some(Event::TimeShift(k)) => self.step += k as u64,
            Some(Event::Velocity(b)) => self.velocity_bin = Some(b),
            _ => {}
        }
    }

    /// Marks the end of the primer: density counts only what comes after.
    pub fn begin_generation(&mut self) {
        self.generation_start = self.step;
        self.new_notes = 0;
    }

    /// NOTE_ONs since the primer.
    pub fn new_notes(&self) -> usize {
        self.new_notes
    }

    /// Notes sounding now.
    pub fn sounding(&self) -> usize {
        self.sounding
    }

    fn new_seconds(&self) -> f64 {
        (self.step - self.generation_start) as f64 / STEPS_PER_SECOND
    }
}

impl Steering {
    /// Whether [`Steering::steer`] can change anything (if not, the logits are used untouched).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The logit bias that moves NOTE_ON against TIME_SHIFT, from the density so far.
    pub fn density_bias(&self, state: &SteeringState) -> f32 {
        let Some(target) = self.density else {
            return 0.0;
        };
        let deficit = target * state.new_seconds() - state.new_notes as f64;
        (DENSITY_GAIN * deficit).clamp(-DENSITY_MAX_BIAS, DENSITY_MAX_BIAS) as f32
    }

    /// Masks and biases `logits` (one variation's row) for the next draw, or returns the event
    /// that must come next regardless of the model: the NOTE_OFF of a note held too long.
    pub fn steer(&self, state: &SteeringState, logits: &mut [f32]) -> Option<u16> {
        if let Some(max_steps) = self.max_note_steps
            && let Some((pitch, onset)) = state
                .onset
                .iter()
                .enumerate()
                .filter_map(|(p, o)| o.map(|o| (p, o)))
                .min_by_key(|&(_, o)| o)
        {
            let deadline = onset + max_steps;
            if state.step >= deadline {
                return Some(NOTE_OFF + pitch as u16);
            }
            // A time shift may not jump past the oldest note's deadline: the forced NOTE_OFF
            // then lands exactly on it.
            let room = (deadline - state.step).min(MAX_SHIFT_STEPS as u64) as usize;
            for l in &mut logits
                [TIME_SHIFT as usize + room..(TIME_SHIFT as u32 + MAX_SHIFT_STEPS) as usize]
            {
                *l = f32::NEG_INFINITY;
            }
        }
        let velocity_ok = !self.velocity_limited
            || state
                .velocity_bin
                .is_some_and(|b| self.velocity_allowed[b as usize]);
        let polyphony_ok = self.max_polyphony.is_none_or(|n| state.sounding < n);
        let note_ons = &mut logits[NOTE_ON as usize..NOTE_ON as usize + 128];
        if velocity_ok && polyphony_ok {
            for (l, b) in note_ons.iter_mut().zip(&self.note_on_bias) {
                *l += b;
            }
        } else {
            note_ons.fill(f32::NEG_INFINITY);
        }
        if self.velocity_limited {
            for (b, allowed) in self.velocity_allowed.iter().enumerate() {
                if !allowed {
                    logits[VELOCITY as usize + b] = f32::NEG_INFINITY;
                }
            }
        }
        let bias = self.density_bias(state);
        if bias != 0.0 {
            // Half each way: more onsets and fewer waits when behind, the reverse when ahead.
            for l in &mut logits[NOTE_ON as usize..NOTE_ON as usize + 128] {
                *l += bias / 2.0;
            }
            for l in
                &mut logits[TIME_SHIFT as usize..(TIME_SHIFT as u32 + MAX_SHIFT_STEPS) as usize]
            {
                *l -= bias / 2.0;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat() -> Vec<f32> {
        vec![0.0; tokenizer::VOCAB_SIZE]
    }

    #[test]
    fn key_and_range_mask_note_ons_only() {
        let c = Constraints {
            key: Some(Scale::parse("C major").unwrap()),
            range: Some((60, 72)),
            ..Constraints::none()
        };
        c.validate().unwrap();
        let s = c.compile();
        let mut logits = flat();
        assert_eq!(s.steer(&SteeringState::default(), &mut logits), None);
        let open: Vec<usize> = (0..128).filter(|&p| logits[p].is_finite()).collect();
        assert_eq!(open, [60, 62, 64, 65, 67, 69, 71, 72]);
        assert!(logits[128..].iter().all(|l| *l == 0.0));
        // Soft: out-of-scale onsets lose exactly the strength.
        let soft = Constraints {
            key_strength: Some(3.0),
            ..c
        };
        let mut logits = flat();
        soft.compile().steer(&SteeringState::default(), &mut logits);
        assert_eq!(
            (logits[60], logits[61], logits[59]),
            (0.0, -3.0, f32::NEG_INFINITY)
        );
    }

    #[test]
    fn polyphony_velocity_and_note_length() {
        let c = Constraints {
            max_polyphony: Some(2),
            velocity: Some((40, 96)),
            max_note_seconds: Some(0.5),
            ..Constraints::none()
        };
        let s = c.compile();
        let mut state = SteeringState::default();
        let mut logits = flat();
        s.steer(&state, &mut logits);
        // No velocity yet, so no onset; only the bins that decode inside 40..96.
        assert!(logits[..128].iter().all(|l| l.is_infinite()));
        let bins: Vec<u8> = (0..32)
            .filter(|&b| logits[(VELOCITY + b) as usize].is_finite())
            .map(|b| tokenizer::bin_velocity(b as u8))
            .collect();
        assert_eq!((bins[0], *bins.last().unwrap()), (43, 95));
        state.observe(Event::Velocity(15).id());
        for pitch in [60, 64] {
            let mut logits = flat();
            s.steer(&state, &mut logits);
            assert!(logits[pitch].is_finite());
            state.observe(pitch as u16);
        }
        let mut logits = flat();
        s.steer(&state, &mut logits);
        assert!(logits[..128].iter().all(|l| l.is_infinite()), "two sound");
        // 0.5 s = 50 steps: a shift of 50 is the longest allowed, then the NOTE_OFF is forced.
        assert!(logits[(TIME_SHIFT + 49) as usize].is_finite());
        assert!(logits[(TIME_SHIFT + 50) as usize].is_infinite());
        state.observe(Event::TimeShift(50).id());
        assert_eq!(s.steer(&state, &mut flat()), Some(NOTE_OFF + 60));
        state.observe(NOTE_OFF + 60);
        assert_eq!(s.steer(&state, &mut flat()), Some(NOTE_OFF + 64));
        state.observe(NOTE_OFF + 64);
        assert_eq!(state.sounding(), 0);
        assert_eq!(s.steer(&state, &mut flat()), None);
    }

    #[test]
    fn density_bias_follows_the_deficit() {
        let s = Constraints {
            density: Some(4.0),
            ..Constraints::none()
        }
        .compile();
        let mut state = SteeringState::default();
        state.observe(Event::TimeShift(100).id());
        state.begin_generation();
        assert_eq!(s.density_bias(&state), 0.0);
        state.observe(Event::TimeShift(100).id());
        // One second, no notes: 4 behind.
        assert!((s.density_bias(&state) - 4.0).abs() < 1e-6);
        let mut logits = flat();
        s.steer(&state, &mut logits);
        assert_eq!((logits[60], logits[TIME_SHIFT as usize]), (2.0, -2.0));
        for _ in 0..8 {
            state.observe(Event::NoteOn(60).id());
        }
        assert!((s.density_bias(&state) + 4.0).abs() < 1e-6);
    }

    #[test]
    fn validation_names_the_setting() {
        let bad = |c: Constraints| c.validate().unwrap_err();
        assert!(
            bad(Constraints {
                density: Some(0.0),
                ..Default::default()
            })
            .contains("density")
        );
        assert!(
            bad(Constraints {
                max_polyphony: Some(0),
                ..Default::default()
            })
            .contains("max-polyphony")
        );
        assert!(
            bad(Constraints {
                velocity: Some((41, 42)),
                ..Default::default()
            })
            .contains("span")
        );
        assert!(
            bad(Constraints {
                key_strength: Some(1.0),
                ..Default::default()
            })
            .contains("needs a key")
        );
        assert!(
            bad(Constraints {
                key: Some(Scale::parse("C major").unwrap()),
                range: Some((61, 61)),
                ..Default::default()
            })
            .contains("no note of C major")
        );
        assert!(Constraints::default().validate().is_ok());
        assert!(Constraints::default().is_active());
        assert!(!Constraints::none().is_active());
    }
}
