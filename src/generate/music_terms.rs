//! The musician's words the constraints are given in: keys ("C minor"), note names ("C#4") and
//! ranges ("C2..C6", "40..96"). Parsing lives here so the command line and the studio accept
//! exactly the same forms, and every error lists them.

use serde::{Deserialize, Serialize};

/// The modes a key lock knows, with their semitone steps from the tonic.
pub const MODES: [(&str, &[u8]); 12] = [
    ("major", &[0, 2, 4, 5, 7, 9, 11]),
    ("minor", &[0, 2, 3, 5, 7, 8, 10]),
    ("harmonic minor", &[0, 2, 3, 5, 7, 8, 11]),
    ("melodic minor", &[0, 2, 3, 5, 7, 9, 11]),
    ("dorian", &[0, 2, 3, 5, 7, 9, 10]),
    ("phrygian", &[0, 1, 3, 5, 7, 8, 10]),
    ("lydian", &[0, 2, 4, 6, 7, 9, 11]),
    ("mixolydian", &[0, 2, 4, 5, 7, 9, 10]),
    ("locrian", &[0, 1, 3, 5, 6, 8, 10]),
    ("major pentatonic", &[0, 2, 4, 7, 9]),
    ("minor pentatonic", &[0, 3, 5, 7, 10]),
    ("blues", &[0, 3, 5, 6, 7, 10]),
];

const NAMES: [&str; 12] = [
    "C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B",
];

pub const KEY_FORMS: &str = "a tonic C, C#, Db, D, ... B (# or b) and a mode: major, minor, \
harmonic minor, melodic minor, dorian, phrygian, lydian, mixolydian, locrian, major pentatonic, \
minor pentatonic or blues; e.g. \"C minor\", \"F# major\", \"Bb dorian\"";
pub const NOTE_FORMS: &str =
    "a note name with its octave (C4 is middle C, 60; C-1 is 0, G9 is 127) or a MIDI number 0-127";
pub const RANGE_FORMS: &str = "LOW..HIGH, e.g. C2..C6, A0..C8 or 36..84";
pub const VELOCITY_FORMS: &str = "LOW..HIGH with 1 <= LOW <= HIGH <= 127, e.g. 40..96";

/// A scale: the pitch classes a hard key lock allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale {
    /// Pitch class of the tonic, 0 = C.
    pub tonic: u8,
    /// Index into [`MODES`].
    pub mode: u8,
}

impl Scale {
    /// "C minor", "f# Major", "Bb dorian", "A minor pentatonic" (case and extra spaces ignored).
    pub fn parse(text: &str) -> Result<Scale, String> {
        let fail = || format!("unknown key `{text}`: use {KEY_FORMS}");
        let words: Vec<&str> = text.split_whitespace().collect();
        let (first, rest) = words.split_first().ok_or_else(fail)?;
        let (tonic, tail) = parse_pitch_class(first).ok_or_else(fail)?;
        if !tail.is_empty() {
            return Err(fail());
        }
        let mode_text = rest.join(" ").to_lowercase();
        let mode_text = match mode_text.as_str() {
            "" | "maj" => "major",
            "min" | "natural minor" | "aeolian" => "minor",
            "ionian" => "major",
            "pentatonic" => "major pentatonic",
            other => other,
        };
        let mode = MODES
            .iter()
            .position(|(name, _)| *name == mode_text)
            .ok_or_else(fail)?;
        Ok(Scale {
            tonic,
            mode: mode as u8,
        })
    }

    /// Whether a MIDI pitch belongs to the scale.
    pub fn contains(&self, pitch: u8) -> bool {
        let class = (pitch as i32 - self.tonic as i32).rem_euclid(12) as u8;
        MODES
            .get(self.mode as usize)
            .is_some_and(|(_, steps)| steps.contains(&class))
    }

    pub fn name(&self) -> String {
        let mode = MODES.get(self.mode as usize).map_or("?", |m| m.0);
        format!("{} {mode}", NAMES[(self.tonic % 12) as usize])
    }
}

/// "C#" -> (1, rest of the text after the accidental).
fn parse_pitch_class(text: &str) -> Option<(u8, &str)> {
    let (base, shift, rest) = letter_and_accidental(text)?;
    Some(((base + shift).rem_euclid(12) as u8, rest))
}

/// "Bb3" -> (11, -1, "3"): the letter's semitone above C, the accidental, and what follows.
fn letter_and_accidental(text: &str) -> Option<(i32, i32, &str)> {
    let mut chars = text.chars();
    let base = match chars.next()?.to_ascii_uppercase() {
        'C' => 0,
        'D' => 2,
        'E' => 4,
        'F' => 5,
        'G' => 7,
        'A' => 9,
        'B' => 11,
        _ => return None,
    };
    let rest = chars.as_str();
    Some(if let Some(r) = rest.strip_prefix(['#', '\u{266f}']) {
        (base, 1, r)
    } else if let Some(r) = rest.strip_prefix(['b', '\u{266d}']) {
        (base, -1, r)
    } else {
        (base, 0, rest)
    })
}

