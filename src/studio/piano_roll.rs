//! The piano roll: a keyboard column, a time ruler (seconds, and bars at the file's tempo), notes
//! coloured by velocity and origin, the playhead, seeking, zoom and pan, hover details, and click
//! or rubber-band selection. Only notes inside the view are painted.

use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, StrokeKind, Ui, Vec2, pos2, vec2};

use super::document::{Document, NoteOrigin, pitch_name};

const KEYBOARD_WIDTH: f32 = 44.0;
const RULER_HEIGHT: f32 = 22.0;

/// What the user asked the roll to do that reaches beyond it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RollAction {
    Seek(f64),
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PianoRoll {
    /// Seconds at the left edge of the note area.
    pub view_start: f64,
    pub pixels_per_second: f32,
    /// The pitch at the bottom edge (fractional while scrolling).
    pub lowest_pitch: f32,
    pub key_height: f32,
    pub follow_playhead: bool,
    #[serde(skip)]
    band_start: Option<Pos2>,
}

impl Default for PianoRoll {
    fn default() -> Self {
        PianoRoll {
            view_start: 0.0,
            pixels_per_second: 80.0,
            lowest_pitch: 36.0,
            key_height: 9.0,
            follow_playhead: true,
            band_start: None,
        }
    }
}

/// Colour of a note: the origin picks the hue, velocity the brightness.
pub fn note_color(origin: NoteOrigin, velocity: u8) -> Color32 {
    let v = 0.35 + 0.65 * velocity as f32 / 127.0;
    let (r, g, b) = match origin {
        NoteOrigin::Loaded => (90.0, 200.0, 140.0),
        NoteOrigin::Primer => (110.0, 150.0, 255.0),
        NoteOrigin::Generated => (255.0, 160.0, 60.0),
    };
    Color32::from_rgb((r * v) as u8, (g * v) as u8, (b * v) as u8)
}

struct Geometry {
    notes: Rect,
    ruler: Rect,
    keys: Rect,
}

impl PianoRoll {
    pub fn zoom_time(&mut self, factor: f32, anchor_seconds: f64) {
        let old = self.pixels_per_second;
        self.pixels_per_second = (old * factor).clamp(2.0, 2000.0);
        // Keep the time under the anchor where it was on screen.
        let anchor_offset = (anchor_seconds - self.view_start) * old as f64;
        self.view_start = (anchor_seconds - anchor_offset / self.pixels_per_second as f64).max(0.0);
    }

    pub fn zoom_pitch(&mut self, factor: f32) {
        self.key_height = (self.key_height * factor).clamp(3.0, 30.0);
    }

    /// Shows the whole piece: its time span across the width, its pitch span up the height.
    pub fn fit(&mut self, doc: &Document, size: Vec2) {
        let width = (size.x - KEYBOARD_WIDTH).max(50.0);
        let height = (size.y - RULER_HEIGHT).max(50.0);
        let end = doc.end_time().max(1.0);
        self.view_start = 0.0;
        self.pixels_per_second = (width / end as f32 * 0.98).clamp(2.0, 2000.0);
        let (lo, hi) = doc.notes().iter().fold((127u8, 0u8), |(lo, hi), n| {
            (lo.min(n.note.pitch), hi.max(n.note.pitch))
        });
        let (lo, hi) = if lo > hi {
            (48, 84)
        } else {
            (lo.saturating_sub(2), (hi + 2).min(127))
        };
        self.key_height = (height / (hi - lo + 1) as f32).clamp(3.0, 30.0);
        self.lowest_pitch = lo as f32;
    }

    fn geometry(rect: Rect) -> Geometry {
        Geometry {
            ruler: Rect::from_min_max(
                pos2(rect.left() + KEYBOARD_WIDTH, rect.top()),
                pos2(rect.right(), rect.top() + RULER_HEIGHT),
            ),
            keys: Rect::from_min_max(
                pos2(rect.left(), rect.top() + RULER_HEIGHT),
                pos2(rect.left() + KEYBOARD_WIDTH, rect.bottom()),
            ),
            notes: Rect::from_min_max(
                pos2(rect.left() + KEYBOARD_WIDTH, rect.top() + RULER_HEIGHT),
                rect.max,
            ),
        }
    }

