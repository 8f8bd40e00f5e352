//! The SoundFont the synthesizer plays: the bundled piano (embedded in the binary, so it works from
//! any directory and after `cargo install`) or a user's `.sf2`.

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustysynth::SoundFont;

use super::AudioError;

/// FluidR3_GM's "Yamaha Grand Piano" preset (MIT, see assets/soundfonts/FluidR3_GM.COPYRIGHT).
static BUILTIN_SF2: &[u8] = include_bytes!("../../assets/soundfonts/FluidR3_GM_piano.sf2");

#[derive(Clone)]
pub struct PianoSoundFont {
    pub name: String,
    pub font: Arc<SoundFont>,
}

impl std::fmt::Debug for PianoSoundFont {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PianoSoundFont")
            .field("name", &self.name)
            .finish()
    }
}

impl PianoSoundFont {
    /// The bundled piano, parsed once per process.
    pub fn builtin() -> PianoSoundFont {
        static FONT: OnceLock<Arc<SoundFont>> = OnceLock::new();
        let font = FONT
            .get_or_init(|| {
                Arc::new(
                    SoundFont::new(&mut Cursor::new(BUILTIN_SF2))
                        .expect("the bundled SoundFont is valid (checked by tests)"),
                )
            })
            .clone();
        PianoSoundFont {
            name: "Built-in piano (FluidR3 GM)".into(),
            font,
        }
    }

    /// Reads a user's `.sf2`. SF3 files and anything rustysynth rejects are errors that say why.
    pub fn from_file(path: &Path) -> Result<PianoSoundFont, AudioError> {
        let bytes = std::fs::read(path).map_err(|e| AudioError::SoundFont {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<PianoSoundFont, AudioError> {
        if soundfont_major_version(bytes) == Some(3) {
            return Err(AudioError::Sf3(name.into()));
        }
        // rustysynth reports malformed files as errors; the unwind guard is for the files it
        // does not anticipate, so a bad user file can never take the studio down.
        let parsed = std::panic::catch_unwind(|| SoundFont::new(&mut Cursor::new(bytes)));
        let font = match parsed {
            Ok(Ok(font)) => font,
            Ok(Err(e)) => {
                return Err(AudioError::SoundFont {
                    path: name.into(),
                    reason: format!("{e:?}"),
                });
            }
            Err(_) => {
                return Err(AudioError::SoundFont {
                    path: name.into(),
                    reason: "the file is malformed".into(),
                });
            }
        };
        let file_name = Path::new(name)
            .file_name()
            .map_or(name.to_string(), |n| n.to_string_lossy().into_owned());
        Ok(PianoSoundFont {
            name: file_name,
            font: Arc::new(font),
        })
    }
}

/// The major version in the `ifil` chunk of a RIFF `sfbk` file (2 for SF2, 3 for SF3).
fn soundfont_major_version(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"sfbk" {
        return None;
    }
    // ifil is the first sub-chunk of the INFO list, near the start of the file.
    let head = &bytes[..bytes.len().min(4096)];
    let at = head.windows(4).position(|w| w == b"ifil")?;
    let major = head.get(at + 8..at + 10)?;
    Some(u16::from_le_bytes([major[0], major[1]]))
}
