//! `echoai bench render` (the synth's real-time factor) and `echoai bench roll` (the CPU time to
//! build one frame of the piano roll).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::bench::median;

use crate::audio::{PianoSoundFont, render_performance};
use crate::corpus::scan_midi_files;
use crate::midi::read_midi;
use crate::performance::{Note, Performance};
use crate::rng::Rng;
use crate::studio::document::{Document, NoteOrigin};
use crate::studio::piano_roll::PianoRoll;

/// The MAESTRO sample whose length is closest to `target` seconds.
fn pick_maestro(target: f64) -> anyhow::Result<PathBuf> {
    let dir = crate::assets::demo_corpus_dir().join("maestro-samples");
    let mut best: Option<(f64, PathBuf)> = None;
    for path in scan_midi_files(&dir)? {
        let length = read_midi(&path)?.end_time();
        let distance = (length - target).abs();
        if best.as_ref().is_none_or(|(d, _)| distance < *d) {
            best = Some((distance, path));
        }
    }
    best.map(|(_, p)| p)
        .ok_or_else(|| anyhow::anyhow!("no MAESTRO sample in {}", dir.display()))
}

pub fn bench_render(file: Option<&Path>, runs: usize) -> anyhow::Result<()> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => pick_maestro(168.0)?,
    };
    let perf = read_midi(&path)?;
    let font = PianoSoundFont::builtin();
    let mut times = Vec::new();
    let mut seconds = 0.0;
    for _ in 0..runs {
        let t0 = Instant::now();
        let audio = render_performance(&perf, &font)?;
        times.push(t0.elapsed().as_secs_f64());
        seconds = audio.seconds();
    }
    let t = median(times);
    println!(
        "bench render: {} ({} notes, {:.1} s of audio incl. tail), built-in piano, 44.1 kHz stereo",
        path.display(),
        perf.len(),
        seconds
    );
    println!(
        "  median of {runs}: {t:.2} s -> {:.0}x real time",
        seconds / t
    );
    Ok(())
}

/// A dense random piece: `notes` notes over `seconds`.
fn synthetic_piece(notes: usize, seconds: f64) -> Performance {
    let mut rng = Rng::new(9);
    Performance::from_notes(
        (0..notes)
            .map(|_| {
                let start = rng.next_f64() * seconds;
                Note {
                    pitch: 21 + rng.below(88) as u8,
                    velocity: 20 + rng.below(100) as u8,
                    start,
                    end: start + 0.05 + rng.next_f64(),
                }
            })
            .collect(),
    )
}

pub fn bench_roll(notes: usize, frames: usize) -> anyhow::Result<()> {
    let doc = Document::new("bench", &synthetic_piece(notes, 1200.0), NoteOrigin::Loaded);
    let ctx = egui::Context::default();
    let size = egui::vec2(1400.0, 800.0);
    println!(
        "bench roll: {notes} notes over 20 minutes, a {}x{} roll, {frames} frames each",
        size.x, size.y
    );
    for (name, zoomed_in) in [
        ("zoomed out (whole piece)", false),
        ("zoomed in (10 s)", true),
    ] {
        let mut roll = PianoRoll::default();
        roll.fit(&doc, size);
        if zoomed_in {
            roll.pixels_per_second = (size.x - 44.0) / 10.0;
            roll.view_start = 600.0;
        }
        let mut doc = doc.clone();
        let mut build = Vec::new();
        let mut tessellate = Vec::new();
        for _ in 0..frames + 2 {
            let input = egui::RawInput {
                screen_rect: Some(egui::Rect::from_min_size(egui::Pos2::ZERO, size)),
                ..Default::default()
            };
            let t0 = Instant::now();
            let output = ctx.run_ui(input, |ui| {
                roll.ui(ui, &mut doc, Some(610.0));
            });
            let t1 = Instant::now();
            let primitives = ctx.tessellate(output.shapes, output.pixels_per_point);
            let t2 = Instant::now();
            std::hint::black_box(primitives);
            build.push((t1 - t0).as_secs_f64());
            tessellate.push((t2 - t1).as_secs_f64());
        }
        // The first frames lay out fonts; they are not what a user waits for while scrolling.
        let (b, t) = (
            median(build[2..].to_vec()),
            median(tessellate[2..].to_vec()),
        );
        println!(
            "  {name:<26} build {:.2} ms + tessellate {:.2} ms = {:.2} ms per frame",
            b * 1e3,
            t * 1e3,
            (b + t) * 1e3
        );
    }
    Ok(())
}
