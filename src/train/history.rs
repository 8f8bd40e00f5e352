//! A run's per-step history as `trainer.json` keeps it: loss, learning rate, gradient norm,
//! tokens/s and wall time per kept step, and every validation.
//!
//! A 100 k-step run must still save in milliseconds, so the steps are thinned: one step in
//! `stride` is kept, and when more than [`MAX_POINTS`] are held the stride doubles and every
//! other point goes. A run therefore keeps between `MAX_POINTS / 2` and `MAX_POINTS` points
//! however long it is (about 0.5 MB of JSON), evenly spread over it. Validations are few (one
//! per `validate_every` steps) and all are kept.

use serde::{Deserialize, Serialize};

/// At most this many step points are kept (then the stride doubles).
pub const MAX_POINTS: usize = 8192;

/// One kept step. Single precision is plenty for a curve and halves the JSON.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepPoint {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens_per_s: f32,
    /// Seconds of training (steps only, pauses excluded) when the step ended.
    pub wall_s: f32,
}

/// One validation: the step and the mean NLL in nats per event.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationPoint {
    pub step: u64,
    pub nll: f64,
    /// Seconds of training when it was measured (0 in histories written before this field).
    #[serde(default)]
    pub wall_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunHistory {
    /// Steps kept are the multiples of this (a power of two).
    pub stride: u64,
    pub points: Vec<StepPoint>,
    pub validations: Vec<ValidationPoint>,
    /// Bumped whenever points are dropped (thinning), so a view that caches derived curves
    /// knows to rebuild them rather than append.
    #[serde(skip)]
    pub revision: u64,
}

impl Default for RunHistory {
    fn default() -> Self {
        RunHistory {
            stride: 1,
            points: Vec::new(),
            validations: Vec::new(),
            revision: 0,
        }
    }
}

impl RunHistory {
    /// Records a step (kept when it falls on the stride).
    pub fn push_step(&mut self, point: StepPoint) {
        if !point.step.is_multiple_of(self.stride) {
            return;
        }
        self.points.push(point);
        if self.points.len() > MAX_POINTS {
            self.stride *= 2;
            let stride = self.stride;
            self.points.retain(|p| p.step.is_multiple_of(stride));
            self.revision += 1;
        }
    }

    pub fn push_validation(&mut self, point: ValidationPoint) {
        self.validations.push(point);
    }

    pub fn best_validation(&self) -> Option<f64> {
        self.validations
            .iter()
            .map(|v| v.nll)
            .filter(|v| v.is_finite())
            .min_by(f64::total_cmp)
    }

    pub fn last_step(&self) -> u64 {
        let step = self.points.last().map_or(0, |p| p.step);
        step.max(self.validations.last().map_or(0, |v| v.step))
    }

    pub fn wall_s(&self) -> f64 {
        let wall = self.points.last().map_or(0.0, |p| p.wall_s as f64);
        wall.max(self.validations.last().map_or(0.0, |v| v.wall_s))
    }

    /// Drops what lies beyond `step` (a resume from an earlier checkpoint than the history ran to).
    pub fn truncate_after(&mut self, step: u64) {
        self.points.retain(|p| p.step <= step);
        self.validations.retain(|v| v.step <= step);
        self.revision += 1;
    }

    /// Checks a history read from a file: steps increasing and within the run, a usable stride.
    pub fn check(&self, last_step: u64) -> Result<(), String> {
        if self.stride == 0 || !self.stride.is_power_of_two() {
            return Err(format!(
                "history stride {} is not a power of two",
                self.stride
            ));
        }
        if self.points.len() > 2 * MAX_POINTS {
            return Err(format!("history holds {} points", self.points.len()));
        }
        fn increasing(steps: impl Iterator<Item = u64>, last_step: u64) -> bool {
            let mut last = 0;
            for s in steps {
                if s <= last || s > last_step {
                    return false;
                }
                last = s;
            }
            true
        }
        if !increasing(self.points.iter().map(|p| p.step), last_step)
            || !increasing(self.validations.iter().map(|v| v.step), last_step)
        {
            return Err("history steps are not increasing within the run".into());
        }
        Ok(())
    }
}

impl RunHistory {
    /// The curves as CSV, one row per kept step or validation, by step: `step, wall_s, loss,
    /// smoothed (bias-corrected EMA of weight `smoothing`), lr, grad_norm, tokens_per_s,
    /// validation_nll`. Cells a row has no value for are empty.
    pub fn to_csv(&self, smoothing: f64) -> String {
        use std::fmt::Write;
        let mut out =
            String::from("step,wall_s,loss,smoothed,lr,grad_norm,tokens_per_s,validation_nll\n");
        let mut ema = Ema::new(smoothing);
        let (mut p, mut v) = (
            self.points.iter().peekable(),
            self.validations.iter().peekable(),
        );
        loop {
            let next_p = p.peek().map(|x| x.step);
            let next_v = v.peek().map(|x| x.step);
            let (point, validation) = match (next_p, next_v) {
                (None, None) => break,
                (Some(a), Some(b)) if a == b => (p.next(), v.next()),
                (Some(a), Some(b)) if a < b => (p.next(), None),
                (Some(_), None) => (p.next(), None),
                _ => (None, v.next()),
            };
            let step = point.map_or_else(|| validation.map_or(0, |v| v.step), |p| p.step);
            let nll = validation.map_or(String::new(), |v| v.nll.to_string());
            let _ = match point {
                Some(p) => writeln!(
                    out,
                    "{step},{},{},{},{},{},{},{nll}",
                    p.wall_s,
                    p.loss,
                    ema.push(p.loss as f64) as f32,
                    p.lr,
                    p.grad_norm,
                    p.tokens_per_s
                ),
                None => writeln!(
                    out,
                    "{step},{},,,,,,{nll}",
                    validation.map_or(0.0, |v| v.wall_s) as f32
                ),
            };
        }
        out
    }
}

