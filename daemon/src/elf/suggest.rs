//! "Did you mean …" suggestions for a symbol name that was not found.

/// Up to `n` of `candidates` that look like `query`, best first, without duplicates.
///
/// Ranking, ignoring ASCII case: an exact match; then names containing the query or
/// contained in it (`read` → `readline`), closest length first; then names within a small
/// edit distance (a third of the query's length, at least 2), closest first. Anything else is
/// not suggested: a list of unrelated names helps nobody.
pub fn closest<'a>(
    query: &str,
    candidates: impl Iterator<Item = &'a str>,
    n: usize,
) -> Vec<String> {
    let q = query.to_ascii_lowercase();
    let max_edits = (q.chars().count() / 3).max(2);
    let mut scored: Vec<((u8, usize), &str)> = candidates
        .filter_map(|cand| score(&q, cand, max_edits).map(|s| (s, cand)))
        .collect();
    scored.sort_unstable();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(n)
        .map(|(_, name)| name.to_owned())
        .collect()
}

/// `(tier, distance)` of `cand` against the lowercased query, or `None` if it is too far.
fn score(q: &str, cand: &str, max_edits: usize) -> Option<(u8, usize)> {
    if cand.is_empty() {
        return None;
    }
    let c = cand.to_ascii_lowercase();
    if c == q {
        return Some((0, 0));
    }
    let len_diff = c.len().abs_diff(q.len());
    // Substrings shorter than 3 characters match almost anything.
    if (q.len() >= 3 && c.contains(q)) || (c.len() >= 3 && q.contains(&c)) {
        return Some((1, len_diff));
    }
    if len_diff > max_edits {
        return None;
    }
    // Edit distance (insertions, deletions, substitutions) by characters.
    let d = strsim::levenshtein(q, &c);
    (d <= max_edits).then_some((2, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Edit distance counts insertions, deletions and substitutions, by characters.
    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(strsim::levenshtein("kitten", "sitting"), 3);
        assert_eq!(strsim::levenshtein("", "abc"), 3);
        assert_eq!(strsim::levenshtein("same", "same"), 0);
        assert_eq!(strsim::levenshtein("readlin", "readline"), 1);
        assert_eq!(strsim::levenshtein("naïve", "naive"), 1);
    }

    /// Typos and substrings are suggested in rank order; unrelated names are not.
    #[test]
    fn ranks_typos_and_substrings() {
        let names = [
            "readline",
            "rl_readline_state",
            "readlin",
            "write",
            "main",
            "readline",
        ];
        let got = closest("readlien", names.iter().copied(), 5);
        assert_eq!(got, vec!["readlin", "readline"]);
        let got = closest("readline", names.iter().copied(), 5);
        assert_eq!(got, vec!["readline", "readlin", "rl_readline_state"]);
        assert!(closest("zzzzzz", names.iter().copied(), 5).is_empty());
        assert_eq!(closest("MAIN", names.iter().copied(), 1), vec!["main"]);
    }
}
