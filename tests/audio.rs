//! The built-in synth, rendering, WAV export and the player, all offline (no sound card here).

use std::path::Path;

use echoai::audio::{
    AudioError, PianoSoundFont, Player, PlayerHandle, RELEASE_TAIL_SECONDS, SAMPLE_RATE,
    read_wav_info, render_performance, write_wav,
};
use echoai::performance::{Note, Performance};

/// The frequency with the most energy between 100 Hz and 2 kHz, by a Goertzel scan (0.5 Hz steps).
fn spectral_peak(samples: &[f32], sample_rate: f64) -> f64 {
    let power = |freq: f64| {
        let w = 2.0 * std::f64::consts::PI * freq / sample_rate;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in samples {
            let s0 = x as f64 + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        s1 * s1 + s2 * s2 - coeff * s1 * s2
    };
    let mut best = (0.0, 0.0);
    let mut f = 100.0;
    while f <= 2000.0 {
        let p = power(f);
        if p > best.1 {
            best = (f, p);
        }
        f += 2.0;
    }
    // Refine around the coarse peak.
    let mut fine = best;
    let mut f = best.0 - 2.0;
    while f <= best.0 + 2.0 {
        let p = power(f);
        if p > fine.1 {
            fine = (f, p);
        }
        f += 0.25;
    }
    fine.0
}

#[test]
fn a4_and_a5_sound_at_their_pitch() {
    let font = PianoSoundFont::builtin();
    for (pitch, hz) in [(69u8, 440.0), (81, 880.0)] {
        let audio = render_performance(
            &Performance::from_notes(vec![Note::new(pitch, 100, 0.0, 1.0)]),
            &font,
        )
        .unwrap();
        let sr = SAMPLE_RATE as f64;
        let window = &audio.left[(0.05 * sr) as usize..(0.55 * sr) as usize];
        let peak = spectral_peak(window, sr);
        assert!(
            (peak - hz).abs() / hz < 0.01,
            "pitch {pitch}: peak at {peak} Hz, expected {hz}"
        );
    }
}

#[test]
fn length_is_the_piece_plus_the_release_tail_and_silence_stays_silent() {
    let font = PianoSoundFont::builtin();
    let perf = Performance::from_notes(vec![
        Note::new(60, 80, 0.2, 1.3),
        Note::new(64, 80, 0.5, 2.25),
    ]);
    let audio = render_performance(&perf, &font).unwrap();
    assert_eq!(audio.sample_rate, SAMPLE_RATE);
    assert!(
        (audio.seconds() - (2.25 + RELEASE_TAIL_SECONDS)).abs() < 0.05,
        "{}",
        audio.seconds()
    );
    assert!(audio.peak() > 0.01);

    let silent = render_performance(&Performance::default(), &font).unwrap();
    assert!((silent.seconds() - RELEASE_TAIL_SECONDS).abs() < 0.05);
    assert_eq!(silent.peak(), 0.0);
}

#[test]
fn the_densest_corpus_chord_at_full_velocity_does_not_clip() {
    // The largest set of notes sounding together anywhere in the demo corpus.
    let mut densest: Vec<u8> = Vec::new();
    for path in echoai::corpus::scan_midi_files(Path::new("assets/corpus")).unwrap() {
        let perf = echoai::midi::read_midi(&path).unwrap();
        for n in &perf.notes {
            let sounding: Vec<u8> = perf
                .notes
                .iter()
                .filter(|m| m.start <= n.start && m.end > n.start)
                .map(|m| m.pitch)
                .collect();
            if sounding.len() > densest.len() {
                densest = sounding;
            }
        }
    }
    assert!(densest.len() >= 8, "{densest:?}");
    let font = PianoSoundFont::builtin();
    let chord: Vec<Note> = densest
        .iter()
        .map(|&p| Note::new(p, 127, 0.0, 1.5))
        .collect();
    let every_key: Vec<Note> = (21..=108).map(|p| Note::new(p, 127, 0.0, 1.5)).collect();
    for notes in [chord, every_key] {
        let audio = render_performance(&Performance::from_notes(notes), &font).unwrap();
        assert!(audio.peak() <= 1.0, "peak {}", audio.peak());
        assert!(
            audio.peak() > 0.5,
            "the limiter should not crush it: {}",
            audio.peak()
        );
    }
}

#[test]
fn wav_export_reads_back_with_its_length_and_rate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.wav");
    let audio = render_performance(
        &Performance::from_notes(vec![Note::new(60, 90, 0.0, 0.5)]),
        &PianoSoundFont::builtin(),
    )
    .unwrap();
    write_wav(&path, &audio).unwrap();
    let (rate, channels, frames) = read_wav_info(&path).unwrap();
    assert_eq!((rate, channels), (SAMPLE_RATE, 2));
    assert_eq!(frames as usize, audio.left.len());
    let err = write_wav(Path::new("/no/such/dir/out.wav"), &audio).unwrap_err();
    assert!(err.to_string().contains("/no/such/dir/out.wav"));
}

