//! The held-out split: a stable hash of each file's relative path decides, so training and
//! evaluation agree on which files the model never saw, across runs, machines and versions.

use super::corpus::fnv1a;

/// Default share of files held out.
pub const DEFAULT_HELD_OUT: f64 = 0.05;

/// Is the file at `path` (relative, `/`-separated) held out at rate `fraction`?
pub fn is_held_out(path: &str, fraction: f64) -> bool {
    bucket(path) < (fraction.clamp(0.0, 1.0) * 10_000.0) as u64
}

fn bucket(path: &str) -> u64 {
    fnv1a(path.as_bytes()) % 10_000
}

/// Splits `paths` into (train, held-out) indices; at least one file is held out (the one with the
/// lowest bucket) and, when there are two or more, at least one is trained on.
pub fn split(paths: &[&str], fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let (mut held, mut train): (Vec<usize>, Vec<usize>) =
        (0..paths.len()).partition(|&i| is_held_out(paths[i], fraction));
    if held.is_empty() {
        if let Some(pos) = (0..train.len()).min_by_key(|&k| bucket(paths[train[k]])) {
            held.push(train.remove(pos));
        }
    }
    if train.is_empty() && held.len() > 1 {
        if let Some(pos) = (0..held.len()).max_by_key(|&k| bucket(paths[held[k]])) {
            train.push(held.remove(pos));
        }
    }
    (train, held)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stable_and_holds_out_about_the_fraction() {
        let paths: Vec<String> = (0..2000).map(|i| format!("src/module_{i}.rs")).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let (train, held) = split(&refs, 0.05);
        assert_eq!(train.len() + held.len(), 2000);
        assert!((60..140).contains(&held.len()), "{}", held.len());
        assert_eq!(split(&refs, 0.05), (train, held.clone()));
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
        let (train, held) = split(&["a.rs", "b.rs"], 0.05);
        assert_eq!((train.len(), held.len()), (1, 1));
        let (train, held) = split(&["only.rs"], 0.05);
        assert_eq!((train.len(), held.len()), (0, 1));
    }
}
