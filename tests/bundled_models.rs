//! The default models shipped in assets/models: they load, generate, and beat a unigram model.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use echoai::corpus::{Corpus, Split};
use echoai::generate::{GenerateConfig, generate};
use echoai::model::ModelKind;
use echoai::model::checkpoint::{expected_shapes, load_for_inference, read_meta};

const MODELS: [(&str, ModelKind); 2] = [
    ("assets/models/lstm-attention", ModelKind::LstmAttention),
    ("assets/models/lstm", ModelKind::Lstm),
];

#[test]
fn bundled_checkpoints_load_and_generate_ten_seconds() {
    for (dir, kind) in MODELS {
        let dir = Path::new(dir);
        let meta = read_meta(dir).unwrap();
        assert_eq!(meta.model.kind, kind);
        assert!(!expected_shapes(&meta.model).unwrap().is_empty());
        // Loading checks every tensor's name and shape against the config.
        let (model, _) = load_for_inference(dir, &Device::Cpu).unwrap();
        let config = GenerateConfig {
            max_seconds: 10.0,
            seed: 42,
            ..GenerateConfig::default()
        };
        let takes = generate(&model, None, &config, &AtomicBool::new(false), &mut |_| {}).unwrap();
        let piece = &takes[0].performance;
        assert!(piece.len() > 10, "{kind}: {} notes", piece.len());
        assert!(piece.end_time() <= 10.0 + 1e-9);
        assert!(
            piece
                .notes
                .iter()
                .all(|n| n.end > n.start && (21..=108).contains(&n.pitch)),
            "{kind}: {:?}",
            piece.notes.iter().map(|n| n.pitch).collect::<Vec<_>>()
        );
        let again = generate(&model, None, &config, &AtomicBool::new(false), &mut |_| {}).unwrap();
        assert_eq!(takes, again, "{kind}: the same seed gives the same piece");
        // And it is a valid MIDI file.
        let bytes = echoai::midi::midi_bytes(piece).unwrap();
        assert_eq!(echoai::midi::parse_midi(&bytes).unwrap().len(), piece.len());
    }
}

/// Cross-entropy of the validation split under its own unigram distribution (the best a
/// model without context can do on it).
fn unigram_nll(stream: &[u16]) -> f64 {
    let mut counts = vec![0usize; echoai::tokenizer::VOCAB_SIZE];
    // Each window's first event is never predicted by `eval`; the difference is negligible.
    for &id in &stream[1..] {
        counts[id as usize] += 1;
    }
    let n = (stream.len() - 1) as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

#[test]
fn bundled_models_beat_a_unigram_model_on_the_validation_split() {
    let corpus = Corpus::load(Path::new("assets/corpus"), &|_, _| {}).unwrap();
    let validation = corpus.stream(Split::Validation);
    let unigram = unigram_nll(&validation);
    assert!(unigram > 3.0, "{unigram}");
    for (dir, kind) in MODELS {
        let out = Command::new(env!("CARGO_BIN_EXE_echoai"))
            .args([
                "eval",
                "--checkpoint",
                dir,
                "--data",
                "assets/corpus",
                "--split",
                "validation",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let nll = json["nll"].as_f64().unwrap();
        assert_eq!(json["events"].as_u64().unwrap() as usize, validation.len());
        assert!(
            nll < unigram - 0.5,
            "{kind}: NLL {nll} vs unigram {unigram}"
        );
    }
}
