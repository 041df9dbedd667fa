//! The held-out split: a stable hash of each file's relative path decides, so training and
//! evaluation agree on which files the model never saw, across runs, machines and versions.
//!
//! A file can also exist in several versions under different paths: a cargo registry holds
//! `syn-2.0.87/src/expr.rs` and `syn-2.0.119/src/expr.rs`, whose paths hash apart. A held-out file
//! whose other version is trained on is not held out in any useful sense, so it is shadowed: left
//! out of evaluation (and still not trained on, so that the training files stay what the path
//! hash says).

use std::collections::{HashMap, HashSet};

use crate::hash::fnv1a;

/// Default share of files held out.
pub const DEFAULT_HELD_OUT: f64 = 0.05;

/// Is the file at `path` (relative, `/`-separated) held out at rate `fraction`?
pub fn is_held_out(path: &str, fraction: f64) -> bool {
    bucket(path) < (fraction.clamp(0.0, 1.0) * 10_000.0) as u64
}

fn bucket(path: &str) -> u64 {
    fnv1a(path.as_bytes()) % 10_000
}

/// `path` with the version taken off each folder name (`syn-2.0.119/src/expr.rs` ->
/// `syn/src/expr.rs`, `time-core-0.1.9` -> `time-core`, `pkg-1.0.0-alpha.2` -> `pkg`): the same
/// for every version of a file.
pub fn unversioned(path: &str) -> String {
    let mut parts: Vec<&str> = path.split('/').collect();
    let file = parts.pop();
    let folders = parts.into_iter().map(|c| {
        // The last '-' or '_' followed by a version (digits, a dot, more digits) starts it.
        c.char_indices()
            .filter(|&(i, ch)| (ch == '-' || ch == '_') && i > 0)
            .map(|(i, _)| i)
            .find(|&i| is_version(crate::text::from(c, i + 1)))
            .and_then(|i| c.get(..i))
            .unwrap_or(c)
    });
    folders.chain(file).collect::<Vec<_>>().join("/")
}

/// `1.2`, `0.3.55`, `v2.0`, `1.0.0-alpha.2`, `1.2.3+build`: a version number and what follows it.
fn is_version(s: &str) -> bool {
    let s = s.strip_prefix('v').unwrap_or(s);
    let number = s.split(['-', '+']).next().unwrap_or_default();
    let mut fields = number.split('.');
    let numeric = |f: &str| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit());
    fields.next().is_some_and(numeric) && fields.next().is_some_and(numeric) && fields.all(numeric)
}

/// Which files are trained on and which held out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Indices of the files to train on.
    pub train: Vec<usize>,
    /// Indices of the held-out files to evaluate on.
    pub held: Vec<usize>,
    /// Held-out by their path, but another version of the same file is trained on: neither
    /// trained on nor evaluated.
    pub shadowed: Vec<usize>,
    /// Training files left out by [`Split::cap`].
    pub capped: Vec<usize>,
}

/// The package a file belongs to for [`Split::cap`]: its top-level folder, or the file itself
/// when it lies at the top.
pub fn package(path: &str) -> &str {
    path.split_once('/').map_or(path, |(top, _)| top)
}

impl Split {
    /// Trains on at most `bytes` of each package (see [`package`]), so that a few large packages
    /// (a deep-learning framework among a hundred libraries) do not make up most of the corpus.
    /// Within a package the files kept are the first in an order set by a hash of each path:
    /// a spread over the whole package, the same on every run. `sizes` are the files' bytes.
    /// Held-out files are not affected.
    pub fn cap(&mut self, paths: &[&str], sizes: &[usize], bytes: usize) {
        let mut order = self.train.clone();
        order.sort_by_key(|&i| (package(paths[i]), fnv1a(paths[i].as_bytes())));
        let mut used: HashMap<&str, usize> = HashMap::new();
        let (mut train, mut capped) = (Vec::new(), Vec::new());
        for i in order {
            let total = used.entry(package(paths[i])).or_default();
            let size = sizes.get(i).copied().unwrap_or(0);
            match *total + size <= bytes {
                true => {
                    *total += size;
                    train.push(i);
                }
                false => capped.push(i),
            }
        }
        train.sort_unstable();
        capped.sort_unstable();
        self.train = train;
        self.capped.extend(capped);
    }
}

