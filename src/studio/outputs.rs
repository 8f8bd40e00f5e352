//! Where the studio's transport sends a piece: the built-in synth (or a SoundFont) through the
//! sound card, or a MIDI output port. Behind one trait, so the UI tests run against a fake.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::audio::{PianoSoundFont, Player, PlayerHandle};
use crate::live_midi::{FakeMidiOut, MidiOut, MidiScheduler, MidiSender, PortChoice};
use crate::performance::Performance;

pub trait AudioOut {
    /// A short description for the toolbar ("Built-in piano", "MIDI: USB Piano").
    fn name(&self) -> String;
    /// Replaces the piece and stops.
    fn load(&mut self, perf: &Performance) -> Result<(), String>;
    fn play(&mut self) -> Result<(), String>;
    fn pause(&mut self);
    fn stop(&mut self);
    fn seek(&mut self, seconds: f64);
    fn set_volume(&mut self, volume: f32);
    fn is_playing(&self) -> bool;
    fn playhead(&self) -> f64;
    /// A channel for notes played as they happen (the jam's answers) on this output.
    fn live_notes(&mut self) -> Result<Box<dyn MidiSender>, String>;
}

/// The synthesizer through rodio. The sound card is opened on first play, so a machine without
/// one starts fine and says so only when asked to play.
pub struct SynthOut {
    font: PianoSoundFont,
    handle: PlayerHandle,
    player: Option<Player>,
}

impl SynthOut {
    pub fn new(font: PianoSoundFont) -> Self {
        SynthOut {
            font,
            handle: PlayerHandle::new(),
            player: None,
        }
    }

    pub fn set_soundfont(
        &mut self,
        font: PianoSoundFont,
        perf: &Performance,
    ) -> Result<(), String> {
        self.font = font;
        self.load(perf)
    }
}

impl AudioOut for SynthOut {
    fn name(&self) -> String {
        self.font.name.clone()
    }

    fn load(&mut self, perf: &Performance) -> Result<(), String> {
        self.handle
            .load(perf, &self.font)
            .map_err(|e| e.to_string())
    }

    fn play(&mut self) -> Result<(), String> {
        if self.player.is_none() {
            self.player = Some(Player::open(self.handle.clone()).map_err(|e| e.to_string())?);
        }
        self.handle.play();
        Ok(())
    }

    fn pause(&mut self) {
        self.handle.pause();
    }

    fn stop(&mut self) {
        self.handle.stop();
    }

    fn seek(&mut self, seconds: f64) {
        self.handle.seek(seconds);
    }

    fn set_volume(&mut self, volume: f32) {
        self.handle.set_volume(volume);
    }

    fn is_playing(&self) -> bool {
        self.handle.is_playing()
    }

    fn playhead(&self) -> f64 {
        self.handle.playhead()
    }

    fn live_notes(&mut self) -> Result<Box<dyn MidiSender>, String> {
        if self.player.is_none() {
            self.player = Some(Player::open(self.handle.clone()).map_err(|e| e.to_string())?);
        }
        let sender = self
            .handle
            .open_live(&self.font)
            .map_err(|e| e.to_string())?;
        Ok(Box::new(sender))
    }
}

/// A MIDI output port: the piece is scheduled on its own thread.
pub struct MidiPortOut {
    port: PortChoice,
    label: String,
    backend: Arc<dyn MidiOut + Send + Sync>,
    scheduler: Option<MidiScheduler>,
    piece: Performance,
    playing: bool,
}

impl MidiPortOut {
    pub fn new(backend: Arc<dyn MidiOut + Send + Sync>, port: PortChoice, label: String) -> Self {
        MidiPortOut {
            port,
            label,
            backend,
            scheduler: None,
            piece: Performance::default(),
            playing: false,
        }
    }
}

impl AudioOut for MidiPortOut {
    fn name(&self) -> String {
        format!("MIDI: {}", self.label)
    }

    fn load(&mut self, perf: &Performance) -> Result<(), String> {
        // Dropping the old scheduler silences the port.
        self.scheduler = None;
        self.playing = false;
        self.piece = perf.clone();
        Ok(())
    }

    fn play(&mut self) -> Result<(), String> {
        if self.scheduler.is_none() {
            let sender = self
                .backend
                .connect(&self.port)
                .map_err(|e| e.to_string())?;
            self.scheduler = Some(MidiScheduler::new(&self.piece, sender));
        }
        if let Some(s) = &self.scheduler {
            s.play();
        }
        self.playing = true;
        Ok(())
    }

    fn pause(&mut self) {
        if let Some(s) = &self.scheduler {
            s.pause();
        }
        self.playing = false;
    }

    fn stop(&mut self) {
        if let Some(s) = &self.scheduler {
            s.stop();
        }
        self.playing = false;
    }

    fn seek(&mut self, seconds: f64) {
        if let Some(s) = &self.scheduler {
            s.seek(seconds);
        }
    }

    fn set_volume(&mut self, _volume: f32) {}

    fn is_playing(&self) -> bool {
        self.playing
            && self
                .scheduler
                .as_ref()
                .is_some_and(|s| s.position() < self.piece.end_time())
    }

    fn playhead(&self) -> f64 {
        self.scheduler.as_ref().map_or(0.0, MidiScheduler::position)
    }

    fn live_notes(&mut self) -> Result<Box<dyn MidiSender>, String> {
        self.backend.connect(&self.port).map_err(|e| e.to_string())
    }
}

/// A transport that only keeps state: for tests, and what the UI tests drive.
#[derive(Clone, Default)]
pub struct FakeOut {
    pub playing: Arc<AtomicBool>,
    /// Seconds as f64 bits.
    pub position: Arc<AtomicU64>,
    pub loaded_notes: Arc<AtomicU64>,
    /// Records what [`AudioOut::live_notes`] connections are sent.
    pub live: FakeMidiOut,
}

impl AudioOut for FakeOut {
    fn name(&self) -> String {
        "Fake output".into()
    }

    fn load(&mut self, perf: &Performance) -> Result<(), String> {
        self.loaded_notes.store(perf.len() as u64, Ordering::SeqCst);
        self.stop();
        Ok(())
    }

    fn play(&mut self) -> Result<(), String> {
        self.playing.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn pause(&mut self) {
        self.playing.store(false, Ordering::SeqCst);
    }

    fn stop(&mut self) {
        self.playing.store(false, Ordering::SeqCst);
        self.position.store(0f64.to_bits(), Ordering::SeqCst);
    }

    fn seek(&mut self, seconds: f64) {
        self.position.store(seconds.to_bits(), Ordering::SeqCst);
    }

    fn set_volume(&mut self, _volume: f32) {}

    fn is_playing(&self) -> bool {
        self.playing.load(Ordering::SeqCst)
    }

    fn playhead(&self) -> f64 {
        f64::from_bits(self.position.load(Ordering::SeqCst))
    }

    fn live_notes(&mut self) -> Result<Box<dyn MidiSender>, String> {
        self.live
            .connect(&PortChoice::Virtual("fake".into()))
            .map_err(|e| e.to_string())
    }
}
