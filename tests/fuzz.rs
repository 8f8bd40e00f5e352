//! Structure-aware fuzzing on stable Rust (proptest): the MIDI reader, the event decoder, the
//! checkpoint loader and `trainer.json` take generated hostile input and must answer with a
//! value or an error, never a panic, and within a bounded amount of memory per case.
//!
//! `cargo test` runs a few thousand cases. The long run (docs/RELIABILITY.md):
//! `FUZZ_CASES=200000 cargo test --release --test fuzz -- --test-threads 1`.

mod common;

use common::peak_alloc::{ONE_AT_A_TIME, PeakCounting, peak_bytes_of};
use common::*;
use echoai::midi::{MAX_PIECE_SECONDS, parse_midi};
use echoai::model::checkpoint;
use echoai::tokenizer::{VOCAB_SIZE, decode, encode};
use proptest::prelude::*;

#[global_allocator]
static ALLOCATOR: PeakCounting = PeakCounting;

fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One track event, chosen to reach the reader's edges: extreme deltas, tempo changes
/// (including 0 and the slowest), pedal presses, running status, stray data bytes.
fn event() -> impl Strategy<Value = Vec<u8>> {
    let delta = prop_oneof![
        4 => 0u32..200,
        1 => Just((1u32 << 28) - 1),
        1 => 0u32..(1 << 28),
    ];
    let message = prop_oneof![
        4 => (0u8..16, 0u8..128, 0u8..128).prop_map(|(c, k, v)| vec![0x90 | c, k, v]),
        3 => (0u8..16, 0u8..128).prop_map(|(c, k)| vec![0x80 | c, k, 0]),
        2 => (0u8..16, prop::bool::ANY).prop_map(|(c, down)| vec![0xB0 | c, 64, if down { 127 } else { 0 }]),
        1 => prop::sample::select(vec![0u32, 1, 500_000, 0xFF_FFFF])
            .prop_map(|us| vec![0xFF, 0x51, 0x03, (us >> 16) as u8, (us >> 8) as u8, us as u8]),
        // Running status: data bytes with no status byte of their own.
        2 => (0u8..128, 0u8..128).prop_map(|(k, v)| vec![k, v]),
        1 => prop::collection::vec(any::<u8>(), 0..6),
    ];
    (delta, message).prop_map(|(d, m)| ev(d, &m))
}

/// A whole file: format, division (metrical or SMPTE), tracks, and sometimes a lying chunk
/// length or a lying track count.
fn smf_file() -> impl Strategy<Value = Vec<u8>> {
    let division = prop_oneof![
        4 => 1u16..1000,
        1 => Just(0u16),
        1 => prop::sample::select(vec![0xE250u16, 0xE728, 0xE300, 0xE200]),
        1 => any::<u16>(),
    ];
    let tracks = prop::collection::vec(prop::collection::vec(event(), 0..40), 0..5);
    let lie = prop_oneof![
        6 => Just(None),
        1 => any::<u32>().prop_map(Some),
    ];
    let count_lie = prop_oneof![6 => Just(None), 1 => any::<u16>().prop_map(Some)];
    (0u16..3, division, tracks, lie, count_lie).prop_map(
        |(format, division, tracks, lie, count)| {
            let chunks: Vec<Vec<u8>> = tracks.iter().map(|events| track(&cat(events))).collect();
            let mut bytes = smf(format, division, &chunks);
            if let Some(count) = count {
                bytes[10..12].copy_from_slice(&count.to_be_bytes());
            }
            if let (Some(len), true) = (lie, bytes.len() >= 22) {
                bytes[18..22].copy_from_slice(&len.to_be_bytes());
            }
            bytes
        },
    )
}

/// No input file may hold more than this much memory while it is read (and tokenized).
const MAX_BYTES_PER_FILE: usize = 64 * 1024 * 1024;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(1500)))]

    #[test]
    fn the_midi_reader_answers_every_file_within_bounds(bytes in smf_file()) {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let (events, peak) = peak_bytes_of(|| parse_midi(&bytes).map(|perf| {
            for n in &perf.notes {
                assert!(n.start >= 0.0 && n.end > n.start && n.end <= MAX_PIECE_SECONDS, "{n:?}");
                assert!(n.pitch < 128 && (1..128).contains(&n.velocity), "{n:?}");
            }
            encode(&perf).len()
        }));
        prop_assert!(peak < MAX_BYTES_PER_FILE, "{peak} bytes for {} input bytes", bytes.len());
        if let Ok(events) = events {
            // At most one time shift per second of the bounded piece, plus 3 events per note.
            prop_assert!(events <= 21_600 + 3 * bytes.len());
        }
    }

    #[test]
    fn any_id_stream_decodes_to_a_valid_performance(
        ids in prop::collection::vec(prop_oneof![9 => 0u16..VOCAB_SIZE as u16, 1 => any::<u16>()], 0..3000)
    ) {
        let perf = decode(&ids);
        for pair in perf.notes.windows(2) {
            prop_assert!(pair[0].start <= pair[1].start);
        }
        for n in &perf.notes {
            prop_assert!(n.end > n.start && n.start >= 0.0 && n.pitch < 128 && n.velocity >= 1);
        }
    }
}

