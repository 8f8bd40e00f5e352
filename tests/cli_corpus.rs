//! The `echoai corpus` and `echoai convert` commands, run as a user would.

use std::path::Path;
use std::process::Command;

fn echoai(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_echoai"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn corpus_json_lists_failures_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        "assets/corpus/piano/fur-elise.mid",
        dir.path().join("a.mid"),
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.mid"), b"MThd\x00\x00").unwrap();
    let out = echoai(&["corpus", dir.path().to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["files_ok"], 1);
    assert_eq!(json["files_failed"], 1);
    assert_eq!(json["failures"][0]["path"], "broken.mid");
    assert!(json["notes"].as_u64().unwrap() > 100);
    assert!(json["events"].as_u64().unwrap() > json["notes"].as_u64().unwrap());
    let split_files: u64 = ["train", "validation", "test"]
        .iter()
        .map(|s| json[s]["files"].as_u64().unwrap())
        .sum();
    assert_eq!(split_files, 1);
}

#[test]
fn corpus_of_only_broken_files_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.mid"), b"garbage").unwrap();
    let out = echoai(&["corpus", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("failed: broken.mid"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no MIDI file"));
}

#[test]
fn corpus_of_missing_folder_is_an_error() {
    let out = echoai(&["corpus", "/no/such/dir"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/dir"));
}

#[test]
fn convert_round_trips_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.mid");
    let input = "assets/corpus/piano/satie-gymnopedie-no1.mid";
    let out = echoai(&["convert", input, out_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = echoai::midi::read_midi(Path::new(input)).unwrap();
    let after = echoai::midi::read_midi(&out_path).unwrap();
    assert_eq!(before.len(), after.len());
}

#[test]
fn convert_of_a_corrupt_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.mid");
    std::fs::write(&bad, b"RIFF....").unwrap();
    let out = echoai(&[
        "convert",
        bad.to_str().unwrap(),
        dir.path().join("o.mid").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.mid") && err.contains("not a valid Standard MIDI File"),
        "{err}"
    );
    assert!(!dir.path().join("o.mid").exists());
}
