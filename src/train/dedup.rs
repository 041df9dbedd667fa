//! Near-duplicate files: a file most of whose distinctive lines are already in one file kept
//! before it. Two versions of a crate, a vendored copy of a library next to the library, a file
//! copied and lightly edited: trained on twice they weigh double, and split across the held-out
//! line they let a model be scored on what it has already read.
//!
//! A line is distinctive when, trimmed, it is at least [`MIN_LINE`] bytes long and has a letter
//! or digit: not `}` or `return None`. A file with fewer than [`MIN_LINES`] distinctive lines is
//! never called a near-duplicate (exact duplicates are caught by hash before this). Candidates
//! come from an index of lines to the kept files that hold them; a line held by more than
//! `COMMON` files (a licence header, `use std::collections::HashMap;`) finds no candidates, as it
//! says nothing about which file was copied.

use std::collections::HashMap;

use crate::hash::fnv1a;

/// Shortest distinctive line, in bytes after trimming.
pub const MIN_LINE: usize = 16;
/// Fewest distinctive lines a file needs for the check.
pub const MIN_LINES: usize = 8;
/// Share of a file's distinctive lines that must be in one earlier file.
pub const CONTAINED: f64 = 0.8;
/// Files a line may be in and still point at candidates.
const COMMON: usize = 64;
/// Candidates checked exactly per file (those sharing the most lines).
const CANDIDATES: usize = 4;

/// The kept files' distinctive lines, and which files hold each.
#[derive(Debug, Default)]
pub struct Index {
    /// Per kept file: its name and its distinctive line hashes, sorted, without repeats.
    files: Vec<(String, Vec<u64>)>,
    /// Line hash -> kept files holding it; `None` once more than `COMMON` do.
    postings: HashMap<u64, Option<Vec<u32>>>,
}

/// Distinctive line hashes of `text`, sorted, without repeats.
pub fn fingerprint(text: &str) -> Vec<u64> {
    let mut lines: Vec<u64> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.len() >= MIN_LINE && l.bytes().any(|b| b.is_ascii_alphanumeric()))
        .map(|l| fnv1a(l.as_bytes()))
        .collect();
    lines.sort_unstable();
    lines.dedup();
    lines
}

impl Index {
    /// The kept file that `lines` (a [`fingerprint`]) nearly duplicates, if any.
    pub fn original_of(&self, lines: &[u64]) -> Option<&str> {
        if lines.len() < MIN_LINES {
            return None;
        }
        let mut shared: HashMap<u32, usize> = HashMap::new();
        for h in lines {
            if let Some(Some(files)) = self.postings.get(h) {
                for &f in files {
                    *shared.entry(f).or_default() += 1;
                }
            }
        }
        let mut best: Vec<(usize, u32)> = shared.into_iter().map(|(f, n)| (n, f)).collect();
        best.sort_unstable_by(|a, b| b.cmp(a));
        let need = (CONTAINED * lines.len() as f64).ceil() as usize;
        best.into_iter()
            .take(CANDIDATES)
            .filter_map(|(_, f)| self.files.get(f as usize))
            .find(|(_, theirs)| {
                lines
                    .iter()
                    .filter(|h| theirs.binary_search(h).is_ok())
                    .count()
                    >= need
            })
            .map(|(name, _)| name.as_str())
    }

    /// Records a kept file.
    pub fn add(&mut self, name: &str, lines: Vec<u64>) {
        let id = self.files.len() as u32;
        for &h in &lines {
            let entry = self.postings.entry(h).or_insert_with(|| Some(Vec::new()));
            if let Some(files) = entry {
                files.push(id);
                if files.len() > COMMON {
                    *entry = None;
                }
            }
        }
        self.files.push((name.to_string(), lines));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn source(n: usize, tag: &str) -> String {
        (0..n)
            .map(|i| format!("    let value_{i} = compute_{tag}(input_{i}, {i});\n"))
            .collect()
    }

    #[test]
    fn a_lightly_edited_copy_is_found_and_a_different_file_is_not() {
        let mut index = Index::default();
        let original = source(20, "a");
        index.add("syn-2.0.87/src/expr.rs", fingerprint(&original));
        // Two lines changed and one added out of twenty: a new version of the same file.
        let edited = original
            .replace("compute_a(input_3, 3)", "compute_a(input_3, 33)")
            .replace("compute_a(input_9, 9)", "compute_a(input_9, 99)")
            + "    let extra = something_new(42);\n";
        assert_eq!(
            index.original_of(&fingerprint(&edited)),
            Some("syn-2.0.87/src/expr.rs")
        );
        // Half the lines rewritten: a different file.
        let half: String = original
            .lines()
            .take(10)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + &source(10, "b");
        assert_eq!(index.original_of(&fingerprint(&half)), None);
        assert_eq!(index.original_of(&fingerprint(&source(20, "c"))), None);
        // Short and punctuation-only lines do not count; a file with few distinctive lines is
        // never a near-duplicate.
        assert!(fingerprint("}\n    }\nreturn None\n\n").is_empty());
        assert_eq!(index.original_of(&fingerprint(&source(5, "a"))), None);
    }

    #[test]
    fn a_line_in_many_files_points_at_no_candidate() {
        let mut index = Index::default();
        let header: String = (0..10)
            .map(|i| format!("// Licensed under the Apache License, clause {i}\n"))
            .collect();
        for f in 0..=COMMON {
            index.add(&format!("f{f}.rs"), fingerprint(&header));
        }
        // Only the header in common with the earlier files: their lines are too common to say
        // which one it was copied from.
        let file = header + &source(2, "z");
        assert_eq!(index.original_of(&fingerprint(&file)), None);
    }
}
