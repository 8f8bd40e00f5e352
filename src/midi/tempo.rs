//! Converting MIDI ticks to seconds through a tempo map.

use midly::Timing;

use super::MidiErrorKind;

const DEFAULT_US_PER_QUARTER: u32 = 500_000;

/// Maps absolute ticks to seconds. Metrical timing follows the tempo changes; SMPTE timing has a
/// fixed tick length and ignores tempo events, as the standard says.
pub struct TempoMap {
    /// (tick, seconds at that tick, seconds per tick from there on), sorted by tick.
    segments: Vec<(u64, f64, f64)>,
}

impl TempoMap {
    /// `tempos` holds (absolute tick, microseconds per quarter) in any order; zero tempos are
    /// ignored because they would make time stand still.
    pub fn new(timing: Timing, mut tempos: Vec<(u64, u32)>) -> Result<Self, MidiErrorKind> {
        match timing {
            Timing::Metrical(tpq) => {
                let tpq = tpq.as_int();
                if tpq == 0 {
                    return Err(MidiErrorKind::ZeroTicksPerQuarter);
                }
                let per_tick = |us: u32| us as f64 / 1e6 / tpq as f64;
                tempos.retain(|&(_, us)| us > 0);
                tempos.sort_by_key(|&(tick, _)| tick);
                let mut segments = vec![(0u64, 0.0, per_tick(DEFAULT_US_PER_QUARTER))];
                for (tick, us) in tempos {
                    let &(last_tick, last_secs, last_rate) = segments.last().expect("never empty");
                    let secs = last_secs + (tick - last_tick) as f64 * last_rate;
                    if tick == last_tick {
                        segments.pop();
                    }
                    segments.push((tick, secs, per_tick(us)));
                }
                Ok(TempoMap { segments })
            }
            Timing::Timecode(fps, ticks_per_frame) => {
                if ticks_per_frame == 0 {
                    return Err(MidiErrorKind::ZeroTicksPerFrame);
                }
                let per_tick = 1.0 / (fps.as_f32() as f64 * ticks_per_frame as f64);
                Ok(TempoMap {
                    segments: vec![(0, 0.0, per_tick)],
                })
            }
        }
    }

    pub fn seconds(&self, tick: u64) -> f64 {
        let i = self.segments.partition_point(|&(t, _, _)| t <= tick);
        let (seg_tick, seg_secs, rate) = self.segments[i.saturating_sub(1)];
        seg_secs + (tick - seg_tick) as f64 * rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use midly::num::u15;

    #[test]
    fn tempo_change_midway() {
        let map = TempoMap::new(Timing::Metrical(u15::new(100)), vec![(200, 1_000_000)]).unwrap();
        assert!((map.seconds(100) - 0.5).abs() < 1e-12);
        assert!((map.seconds(200) - 1.0).abs() < 1e-12);
        assert!((map.seconds(300) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn zero_tempo_is_ignored() {
        let map = TempoMap::new(Timing::Metrical(u15::new(100)), vec![(0, 0)]).unwrap();
        assert!((map.seconds(100) - 0.5).abs() < 1e-12);
    }
}