/// Exponential moving average with bias correction (as TensorBoard and Adam do): the average
/// starts at zero and each value is divided by `1 - weight^n`, so the first smoothed point is
/// the first raw point and the curve does not start far from the data and lag it.
/// `weight` is the smoothing, 0 (none) to below 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ema {
    weight: f64,
    /// The corrected average itself, updated as `m += (x - m) * (1 - w) / (1 - w^n)`: the same
    /// values as dividing the plain average by `1 - w^n`, and the first is exactly `x`.
    corrected: f64,
    /// `weight^n` after n values.
    decay: f64,
}

impl Ema {
    pub fn new(weight: f64) -> Self {
        Ema {
            weight: weight.clamp(0.0, 0.999_9),
            corrected: 0.0,
            decay: 1.0,
        }
    }

    /// Adds a value and returns the corrected average so far. A non-finite value is skipped
    /// (its own point shows where it was), so one bad step does not poison the curve.
    pub fn push(&mut self, value: f64) -> f64 {
        if !value.is_finite() {
            return if self.decay >= 1.0 {
                value
            } else {
                self.corrected
            };
        }
        self.decay *= self.weight;
        let gain = (1.0 - self.weight) / (1.0 - self.decay);
        self.corrected += (value - self.corrected) * gain;
        self.corrected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(step: u64) -> StepPoint {
        StepPoint {
            step,
            loss: 5.0 - step as f32 * 1e-5,
            lr: 1e-3,
            grad_norm: 1.5,
            tokens_per_s: 1234.5,
            wall_s: step as f32 * 0.5,
        }
    }

    #[test]
    fn the_first_smoothed_value_is_the_first_raw_value() {
        for weight in [0.0, 0.5, 0.9, 0.99] {
            let mut ema = Ema::new(weight);
            assert_eq!(ema.push(5.9), 5.9);
            let second = ema.push(3.9);
            assert!((3.9..5.9).contains(&second), "{weight}: {second}");
        }
    }

    #[test]
    fn a_constant_stays_constant_when_smoothed() {
        let mut ema = Ema::new(0.95);
        for _ in 0..100 {
            assert!((ema.push(2.5) - 2.5).abs() < 1e-12);
        }
    }

    #[test]
    fn thinning_keeps_the_history_bounded_and_evenly_spread() {
        let mut h = RunHistory::default();
        for step in 1..=100_000 {
            h.push_step(point(step));
            if step % 200 == 0 {
                h.push_validation(ValidationPoint {
                    step,
                    nll: 3.0,
                    wall_s: step as f64,
                });
            }
        }
        assert!(h.points.len() <= MAX_POINTS && h.points.len() > MAX_POINTS / 2);
        assert!(h.points.iter().all(|p| p.step % h.stride == 0));
        assert_eq!(h.validations.len(), 500, "every validation is kept");
        assert_eq!(h.last_step(), 100_000);
        h.check(100_000).unwrap();
        let json = serde_json::to_string(&h).unwrap();
        // The size is what bounds the save's time: about 70 bytes a point.
        assert!(json.len() < 1_000_000, "{} bytes", json.len());
    }

    #[test]
    fn the_csv_has_a_row_per_step_and_validation() {
        let mut h = RunHistory::default();
        for step in 1..=4 {
            h.push_step(point(step));
        }
        for step in [2, 5] {
            h.push_validation(ValidationPoint {
                step,
                nll: 3.5,
                wall_s: 9.0,
            });
        }
        let csv = h.to_csv(0.5);
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 1 + 5, "{csv}");
        assert!(rows[0].starts_with("step,wall_s,loss,smoothed"));
        let first: Vec<&str> = rows[1].split(',').collect();
        assert_eq!(
            first[2], first[3],
            "the first smoothed value is the first loss"
        );
        assert!(
            rows[2].starts_with("2,") && rows[2].ends_with(",3.5"),
            "{}",
            rows[2]
        );
        assert_eq!(rows[5], "5,9,,,,,,3.5");
    }

    #[test]
    fn a_shuffled_history_is_refused() {
        let mut h = RunHistory::default();
        h.push_step(point(2));
        h.push_step(point(1));
        assert!(h.check(10).is_err());
        let mut h = RunHistory::default();
        h.push_step(point(20));
        assert!(h.check(10).is_err(), "a step beyond the run");
    }
}
