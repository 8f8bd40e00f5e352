//! `echoai render`, `echoai play`, `echoai ports`, `echoai record`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::audio::{PianoSoundFont, Player, render_performance, write_wav};
use crate::live_midi::{MidiIn, MidiOut, MidiScheduler, MidirIn, MidirOut, PortChoice, record};
use crate::midi::{read_midi, write_midi};

fn soundfont(path: Option<&Path>) -> anyhow::Result<PianoSoundFont> {
    Ok(match path {
        Some(p) => PianoSoundFont::from_file(p)?,
        None => PianoSoundFont::builtin(),
    })
}

pub fn run_render(
    input: &Path,
    output: &Path,
    font: Option<&Path>,
    overwrite: bool,
) -> anyhow::Result<ExitCode> {
    crate::fsutil::check_output(output, overwrite).map_err(anyhow::Error::msg)?;
    let perf = read_midi(input)?;
    let font = soundfont(font)?;
    let started = Instant::now();
    let audio = render_performance(&perf, &font)?;
    let secs = started.elapsed().as_secs_f64();
    write_wav(output, &audio)?;
    eprintln!(
        "{}: {:.1} s of audio with {} in {secs:.2} s ({:.0}x real time), peak {:.2}",
        output.display(),
        audio.seconds(),
        font.name,
        audio.seconds() / secs.max(1e-9),
        audio.peak()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_play(input: &Path, port: Option<&str>, font: Option<&Path>) -> anyhow::Result<ExitCode> {
    let perf = read_midi(input)?;
    let seconds = perf.end_time();
    if let Some(port) = port {
        let choice = if port == "virtual" {
            PortChoice::Virtual(crate::live_midi::CLIENT_NAME.into())
        } else {
            PortChoice::parse(port)
        };
        let sender = MidirOut.connect(&choice)?;
        let scheduler = MidiScheduler::new(&perf, sender);
        scheduler.play();
        eprintln!(
            "playing {} ({seconds:.1} s) on MIDI port {port}",
            input.display()
        );
        std::thread::sleep(Duration::from_secs_f64(seconds + 0.2));
        // Dropping the scheduler sends all-notes-off.
        return Ok(ExitCode::SUCCESS);
    }
    let handle = crate::audio::PlayerHandle::new();
    handle.load(&perf, &soundfont(font)?)?;
    let _player = Player::open(handle.clone())?;
    handle.play();
    eprintln!("playing {} ({seconds:.1} s)", input.display());
    while handle.is_playing() {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_ports() -> anyhow::Result<ExitCode> {
    let outputs = MidirOut.ports()?;
    let inputs = MidirIn.ports()?;
    println!("MIDI outputs:");
    for (i, name) in outputs.iter().enumerate() {
        println!("  {i}: {name}");
    }
    println!("MIDI inputs:");
    for (i, name) in inputs.iter().enumerate() {
        println!("  {i}: {name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A recording longer than this is almost certainly a typo (and `inf` would panic the timer).
const MAX_RECORD_SECONDS: f64 = 6.0 * 3600.0;

pub fn run_record(
    port: &str,
    seconds: f64,
    output: &Path,
    overwrite: bool,
) -> anyhow::Result<ExitCode> {
    crate::bounds::check_positive("--seconds", seconds, MAX_RECORD_SECONDS)
        .map_err(anyhow::Error::msg)?;
    crate::fsutil::check_output(output, overwrite).map_err(anyhow::Error::msg)?;
    eprintln!("recording from {port} for {seconds:.0} s ...");
    let perf = record(&MidirIn, &PortChoice::parse(port), seconds)?;
    write_midi(&perf, output)?;
    eprintln!("{}: {} notes", output.display(), perf.len());
    Ok(ExitCode::SUCCESS)
}
