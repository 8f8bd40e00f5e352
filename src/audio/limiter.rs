//! A peak limiter with instant attack and exponential release: the output never exceeds the
//! ceiling, however dense the chord, and quiet passages are left untouched.

pub struct Limiter {
    ceiling: f32,
    release_per_sample: f32,
    envelope: f32,
}

impl Limiter {
    pub fn new(sample_rate: u32) -> Self {
        Limiter {
            ceiling: 0.98,
            // About 150 ms to recover from a peak.
            release_per_sample: (-1.0 / (0.15 * sample_rate as f32)).exp(),
            envelope: 0.0,
        }
    }

    /// Limits a stereo frame in place (both channels share one gain, so the image does not move).
    #[inline]
    pub fn process(&mut self, left: &mut f32, right: &mut f32) {
        let peak = left.abs().max(right.abs());
        self.envelope = if peak > self.envelope {
            peak
        } else {
            peak + (self.envelope - peak) * self.release_per_sample
        };
        if self.envelope > self.ceiling {
            let gain = self.ceiling / self.envelope;
            *left *= gain;
            *right *= gain;
        }
    }

    pub fn reset(&mut self) {
        self.envelope = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_exceeds_the_ceiling_and_leaves_quiet_audio_alone() {
        let mut limiter = Limiter::new(44_100);
        for i in 0..10_000 {
            let x = ((i as f32) * 0.01).sin() * 5.0;
            let (mut l, mut r) = (x, -x);
            limiter.process(&mut l, &mut r);
            assert!(l.abs() <= 0.98 + 1e-6 && r.abs() <= 0.98 + 1e-6);
        }
        let mut quiet = Limiter::new(44_100);
        let (mut l, mut r) = (0.3, -0.2);
        quiet.process(&mut l, &mut r);
        assert_eq!((l, r), (0.3, -0.2));
    }
}
