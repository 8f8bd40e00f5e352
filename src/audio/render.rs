//! Rendering a performance with the synthesizer, block by block: the same renderer serves the
//! offline render (WAV export) and real-time playback, which pulls a few milliseconds at a time so
//! it starts at once and never renders a whole piece up front.

use rustysynth::{Synthesizer, SynthesizerSettings};

use super::limiter::Limiter;
use super::{AudioError, PianoSoundFont};
use crate::performance::Performance;

pub const SAMPLE_RATE: u32 = 44_100;
/// Rendered after the last note ends, so its release rings out.
pub const RELEASE_TAIL_SECONDS: f64 = 2.0;
/// Full level: a chorale peaks near 0.6, and the limiter catches dense loud chords.
pub(super) const MASTER_VOLUME: f32 = 1.0;
pub(super) const MAX_POLYPHONY: usize = 256;
const PIANO_CHANNEL: i32 = 0;

#[derive(Clone, Copy, Debug)]
struct NoteEvent {
    frame: u64,
    /// Releases sort before onsets at one frame, so a re-struck key sounds again.
    on: bool,
    pitch: u8,
    velocity: u8,
}

/// Stereo samples at [`SAMPLE_RATE`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stereo {
    pub left: Vec<f32>,
    pub right: Vec<f32>,
    pub sample_rate: u32,
}

impl Stereo {
    pub fn seconds(&self) -> f64 {
        self.left.len() as f64 / self.sample_rate as f64
    }

    pub fn peak(&self) -> f32 {
        self.left
            .iter()
            .chain(&self.right)
            .fold(0.0f32, |m, x| m.max(x.abs()))
    }
}

pub struct StreamRenderer {
    synth: Synthesizer,
    events: Vec<NoteEvent>,
    next: usize,
    frame: u64,
    end_frame: u64,
    sample_rate: u32,
    limiter: Limiter,
}

impl StreamRenderer {
    pub fn new(
        perf: &Performance,
        font: &PianoSoundFont,
        sample_rate: u32,
    ) -> Result<Self, AudioError> {
        let mut settings = SynthesizerSettings::new(sample_rate as i32);
        settings.maximum_polyphony = MAX_POLYPHONY;
        let mut synth = Synthesizer::new(&font.font, &settings)
            .map_err(|e| AudioError::Synth(format!("{e:?}")))?;
        synth.set_master_volume(MASTER_VOLUME);
        let to_frame = |t: f64| (t.max(0.0) * sample_rate as f64).round() as u64;
        let mut events: Vec<NoteEvent> = perf
            .notes
            .iter()
            .flat_map(|n| {
                let start = to_frame(n.start);
                [
                    NoteEvent {
                        frame: start,
                        on: true,
                        pitch: n.pitch,
                        velocity: n.velocity,
                    },
                    NoteEvent {
                        frame: to_frame(n.end).max(start + 1),
                        on: false,
                        pitch: n.pitch,
                        velocity: 0,
                    },
                ]
            })
            .collect();
        events.sort_by_key(|e| (e.frame, e.on, e.pitch));
        let end_frame = to_frame(perf.end_time() + RELEASE_TAIL_SECONDS);
        Ok(StreamRenderer {
            synth,
            events,
            next: 0,
            frame: 0,
            end_frame,
            sample_rate,
            limiter: Limiter::new(sample_rate),
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub fn position_seconds(&self) -> f64 {
        self.frame as f64 / self.sample_rate as f64
    }

    /// The piece's length including the release tail.
    pub fn duration_seconds(&self) -> f64 {
        self.end_frame as f64 / self.sample_rate as f64
    }

    pub fn total_frames(&self) -> u64 {
        self.end_frame
    }

    pub fn is_finished(&self) -> bool {
        self.frame >= self.end_frame
    }

    /// Jumps to `seconds`: sounding notes stop at once, and notes starting from there on play.
    pub fn seek(&mut self, seconds: f64) {
        let target =
            ((seconds.max(0.0) * self.sample_rate as f64).round() as u64).min(self.end_frame);
        self.synth.note_off_all(true);
        self.next = self.events.partition_point(|e| e.frame < target);
        self.frame = target;
        self.limiter.reset();
    }

    /// Stops every sounding note at once (pause).
    pub fn silence(&mut self) {
        self.synth.note_off_all(true);
    }

    /// Fills the buffers with the next frames; returns how many were rendered (fewer than asked
    /// only at the end of the piece).
    pub fn render(&mut self, left: &mut [f32], right: &mut [f32]) -> usize {
        let want = left.len().min(right.len());
        let mut done = 0;
        while done < want && self.frame < self.end_frame {
            while let Some(e) = self.events.get(self.next).filter(|e| e.frame <= self.frame) {
                if e.on {
                    self.synth
                        .note_on(PIANO_CHANNEL, e.pitch as i32, e.velocity as i32);
                } else {
                    self.synth.note_off(PIANO_CHANNEL, e.pitch as i32);
                }
                self.next += 1;
            }
            let until_event = self
                .events
                .get(self.next)
                .map_or(u64::MAX, |e| e.frame - self.frame);
            let chunk = ((want - done) as u64)
                .min(until_event)
                .min(self.end_frame - self.frame) as usize;
            self.synth.render(
                &mut left[done..done + chunk],
                &mut right[done..done + chunk],
            );
            for i in done..done + chunk {
                self.limiter.process(&mut left[i], &mut right[i]);
            }
            done += chunk;
            self.frame += chunk as u64;
        }
        done
    }
}

/// Renders a whole performance offline, release tail included.
pub fn render_performance(perf: &Performance, font: &PianoSoundFont) -> Result<Stereo, AudioError> {
    let mut renderer = StreamRenderer::new(perf, font, SAMPLE_RATE)?;
    let frames = renderer.total_frames() as usize;
    let mut out = Stereo {
        left: vec![0.0; frames],
        right: vec![0.0; frames],
        sample_rate: SAMPLE_RATE,
    };
    let rendered = renderer.render(&mut out.left, &mut out.right);
    out.left.truncate(rendered);
    out.right.truncate(rendered);
    Ok(out)
}
