//! "Musical typing", as DAWs have it: the computer keyboard as a piano. A S D F G H J K L are
//! the white keys from C, W E T Y U O P the black ones; Z / X move an octave down / up and
//! C / V make the velocity softer / louder.

use egui::Key;

/// The semitone above the octave's C that a letter plays.
pub fn key_semitone(key: Key) -> Option<u8> {
    Some(match key {
        Key::A => 0,
        Key::W => 1,
        Key::S => 2,
        Key::E => 3,
        Key::D => 4,
        Key::F => 5,
        Key::T => 6,
        Key::G => 7,
        Key::Y => 8,
        Key::H => 9,
        Key::U => 10,
        Key::J => 11,
        Key::K => 12,
        Key::O => 13,
        Key::L => 14,
        Key::P => 15,
        _ => return None,
    })
}

/// The keyboard's octave and velocity, changed by Z X C V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypingKeyboard {
    /// MIDI pitch of the A key: 60 (C4) to start.
    pub base: u8,
    pub velocity: u8,
}

impl Default for TypingKeyboard {
    fn default() -> Self {
        TypingKeyboard {
            base: 60,
            velocity: 90,
        }
    }
}

/// What a key press means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Typed {
    Note(u8),
    /// Octave or velocity changed (nothing to play).
    Changed,
}

impl TypingKeyboard {
    /// A pressed key: a pitch to play, or a change of octave / velocity.
    pub fn press(&mut self, key: Key) -> Option<Typed> {
        match key {
            Key::Z => self.base = self.base.saturating_sub(12).max(12),
            Key::X => self.base = (self.base + 12).min(108),
            Key::C => self.velocity = self.velocity.saturating_sub(16).max(10),
            Key::V => self.velocity = (self.velocity + 16).min(127),
            _ => return self.pitch(key).map(Typed::Note),
        }
        Some(Typed::Changed)
    }

    /// The pitch a letter plays at the current octave.
    pub fn pitch(&self, key: Key) -> Option<u8> {
        key_semitone(key)
            .map(|s| self.base + s)
            .filter(|&p| p <= 127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_octaves_and_velocity() {
        let mut k = TypingKeyboard::default();
        assert_eq!(k.press(Key::A), Some(Typed::Note(60)));
        assert_eq!(k.press(Key::W), Some(Typed::Note(61)));
        assert_eq!(k.press(Key::K), Some(Typed::Note(72)));
        assert_eq!(k.press(Key::Z), Some(Typed::Changed));
        assert_eq!(k.press(Key::A), Some(Typed::Note(48)));
        k.press(Key::X);
        k.press(Key::X);
        assert_eq!(k.pitch(Key::H), Some(81));
        k.press(Key::V);
        assert_eq!(k.velocity, 106);
        assert_eq!(k.press(Key::Q), None);
        for _ in 0..20 {
            k.press(Key::X);
            k.press(Key::C);
        }
        assert_eq!((k.base, k.velocity), (108, 10));
        assert_eq!(
            k.pitch(Key::P),
            Some(123),
            "the top octave stays in MIDI range"
        );
    }
}
