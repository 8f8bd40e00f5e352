//! MIDI export for a DAW: a tempo in the file and onsets on the chosen grid, read back through
//! the ordinary reader with nothing lost; and `--keep-primer` writing the primer's own notes.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use echoai::generate::{GenerateConfig, generate};
use echoai::midi::{ExportOptions, Grid, export_bytes, parse_midi, read_midi, tempo_bpm};
use echoai::model::checkpoint::load_for_inference;
use echoai::performance::Performance;

fn pieces() -> Vec<Performance> {
    let mut all: Vec<Performance> = [
        "assets/corpus/piano/satie-gymnopedie-no1.mid",
        "assets/corpus/piano/fur-elise.mid",
    ]
    .iter()
    .filter(|p| Path::new(p).exists())
    .map(|p| read_midi(Path::new(p)).unwrap())
    .collect();
    // A generated take: dense, off any musical grid, with repeated notes.
    let (model, _) = load_for_inference(
        Path::new("assets/models/lstm-attention"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let config = GenerateConfig {
        max_seconds: 20.0,
        min_seconds: 20.0,
        seed: 4,
        ..GenerateConfig::default()
    };
    let takes = generate(&model, None, &config, &AtomicBool::new(false), &mut |_| {}).unwrap();
    all.push(takes[0].performance.clone());
    assert!(all.len() >= 2);
    all
}

#[test]
fn export_at_120_bpm_on_sixteenths_reads_back_on_the_grid_with_every_note() {
    let options = ExportOptions {
        bpm: 120.0,
        quantize: Some(Grid::parse("1/16").unwrap()),
        track_name: "EchoAI take".into(),
    };
    let sixteenth = 60.0 / 120.0 / 4.0;
    let mut off_grid_before = 0;
    for piece in pieces() {
        let bytes = export_bytes(&piece, &options).unwrap();
        assert_eq!(tempo_bpm(&bytes), Some(120.0));
        let back = parse_midi(&bytes).unwrap();
        assert_eq!(back.len(), piece.len(), "note count");
        let off_grid = back
            .notes
            .iter()
            .filter(|n| {
                let steps = n.start / sixteenth;
                (steps - steps.round()).abs() > 1e-6
            })
            .count();
        assert_eq!(off_grid, 0);
        off_grid_before += piece
            .notes
            .iter()
            .filter(|n| ((n.start / sixteenth) - (n.start / sixteenth).round()).abs() > 1e-3)
            .count();
        assert!(String::from_utf8_lossy(&bytes).contains("EchoAI take"));
    }
    // The scores are on the grid already; the generated take is not: the check above can fail.
    assert!(off_grid_before > 50, "{off_grid_before}");
}

#[test]
fn triplets_and_tempo_line_up() {
    let piece = &pieces()[0];
    let options = ExportOptions {
        bpm: 90.0,
        quantize: Some(Grid::parse("1/8T").unwrap()),
        ..ExportOptions::default()
    };
    let bytes = export_bytes(piece, &options).unwrap();
    // 90 BPM is 666,667 us per quarter in the file.
    let bpm = tempo_bpm(&bytes).unwrap();
    assert!((bpm - 90.0).abs() < 1e-3, "{bpm}");
    let back = parse_midi(&bytes).unwrap();
    assert_eq!(back.len(), piece.len());
    let step = 60.0 / bpm / 3.0;
    assert!(back.notes.iter().all(|n| {
        let k = n.start / step;
        (k - k.round()).abs() < 1e-6
    }));
    // Unquantised, a tempo changes nothing of the music's timing (1 tick is ~1 ms at 120 BPM).
    let plain = parse_midi(&export_bytes(piece, &ExportOptions::default()).unwrap()).unwrap();
    assert_eq!(plain.len(), piece.len());
    for (a, b) in plain.notes.iter().zip(&piece.notes) {
        assert!((a.start - b.start).abs() < 1.1e-3, "{a:?} {b:?}");
    }
    assert!(
        ExportOptions {
            bpm: 1000.0,
            ..ExportOptions::default()
        }
        .validate()
        .unwrap_err()
        .contains("bpm")
    );
}

#[test]
fn keep_primer_writes_the_primers_own_notes_then_the_new_part() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("continued.mid");
    // Satie's score moved 3 ms later: every onset is off the model's 10 ms grid.
    let satie = read_midi(Path::new("assets/corpus/piano/satie-gymnopedie-no1.mid")).unwrap();
    let moved = Performance::from_notes(
        satie
            .notes
            .iter()
            .map(|n| {
                echoai::performance::Note::new(n.pitch, n.velocity, n.start + 0.003, n.end + 0.003)
            })
            .collect(),
    );
    let primer_file = dir.path().join("primer.mid");
    echoai::midi::write_midi(&moved, &primer_file).unwrap();
    let primer_path = primer_file.to_str().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_echoai"))
        .args([
            "generate",
            "--checkpoint",
            "assets/models/lstm-attention",
            "--primer",
            primer_path,
            "--primer-seconds",
            "30",
            "--keep-primer",
            "--seconds",
            "6",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let original = read_midi(Path::new(primer_path))
        .unwrap()
        .first_seconds(30.0);
    let written = read_midi(&out).unwrap();
    let kept = written.first_seconds(30.0);
    assert_eq!(kept.len(), original.len());
    // Unquantised: the file's 1 ms ticks, not the model's 10 ms grid.
    let mut off_10ms = 0;
    for (a, b) in kept.notes.iter().zip(&original.notes) {
        assert_eq!((a.pitch, a.velocity), (b.pitch, b.velocity));
        assert!(
            (a.start - b.start).abs() <= 6e-4 && (a.end - b.end).abs() <= 6e-4,
            "{a:?} {b:?}"
        );
        let k = b.start * 100.0;
        if (k - k.round()).abs() > 0.1 {
            off_10ms += 1;
        }
    }
    assert!(
        off_10ms > 0,
        "the primer has onsets off the 10 ms grid to keep"
    );
    let new: Vec<_> = written.notes.iter().filter(|n| n.start >= 30.0).collect();
    assert!(!new.is_empty());
    assert!(written.end_time() <= 36.0 + 1e-6);
}
