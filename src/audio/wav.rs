//! WAV export (hound): 16-bit stereo PCM, written to a temporary sibling and renamed.

use std::path::Path;

use super::{AudioError, Stereo};

pub fn write_wav(path: &Path, audio: &Stereo) -> Result<(), AudioError> {
    let err = |reason: String| AudioError::Wav {
        path: path.display().to_string(),
        reason,
    };
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: audio.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let tmp = crate::fsutil::temporary_sibling(path);
    let result = (|| -> Result<(), hound::Error> {
        let mut writer = hound::WavWriter::create(&tmp, spec)?;
        for (l, r) in audio.left.iter().zip(&audio.right) {
            writer.write_sample(to_i16(*l))?;
            writer.write_sample(to_i16(*r))?;
        }
        writer.finalize()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e.to_string()));
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

fn to_i16(x: f32) -> i16 {
    (x.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16
}

/// (sample rate, channels, frames) of a WAV file.
pub fn read_wav_info(path: &Path) -> Result<(u32, u16, u32), AudioError> {
    let reader = hound::WavReader::open(path).map_err(|e| AudioError::Wav {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let spec = reader.spec();
    Ok((spec.sample_rate, spec.channels, reader.duration()))
}
