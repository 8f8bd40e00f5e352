//! "Regenerate from here" and "Continue": which part of the piece on the roll stays, and where
//! the new part begins. The kept notes go to the model as the primer and come back unchanged
//! through [`crate::generate::splice`].

use crate::performance::Performance;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// Keep everything before the playhead (or the selection's start) and sample the rest anew.
    FromHere,
    /// Keep the whole piece and append after its last note.
    Continue,
}

/// The notes kept and the cut in seconds, for a piece, its selected notes and the playhead.
/// Notes sounding across the cut end there, as the model hears them.
pub fn kept_part(
    mode: Extend,
    piece: &Performance,
    selection: &Performance,
    playhead: f64,
) -> (Performance, f64) {
    let cut = match mode {
        Extend::Continue => piece.end_time(),
        Extend::FromHere => selection
            .notes
            .iter()
            .map(|n| n.start)
            .reduce(f64::min)
            .unwrap_or(playhead)
            .clamp(0.0, piece.end_time()),
    };
    (piece.first_seconds(cut), cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::performance::Note;

    #[test]
    fn the_cut_is_the_selection_start_else_the_playhead_else_the_end() {
        let piece = Performance::from_notes(vec![
            Note::new(60, 80, 0.0, 1.0),
            Note::new(64, 80, 1.5, 3.0),
            Note::new(67, 80, 4.0, 5.0),
        ]);
        let (kept, cut) = kept_part(Extend::FromHere, &piece, &Performance::default(), 2.0);
        assert_eq!(cut, 2.0);
        assert_eq!(
            kept.notes,
            [Note::new(60, 80, 0.0, 1.0), Note::new(64, 80, 1.5, 2.0)]
        );
        let selection = Performance::from_notes(vec![piece.notes[2]]);
        assert_eq!(kept_part(Extend::FromHere, &piece, &selection, 0.5).1, 4.0);
        let (kept, cut) = kept_part(Extend::Continue, &piece, &selection, 0.5);
        assert_eq!((kept, cut), (piece.clone(), 5.0));
        assert_eq!(
            kept_part(Extend::FromHere, &piece, &Performance::default(), 99.0).1,
            5.0
        );
    }
}
