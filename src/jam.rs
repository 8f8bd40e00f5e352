//! Jam: call and response with the model. The player plays a phrase (a MIDI keyboard or the
//! computer keyboard); after a pause the model answers for a while on a MIDI output, continuing
//! from everything played so far; a new note from the player cuts the answer short; the whole
//! session is one take.
//!
//! One thread owns the model's streaming state. Every note the player plays is fed to it as it
//! arrives, so when the pause ends the model is already up to date and only has to sample: the
//! first answer note goes out a few model steps after the pause (the answer may not open with a
//! rest). Sampling is paced by the music: a TIME_SHIFT is a wait on the input channel, so a player's
//! note interrupts it at once.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::generate::constraints::SteeringState;
use crate::generate::{Allowed, GenerateConfig, sample};
use crate::live_midi::{MidiCallback, MidiSender};
use crate::model::{MusicModel, Stepper, WeightPrecision};
use crate::performance::{Note, Performance};
use crate::rng::Rng;
use crate::tokenizer::{self, Event, STEPS_PER_SECOND};

pub const DEFAULT_PAUSE_SECONDS: f64 = 0.6;
pub const DEFAULT_ANSWER_SECONDS: f64 = 4.0;
/// More events than this at one instant and the answer's clock is moved on by 10 ms.
const MAX_EVENTS_AT_ONE_TIME: usize = 256;

#[derive(Clone, Debug)]
pub struct JamConfig {
    /// Silence after the player's last note before the model answers.
    pub pause_seconds: f64,
    /// How long each answer lasts.
    pub answer_seconds: f64,
    /// Temperature, top-k, top-p, seed and constraints of the answers (lengths are ignored).
    pub sampling: GenerateConfig,
    /// Also send the player's notes to the output (musical typing has no sound of its own).
    pub echo_player: bool,
}

impl Default for JamConfig {
    fn default() -> Self {
        JamConfig {
            pause_seconds: DEFAULT_PAUSE_SECONDS,
            answer_seconds: DEFAULT_ANSWER_SECONDS,
            sampling: GenerateConfig::default(),
            echo_player: false,
        }
    }
}

impl JamConfig {
    pub fn validate(&self) -> Result<(), String> {
        crate::bounds::check("pause", self.pause_seconds, 0.05..=10.0)?;
        crate::bounds::check("answer length", self.answer_seconds, 0.5..=60.0)?;
        self.sampling.validate()
    }
}

/// A note of the session, and who played it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JamNote {
    pub note: Note,
    pub by_model: bool,
}

/// What the UI and tests read while the jam runs.
#[derive(Clone, Debug, Default)]
pub struct JamState {
    /// Finished notes, in the order they ended; times in seconds from the jam's start.
    pub notes: Vec<JamNote>,
    pub answering: bool,
    /// From each pause's end to the answer's first note sent.
    pub latencies: Vec<Duration>,
    pub error: Option<String>,
}

enum Input {
    On(u8, u8, Instant),
    Off(u8, Instant),
    Stop,
}

/// A running jam; dropping it stops the thread and silences the output.
pub struct Jam {
    tx: Sender<Input>,
    thread: Option<JoinHandle<()>>,
    state: Arc<Mutex<JamState>>,
    started: Instant,
}

impl Jam {
    pub fn start(
        model: Arc<MusicModel>,
        out: Box<dyn MidiSender>,
        config: JamConfig,
    ) -> Result<Jam, String> {
        config.validate()?;
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(Mutex::new(JamState::default()));
        let started = Instant::now();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("jam".into())
            .spawn(move || {
                let result = run(&model, out, &config, rx, &shared, started);
                if let (Err(e), Ok(mut s)) = (result, shared.lock()) {
                    s.error = Some(e);
                    s.answering = false;
                }
            })
            .map_err(|e| format!("cannot start the jam: {e}"))?;
        Ok(Jam {
            tx,
            thread: Some(thread),
            state,
            started,
        })
    }

    pub fn note_on(&self, pitch: u8, velocity: u8) {
        let _ = self.tx.send(Input::On(
            pitch.min(127),
            velocity.clamp(1, 127),
            Instant::now(),
        ));
    }

