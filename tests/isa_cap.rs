//! `ECHOAI_SIMD` caps the hand-written kernels' instruction set, so one AVX-512 machine runs the
//! code that AVX2-only and other machines run: each level trains the same model to the same
//! losses, within float tolerance.

use echoai::model::isa::Isa;
use std::process::Command;

/// Ragged sizes: hidden 70 is three 32-unit panels (a team of threads, the last panel partial);
/// batch 3 leaves partial register tiles.
const RUN: [&str; 26] = [
    "train",
    "--data",
    "assets/corpus/piano",
    "--model",
    "lstm-attention",
    "--steps",
    "12",
    "--validate-every",
    "6",
    "--embed",
    "24",
    "--hidden",
    "70",
    "--layers",
    "2",
    "--batch",
    "3",
    "--seq",
    "40",
    "--window",
    "8",
    "--heads",
    "2",
    "--checkpoint-every",
    "100",
    "--json",
];

struct Outcome {
    device: String,
    losses: Vec<f64>,
    stderr: String,
}

fn train_with(cap: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_echoai"))
        .args(RUN)
        .arg("--out")
        .arg(dir.path().join("run"))
        .env("ECHOAI_SIMD", cap)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "ECHOAI_SIMD={cap}: {stderr}");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let device = events
        .iter()
        .find(|e| e["event"] == "started")
        .and_then(|e| e["device"].as_str())
        .expect("a started event")
        .to_string();
    let losses = events
        .iter()
        .filter(|e| e["event"] == "step" || e["event"] == "validation")
        .map(|e| e["loss"].as_f64().or(e["nll"].as_f64()).expect("a loss"))
        .collect();
    Outcome {
        device,
        losses,
        stderr,
    }
}

#[test]
fn every_instruction_set_trains_to_the_same_losses() {
    // The best first: the others are compared with it.
    let mut levels = Isa::available();
    levels.reverse();
    let outcomes: Vec<(Isa, Outcome)> = levels
        .iter()
        .map(|&isa| (isa, train_with(isa.name())))
        .collect();
    let (_, best) = &outcomes[0];
    assert_eq!(best.losses.len(), 14, "12 steps and 2 validations");
    for (isa, outcome) in &outcomes {
        assert_eq!(outcome.device, format!("cpu ({} kernels)", isa.name()));
        for (i, (a, b)) in outcome.losses.iter().zip(&best.losses).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs(),
                "{}: loss {i} is {a}, {} gave {b}",
                isa.name(),
                levels[0].name()
            );
        }
    }
}

#[test]
fn an_unknown_cap_is_named_and_ignored() {
    let outcome = train_with("sse9");
    assert!(
        outcome
            .stderr
            .contains("\"sse9\" is not one of avx512, avx2, portable")
    );
    assert_eq!(
        outcome.device,
        format!("cpu ({} kernels)", Isa::of_cpu().name())
    );
}