/// A small valid checkpoint written once, whose files the loader tests damage.
fn pristine_checkpoint() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = echoai::train::TrainData {
            train: (0..400).map(|i| (i % 300) as u16).collect(),
            validation: (0..100).map(|i| (i % 300) as u16).collect(),
            ..Default::default()
        };
        let config = echoai::train::TrainConfig {
            model: echoai::model::ModelConfig {
                kind: echoai::model::ModelKind::LstmAttention,
                embed: 4,
                hidden: 8,
                layers: 1,
                window: 2,
                heads: 2,
                ..Default::default()
            },
            steps: 2,
            batch: 2,
            seq_len: 8,
            validate_every: 0,
            ..Default::default()
        };
        echoai::train::train(
            &data,
            &config,
            &dir.path().join("ckpt"),
            false,
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
        dir
    })
    .path()
}

const FILES: [&str; 4] = [
    checkpoint::CONFIG_FILE,
    checkpoint::MODEL_FILE,
    checkpoint::OPTIMIZER_FILE,
    checkpoint::TRAINER_FILE,
];

/// A copy of the pristine checkpoint in a new temporary folder (kept while the guard lives).
fn fresh_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let ckpt = work.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    for f in FILES {
        std::fs::copy(pristine_checkpoint().join("ckpt").join(f), ckpt.join(f)).unwrap();
    }
    (work, ckpt)
}

/// Cut a file short, flip a byte, or both.
#[derive(Clone, Debug)]
struct Damage {
    file: usize,
    cut: Option<f64>,
    flips: Vec<(f64, u8)>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        0..FILES.len(),
        prop::option::of(0.0f64..1.0),
        prop::collection::vec((0.0f64..1.0, 1u8..=255), 0..4),
    )
        .prop_map(|(file, cut, flips)| Damage { file, cut, flips })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(400)))]

    #[test]
    fn a_damaged_checkpoint_loads_or_is_refused_never_panics(d in damage()) {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let (_work, ckpt) = fresh_copy();
        let path = ckpt.join(FILES[d.file]);
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(cut) = d.cut {
            bytes.truncate((cut * bytes.len() as f64) as usize);
        }
        for &(at, mask) in &d.flips {
            if !bytes.is_empty() {
                let i = ((at * bytes.len() as f64) as usize).min(bytes.len() - 1);
                bytes[i] ^= mask;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let device = candle_core::Device::Cpu;
        let ((), peak) = peak_bytes_of(|| {
            let _ = checkpoint::load_for_inference(&ckpt, &device);
            let _ = checkpoint::load_optimizer_moments(&ckpt, &device);
            let _ = echoai::train::saved_config(&ckpt);
        });
        prop_assert!(peak < MAX_BYTES_PER_FILE, "{peak} bytes");
    }

    #[test]
    fn trainer_json_values_are_range_checked(
        field in prop::sample::select(vec![
            "/step", "/config/steps", "/config/batch", "/config/seq_len", "/config/lr",
            "/config/warmup", "/config/clip", "/config/model/hidden", "/config/model/layers",
            "/config/validation_crops", "/rng/state/0", "/elapsed_s",
        ]),
        value in prop_oneof![
            Just(serde_json::json!(0)), Just(serde_json::json!(-1)),
            Just(serde_json::json!(u64::MAX)), Just(serde_json::json!(1e300)),
            Just(serde_json::json!("NaN")), Just(serde_json::json!(null)),
            any::<u32>().prop_map(|v| serde_json::json!(v)),
        ],
        zero_rng in prop::bool::weighted(0.1),
    ) {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let (_work, ckpt) = fresh_copy();
        let path = ckpt.join(checkpoint::TRAINER_FILE);
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if let Some(slot) = state.pointer_mut(field) {
            *slot = value;
        }
        if zero_rng {
            state["rng"]["state"] = serde_json::json!([0, 0, 0, 0]);
        }
        std::fs::write(&path, state.to_string()).unwrap();
        match echoai::train::saved_config(&ckpt) {
            Ok(config) => {
                prop_assert!(config.validate().is_ok());
                prop_assert!(!zero_rng, "an all-zero generator state was accepted");
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
