//! `echoai stats`: the statistics of a file or folder, or the comparison of two folders.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::corpus::scan_midi_files;
use crate::midi::read_midi;
use crate::stats::{IOI_EDGES, PieceStats, compare};

/// Every readable MIDI file under `path` (or `path` itself), with its statistics.
fn load(path: &Path) -> anyhow::Result<Vec<(PathBuf, PieceStats)>> {
    let files = if path.is_dir() {
        scan_midi_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        match read_midi(&f) {
            Ok(perf) => out.push((f, PieceStats::of(&perf))),
            Err(e) => eprintln!("skipped {e}"),
        }
    }
    if out.is_empty() {
        anyhow::bail!("no readable MIDI file in {}", path.display());
    }
    Ok(out)
}

fn histogram(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{:.3}", v))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(
    path: Option<&Path>,
    compare_dir: Option<&Path>,
    reference: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(generated) = compare_dir {
        let reference =
            reference.ok_or_else(|| anyhow::anyhow!("--compare needs --reference CORPUS_DIR"))?;
        let g: Vec<PieceStats> = load(generated)?.into_iter().map(|(_, s)| s).collect();
        let r: Vec<PieceStats> = load(reference)?.into_iter().map(|(_, s)| s).collect();
        if r.len() < 2 {
            anyhow::bail!("the reference set needs at least two pieces to have a spread");
        }
        let rows = compare(&g, &r);
        if json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            println!(
                "{} generated vs {} reference pieces (overlap area 1 = indistinguishable; flagged below 0.5)",
                g.len(),
                r.len()
            );
            println!(
                "  {:<32} {:>10} {:>10} {:>8} {:>8}",
                "statistic", "generated", "reference", "overlap", "KL"
            );
            for row in &rows {
                println!(
                    "  {:<32} {:>10.3} {:>10.3} {:>8.3} {:>8.3}{}",
                    row.name,
                    row.generated_mean,
                    row.reference_mean,
                    row.overlap,
                    row.kl_divergence,
                    if row.flagged {
                        "  <- outside the corpus's spread"
                    } else {
                        ""
                    }
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = path.ok_or_else(|| {
        anyhow::anyhow!("give a MIDI file or folder, or --compare GENERATED --reference CORPUS")
    })?;
    let pieces = load(path)?;
    if json {
        let rows: Vec<_> = pieces
            .iter()
            .map(|(p, s)| serde_json::json!({"path": p, "stats": s}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (p, s) in &pieces {
        println!("{}", p.display());
        println!(
            "  notes {}, duration {:.2} s, {:.2} notes/s, polyphony {:.2}, pitch {}..={}",
            s.notes, s.seconds, s.notes_per_second, s.polyphony, s.pitch_min, s.pitch_max
        );
        println!("  pitch classes C..B: {}", histogram(&s.pitch_classes));
        println!("  velocity (bins of 16): {}", histogram(&s.velocities));
        println!(
            "  inter-onset intervals (from {:?} s): {}",
            IOI_EDGES,
            histogram(&s.inter_onset)
        );
    }
    Ok(ExitCode::SUCCESS)
}
