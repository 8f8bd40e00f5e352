//! `echoai stats`: hand-computed statistics, and the set comparison.

use std::path::Path;
use std::process::Command;

use echoai::midi::write_midi;
use echoai::performance::{Note, Performance};

fn echoai(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_echoai"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn statistics_of_a_small_file_match_the_hand_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.mid");
    let perf = Performance::from_notes(vec![
        Note::new(60, 100, 0.0, 1.0),
        Note::new(64, 50, 0.0, 0.5),
        Note::new(67, 20, 1.0, 2.0),
    ]);
    write_midi(&perf, &path).unwrap();
    let out = echoai(&["stats", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &json[0]["stats"];
    assert_eq!(s["notes"], 3);
    assert!((s["seconds"].as_f64().unwrap() - 2.0).abs() < 1e-6);
    assert!((s["notes_per_second"].as_f64().unwrap() - 1.5).abs() < 1e-6);
    // Two notes for 0.5 s, then one for 1.5 s: (2 * 0.5 + 1 * 1.5) / 2.
    assert!((s["polyphony"].as_f64().unwrap() - 1.25).abs() < 1e-6);
    assert_eq!(
        (s["pitch_min"].as_u64(), s["pitch_max"].as_u64()),
        (Some(60), Some(67))
    );
    let pc: Vec<f64> = s["pitch_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let third = 1.0 / 3.0;
    let mut expect = [0.0; 12];
    (expect[0], expect[4], expect[7]) = (third, third, third);
    for (a, b) in pc.iter().zip(expect) {
        assert!((a - b).abs() < 1e-9, "{pc:?}");
    }
    let vel: Vec<f64> = s["velocities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // 100 -> bin 6, 50 -> bin 3, 20 -> bin 1.
    assert_eq!(vel.iter().filter(|v| **v > 0.0).count(), 3);
    assert!(
        (vel[6] - third).abs() < 1e-9
            && (vel[3] - third).abs() < 1e-9
            && (vel[1] - third).abs() < 1e-9
    );
    // One gap between distinct onsets, 1.0 s: the [0.8, 1.6) bin.
    let ioi: Vec<f64> = s["inter_onset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(ioi, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
}

fn compare(generated: &Path, reference: &Path) -> Vec<serde_json::Value> {
    let out = echoai(&[
        "stats",
        "--compare",
        generated.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

#[test]
fn a_set_overlaps_itself_and_a_one_pitch_set_is_flagged() {
    let reference = Path::new("assets/corpus/piano");
    for row in compare(reference, reference) {
        assert!(row["overlap"].as_f64().unwrap() > 0.85, "{row}");
        assert_eq!(row["flagged"], false, "{row}");
    }
    let dir = tempfile::tempdir().unwrap();
    for i in 0..8 {
        let notes = (0..200)
            .map(|k| {
                Note::new(
                    60,
                    40 + (k % 60) as u8,
                    k as f64 * 0.3 + i as f64 * 0.01,
                    k as f64 * 0.3 + 0.25,
                )
            })
            .collect();
        write_midi(
            &Performance::from_notes(notes),
            &dir.path().join(format!("mono{i}.mid")),
        )
        .unwrap();
    }
    let rows = compare(dir.path(), reference);
    let flagged = |name: &str| {
        rows.iter().find(|r| r["name"] == name).unwrap()["flagged"]
            .as_bool()
            .unwrap()
    };
    assert!(flagged("pitch-class histogram"), "{rows:?}");
    assert!(flagged("pitch range"), "{rows:?}");
}

/// `echoai stats --json | head` stops quietly when the reader goes away, as Unix tools do; it
/// used to panic on the broken pipe.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_a_report_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_echoai"))
        .args(["stats", "assets/corpus/piano", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader leaves before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}
