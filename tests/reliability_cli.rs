//! The promises of docs/RELIABILITY.md, checked through the real binary: no user folder is
//! replaced, every setting is range-checked with a message that names it, a resume continues the
//! run as saved, and a kill at any instant leaves a checkpoint that resumes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use echoai::model::checkpoint;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_echoai"))
}

const DATA: &str = "assets/corpus/piano";

const TINY: [&str; 14] = [
    "--embed", "8", "--hidden", "16", "--layers", "1", "--batch", "2", "--seq", "16", "--window",
    "4", "--heads", "2",
];

fn failure_message(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--data", DATA, "--out", out];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_folder_that_is_not_a_checkpoint_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let thesis = dir.path().join("thesis");
    std::fs::create_dir(&thesis).unwrap();
    std::fs::write(thesis.join("thesis.txt"), "years of work").unwrap();
    let out = thesis.to_str().unwrap();
    let message = failure_message(&train_args(out, &["--steps", "3"]));
    assert!(
        message.contains("not empty") && message.contains("thesis.txt"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(thesis.join("thesis.txt")).unwrap(),
        "years of work"
    );
    assert_eq!(std::fs::read_dir(&thesis).unwrap().count(), 1);
    // A file given as --out is refused too.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "mine").unwrap();
    let message = failure_message(&train_args(file.to_str().unwrap(), &["--steps", "3"]));
    assert!(message.contains("not a folder"), "{message}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    // An empty folder is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let ok = bin()
        .args(train_args(empty.to_str().unwrap(), &["--steps", "2"]))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(checkpoint::is_checkpoint(&empty));
    assert!(
        !empty.join(echoai::run_folder::RUN_MARKER).exists(),
        "a finished run leaves no marker"
    );
}

/// Every command that writes a file the user names refuses one that exists, before doing any
/// work, unless `--overwrite` says to replace it; a folder is never replaced.
#[test]
fn an_existing_output_file_is_kept_unless_overwrite_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine.mid");
    std::fs::write(&mine, "a file of my own").unwrap();
    let mine = mine.to_str().unwrap();
    let piece = "assets/corpus/piano/fur-elise.mid";
    let generate = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "generate",
            "--checkpoint",
            "assets/models/lstm",
            "--seconds",
            "2",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect()
    };
    let commands: [Vec<String>; 4] = [
        generate(mine, &[]),
        ["convert", piece, mine].map(String::from).to_vec(),
        ["render", piece, mine].map(String::from).to_vec(),
        ["record", "--port", "0", "--seconds", "1", mine]
            .map(String::from)
            .to_vec(),
    ];
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let message = failure_message(&args);
        assert!(
            message.contains("already exists") && message.contains("--overwrite"),
            "{args:?}: {message}"
        );
        assert_eq!(std::fs::read_to_string(mine).unwrap(), "a file of my own");
    }
    // Several variations: the second name is taken, so not even the first is written.
    let take = dir.path().join("take.mid");
    let second = dir.path().join("take-2.mid");
    std::fs::write(&second, "mine too").unwrap();
    let message = failure_message(
        &generate(take.to_str().unwrap(), &["--variations", "2"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(message.contains("take-2.mid"), "{message}");
    assert!(!dir.path().join("take-1.mid").exists());
    assert_eq!(std::fs::read_to_string(&second).unwrap(), "mine too");
    // A folder as the output, even with --overwrite.
    let folder = dir.path().join("pieces");
    std::fs::create_dir(&folder).unwrap();
    let args = generate(folder.to_str().unwrap(), &["--overwrite"]);
    let message = failure_message(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(message.contains("is a folder"), "{message}");
    // Asked to, it replaces the file.
    for args in [
        generate(mine, &["--overwrite"]),
        ["convert", piece, mine, "--overwrite"]
            .map(String::from)
            .to_vec(),
    ] {
        let out = bin().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(mine).unwrap();
        assert!(bytes.starts_with(b"MThd"), "{args:?} wrote a MIDI file");
    }
}

#[test]
fn every_numeric_setting_is_range_checked_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    for (flag, value, name) in [
        ("--batch", "0", "batch"),
        ("--seq", "1", "seq"),
        ("--seq", "99999999", "seq"),
        ("--lr", "nan", "lr"),
        ("--lr", "inf", "lr"),
        ("--hidden", "0", "hidden"),
        ("--hidden", "1000000", "hidden"),
        ("--layers", "100", "layers"),
        ("--dropout", "1.5", "dropout"),
        ("--steps", "0", "steps"),
    ] {
        let message = failure_message(&["train", "--data", DATA, "--out", out, flag, value]);
        assert!(
            message.contains(name) && message.contains("must be"),
            "{flag} {value}: {message}"
        );
        assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
    }
    // Each size within range, together far past this machine's memory: refused up front.
    let message = failure_message(&[
        "train", "--data", DATA, "--out", out, "--model", "lstm", "--hidden", "4096", "--batch",
        "512", "--seq", "2048",
    ]);
    assert!(message.contains("of memory"), "{message}");
    assert!(!Path::new(out).exists(), "nothing was written");

    let eval = failure_message(&[
        "eval",
        "--checkpoint",
        "assets/models/lstm",
        "--data",
        DATA,
        "--seq",
        "0",
    ]);
    assert!(eval.contains("--seq") && eval.contains("must be"), "{eval}");
    let take = dir.path().join("take.mid");
    for (flag, value) in [
        ("--top-p", "1.5"),
        ("--temperature", "0"),
        ("--seconds", "inf"),
        ("--variations", "100000"),
    ] {
        let message = failure_message(&[
            "generate",
            "--checkpoint",
            "assets/models/lstm",
            "--out",
            take.to_str().unwrap(),
            flag,
            value,
        ]);
        assert!(message.contains("must be"), "{flag} {value}: {message}");
    }
    let record = failure_message(&[
        "record",
        "--port",
        "0",
        "--seconds",
        "inf",
        take.to_str().unwrap(),
    ]);
    assert!(record.contains("--seconds"), "{record}");
    assert!(!take.exists());
}

/// Steps of a `--json` run's output lines of one kind.
fn steps_of(lines: &[String], event: &str) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .filter_map(|v| v["step"].as_u64())
        .collect()
}

#[test]
fn a_resume_continues_the_run_as_saved_and_says_what_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out_s = out.to_str().unwrap();
    let first = bin()
        .args(train_args(out_s, &["--steps", "6", "--lr", "0.003"]))
        .output()
        .unwrap();
    assert!(first.status.success());
    // Stretch the run as if it had been stopped early: the saved schedule says 20 steps.
    let trainer = out.join(checkpoint::TRAINER_FILE);
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trainer).unwrap()).unwrap();
    state["config"]["steps"] = 20.into();
    std::fs::write(&trainer, state.to_string()).unwrap();

    let resumed = bin()
        .args([
            "train", "--data", DATA, "--out", out_s, "--resume", "--json",
        ])
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&resumed.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        steps_of(&lines, "finished"),
        vec![20],
        "ran to the saved 20"
    );
    assert!(!lines.iter().any(|l| l.contains("\"notice\"")));
    let saved = echoai::train::saved_config(&out).unwrap();
    assert_eq!((saved.lr, saved.batch, saved.seq_len), (0.003, 2, 16));

    let extended = bin()
        .args(["train", "--data", DATA, "--out", out_s, "--resume"])
        .args(["--steps", "24", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&extended.stdout);
    assert!(text.contains("steps: 20 -> 24"), "{text}");
    let refused = failure_message(&[
        "train", "--data", DATA, "--out", out_s, "--resume", "--hidden", "32",
    ]);
    assert!(refused.contains("hidden"), "{refused}");
}

