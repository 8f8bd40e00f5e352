//! EchoAI Studio's engine: MIDI in and out, the event vocabulary, corpora, models, training,
//! generation and audio. The studio (GUI) and the `echoai` command line are both clients of it.
//!
//! Data flows: a MIDI file is read into a [`performance::Performance`] ([`midi`]), encoded as
//! event ids ([`tokenizer`]), gathered with its siblings into a [`corpus::Corpus`], and the token
//! streams feed training; generated ids are decoded back to a performance and written as MIDI.

pub mod assets;
pub mod audio;
pub mod bounds;
pub mod cli;
pub mod corpus;
pub mod device;
pub mod fsutil;
pub mod generate;
pub mod jam;
pub mod live_midi;
pub mod memory;
pub mod midi;
pub mod model;
pub mod optim;
pub mod performance;
pub mod rng;
pub mod run_folder;
pub mod stats;
pub mod studio;
pub mod tokenizer;
pub mod train;
