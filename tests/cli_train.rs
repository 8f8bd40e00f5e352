//! `echoai train`, `generate` and `eval` as a user runs them, including Ctrl-C.

mod common;

use common::tensor_bits;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_echoai"))
}

const TINY: [&str; 14] = [
    "--embed", "16", "--hidden", "32", "--layers", "1", "--batch", "2", "--seq", "32", "--window",
    "8", "--heads", "2",
];

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_cleanly_and_the_result_generates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut child = bin()
        .args([
            "train",
            "--data",
            "assets/corpus/piano",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "1000000",
            "--json",
        ])
        .args(TINY)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait for a few training steps.
    let mut steps = 0;
    while steps < 3 {
        let line = lines.next().expect("training prints events").unwrap();
        if line.contains("\"event\":\"step\"") {
            steps += 1;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit {exit:?}");
    let finished = rest
        .iter()
        .find(|l| l.contains("\"event\":\"finished\""))
        .expect("a finished event");
    assert!(finished.contains("\"stopped_early\":true"), "{finished}");
    assert!(echoai::model::checkpoint::is_checkpoint(&out));

    // The checkpoint generates three variations and evaluates.
    let mid = dir.path().join("take.mid");
    let generated = bin()
        .args([
            "generate",
            "--checkpoint",
            out.to_str().unwrap(),
            "--seconds",
            "3",
            "--variations",
            "3",
            "--seed",
            "5",
            "--out",
            mid.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    for i in 1..=3 {
        let path = dir.path().join(format!("take-{i}.mid"));
        echoai::midi::read_midi(&path).unwrap();
    }
    let eval = bin()
        .args([
            "eval",
            "--checkpoint",
            out.to_str().unwrap(),
            "--data",
            "assets/corpus/piano",
            "--seq",
            "64",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let nll = json["nll"].as_f64().unwrap();
    assert!(
        nll.is_finite()
            && nll > 0.0
            && (json["perplexity"].as_f64().unwrap() - nll.exp()).abs() < 1e-6 * nll.exp()
    );
}

/// Runs `echoai` with `args`, expects it to fail, and returns what it printed on stderr.
fn failure_message(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_arguments_are_clear_errors() {
    let message = failure_message(&["train", "--data", "/no/such/dir", "--out", "/tmp/x"]);
    assert!(message.contains("/no/such/dir"));
    let data = "assets/corpus/piano";
    let message = failure_message(&[
        "train",
        "--data",
        data,
        "--out",
        "/tmp/x",
        "--model",
        "transformer",
    ]);
    assert!(message.contains("lstm-attention"));
    let message = failure_message(&[
        "generate",
        "--checkpoint",
        "/no/ckpt",
        "--out",
        "/tmp/x.mid",
    ]);
    assert!(message.contains("not a checkpoint"));
    if !cfg!(feature = "cuda") {
        let mut args = vec![
            "train", "--data", data, "--out", "/tmp/x", "--device", "cuda",
        ];
        args.extend_from_slice(&TINY);
        assert!(failure_message(&args).contains("--features cuda"));
    }
}

/// (step, loss bits) of every step event in `--json` output.
fn losses(lines: &[String]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

#[test]
fn ctrl_c_then_resume_equals_an_uninterrupted_run_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &std::path::Path| {
        let mut a: Vec<String> = [
            "train",
            "--data",
            "assets/corpus/piano",
            "--model",
            "lstm-attention",
            "--steps",
            "40",
            "--validate-every",
            "10",
            "--json",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(out.display().to_string());
        a.extend(TINY.iter().map(|s| s.to_string()));
        a
    };
    let whole = dir.path().join("whole");
    let uninterrupted = bin().args(args(&whole)).output().unwrap();
    assert!(uninterrupted.status.success());
    let whole_lines: Vec<String> = String::from_utf8_lossy(&uninterrupted.stdout)
        .lines()
        .map(String::from)
        .collect();

    let split = dir.path().join("split");
    let mut child = bin()
        .args(args(&split))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut first_lines = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let stepped = line.contains("\"event\":\"step\"") && line.contains("\"step\":5,");
        first_lines.push(line);
        if stepped {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    first_lines.extend(lines.map_while(Result::ok));
    assert!(child.wait().unwrap().success());
    let stopped_at = losses(&first_lines).last().unwrap().0;
    assert!(
        stopped_at < 40,
        "the run stopped early, at step {stopped_at}"
    );

    let mut resume = args(&split);
    resume.push("--resume".into());
    let resumed = bin().args(&resume).output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let resumed_lines: Vec<String> = String::from_utf8_lossy(&resumed.stdout)
        .lines()
        .map(String::from)
        .collect();
    let expected: Vec<_> = losses(&whole_lines)
        .into_iter()
        .filter(|(s, _)| *s > stopped_at)
        .collect();
    assert_eq!(
        losses(&resumed_lines),
        expected,
        "losses after step {stopped_at}"
    );
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            tensor_bits(&whole, file) == tensor_bits(&split, file),
            "{file} differs after a Ctrl-C at step {stopped_at} and a resume"
        );
    }
}

#[test]
fn bench_train_times_each_phase_of_both_models() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_echoai"))
        .args("bench train --batch 2 --seq 8 --embed 8 --hidden 16 --iters 2".split(' '))
        .args("--no-baseline --attention --phases --device cpu".split(' '))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let phases: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("forward + loss"))
        .collect();
    assert_eq!(phases.len(), 2, "one per row: {stdout}");
    for line in phases {
        let numbers: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(numbers.len(), 3, "{line}");
        assert!(
            numbers.iter().all(|ms| (0.0..60_000.0).contains(ms)),
            "{line}"
        );
    }
    assert!(stdout.contains("attention is"), "{stdout}");
}

#[test]
fn bench_train_names_a_size_out_of_range_before_sizing_anything() {
    for (flag, value, name) in [
        ("--batch", "0", "batch"),
        ("--hidden", "99999999", "hidden"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_echoai"))
            .args(["bench", "train", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(&format!("{name} is {value}")), "{stderr}");
    }
}
