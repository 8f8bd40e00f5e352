//! A "working" indicator that does not keep the whole window repainting.
//!
//! egui's `Spinner` asks for a new frame every frame. Shown for the length of a training run, that
//! repainted the window (piano roll included) continuously: measured under Xvfb, the UI thread and
//! the software GL renderer took more than one of the two cores and training in the studio ran at
//! 3,900 tokens/s where the CLI ran at 11,200. This one turns in steps, five frames a second; the
//! jobs still repaint at once whenever they report progress.

use std::time::Duration;

use egui::{Rect, Sense, Shape, Stroke, Ui, vec2};

const STEP: Duration = Duration::from_millis(200);

pub fn busy_indicator(ui: &mut Ui) {
    let size = ui.style().spacing.interact_size.y;
    let (rect, response) = ui.allocate_exact_size(vec2(size, size), Sense::hover());
    response.widget_info(|| egui::WidgetInfo::new(egui::Role::ProgressIndicator));
    if !ui.is_rect_visible(rect) {
        return;
    }
    ui.ctx().request_repaint_after(STEP);
    paint(ui, rect);
}

/// [`busy_indicator`] for work that reports progress by itself (training wakes the window with
/// every step, at most ten times a second): it turns when the window repaints anyway and asks for
/// no frames of its own. Under Xvfb the five frames a second of the animated one cost the studio's
/// training ~10 % of the CLI's tokens/s (software GL on the same two cores).
pub fn passive_busy_indicator(ui: &mut Ui) {
    let size = ui.style().spacing.interact_size.y;
    let (rect, response) = ui.allocate_exact_size(vec2(size, size), Sense::hover());
    response.widget_info(|| egui::WidgetInfo::new(egui::Role::ProgressIndicator));
    if ui.is_rect_visible(rect) {
        paint(ui, rect);
    }
}

/// A 240-degree arc whose start advances an eighth of a turn per step.
fn paint(ui: &Ui, rect: Rect) {
    let steps = (ui.input(|i| i.time) / STEP.as_secs_f64()).floor();
    let start = steps * std::f64::consts::TAU / 8.0;
    let radius = rect.height().min(rect.width()) * 0.5 - 2.0;
    let n = 24;
    let points = (0..=n)
        .map(|i| {
            let angle = start + 240f64.to_radians() * i as f64 / n as f64;
            let (sin, cos) = angle.sin_cos();
            rect.center() + radius * vec2(cos as f32, sin as f32)
        })
        .collect();
    let color = ui.visuals().strong_text_color();
    ui.painter()
        .add(Shape::line(points, Stroke::new(3.0, color)));
}
