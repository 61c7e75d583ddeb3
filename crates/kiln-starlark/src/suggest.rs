//! "Did you mean" suggestions.

/// The candidates closest to `name` by edit distance (a transposition counts
/// as one edit), best first, at most `limit`; names too far away to be a
/// plausible typo are left out.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Vec<String> {
    let max = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= max)
        .collect();
    scored.sort();
    scored.dedup();
    scored
        .into_iter()
        .take(limit)
        .map(|(_, c)| c.to_owned())
        .collect()
}

/// Optimal string alignment distance: Levenshtein plus adjacent swaps.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, cell) in d.iter_mut().step_by(width).enumerate() {
        *cell = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("build", "build"), 0);
        assert_eq!(distance("biuld", "build"), 1);
        assert_eq!(distance("buil", "build"), 1);
        assert_eq!(distance("test", "build"), 5);
        assert_eq!(distance("", "ab"), 2);
    }

    #[test]
    fn closest_first_and_limited() {
        let names = ["build", "builds", "built", "test", "lint", "ci"];
        assert_eq!(closest("biuld", names, 3), vec!["build", "builds", "built"]);
        assert_eq!(closest("tset", names, 3), vec!["test"]);
        assert!(closest("deploy", names, 3).is_empty());
    }
}