/// A tiny xorshift for kill delays: the test should be the same every time it runs.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn a_kill_at_any_moment_leaves_a_checkpoint_that_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out_s = out.to_str().unwrap().to_string();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let kills = 50;
    let mut last_saved = 0u64;
    let (mut mid_save, mut between_renames) = (0, 0);
    for round in 0..kills {
        let mut args = train_args(&out_s, &["--steps", "1000000", "--checkpoint-every", "1"]);
        args.extend(["--validate-every", "0", "--json"]);
        if round > 0 {
            args.push("--resume");
        }
        let mut child = bin()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait for the run to be saving (a first checkpoint of this process), then kill it a
        // random moment later: before, during or after one of the saves that follow.
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for line in lines.by_ref() {
            let line = line.unwrap();
            let saved = line.contains("\"event\":\"checkpoint\"");
            seen.push(line);
            if saved || Instant::now() > deadline {
                break;
            }
        }
        assert!(
            !steps_of(&seen, "checkpoint").is_empty(),
            "round {round}: the run never saved: {seen:?} {:?}",
            child
                .wait_with_output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        );
        std::thread::sleep(Duration::from_micros(next(&mut seed) % 40_000));
        child.kill().unwrap();
        child.wait().unwrap();
        seen.extend(lines.map_while(Result::ok));
        let reported = *steps_of(&seen, "checkpoint").last().unwrap();
        assert!(reported >= last_saved, "round {round}: steps went back");

        // Where the kill landed: inside a save (staged or set-aside folders left over), or
        // between the two renames (no checkpoint under its name at all).
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if names.iter().any(|n| n.starts_with(".run.")) {
            mid_save += 1;
        }
        if !names.iter().any(|n| n == "run") {
            between_renames += 1;
        }

        // What --resume would load: complete, and no older than the last reported save.
        let meta = checkpoint::read_meta(&out)
            .unwrap_or_else(|e| panic!("round {round}: no checkpoint after the kill: {e}"));
        assert!(
            meta.step >= reported,
            "round {round}: checkpoint at step {} but step {reported} was reported saved",
            meta.step
        );
        echoai::train::saved_config(&out).unwrap();
        checkpoint::load_for_inference(&out, &candle_core::Device::Cpu).unwrap();
        checkpoint::load_optimizer_moments(&out, &candle_core::Device::Cpu).unwrap();
        last_saved = meta.step;
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "run")
            .collect();
        assert!(leftovers.is_empty(), "round {round}: left {leftovers:?}");
        // The marker says the run died, and the next start tells the user.
        let died = echoai::run_folder::unfinished_run(&out).expect("the marker outlives a kill");
        assert!(died.describe().contains("did not finish"));
    }
    assert!(last_saved > 0);
    eprintln!(
        "{kills} kills: {mid_save} inside a save, {between_renames} between its two renames, all resumable"
    );
    assert!(
        mid_save > 0,
        "no kill landed inside a save: the test tests nothing"
    );
}
