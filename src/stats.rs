//! Objective statistics of pieces, and the comparison of two sets of pieces by the overlap of
//! their distance distributions (Yang & Lerch, "On the evaluation of generative models in music",
//! Neural Computing and Applications, 2018).
//!
//! Each statistic is a vector per piece (a scalar is a vector of length 1). For a generated set G
//! and a reference set R: the intra-set distances are the Euclidean distances between pieces of R,
//! the inter-set distances those between each piece of G and each piece of R. Both distance sets
//! are smoothed into densities (Gaussian kernels, Silverman's bandwidth) and compared by their
//! overlap area (OA, 1 = the same distribution) and the KL divergence of inter from intra.

use serde::Serialize;

use crate::performance::Performance;

pub const VELOCITY_BINS: usize = 8;
/// Inter-onset-interval bin edges in seconds (the last bin is open).
pub const IOI_EDGES: [f64; 8] = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6];
/// A statistic is flagged when its overlap area falls below this.
pub const FLAG_OVERLAP: f64 = 0.5;

/// The statistics of one piece.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PieceStats {
    pub notes: usize,
    pub seconds: f64,
    pub notes_per_second: f64,
    /// Mean number of notes sounding while any note sounds.
    pub polyphony: f64,
    pub pitch_min: u8,
    pub pitch_max: u8,
    /// Share of notes on each pitch class, C first.
    pub pitch_classes: [f64; 12],
    /// Share of notes in 8 velocity bins of 16.
    pub velocities: [f64; VELOCITY_BINS],
    /// Share of onset gaps in the bins of [`IOI_EDGES`].
    pub inter_onset: [f64; IOI_EDGES.len()],
}

fn normalized<const N: usize>(counts: [f64; N]) -> [f64; N] {
    let total: f64 = counts.iter().sum();
    if total == 0.0 {
        return counts;
    }
    counts.map(|c| c / total)
}

impl PieceStats {
    pub fn of(perf: &Performance) -> PieceStats {
        let notes = &perf.notes;
        let seconds = perf.end_time();
        let mut pitch_classes = [0.0; 12];
        let mut velocities = [0.0; VELOCITY_BINS];
        for n in notes {
            pitch_classes[n.pitch as usize % 12] += 1.0;
            velocities[(n.velocity as usize / 16).min(VELOCITY_BINS - 1)] += 1.0;
        }
        // Onsets at one 10 ms step are one chord: gaps are between distinct onset times.
        let mut onsets: Vec<i64> = notes
            .iter()
            .map(|n| (n.start * 100.0).round() as i64)
            .collect();
        onsets.sort_unstable();
        onsets.dedup();
        let mut inter_onset = [0.0; IOI_EDGES.len()];
        for w in onsets.windows(2) {
            let gap = (w[1] - w[0]) as f64 / 100.0;
            let bin = IOI_EDGES.iter().rposition(|&e| gap >= e).unwrap_or(0);
            inter_onset[bin] += 1.0;
        }
        PieceStats {
            notes: notes.len(),
            seconds,
            notes_per_second: if seconds > 0.0 {
                notes.len() as f64 / seconds
            } else {
                0.0
            },
            polyphony: polyphony(perf),
            pitch_min: notes.iter().map(|n| n.pitch).min().unwrap_or(0),
            pitch_max: notes.iter().map(|n| n.pitch).max().unwrap_or(0),
            pitch_classes: normalized(pitch_classes),
            velocities: normalized(velocities),
            inter_onset: normalized(inter_onset),
        }
    }

    /// The statistics compared between sets, by name, as vectors.
    pub fn features(&self) -> Vec<(&'static str, Vec<f64>)> {
        vec![
            ("note count", vec![self.notes as f64]),
            ("notes per second", vec![self.notes_per_second]),
            ("polyphony", vec![self.polyphony]),
            (
                "pitch range",
                vec![self.pitch_max as f64 - self.pitch_min as f64],
            ),
            (
                "mean pitch",
                vec![(self.pitch_max as f64 + self.pitch_min as f64) / 2.0],
            ),
            ("pitch-class histogram", self.pitch_classes.to_vec()),
            ("velocity histogram", self.velocities.to_vec()),
            ("inter-onset-interval histogram", self.inter_onset.to_vec()),
        ]
    }
}

/// Time-weighted mean of the number of sounding notes, over the time at least one sounds.
fn polyphony(perf: &Performance) -> f64 {
    let mut edges: Vec<(f64, i32)> = perf
        .notes
        .iter()
        .flat_map(|n| [(n.start, 1), (n.end, -1)])
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut sounding, mut last, mut weighted, mut covered) = (0i32, 0.0, 0.0, 0.0);
    for (t, d) in edges {
        if sounding > 0 {
            weighted += sounding as f64 * (t - last);
            covered += t - last;
        }
        sounding += d;
        last = t;
    }
    if covered > 0.0 {
        weighted / covered
    } else {
        0.0
    }
}

