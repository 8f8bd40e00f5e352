//! Hearing a performance: a SoundFont synthesizer (rustysynth) with the bundled piano, offline
//! rendering and WAV export, and real-time playback through rodio with a shared playhead.

mod limiter;
mod live_synth;
pub mod player;
mod render;
mod soundfont;
mod wav;

pub use limiter::Limiter;
pub use live_synth::{LiveSynth, LiveSynthSender};
pub use player::{Player, PlayerHandle};
pub use render::{RELEASE_TAIL_SECONDS, SAMPLE_RATE, Stereo, StreamRenderer, render_performance};
pub use soundfont::PianoSoundFont;
pub use wav::{read_wav_info, write_wav};

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{path}: cannot read the SoundFont: {reason}")]
    SoundFont { path: String, reason: String },
    #[error(
        "{0}: this is an SF3 (compressed) SoundFont, which the synthesizer cannot read: convert it to SF2 (for example with Polyphone)"
    )]
    Sf3(String),
    #[error("cannot start the synthesizer: {0}")]
    Synth(String),
    #[error("no audio output device is available ({0}); you can still export to WAV")]
    NoDevice(String),
    #[error("{path}: cannot write the WAV file: {reason}")]
    Wav { path: String, reason: String },
}
