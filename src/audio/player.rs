//! Real-time playback: a [`PlayerHandle`] owns the transport state (playing, playhead, seek,
//! volume) and the renderer; a rodio source pulls a few milliseconds at a time from it, so playback
//! starts at once. The handle works without an audio device too (tests pull samples directly), and
//! opening a [`Player`] on a machine without one is an error, never a panic.

use std::num::NonZero;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rodio::Source;

use super::live_synth::{LiveSynth, LiveSynthSender};
use super::render::StreamRenderer;
use super::{AudioError, PianoSoundFont, SAMPLE_RATE};
use crate::performance::Performance;

/// Frames rendered per pull: 256 frames are 5.8 ms at 44.1 kHz.
const BLOCK_FRAMES: usize = 256;
const NO_SEEK: u64 = u64::MAX;

struct Shared {
    renderer: Mutex<Option<StreamRenderer>>,
    /// Notes played as they happen, mixed over the transport (see [`PlayerHandle::open_live`]).
    live: Mutex<Option<LiveSynth>>,
    playing: AtomicBool,
    /// Seconds as f64 bits.
    playhead: AtomicU64,
    /// A pending seek in seconds as f64 bits, or `NO_SEEK`.
    seek: AtomicU64,
    /// f32 bits.
    volume: AtomicU32,
    duration: AtomicU64,
}

/// The transport, cheap to clone and safe to share with the UI thread.
#[derive(Clone)]
pub struct PlayerHandle {
    shared: Arc<Shared>,
}