#[test]
fn corrupt_and_sf3_soundfonts_are_rejected_with_messages() {
    let err =
        PianoSoundFont::from_bytes(b"RIFF\x10\x00\x00\x00sfbkLIST", "broken.sf2").unwrap_err();
    assert!(matches!(err, AudioError::SoundFont { .. }), "{err}");
    assert!(err.to_string().contains("broken.sf2"));
    let mut sf3 = std::fs::read("assets/soundfonts/FluidR3_GM_piano.sf2").unwrap();
    let at = sf3.windows(4).position(|w| w == b"ifil").unwrap();
    sf3[at + 8] = 3;
    let err = PianoSoundFont::from_bytes(&sf3, "piano.sf3").unwrap_err();
    assert!(matches!(err, AudioError::Sf3(_)), "{err}");
    assert!(err.to_string().contains("SF2"));
    let err = PianoSoundFont::from_file(Path::new("/no/such.sf2")).unwrap_err();
    assert!(err.to_string().contains("/no/such.sf2"));
    // A valid SF2 from a file works.
    let ok =
        PianoSoundFont::from_file(Path::new("assets/soundfonts/FluidR3_GM_piano.sf2")).unwrap();
    assert_eq!(ok.name, "FluidR3_GM_piano.sf2");
}

#[test]
fn player_transport_plays_pauses_seeks_and_stops() {
    let handle = PlayerHandle::new();
    handle
        .load(
            &Performance::from_notes(vec![
                Note::new(60, 100, 0.0, 1.0),
                Note::new(72, 100, 2.0, 3.0),
            ]),
            &PianoSoundFont::builtin(),
        )
        .unwrap();
    let (mut l, mut r) = (Vec::new(), Vec::new());
    let mut block = vec![0.0f32; 512];
    handle.fill_interleaved(&mut block, &mut l, &mut r);
    assert!(block.iter().all(|&x| x == 0.0), "stopped means silent");
    handle.play();
    let mut loud = false;
    for _ in 0..20 {
        handle.fill_interleaved(&mut block, &mut l, &mut r);
        loud |= block.iter().any(|x| x.abs() > 1e-3);
    }
    assert!(loud, "sound within the first 20 blocks (116 ms)");
    let at = handle.playhead();
    assert!(
        (at - 20.0 * 256.0 / SAMPLE_RATE as f64).abs() < 1e-6,
        "{at}"
    );
    handle.pause();
    handle.fill_interleaved(&mut block, &mut l, &mut r);
    assert!(block.iter().all(|&x| x == 0.0));
    assert_eq!(handle.playhead(), at);
    handle.seek(2.5);
    assert_eq!(handle.playhead(), 2.5);
    handle.play();
    handle.fill_interleaved(&mut block, &mut l, &mut r);
    assert!(handle.playhead() > 2.5);
    handle.stop();
    assert!(!handle.is_playing());
    assert_eq!(handle.playhead(), 0.0);
}

#[test]
fn opening_the_player_without_a_sound_card_is_an_error() {
    // A backend that reports no device, and one that panics (cpal has, without ALSA config):
    // both become `NoDevice` with the backend's words.
    let failing = || Err::<rodio::MixerDeviceSink, _>(std::io::Error::other("no default device"));
    match Player::open_with(PlayerHandle::new(), failing) {
        Err(AudioError::NoDevice(why)) => assert!(why.contains("no default device"), "{why}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a player without a device"),
    }
    let panicking = || -> Result<rodio::MixerDeviceSink, std::io::Error> { panic!("backend") };
    assert!(matches!(
        Player::open_with(PlayerHandle::new(), panicking),
        Err(AudioError::NoDevice(_))
    ));
    // And this machine, which has no sound card (as CI), says so through the real backend.
    let has_card = std::fs::read_dir("/dev/snd")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("pcm"))
        })
        .unwrap_or(false);
    if !has_card {
        assert!(matches!(
            Player::open(PlayerHandle::new()),
            Err(AudioError::NoDevice(_))
        ));
    }
}

#[test]
fn the_render_command_writes_a_wav_that_sounds_for_the_pieces_length() {
    let dir = tempfile::tempdir().unwrap();
    let input = Path::new("assets/corpus/piano/fur-elise.mid");
    let output = dir.path().join("fur-elise.wav");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_echoai"))
        .args(["render", input.to_str().unwrap(), output.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let piece = echoai::midi::read_midi(input).unwrap().end_time();
    let mut reader = hound::WavReader::open(&output).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.sample_rate, spec.channels), (SAMPLE_RATE, 2));
    // The piece plus the release tail, to the frame.
    let frames = reader.duration() as f64;
    let expected = (piece + RELEASE_TAIL_SECONDS) * SAMPLE_RATE as f64;
    assert!(
        (frames - expected).abs() <= 2.0,
        "{frames} frames, expected {expected}"
    );
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let rms =
        (samples.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
    assert!(
        rms > 300.0,
        "the render is not silent (RMS {rms:.0} of 32767)"
    );
    // Sound throughout: no second-long stretch of silence before the tail.
    let second = 2 * SAMPLE_RATE as usize;
    let body = (piece * SAMPLE_RATE as f64) as usize * 2;
    for (i, chunk) in samples[..body].chunks(second).enumerate() {
        let peak = chunk.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!(peak > 50, "second {i} of the piece is silent");
    }
}