/// Splits `paths` by the hash of each path. At least one file is held out (the one with the
/// lowest bucket) and, when there are two or more, at least one is trained on; a held-out file
/// with a trained version is shadowed unless it is the only one held out.
pub fn split(paths: &[&str], fraction: f64) -> Split {
    let (mut held, mut train): (Vec<usize>, Vec<usize>) =
        (0..paths.len()).partition(|&i| is_held_out(paths[i], fraction));
    if held.is_empty()
        && let Some(pos) = (0..train.len()).min_by_key(|&k| bucket(paths[train[k]]))
    {
        held.push(train.remove(pos));
    }
    if train.is_empty()
        && held.len() > 1
        && let Some(pos) = (0..held.len()).max_by_key(|&k| bucket(paths[held[k]]))
    {
        train.push(held.remove(pos));
    }
    let trained: HashSet<String> = train.iter().map(|&i| unversioned(paths[i])).collect();
    let (shadowed, clean): (Vec<usize>, Vec<usize>) = held
        .iter()
        .partition(|&&i| trained.contains(&unversioned(paths[i])));
    let (held, shadowed) = match clean.is_empty() {
        true => (held, Vec::new()),
        false => (clean, shadowed),
    };
    Split {
        train,
        held,
        shadowed,
        capped: Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stable_and_holds_out_about_the_fraction() {
        let paths: Vec<String> = (0..2000).map(|i| format!("src/module_{i}.rs")).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let Split { train, held, .. } = split(&refs, 0.05);
        assert_eq!(train.len() + held.len(), 2000);
        assert!((60..140).contains(&held.len()), "{}", held.len());
        assert_eq!(split(&refs, 0.05).held, held);
        // Membership depends on the path alone, not on the other files.
        for &i in &held {
            assert!(is_held_out(&paths[i], 0.05));
        }
        // Pin the hash so the split can never drift. Reference: FNV-1a 64 in Python,
        // `h = 0xcbf29ce484222325; for b in data: h = ((h ^ b) * 0x100000001b3) % 2**64`.
        assert_eq!(fnv1a(b"src/main.rs"), 0xdf9f_8d2d_8eb1_2e9c);
    }

    #[test]
    fn tiny_repositories_still_hold_one_file_out() {
        let Split { train, held, .. } = split(&["a.rs", "b.rs"], 0.05);
        assert_eq!((train.len(), held.len()), (1, 1));
        let Split { train, held, .. } = split(&["only.rs"], 0.05);
        assert_eq!((train.len(), held.len()), (0, 1));
        // Versions of one file are not told apart when nothing else is held out.
        let s = split(&["x-1.0/a.rs", "x-2.0/a.rs"], 0.05);
        assert_eq!((s.train.len(), s.held.len(), s.shadowed.len()), (1, 1, 0));
    }

    #[test]
    fn versions_of_a_file_share_a_name_and_a_trained_version_shadows_the_held_one() {
        for (path, name) in [
            ("syn-2.0.119/src/expr.rs", "syn/src/expr.rs"),
            ("time-core-0.1.9/src/lib.rs", "time-core/src/lib.rs"),
            ("pkg-1.0.0-alpha.2/a/b.py", "pkg/a/b.py"),
            ("tool_v2.1/x.c", "tool/x.c"),
            (
                "base64-0.13.1/src/read/decoder.rs",
                "base64/src/read/decoder.rs",
            ),
            // Not versions: a number without a dot, a name with digits, the file's own name.
            ("sha-2/src/lib.rs", "sha-2/src/lib.rs"),
            ("base64/src/x86-64.rs", "base64/src/x86-64.rs"),
            ("src/parser-1.2.rs", "src/parser-1.2.rs"),
            ("python3.11/json/decoder.py", "python3.11/json/decoder.py"),
        ] {
            assert_eq!(unversioned(path), name, "{path}");
        }
        // Find a held-out file among many versions of a crate, and one trained version of it.
        let paths: Vec<String> = (0..400)
            .flat_map(|v| {
                [
                    format!("syn-2.0.{v}/src/expr.rs"),
                    format!("other-{v}.0.0/src/only_{v}.rs"),
                ]
            })
            .collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let s = split(&refs, 0.05);
        assert!(!s.shadowed.is_empty() && !s.held.is_empty());
        for &i in &s.shadowed {
            assert!(refs[i].starts_with("syn-"), "{}", refs[i]);
            assert!(is_held_out(refs[i], 0.05));
        }
        // Each file with no other version stays held out; every index is in exactly one list.
        assert!(s.held.iter().all(|&i| refs[i].starts_with("other-")));
        let mut all: Vec<usize> = [&s.train[..], &s.held[..], &s.shadowed[..]].concat();
        all.sort_unstable();
        assert_eq!(all, (0..refs.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_cap_limits_the_training_bytes_of_each_package_and_spares_held_out_files() {
        let paths: Vec<String> = (0..200)
            .map(|i| format!("big/module_{i}.py"))
            .chain((0..10).map(|i| format!("small/m{i}.py")))
            .chain(["top_level.py".to_string()])
            .collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let sizes = vec![1000; refs.len()];
        let mut s = split(&refs, 0.05);
        let before = s.clone();
        s.cap(&refs, &sizes, 50_000);
        let trained = |p: &str| s.train.iter().filter(|&&i| package(refs[i]) == p).count();
        assert_eq!(trained("big"), 50);
        assert_eq!(
            trained("small"),
            before
                .train
                .iter()
                .filter(|&&i| refs[i].starts_with("small/"))
                .count()
        );
        assert_eq!(package("top_level.py"), "top_level.py");
        assert_eq!(
            (s.held.clone(), s.shadowed.clone()),
            (before.held, before.shadowed)
        );
        assert!(s.capped.iter().all(|&i| refs[i].starts_with("big/")));
        assert_eq!(s.train.len() + s.capped.len(), before.train.len());
        // Spread over the package, not its alphabetically first files; the same every time.
        assert!(s.train.iter().any(|&i| (150..200).contains(&i)));
        let mut again = split(&refs, 0.05);
        again.cap(&refs, &sizes, 50_000);
        assert_eq!(again, s);
    }
}
