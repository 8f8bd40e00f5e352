//! Notes played as they happen (the jam's answers, the player's echo) on the built-in
//! synthesizer: a [`LiveSynthSender`] is a MIDI output whose messages the audio callback applies
//! before each block it renders, so a note sounds within one block (5.8 ms).

use std::sync::{Arc, Mutex};

use rustysynth::{Synthesizer, SynthesizerSettings};

use super::limiter::Limiter;
use super::render::{MASTER_VOLUME, MAX_POLYPHONY};
use super::{AudioError, PianoSoundFont};
use crate::live_midi::{LiveMidiError, MidiSender};

/// Messages waiting for the next block: (status, data 1, data 2).
type Pending = Arc<Mutex<Vec<[u8; 3]>>>;

/// More messages than this between two blocks are dropped (a block is 5.8 ms).
const MAX_PENDING: usize = 4096;

pub struct LiveSynth {
    synth: Synthesizer,
    limiter: Limiter,
    pending: Pending,
}

impl LiveSynth {
    pub fn new(
        font: &PianoSoundFont,
        sample_rate: u32,
    ) -> Result<(LiveSynth, LiveSynthSender), AudioError> {
        let mut settings = SynthesizerSettings::new(sample_rate as i32);
        settings.maximum_polyphony = MAX_POLYPHONY;
        let mut synth = Synthesizer::new(&font.font, &settings)
            .map_err(|e| AudioError::Synth(format!("{e:?}")))?;
        synth.set_master_volume(MASTER_VOLUME);
        let pending = Pending::default();
        let sender = LiveSynthSender {
            pending: pending.clone(),
        };
        Ok((
            LiveSynth {
                synth,
                limiter: Limiter::new(sample_rate),
                pending,
            },
            sender,
        ))
    }

    /// Applies the waiting messages, then renders the next frames into `left` and `right`.
    pub fn render(&mut self, left: &mut [f32], right: &mut [f32]) {
        let messages = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => Vec::new(),
        };
        for [status, data1, data2] in messages {
            self.synth.process_midi_message(
                i32::from(status & 0x0f),
                i32::from(status & 0xf0),
                i32::from(data1),
                i32::from(data2),
            );
        }
        self.synth.render(left, right);
        for (l, r) in left.iter_mut().zip(right.iter_mut()) {
            self.limiter.process(l, r);
        }
    }
}

/// The MIDI output side of a [`LiveSynth`]; see [`crate::audio::PlayerHandle::open_live`].
pub struct LiveSynthSender {
    pending: Pending,
}

impl MidiSender for LiveSynthSender {
    fn send(&mut self, message: &[u8]) -> Result<(), LiveMidiError> {
        // Channel messages only (note on/off, controllers, program): what a performance uses.
        let Some(&status) = message.first().filter(|&&s| (0x80..0xf0).contains(&s)) else {
            return Ok(());
        };
        let data = |i: usize| message.get(i).copied().unwrap_or(0) & 0x7f;
        if let Ok(mut pending) = self.pending.lock()
            && pending.len() < MAX_PENDING
        {
            pending.push([status, data(1), data(2)]);
        }
        Ok(())
    }
}

impl Drop for LiveSynthSender {
    /// A closed connection leaves no note hanging, as a MIDI port's does.
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            for channel in 0..16u8 {
                pending.push([0xb0 | channel, 123, 0]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::audio::{PianoSoundFont, PlayerHandle};
    use crate::live_midi::MidiSender;

    /// The loudest sample of `blocks` blocks of 256 frames pulled as the audio callback would.
    fn peak_of(handle: &PlayerHandle, blocks: usize) -> f32 {
        let (mut out, mut left, mut right) = (vec![0f32; 512], Vec::new(), Vec::new());
        (0..blocks)
            .map(|_| {
                handle.fill_interleaved(&mut out, &mut left, &mut right);
                out.iter().fold(0f32, |m, x| m.max(x.abs()))
            })
            .fold(0f32, f32::max)
    }

    #[test]
    fn live_notes_sound_over_a_stopped_transport_and_stop_when_released() {
        let handle = PlayerHandle::new();
        let mut live = handle.open_live(&PianoSoundFont::builtin()).unwrap();
        assert_eq!(peak_of(&handle, 4), 0.0, "silent before any note");
        live.send(&[0x90, 60, 100]).unwrap();
        let sounding = peak_of(&handle, 20);
        assert!(sounding > 0.05, "a struck C4 sounds at once: {sounding}");
        live.send(&[0x80, 60, 0]).unwrap();
        // Three seconds after the release (516 blocks of 5.8 ms) the note has rung out.
        peak_of(&handle, 516);
        let after = peak_of(&handle, 20);
        assert!(
            after < sounding / 100.0,
            "{after} after release vs {sounding}"
        );
        // Closing the connection silences what it left sounding.
        live.send(&[0x90, 64, 100]).unwrap();
        assert!(peak_of(&handle, 20) > 0.05);
        drop(live);
        peak_of(&handle, 200);
        assert!(peak_of(&handle, 20) < sounding / 100.0);
    }
}