    fn x_of(&self, area: Rect, seconds: f64) -> f32 {
        area.left() + ((seconds - self.view_start) * self.pixels_per_second as f64) as f32
    }

    fn seconds_at(&self, area: Rect, x: f32) -> f64 {
        self.view_start + ((x - area.left()) / self.pixels_per_second) as f64
    }

    /// The y of the bottom edge of `pitch`'s row.
    fn y_of(&self, area: Rect, pitch: f32) -> f32 {
        area.bottom() - (pitch - self.lowest_pitch) * self.key_height
    }

    fn pitch_at(&self, area: Rect, y: f32) -> f32 {
        self.lowest_pitch + (area.bottom() - y) / self.key_height
    }

    pub fn ui(
        &mut self,
        ui: &mut Ui,
        doc: &mut Document,
        playhead: Option<f64>,
    ) -> Option<RollAction> {
        let size = ui.available_size().max(vec2(200.0, 120.0));
        let (response, painter) = ui.allocate_painter(size, Sense::click_and_drag());
        let rect = response.rect;
        let g = Self::geometry(rect);
        let mut action = None;
        self.handle_scroll(ui, &response, &g);

        let visuals = ui.visuals();
        painter.rect_filled(rect, 0.0, visuals.extreme_bg_color);
        let view_end = self.seconds_at(g.notes, g.notes.right());
        let low = self.lowest_pitch.floor().max(0.0) as i32;
        let high = (self.pitch_at(g.notes, g.notes.top()).ceil() as i32).min(127);

        // Pitch rows: black keys darker, C lines stronger.
        painter.rect_filled(g.keys, 0.0, Color32::from_gray(225));
        for pitch in low..=high {
            let y0 = self.y_of(g.notes, pitch as f32 + 1.0);
            let y1 = self.y_of(g.notes, pitch as f32);
            let row = Rect::from_x_y_ranges(
                g.notes.x_range(),
                y0.max(g.notes.top())..=y1.min(g.notes.bottom()),
            );
            if row.height() <= 0.0 {
                continue;
            }
            let black = matches!(pitch % 12, 1 | 3 | 6 | 8 | 10);
            if black {
                painter.rect_filled(row, 0.0, Color32::from_black_alpha(40));
            }
            // A keyboard: white keys full width with a line between E-F and B-C, black keys
            // shorter and dark on top.
            if black {
                let key = Rect::from_x_y_ranges(
                    g.keys.left()..=g.keys.left() + KEYBOARD_WIDTH * 0.6,
                    row.y_range(),
                );
                painter.rect_filled(key, 1.0, Color32::from_gray(35));
            } else if matches!(pitch % 12, 0 | 5) {
                painter.hline(
                    g.keys.x_range(),
                    y1,
                    Stroke::new(1.0, Color32::from_gray(150)),
                );
            }
            if pitch % 12 == 0 {
                painter.hline(
                    g.notes.x_range(),
                    y1,
                    Stroke::new(1.0, Color32::from_gray(70)),
                );
                if self.key_height >= 5.0 {
                    painter.text(
                        pos2(g.keys.right() - 3.0, (y0 + y1) / 2.0),
                        Align2::RIGHT_CENTER,
                        pitch_name(pitch as u8),
                        FontId::proportional(10.0_f32.min(self.key_height + 2.0)),
                        Color32::from_gray(20),
                    );
                }
            }
        }

        self.paint_ruler(ui, &painter, &g, doc, view_end);

        // Notes: only those overlapping the view.
        let clip = painter.with_clip_rect(g.notes);
        let mut hovered = None;
        let pointer = response.hover_pos();
        let mut notes_mesh = egui::Mesh::default();
        let mut selected = Vec::new();
        for index in doc.visible_range(self.view_start, view_end) {
            let n = &doc.notes()[index];
            if n.note.end < self.view_start
                || (n.note.pitch as i32) < low
                || (n.note.pitch as i32) > high
            {
                continue;
            }
            let r = Rect::from_min_max(
                pos2(
                    self.x_of(g.notes, n.note.start),
                    self.y_of(g.notes, n.note.pitch as f32 + 1.0) + 0.5,
                ),
                pos2(
                    self.x_of(g.notes, n.note.end)
                        .max(self.x_of(g.notes, n.note.start) + 1.5),
                    self.y_of(g.notes, n.note.pitch as f32) - 0.5,
                ),
            );
            // One mesh of plain quads for all notes: a zoomed-out piece has tens of thousands, and
            // tessellating each as an anti-aliased rounded rectangle took most of the frame.
            notes_mesh.add_colored_rect(r, note_color(n.origin, n.note.velocity));
            if n.selected {
                selected.push(r);
            }
            if pointer.is_some_and(|p| r.contains(p)) {
                hovered = Some(index);
            }
        }

        clip.add(egui::Shape::mesh(notes_mesh));
        for r in selected {
            clip.rect_stroke(
                r,
                1.5,
                Stroke::new(1.5, Color32::WHITE),
                StrokeKind::Outside,
            );
        }
        if let Some(t) = playhead {
            let x = self.x_of(g.notes, t);
            if g.notes.x_range().contains(x) {
                painter.vline(
                    x,
                    rect.y_range(),
                    Stroke::new(1.5, Color32::from_rgb(255, 80, 80)),
                );
            }
        }

        // Interaction.
        if response.clicked()
            && let Some(p) = response.interact_pointer_pos()
        {
            if g.ruler.contains(p) {
                action = Some(RollAction::Seek(self.seconds_at(g.notes, p.x).max(0.0)));
            } else if g.notes.contains(p) {
                let add = ui.input(|i| i.modifiers.shift || i.modifiers.command);
                if !add {
                    doc.clear_selection();
                }
                if let Some(index) = hovered {
                    let selected = doc.notes()[index].selected;
                    doc.set_selected(index, !(add && selected));
                }
            }
        }
        if response.drag_started_by(egui::PointerButton::Primary) {
            self.band_start = response
                .interact_pointer_pos()
                .filter(|p| g.notes.contains(*p));
        }
        if response.dragged_by(egui::PointerButton::Secondary)
            || response.dragged_by(egui::PointerButton::Middle)
        {
            let d = response.drag_delta();
            self.view_start = (self.view_start - (d.x / self.pixels_per_second) as f64).max(0.0);
            self.lowest_pitch = (self.lowest_pitch + d.y / self.key_height).clamp(0.0, 120.0);
        }
        if let (Some(start), Some(now)) = (self.band_start, response.interact_pointer_pos()) {
            let band = Rect::from_two_pos(start, now);
            painter.rect_filled(
                band,
                0.0,
                Color32::from_rgba_unmultiplied(255, 255, 255, 25),
            );
            painter.rect_stroke(
                band,
                0.0,
                Stroke::new(1.0, Color32::from_gray(200)),
                StrokeKind::Inside,
            );
            if response.drag_stopped() {
                let add = ui.input(|i| i.modifiers.shift || i.modifiers.command);
                let t0 = self.seconds_at(g.notes, band.left());
                let t1 = self.seconds_at(g.notes, band.right());
                let p0 = self
                    .pitch_at(g.notes, band.bottom())
                    .floor()
                    .clamp(0.0, 127.0) as u8;
                let p1 = self.pitch_at(g.notes, band.top()).floor().clamp(0.0, 127.0) as u8;
                doc.select_box(t0, t1, p0, p1, add);
                self.band_start = None;
            }
        }
        if !response.dragged() && !response.drag_stopped() {
            self.band_start = None;
        }

        if let Some(index) = hovered {
            let n = doc.notes()[index].note;
            response.on_hover_ui_at_pointer(|ui| {
                ui.label(format!(
                    "{}  velocity {}\nstart {:.2} s  duration {:.2} s",
                    pitch_name(n.pitch),
                    n.velocity,
                    n.start,
                    n.duration()
                ));
            });
        }
        action
    }

