//! A run's history as plot lines, kept between frames: new points are appended as they arrive
//! and the whole set is rebuilt only when the options change or the history was thinned. The
//! plots borrow these vectors, so a frame never copies the history.

use egui_plot::PlotPoint;

use crate::train::{Ema, RunHistory};

/// What the x axis counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum XAxis {
    #[default]
    Step,
    WallTime,
}

/// The options the lines depend on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurveOptions {
    /// The EMA's weight, 0 (none) to 0.999.
    pub smoothing: f64,
    /// Loss, validation and gradient norm as log10 of the value.
    pub log_y: bool,
    pub x: XAxis,
}

impl Default for CurveOptions {
    fn default() -> Self {
        CurveOptions {
            smoothing: 0.9,
            log_y: false,
            x: XAxis::Step,
        }
    }
}

#[derive(Default)]
pub struct Curves {
    options: Option<CurveOptions>,
    revision: u64,
    points_done: usize,
    validations_done: usize,
    ema: Ema,
    pub loss: Vec<PlotPoint>,
    pub smoothed: Vec<PlotPoint>,
    pub validation: Vec<PlotPoint>,
    pub lr: Vec<PlotPoint>,
    pub grad_norm: Vec<PlotPoint>,
    pub tokens_per_s: Vec<PlotPoint>,
}

impl Curves {
    /// Brings the lines up to date with `history`; returns whether anything changed.
    pub fn update(&mut self, history: &RunHistory, options: CurveOptions) -> bool {
        let stale = self.options != Some(options)
            || self.revision != history.revision
            || self.points_done > history.points.len()
            || self.validations_done > history.validations.len();
        if stale {
            *self = Curves {
                options: Some(options),
                revision: history.revision,
                ema: Ema::new(options.smoothing),
                ..Curves::default()
            };
        }
        let y = |v: f64| {
            if options.log_y {
                v.max(1e-12).log10()
            } else {
                v
            }
        };
        let new_points = &history.points[self.points_done..];
        for p in new_points {
            let x = match options.x {
                XAxis::Step => p.step as f64,
                XAxis::WallTime => p.wall_s as f64,
            };
            let loss = p.loss as f64;
            self.loss.push(PlotPoint::new(x, y(loss)));
            self.smoothed
                .push(PlotPoint::new(x, y(self.ema.push(loss))));
            self.lr.push(PlotPoint::new(x, p.lr as f64));
            self.grad_norm
                .push(PlotPoint::new(x, y(p.grad_norm as f64)));
            self.tokens_per_s
                .push(PlotPoint::new(x, p.tokens_per_s as f64));
        }
        let new_validations = &history.validations[self.validations_done..];
        for v in new_validations {
            let x = match options.x {
                XAxis::Step => v.step as f64,
                XAxis::WallTime => v.wall_s,
            };
            self.validation.push(PlotPoint::new(x, y(v.nll)));
        }
        self.points_done = history.points.len();
        self.validations_done = history.validations.len();
        stale || !new_points.is_empty() || !new_validations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::StepPoint;

    fn history(losses: &[f32]) -> RunHistory {
        let mut h = RunHistory::default();
        for (i, &loss) in losses.iter().enumerate() {
            h.push_step(StepPoint {
                step: i as u64 + 1,
                loss,
                lr: 1e-3,
                grad_norm: 2.0,
                tokens_per_s: 100.0,
                wall_s: i as f32,
            });
        }
        h
    }

    #[test]
    fn appending_gives_the_same_lines_as_building_at_once() {
        let losses = [5.9, 5.1, 4.8, 4.0, 4.1, 3.7];
        let whole = history(&losses);
        let mut at_once = Curves::default();
        at_once.update(&whole, CurveOptions::default());
        let mut growing = Curves::default();
        for n in 1..=losses.len() {
            growing.update(&history(&losses[..n]), CurveOptions::default());
        }
        assert_eq!(growing.smoothed, at_once.smoothed);
        assert_eq!(growing.loss, at_once.loss);
        assert_eq!(at_once.smoothed[0], at_once.loss[0], "bias-corrected start");
    }

    #[test]
    fn log_y_shows_log10_of_the_loss() {
        let mut c = Curves::default();
        let options = CurveOptions {
            log_y: true,
            ..CurveOptions::default()
        };
        c.update(&history(&[100.0]), options);
        assert!((c.loss[0].y - 2.0).abs() < 1e-9);
    }
}