    pub fn note_off(&self, pitch: u8) {
        let _ = self.tx.send(Input::Off(pitch.min(127), Instant::now()));
    }

    /// Raw MIDI from an input port: note on / off on any channel; everything else is ignored.
    pub fn midi_message(&self, bytes: &[u8]) {
        match *bytes {
            [status, pitch, velocity, ..] if status & 0xf0 == 0x90 && velocity > 0 => {
                self.note_on(pitch, velocity)
            }
            [status, pitch, ..] if status & 0xf0 == 0x80 || status & 0xf0 == 0x90 => {
                self.note_off(pitch)
            }
            _ => {}
        }
    }

    /// A callback for [`crate::live_midi::MidiIn::listen`] that plays into this jam.
    pub fn midi_callback(&self) -> MidiCallback {
        let tx = self.tx.clone();
        let forward = Jam {
            tx,
            thread: None,
            state: self.state.clone(),
            started: self.started,
        };
        Box::new(move |_, bytes| forward.midi_message(bytes))
    }

    pub fn state(&self) -> JamState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Seconds since the jam started (the time base of its notes).
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The session so far as one piece, and which of its notes the model played.
    pub fn take(&self) -> Performance {
        Performance::from_notes(self.state().notes.iter().map(|n| n.note).collect())
    }

    /// Stops the thread (the output is silenced) and returns the final state.
    pub fn stop(mut self) -> JamState {
        self.shut_down();
        self.state()
    }

    fn shut_down(&mut self) {
        let _ = self.tx.send(Input::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Jam {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shut_down();
        }
    }
}

/// The model's side: its streaming state, the time it has heard up to, and the notes sounding.
struct Voice<'m> {
    stepper: Stepper<'m>,
    logits: Vec<f32>,
    steering_state: SteeringState,
    /// Model time in 10 ms steps.
    steps: u64,
    velocity_bin: Option<u8>,
}

impl Voice<'_> {
    fn feed(&mut self, id: u16) -> Result<(), String> {
        let logits = self.stepper.step(&[id as u32]).map_err(|e| e.to_string())?;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.steering_state.observe(id);
        match Event::from_id(id) {
            Some(Event::TimeShift(k)) => self.steps += k as u64,
            Some(Event::Velocity(b)) => self.velocity_bin = Some(b),
            _ => {}
        }
        Ok(())
    }

    /// Brings the model's clock up to `seconds` with TIME_SHIFTs (never back: after an answer
    /// cut short the model may be up to one shift ahead of the wall clock).
    fn advance_to(&mut self, seconds: f64) -> Result<(), String> {
        let target = (seconds * STEPS_PER_SECOND).round() as u64;
        while self.steps < target {
            let k = (target - self.steps).min(tokenizer::MAX_SHIFT_STEPS as u64);
            self.feed(Event::TimeShift(k as u32).id())?;
        }
        Ok(())
    }

    fn note_on(&mut self, pitch: u8, velocity: u8, seconds: f64) -> Result<(), String> {
        self.advance_to(seconds)?;
        let bin = tokenizer::velocity_bin(velocity);
        if self.velocity_bin != Some(bin) {
            self.feed(Event::Velocity(bin).id())?;
        }
        self.feed(Event::NoteOn(pitch).id())
    }

    fn note_off(&mut self, pitch: u8, seconds: f64) -> Result<(), String> {
        self.advance_to(seconds)?;
        self.feed(Event::NoteOff(pitch).id())
    }

    fn seconds(&self) -> f64 {
        self.steps as f64 / STEPS_PER_SECOND
    }
}

/// Notes sounding now, by pitch: (start seconds, velocity).
type Sounding = [Option<(f64, u8)>; 128];

struct Answer {
    end: f64,
    /// When the pause ended (for the latency figure) until the first note is sent.
    pause_end: Option<Instant>,
    /// The next event is sampled at this model time (after a TIME_SHIFT).
    next: f64,
}

/// Sends a note-on; a key struck again while it sounds is released first, so every note-on on
/// the output has its note-off (a synth that stacks voices would otherwise keep one ringing).
fn strike(
    out: &mut Box<dyn MidiSender>,
    pitch: u8,
    velocity: u8,
    sounding: bool,
) -> Result<(), String> {
    if sounding {
        out.send(&[0x80, pitch, 0]).map_err(|e| e.to_string())?;
    }
    out.send(&[0x90, pitch, velocity])
        .map_err(|e| e.to_string())
}

