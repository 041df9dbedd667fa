//! Completion metrics, each a small pure function tested on known values.

use crate::rng::Rng;

/// Levenshtein distance in characters (insert, delete, substitute all cost 1).
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// 1 - normalised Levenshtein distance: 1 for equal strings, 0 for nothing in common.
pub fn edit_similarity(prediction: &str, reference: &str) -> f64 {
    let longest = prediction.chars().count().max(reference.chars().count());
    if longest == 0 {
        return 1.0;
    }
    1.0 - levenshtein(prediction, reference) as f64 / longest as f64
}

/// Equal, ignoring trailing whitespace.
pub fn exact_match(prediction: &str, reference: &str) -> bool {
    prediction.trim_end() == reference.trim_end()
}

/// The first lines are equal (ignoring trailing whitespace).
pub fn first_line_match(prediction: &str, reference: &str) -> bool {
    let first = |s: &str| {
        s.split('\n')
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_string()
    };
    first(prediction) == first(reference)
}

/// A reference that is only brackets and punctuation (`}`, `);`): excluded from one exact-match
/// figure, because predicting it says little.
pub fn is_punctuation_only(reference: &str) -> bool {
    !reference.chars().any(char::is_alphanumeric)
}

/// Characters of the prediction that match the reference before the first difference: what a user
/// would keep accepting word by word.
pub fn accepted_chars(prediction: &str, reference: &str) -> usize {
    prediction
        .chars()
        .zip(reference.chars())
        .take_while(|(a, b)| a == b)
        .count()
}

/// The `q` quantile (0..=1) of `values`, by nearest rank; 0 for none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Mean of the paired differences `a - b` with a seeded bootstrap 95% interval (resampling tasks).
pub fn bootstrap_difference(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> (f64, f64, f64) {
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = diffs.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let mut rng = Rng::new(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            (0..n)
                .map(|_| diffs[(rng.next_u64() % n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    (
        mean(&diffs),
        quantile(&means, 0.025),
        quantile(&means, 0.975),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_on_known_pairs() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("flaw", "lawn"), 2);
        assert_eq!(levenshtein("héllo", "hello"), 1, "characters, not bytes");
        assert_eq!(levenshtein("same", "same"), 0);
    }

    #[test]
    fn similarity_match_and_acceptance_on_known_values() {
        assert!((edit_similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-12);
        assert_eq!(edit_similarity("", ""), 1.0);
        assert_eq!(edit_similarity("", "abc"), 0.0);
        assert!(exact_match("x + 1  \n", "x + 1"));
        assert!(!exact_match("x + 2", "x + 1"));
        assert!(first_line_match("a\nb", "a\nc"));
        assert!(is_punctuation_only(" });") && !is_punctuation_only("x)"));
        assert_eq!(accepted_chars("foo(bar)", "foo(baz)"), 6);
        assert_eq!(quantile(&[5.0, 1.0, 3.0, 2.0, 4.0], 0.5), 3.0);
        assert_eq!(quantile(&[5.0, 1.0, 3.0, 2.0, 4.0], 0.95), 5.0);
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let a = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        let b = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let (m, lo, hi) = bootstrap_difference(&a, &b, 2000, 42);
        assert!((m - 0.375).abs() < 1e-12);
        assert!(lo <= m && m <= hi && lo >= 0.0 && hi <= 1.0);
        assert_eq!(bootstrap_difference(&a, &b, 2000, 42), (m, lo, hi));
        // Reference: the same SplitMix64 resampling written in Python (20 lines, kept out of the
        // repo; the algorithm is `bootstrap_difference` verbatim) gives 0.125 and 0.75 for seed 42.
        assert!(
            (lo - 0.125).abs() < 1e-12 && (hi - 0.75).abs() < 1e-12,
            "{lo} {hi}"
        );
    }
}
