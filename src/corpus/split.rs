//! Train / validation / test splits: MAESTRO's csv when present, else a stable hash of the path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<Split> {
        match text.trim().to_ascii_lowercase().as_str() {
            "train" => Some(Split::Train),
            "validation" | "valid" | "val" => Some(Split::Validation),
            "test" => Some(Split::Test),
            _ => None,
        }
    }

    /// 80/10/10 by a hash of the relative path: stable across machines, runs and file orders, so a
    /// validation piece never drifts into training when files are added.
    pub fn by_hash(relative_path: &str) -> Split {
        match fnv1a(relative_path.as_bytes()) % 10 {
            0..=7 => Split::Train,
            8 => Split::Validation,
            _ => Split::Test,
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The splits a MAESTRO csv assigns, keyed by `midi_filename`.
#[derive(Debug, Default)]
pub struct SplitTable {
    pub csv: Option<PathBuf>,
    by_file: HashMap<String, Split>,
}

impl SplitTable {
    /// Looks for `maestro-v*.csv` at the root of `root` and reads it; no csv gives an empty table.
    pub fn load(root: &Path) -> Result<SplitTable, String> {
        let Some(csv) = find_maestro_csv(root) else {
            return Ok(SplitTable::default());
        };
        let by_file = read_maestro_csv(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
        Ok(SplitTable {
            csv: Some(csv),
            by_file,
        })
    }

    /// The csv's split for a file, else the hash split.
    pub fn split_of(&self, relative_path: &str) -> Split {
        self.by_file
            .get(relative_path)
            .copied()
            .unwrap_or_else(|| Split::by_hash(relative_path))
    }
}

fn find_maestro_csv(root: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                let n = n.to_ascii_lowercase();
                n.starts_with("maestro-v") && n.ends_with(".csv")
            })
        })
        .collect();
    found.sort();
    found.pop()
}

fn read_maestro_csv(path: &Path) -> Result<HashMap<String, Split>, String> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| e.to_string())?;
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| format!("no `{name}` column"))
    };
    let split_col = column("split")?;
    let file_col = column("midi_filename")?;
    let mut table = HashMap::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| e.to_string())?;
        let (Some(split), Some(file)) = (record.get(split_col), record.get(file_col)) else {
            continue;
        };
        let split = Split::parse(split)
            .ok_or_else(|| format!("row {}: unknown split `{split}`", line + 2))?;
        table.insert(file.trim().replace('\\', "/"), split);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_split_is_stable_and_roughly_80_10_10() {
        let names: Vec<String> = (0..2000).map(|i| format!("folder/piece{i}.mid")).collect();
        let mut counts = HashMap::new();
        for n in &names {
            assert_eq!(Split::by_hash(n), Split::by_hash(&n.clone()));
            *counts.entry(Split::by_hash(n)).or_insert(0) += 1;
        }
        assert!((1500..1700).contains(&counts[&Split::Train]), "{counts:?}");
        assert!(
            (120..280).contains(&counts[&Split::Validation]),
            "{counts:?}"
        );
        assert!((120..280).contains(&counts[&Split::Test]), "{counts:?}");
    }

    #[test]
    fn the_hash_is_fnv1a_and_these_paths_keep_their_splits_on_every_machine() {
        // The published FNV-1a 64-bit test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        // Computed outside this code (a few lines of Python): a changed hash or mapping would
        // silently move pieces between training and validation in everyone's corpus.
        for (path, split) in [
            ("piano/fur-elise.mid", Split::Train),
            ("piano/clair-de-lune.mid", Split::Test),
            ("bach-chorales/bach__bwv413.mid", Split::Train),
            ("maestro-samples/Maestro_4.mid", Split::Test),
            (
                "keyboard-scores/joplin__maple_leaf_rag.mid",
                Split::Validation,
            ),
            ("a.mid", Split::Validation),
        ] {
            assert_eq!(Split::by_hash(path), split, "{path}");
        }
    }
}