fn run(
    model: &MusicModel,
    mut out: Box<dyn MidiSender>,
    config: &JamConfig,
    rx: Receiver<Input>,
    shared: &Mutex<JamState>,
    started: Instant,
) -> Result<(), String> {
    let at = |i: Instant| i.saturating_duration_since(started).as_secs_f64();
    let mut voice = Voice {
        stepper: Stepper::new(model, 1, WeightPrecision::F32).map_err(|e| e.to_string())?,
        logits: Vec::new(),
        steering_state: SteeringState::default(),
        steps: 0,
        velocity_bin: None,
    };
    voice.feed(tokenizer::START)?;
    let steering = config.sampling.constraints.compile();
    let mut rng = Rng::new(config.sampling.seed);
    let mut probs = Vec::with_capacity(tokenizer::VOCAB_SIZE);
    let mut steered = Vec::with_capacity(tokenizer::VOCAB_SIZE);
    let mut player: Sounding = [None; 128];
    let mut answer_notes: Sounding = [None; 128];
    let mut last_player: Option<Instant> = None;
    let mut unanswered = false;
    let mut answer: Option<Answer> = None;
    let pause = Duration::from_secs_f64(config.pause_seconds);
    let publish = |f: &mut dyn FnMut(&mut JamState)| {
        if let Ok(mut s) = shared.lock() {
            f(&mut s);
        }
    };

    // Ends every sounding answer note now: on the output, in the model and in the take.
    let end_answer = |voice: &mut Voice,
                      out: &mut Box<dyn MidiSender>,
                      answer_notes: &mut Sounding,
                      now: f64|
     -> Result<(), String> {
        for pitch in 0..128u8 {
            if let Some((start, velocity)) = answer_notes[pitch as usize].take() {
                out.send(&[0x80, pitch, 0]).map_err(|e| e.to_string())?;
                // The take keeps the wall clock; the model may have heard a rest that was cut.
                let t = now;
                voice.note_off(pitch, t)?;
                publish(&mut |s: &mut JamState| {
                    s.notes.push(JamNote {
                        note: Note::new(pitch, velocity, start, t.max(start + 0.01)),
                        by_model: true,
                    })
                });
            }
        }
        publish(&mut |s: &mut JamState| s.answering = false);
        Ok(())
    };

    loop {
        let now = Instant::now();
        let deadline = match &answer {
            Some(a) => Some(started + Duration::from_secs_f64(a.next)),
            None if unanswered && player.iter().all(Option::is_none) => {
                last_player.map(|t| t + pause)
            }
            None => None,
        };
        let input = match deadline {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match input {
            Ok(Input::On(pitch, velocity, when)) => {
                if answer.take().is_some() {
                    end_answer(&mut voice, &mut out, &mut answer_notes, at(when))?;
                }
                let t = at(when);
                let restruck = player[pitch as usize].replace((t, velocity));
                if config.echo_player {
                    strike(&mut out, pitch, velocity, restruck.is_some())?;
                }
                if let Some((start, v)) = restruck {
                    // A re-struck key ends its earlier note.
                    publish(&mut |s: &mut JamState| {
                        s.notes.push(JamNote {
                            note: Note::new(pitch, v, start, t.max(start + 0.01)),
                            by_model: false,
                        })
                    });
                }
                voice.note_on(pitch, velocity, t)?;
                last_player = Some(when);
                unanswered = true;
            }
            Ok(Input::Off(pitch, when)) => {
                if let Some((start, velocity)) = player[pitch as usize].take() {
                    if config.echo_player {
                        out.send(&[0x80, pitch, 0]).map_err(|e| e.to_string())?;
                    }
                    let t = at(when);
                    voice.note_off(pitch, t)?;
                    publish(&mut |s: &mut JamState| {
                        s.notes.push(JamNote {
                            note: Note::new(pitch, velocity, start, t.max(start + 0.01)),
                            by_model: false,
                        })
                    });
                    last_player = Some(when);
                }
            }
            Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => {
                let now = at(Instant::now());
                end_answer(&mut voice, &mut out, &mut answer_notes, now)?;
                for pitch in 0..128u8 {
                    if let Some((start, velocity)) = player[pitch as usize].take() {
                        if config.echo_player {
                            let _ = out.send(&[0x80, pitch, 0]);
                        }
                        publish(&mut |s: &mut JamState| {
                            s.notes.push(JamNote {
                                note: Note::new(pitch, velocity, start, now.max(start + 0.01)),
                                by_model: false,
                            })
                        });
                    }
                }
                let _ = out.send(&[0xb0, 123, 0]);
                return Ok(());
            }
            Err(RecvTimeoutError::Timeout) => {
                if answer.is_none() {
                    // The pause is over: the answer starts now, from everything heard so far.
                    let pause_end = deadline.unwrap_or(now);
                    let start = at(pause_end).max(voice.seconds());
                    voice.advance_to(start)?;
                    voice.steering_state.begin_generation();
                    answer = Some(Answer {
                        end: start + config.answer_seconds,
                        pause_end: Some(pause_end),
                        next: start,
                    });
                    unanswered = false;
                    publish(&mut |s: &mut JamState| s.answering = true);
                }
                let Some(a) = answer.as_mut() else { continue };
                let end = a.end;
                // Sample until the next rest (or the answer's end).
                let mut finished = false;
                let mut events_at_this_time = 0;
                loop {
                    if voice.seconds() >= a.end {
                        finished = true;
                        break;
                    }
                    events_at_this_time += 1;
                    if events_at_this_time > MAX_EVENTS_AT_ONE_TIME {
                        // A model that never moves on (only releases and velocities) is made to.
                        voice.feed(Event::TimeShift(1).id())?;
                        a.next = voice.seconds();
                        break;
                    }
                    steered.clear();
                    steered.extend_from_slice(&voice.logits);
                    let forced = steering.steer(&voice.steering_state, &mut steered);
                    if a.pause_end.is_some() {
                        // The answer opens with a note, not a rest: the pause was the rest.
                        for l in &mut steered[tokenizer::TIME_SHIFT as usize
                            ..(tokenizer::TIME_SHIFT as usize
                                + tokenizer::MAX_SHIFT_STEPS as usize)]
                        {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                    let allowed = Allowed {
                        end: false,
                        notes: voice.velocity_bin.is_some(),
                    };
                    let id = forced.unwrap_or_else(|| {
                        sample(&steered, &config.sampling, allowed, &mut rng, &mut probs)
                    });
                    let t = voice.seconds();
                    match Event::from_id(id) {
                        Some(Event::NoteOn(pitch)) => {
                            let velocity =
                                tokenizer::bin_velocity(voice.velocity_bin.unwrap_or(15));
                            let restruck = answer_notes[pitch as usize].replace((t, velocity));
                            strike(&mut out, pitch, velocity, restruck.is_some())?;
                            if let Some(pause_end) = a.pause_end.take() {
                                let latency = pause_end.elapsed();
                                publish(&mut |s: &mut JamState| s.latencies.push(latency));
                            }
                            if let Some((start, v)) = restruck {
                                publish(&mut |s: &mut JamState| {
                                    s.notes.push(JamNote {
                                        note: Note::new(pitch, v, start, t.max(start + 0.01)),
                                        by_model: true,
                                    })
                                });
                            }
                            voice.feed(id)?;
                        }
                        Some(Event::NoteOff(pitch)) => {
                            if let Some((start, v)) = answer_notes[pitch as usize].take() {
                                out.send(&[0x80, pitch, 0]).map_err(|e| e.to_string())?;
                                publish(&mut |s: &mut JamState| {
                                    s.notes.push(JamNote {
                                        note: Note::new(pitch, v, start, t.max(start + 0.01)),
                                        by_model: true,
                                    })
                                });
                            }
                            voice.feed(id)?;
                        }
                        Some(Event::TimeShift(_)) => {
                            voice.feed(id)?;
                            a.next = voice.seconds().min(a.end);
                            break;
                        }
                        _ => voice.feed(id)?,
                    }
                }
                if finished {
                    // The model has heard a rest up to or past the end; the notes end on time.
                    answer = None;
                    end_answer(&mut voice, &mut out, &mut answer_notes, end)?;
                }
            }
        }
    }
}