/// One statistic compared between a generated set and a reference set.
#[derive(Clone, Debug, Serialize)]
pub struct FeatureComparison {
    pub name: String,
    /// Mean of the statistic's first component in each set (for reading, not for the verdict).
    pub generated_mean: f64,
    pub reference_mean: f64,
    /// Overlap area of the intra-reference and inter-set distance densities (1 = identical).
    pub overlap: f64,
    /// KL divergence of the inter-set density from the intra-reference density.
    pub kl_divergence: f64,
    pub flagged: bool,
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Silverman's rule-of-thumb bandwidth, with a floor so identical samples still make a density.
fn bandwidth(samples: &[f64], floor: f64) -> f64 {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let sd = (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    (1.06 * sd * n.powf(-0.2)).max(floor)
}

fn density(samples: &[f64], h: f64, x: f64) -> f64 {
    let norm = 1.0 / (samples.len() as f64 * h * (2.0 * std::f64::consts::PI).sqrt());
    samples
        .iter()
        .map(|s| (-0.5 * ((x - s) / h).powi(2)).exp())
        .sum::<f64>()
        * norm
}

/// Overlap area and KL divergence of two sample sets' kernel densities, on a shared grid.
pub fn overlap_and_kl(intra: &[f64], inter: &[f64]) -> (f64, f64) {
    if intra.is_empty() || inter.is_empty() {
        return (0.0, f64::INFINITY);
    }
    let scale = intra
        .iter()
        .chain(inter)
        .fold(0.0f64, |m, x| m.max(x.abs()))
        .max(1e-9);
    let floor = scale * 0.02;
    let (h1, h2) = (bandwidth(intra, floor), bandwidth(inter, floor));
    let lo = intra
        .iter()
        .chain(inter)
        .fold(f64::INFINITY, |m, &x| m.min(x))
        - 4.0 * h1.max(h2);
    let hi = intra
        .iter()
        .chain(inter)
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x))
        + 4.0 * h1.max(h2);
    let steps = 400;
    let dx = (hi - lo) / steps as f64;
    let (mut overlap, mut kl) = (0.0, 0.0);
    for i in 0..=steps {
        let x = lo + i as f64 * dx;
        let (p, q) = (density(intra, h1, x), density(inter, h2, x));
        overlap += p.min(q) * dx;
        if q > 1e-12 {
            kl += q * (q / p.max(1e-12)).ln() * dx;
        }
    }
    (overlap.min(1.0), kl.max(0.0))
}

/// Compares each statistic of `generated` against `reference` (at least two reference pieces).
pub fn compare(generated: &[PieceStats], reference: &[PieceStats]) -> Vec<FeatureComparison> {
    let g: Vec<_> = generated.iter().map(PieceStats::features).collect();
    let r: Vec<_> = reference.iter().map(PieceStats::features).collect();
    let Some(names) = r
        .first()
        .map(|f| f.iter().map(|(n, _)| *n).collect::<Vec<_>>())
    else {
        return Vec::new();
    };
    names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let mut intra = Vec::new();
            for i in 0..r.len() {
                for j in i + 1..r.len() {
                    intra.push(distance(&r[i][k].1, &r[j][k].1));
                }
            }
            let mut inter = Vec::new();
            for a in &g {
                for b in &r {
                    inter.push(distance(&a[k].1, &b[k].1));
                }
            }
            let (overlap, kl_divergence) = overlap_and_kl(&intra, &inter);
            let mean = |set: &[Vec<(&str, Vec<f64>)>]| {
                set.iter().map(|f| f[k].1[0]).sum::<f64>() / set.len().max(1) as f64
            };
            FeatureComparison {
                name: name.to_string(),
                generated_mean: mean(&g),
                reference_mean: mean(&r),
                overlap,
                kl_divergence,
                flagged: overlap < FLAG_OVERLAP,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::performance::Note;

    #[test]
    fn identical_samples_overlap_fully_and_distant_ones_do_not() {
        let a: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
        let (oa, kl) = overlap_and_kl(&a, &a);
        assert!(oa > 0.99 && kl < 1e-6, "{oa} {kl}");
        let b: Vec<f64> = a.iter().map(|x| x + 10.0).collect();
        assert!(overlap_and_kl(&a, &b).0 < 0.01);
    }

    #[test]
    fn polyphony_is_time_weighted() {
        let n = |p, s, e| Note {
            pitch: p,
            velocity: 64,
            start: s,
            end: e,
        };
        // Two notes together for 1 s, then one alone for 1 s: mean 1.5.
        let perf = Performance::from_notes(vec![n(60, 0.0, 2.0), n(64, 0.0, 1.0)]);
        assert!((polyphony(&perf) - 1.5).abs() < 1e-12);
    }
}
