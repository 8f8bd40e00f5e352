//! The corpus summary, checked against counts made independently from the files.

use std::path::Path;

use echoai::corpus::{Corpus, Split};
use echoai::midi::read_midi;

fn count_midi_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                count_midi_files(&path)
            } else {
                let ext = path
                    .extension()
                    .and_then(|x| x.to_str())
                    .unwrap_or("")
                    .to_lowercase();
                usize::from(ext == "mid" || ext == "midi")
            }
        })
        .sum()
}

#[test]
fn demo_corpus_summary_matches_the_files() {
    let root = Path::new("assets/corpus");
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let corpus = Corpus::load(root, &|_, _| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    let s = &corpus.summary;
    let files = count_midi_files(root);
    assert_eq!(s.files_ok + s.files_failed, files);
    assert_eq!(calls.into_inner(), files);
    assert_eq!(s.split_source, "hash");

    let mut notes = 0;
    for piece in &corpus.pieces {
        notes += read_midi(&root.join(&piece.name)).unwrap().len();
    }
    assert_eq!(s.notes, notes);
    let per_split: usize = Split::ALL.iter().map(|&sp| s.split(sp).files).sum();
    assert_eq!(per_split, s.files_ok);
    let events: usize = corpus.pieces.iter().map(|p| p.events.len()).sum();
    assert_eq!(s.events, events);
    assert!(s.train.files > s.validation.files && s.validation.files > 0 && s.test.files > 0);
    assert!(
        (s.seconds / 3600.0 - 7.9).abs() < 0.5,
        "{} h",
        s.seconds / 3600.0
    );
}

#[test]
fn maestro_csv_gives_the_splits_and_bad_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new("assets/corpus/piano");
    std::fs::create_dir(dir.path().join("2004")).unwrap();
    std::fs::copy(src.join("fur-elise.mid"), dir.path().join("2004/a.MIDI")).unwrap();
    std::fs::copy(src.join("bwv-850.mid"), dir.path().join("2004/b.mid")).unwrap();
    std::fs::write(dir.path().join("2004/c.mid"), b"not midi at all").unwrap();
    std::fs::write(
        dir.path().join("maestro-v3.0.0.csv"),
        "canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration\n\
         Beethoven,\"Bagatelle, WoO 59\",test,2004,2004/a.MIDI,2004/a.wav,180.0\n\
         Bach,Prelude,validation,2004,2004/b.mid,2004/b.wav,120.0\n",
    )
    .unwrap();
    let corpus = Corpus::load(dir.path(), &|_, _| {}).unwrap();
    let s = &corpus.summary;
    assert_eq!(s.split_source, "maestro-csv");
    assert_eq!((s.files_ok, s.files_failed), (2, 1));
    assert_eq!(s.failures[0].path, "2004/c.mid");
    assert_eq!((s.test.files, s.validation.files, s.train.files), (1, 1, 0));
}

#[test]
fn unreadable_folder_is_an_error() {
    let err = Corpus::load(Path::new("/no/such/folder"), &|_, _| {}).unwrap_err();
    assert!(err.to_string().contains("/no/such/folder"), "{err}");
}