    /// Follows the playhead by paging when it leaves the view.
    pub fn follow(&mut self, playhead: f64, width: f32) {
        let span = ((width - KEYBOARD_WIDTH).max(50.0) / self.pixels_per_second) as f64;
        if playhead < self.view_start || playhead > self.view_start + span * 0.95 {
            self.view_start = (playhead - span * 0.05).max(0.0);
        }
    }

    fn handle_scroll(&mut self, ui: &Ui, response: &egui::Response, g: &Geometry) {
        if !response.hovered() {
            return;
        }
        let (zoom, scroll, alt, pointer) = ui.input(|i| {
            (
                i.zoom_delta(),
                i.smooth_scroll_delta,
                i.modifiers.alt,
                i.pointer.hover_pos(),
            )
        });
        let anchor = pointer.map_or(self.view_start, |p| self.seconds_at(g.notes, p.x));
        if zoom != 1.0 {
            self.zoom_time(zoom, anchor);
        }
        if alt && scroll.y != 0.0 {
            self.zoom_pitch((scroll.y / 200.0).exp());
        } else {
            if scroll.x != 0.0 {
                self.view_start =
                    (self.view_start - (scroll.x / self.pixels_per_second) as f64).max(0.0);
            }
            if scroll.y != 0.0 {
                self.lowest_pitch =
                    (self.lowest_pitch + scroll.y / self.key_height).clamp(0.0, 120.0);
            }
        }
    }