/// "C4" -> 60, "Bb-1" -> 10, "B#3" -> 60, "60" -> 60.
pub fn parse_note(text: &str) -> Result<u8, String> {
    let text = text.trim();
    let fail = || format!("unknown note `{text}`: use {NOTE_FORMS}");
    if let Ok(n) = text.parse::<i64>() {
        return u8::try_from(n).ok().filter(|&n| n <= 127).ok_or_else(fail);
    }
    let (base, shift, octave) = letter_and_accidental(text).ok_or_else(fail)?;
    let octave: i32 = octave.parse().map_err(|_| fail())?;
    let pitch = (octave.clamp(-2, 10) + 1) * 12 + base + shift;
    u8::try_from(pitch)
        .ok()
        .filter(|&p| p <= 127)
        .ok_or_else(fail)
}

/// The name of a MIDI pitch, "C4" for 60.
pub fn note_name(pitch: u8) -> String {
    format!("{}{}", NAMES[(pitch % 12) as usize], pitch as i32 / 12 - 1)
}

fn split_range(text: &str) -> Option<(&str, &str)> {
    text.split_once("..")
        .or_else(|| text.split_once('-').filter(|(a, _)| !a.is_empty()))
}

/// "C2..C6" -> (36, 84): the lowest and highest pitch a note may have.
pub fn parse_pitch_range(text: &str) -> Result<(u8, u8), String> {
    let fail = |why: String| format!("bad range `{text}` ({why}): use {RANGE_FORMS}");
    let (lo, hi) = text
        .split_once("..")
        .ok_or_else(|| fail("no `..`".into()))?;
    let lo = parse_note(lo).map_err(fail)?;
    let hi = parse_note(hi).map_err(fail)?;
    if lo > hi {
        return Err(fail(format!(
            "{} is above {}",
            note_name(lo),
            note_name(hi)
        )));
    }
    Ok((lo, hi))
}

/// "40..96" -> (40, 96).
pub fn parse_velocity_range(text: &str) -> Result<(u8, u8), String> {
    let fail = || format!("bad velocity range `{text}`: use {VELOCITY_FORMS}");
    let (lo, hi) = split_range(text.trim()).ok_or_else(fail)?;
    let lo: u8 = lo.trim().parse().map_err(|_| fail())?;
    let hi: u8 = hi.trim().parse().map_err(|_| fail())?;
    if lo < 1 || hi > 127 || lo > hi {
        return Err(fail());
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_with_their_scales() {
        let c_minor = Scale::parse("C minor").unwrap();
        let in_scale: Vec<u8> = (60..72).filter(|&p| c_minor.contains(p)).collect();
        assert_eq!(in_scale, [60, 62, 63, 65, 67, 68, 70]);
        assert_eq!(Scale::parse("  f#   MAJOR ").unwrap().name(), "F# major");
        assert_eq!(Scale::parse("Bb dorian").unwrap().name(), "Bb dorian");
        assert_eq!(Scale::parse("A minor pentatonic").unwrap().mode, 10);
        assert_eq!(Scale::parse("G").unwrap().name(), "G major");
        for bad in ["", "H minor", "C minr", "C## major", "Cminor"] {
            let e = Scale::parse(bad).unwrap_err();
            assert!(e.contains("\"C minor\""), "{bad}: {e}");
        }
    }

    #[test]
    fn notes_and_ranges_parse() {
        assert_eq!(parse_note("C4"), Ok(60));
        assert_eq!(parse_note("c-1"), Ok(0));
        assert_eq!(parse_note("G9"), Ok(127));
        assert_eq!(parse_note("Bb3"), Ok(58));
        assert_eq!(parse_note("B3"), Ok(59));
        assert_eq!(parse_note("C#4"), Ok(61));
        assert_eq!(parse_note("B#3"), Ok(60));
        assert_eq!(parse_note("72"), Ok(72));
        assert!(parse_note("G#9").is_err());
        assert!(parse_note("128").is_err());
        assert!(parse_note("X4").unwrap_err().contains("middle C"));
        assert_eq!(parse_pitch_range("C2..C6"), Ok((36, 84)));
        assert_eq!(parse_pitch_range("36..84"), Ok((36, 84)));
        let e = parse_pitch_range("C6..C2").unwrap_err();
        assert!(
            e.contains("C6 is above C2") && e.contains(RANGE_FORMS),
            "{e}"
        );
        assert!(parse_pitch_range("C2").unwrap_err().contains("C2..C6"));
        assert_eq!(note_name(60), "C4");
        assert_eq!(parse_velocity_range("40..96"), Ok((40, 96)));
        for bad in ["0..96", "96..40", "40..200", "loud", "40.."] {
            assert!(
                parse_velocity_range(bad).unwrap_err().contains("40..96"),
                "{bad}"
            );
        }
    }
}