impl Default for PlayerHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl PlayerHandle {
    pub fn new() -> Self {
        PlayerHandle {
            shared: Arc::new(Shared {
                renderer: Mutex::new(None),
                live: Mutex::new(None),
                playing: AtomicBool::new(false),
                playhead: AtomicU64::new(0f64.to_bits()),
                seek: AtomicU64::new(NO_SEEK),
                volume: AtomicU32::new(0.8f32.to_bits()),
                duration: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Replaces the piece; the transport stops at the start.
    pub fn load(&self, perf: &Performance, font: &PianoSoundFont) -> Result<(), AudioError> {
        let renderer = StreamRenderer::new(perf, font, SAMPLE_RATE)?;
        self.shared.playing.store(false, Ordering::SeqCst);
        self.shared
            .duration
            .store(renderer.duration_seconds().to_bits(), Ordering::SeqCst);
        if let Ok(mut slot) = self.shared.renderer.lock() {
            *slot = Some(renderer);
        }
        self.shared.seek.store(NO_SEEK, Ordering::SeqCst);
        self.shared.playhead.store(0f64.to_bits(), Ordering::SeqCst);
        Ok(())
    }

    pub fn play(&self) {
        self.shared.playing.store(true, Ordering::SeqCst);
    }

    pub fn pause(&self) {
        self.shared.playing.store(false, Ordering::SeqCst);
        if let Ok(mut r) = self.shared.renderer.lock()
            && let Some(r) = r.as_mut()
        {
            r.silence();
        }
    }

    pub fn toggle(&self) {
        if self.is_playing() {
            self.pause()
        } else {
            self.play()
        }
    }

    /// Stops and rewinds to the start.
    pub fn stop(&self) {
        self.pause();
        self.seek(0.0);
    }

    pub fn seek(&self, seconds: f64) {
        let seconds = seconds.clamp(0.0, self.duration());
        self.shared.seek.store(seconds.to_bits(), Ordering::SeqCst);
        self.shared
            .playhead
            .store(seconds.to_bits(), Ordering::SeqCst);
    }

    pub fn set_volume(&self, volume: f32) {
        self.shared
            .volume
            .store(volume.clamp(0.0, 1.0).to_bits(), Ordering::SeqCst);
    }

    pub fn volume(&self) -> f32 {
        f32::from_bits(self.shared.volume.load(Ordering::SeqCst))
    }

    pub fn is_playing(&self) -> bool {
        self.shared.playing.load(Ordering::SeqCst)
    }

    /// Where playback is, in seconds: what a UI reads every frame.
    pub fn playhead(&self) -> f64 {
        f64::from_bits(self.shared.playhead.load(Ordering::SeqCst))
    }

    /// The loaded piece's length including the release tail.
    pub fn duration(&self) -> f64 {
        f64::from_bits(self.shared.duration.load(Ordering::SeqCst))
    }

    /// A MIDI output on this player's synthesizer: its notes sound over the transport, at the
    /// player's volume, from the next block on. Replaces an earlier one.
    pub fn open_live(&self, font: &PianoSoundFont) -> Result<LiveSynthSender, AudioError> {
        let (synth, sender) = LiveSynth::new(font, SAMPLE_RATE)?;
        if let Ok(mut slot) = self.shared.live.lock() {
            *slot = Some(synth);
        }
        Ok(sender)
    }

    /// The audio callback's work: fills interleaved stereo samples: the transport (silence when
    /// stopped) plus the live notes.
    pub fn fill_interleaved(&self, out: &mut [f32], left: &mut Vec<f32>, right: &mut Vec<f32>) {
        out.fill(0.0);
        self.fill_transport(out, left, right);
        let Ok(mut live) = self.shared.live.lock() else {
            return;
        };
        if let Some(live) = live.as_mut() {
            let frames = out.len() / 2;
            left.resize(frames, 0.0);
            right.resize(frames, 0.0);
            live.render(&mut left[..frames], &mut right[..frames]);
            let volume = self.volume();
            for i in 0..frames {
                out[2 * i] += left[i] * volume;
                out[2 * i + 1] += right[i] * volume;
            }
        }
    }

    fn fill_transport(&self, out: &mut [f32], left: &mut Vec<f32>, right: &mut Vec<f32>) {
        if !self.is_playing() {
            return;
        }
        let Ok(mut slot) = self.shared.renderer.lock() else {
            return;
        };
        let Some(renderer) = slot.as_mut() else {
            return;
        };
        let seek = self.shared.seek.swap(NO_SEEK, Ordering::SeqCst);
        if seek != NO_SEEK {
            renderer.seek(f64::from_bits(seek));
        }
        let frames = out.len() / 2;
        left.resize(frames, 0.0);
        right.resize(frames, 0.0);
        let rendered = renderer.render(&mut left[..frames], &mut right[..frames]);
        let volume = self.volume();
        for i in 0..rendered {
            out[2 * i] = left[i] * volume;
            out[2 * i + 1] = right[i] * volume;
        }
        self.shared
            .playhead
            .store(renderer.position_seconds().to_bits(), Ordering::SeqCst);
        if renderer.is_finished() {
            self.shared.playing.store(false, Ordering::SeqCst);
            renderer.seek(0.0);
            self.shared.playhead.store(0f64.to_bits(), Ordering::SeqCst);
        }
    }
}

/// The rodio source: never exhausted, so the output stream stays open between pieces.
struct PlayerSource {
    handle: PlayerHandle,
    buffer: Vec<f32>,
    position: usize,
    left: Vec<f32>,
    right: Vec<f32>,
}

impl Iterator for PlayerSource {
    type Item = f32;

    fn next(&mut self) -> Option<f32> {
        if self.position >= self.buffer.len() {
            self.handle
                .fill_interleaved(&mut self.buffer, &mut self.left, &mut self.right);
            self.position = 0;
        }
        let sample = self.buffer[self.position];
        self.position += 1;
        Some(sample)
    }
}

impl Source for PlayerSource {
    fn current_span_len(&self) -> Option<usize> {
        None
    }

    fn channels(&self) -> rodio::ChannelCount {
        NonZero::new(2).expect("2 is not zero")
    }

    fn sample_rate(&self) -> rodio::SampleRate {
        NonZero::new(SAMPLE_RATE).expect("the sample rate is not zero")
    }

    fn total_duration(&self) -> Option<std::time::Duration> {
        None
    }
}

/// An open audio output with a [`PlayerHandle`] feeding it.
pub struct Player {
    _sink: rodio::MixerDeviceSink,
    handle: PlayerHandle,
}

impl Player {
    /// Opens the default output device and feeds it from `handle`. With none (a server, a
    /// container), this is [`AudioError::NoDevice`]; export to WAV still works.
    pub fn open(handle: PlayerHandle) -> Result<Player, AudioError> {
        Self::open_with(handle, rodio::DeviceSinkBuilder::open_default_sink)
    }

    /// As [`Player::open`], with the device opened by `open_sink` (tests pass a failing or
    /// panicking one: a machine's sound card cannot be chosen by a test).
    pub fn open_with<E: std::error::Error>(
        handle: PlayerHandle,
        open_sink: impl FnOnce() -> Result<rodio::MixerDeviceSink, E> + std::panic::UnwindSafe,
    ) -> Result<Player, AudioError> {
        let opened = std::panic::catch_unwind(open_sink);
        let mut sink = match opened {
            Ok(Ok(sink)) => sink,
            Ok(Err(e)) => return Err(AudioError::NoDevice(error_chain(&e))),
            Err(_) => return Err(AudioError::NoDevice("the audio backend failed".into())),
        };
        sink.log_on_drop(false);
        sink.mixer().add(PlayerSource {
            handle: handle.clone(),
            buffer: vec![0.0; BLOCK_FRAMES * 2],
            position: BLOCK_FRAMES * 2,
            left: Vec::with_capacity(BLOCK_FRAMES),
            right: Vec::with_capacity(BLOCK_FRAMES),
        });
        Ok(Player {
            _sink: sink,
            handle,
        })
    }

    pub fn handle(&self) -> PlayerHandle {
        self.handle.clone()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