    fn paint_ruler(
        &self,
        ui: &Ui,
        painter: &egui::Painter,
        g: &Geometry,
        doc: &Document,
        view_end: f64,
    ) {
        painter.rect_filled(g.ruler, 0.0, ui.visuals().faint_bg_color);
        let text_color = ui.visuals().text_color();
        // A tick spacing of at least 60 px, from a 1-2-5 series.
        let min_seconds = 60.0 / self.pixels_per_second as f64;
        let step = [
            0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
        ]
        .into_iter()
        .find(|s| *s >= min_seconds)
        .unwrap_or(600.0);
        let mut t = (self.view_start / step).floor() * step;
        while t <= view_end {
            let x = self.x_of(g.notes, t);
            if x >= g.notes.left() {
                painter.vline(
                    x,
                    g.ruler.bottom() - 6.0..=g.ruler.bottom(),
                    Stroke::new(1.0, text_color),
                );
                painter.vline(
                    x,
                    g.notes.y_range(),
                    Stroke::new(1.0, Color32::from_white_alpha(12)),
                );
                let label = if step < 1.0 {
                    format!("{t:.1}s")
                } else {
                    format!("{}:{:02}", (t / 60.0) as u32, (t % 60.0) as u32)
                };
                painter.text(
                    pos2(x + 3.0, g.ruler.top() + 2.0),
                    Align2::LEFT_TOP,
                    label,
                    FontId::proportional(11.0),
                    text_color,
                );
            }
            t += step;
        }
        // Bars (4/4) at the file's tempo, when it has one and they are not too dense.
        if let Some(bpm) = doc.tempo_bpm.filter(|b| *b > 0.0) {
            let bar = 240.0 / bpm;
            if bar * self.pixels_per_second as f64 >= 24.0 {
                let mut b = (self.view_start / bar).floor();
                while b * bar <= view_end {
                    let x = self.x_of(g.notes, b * bar);
                    if x >= g.notes.left() {
                        painter.vline(
                            x,
                            g.notes.y_range(),
                            Stroke::new(1.0, Color32::from_rgba_unmultiplied(120, 140, 255, 40)),
                        );
                        painter.text(
                            pos2(x + 2.0, g.ruler.bottom() - 2.0),
                            Align2::LEFT_BOTTOM,
                            format!("{}", b as u64 + 1),
                            FontId::proportional(9.0),
                            Color32::from_rgb(140, 160, 255),
                        );
                    }
                    b += 1.0;
                }
            }
        }
    }
}
