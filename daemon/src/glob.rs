//! Shell-style wildcards for SPEC function parts and `probed list` patterns: `*` (any run of
//! characters, `::` and `/` included — a symbol name has no path structure), `?` (one
//! character), `[abc]`, `[a-z]`, `[!abc]` / `[^abc]` (one character of / not of a set).
//!
//! Hand-written rather than the `glob`/`globset` crates: those match file paths (`*` stops at
//! `/`, patterns are compiled to regexes), while symbol names need none of that, and a
//! linear-time matcher over chars is a few dozen lines.

/// Why a pattern is not a valid glob.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GlobError {
    /// A `[` without its `]`.
    #[error("unclosed `[` in pattern `{0}`")]
    Unclosed(String),
}

/// One element of a compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled glob.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
}

/// True when `text` holds a wildcard character, i.e. is a pattern rather than a name.
pub fn is_pattern(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    // `**` is `*`: collapsing keeps the matcher's backtracking to one star.
                    if tokens.last() != Some(&Token::AnyRun) {
                        tokens.push(Token::AnyRun);
                    }
                }
                '?' => tokens.push(Token::AnyOne),
                '[' => {
                    let negated = chars.next_if(|&c| c == '!' || c == '^').is_some();
                    let mut ranges = Vec::new();
                    // A `]` first in the set is a literal, as in the shell.
                    let mut first = true;
                    loop {
                        let Some(c) = chars.next() else {
                            return Err(GlobError::Unclosed(pattern.into()));
                        };
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        let hi = if chars.peek() == Some(&'-') {
                            let mut ahead = chars.clone();
                            ahead.next();
                            match ahead.peek() {
                                Some(&hi) if hi != ']' => {
                                    chars.next();
                                    chars.next();
                                    hi
                                }
                                _ => c,
                            }
                        } else {
                            c
                        };
                        ranges.push((c, hi));
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                other => tokens.push(Token::Literal(other)),
            }
        }
        Ok(Self {
            text: pattern.into(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the whole of `name` matches.
    ///
    /// Iterative with one backtrack point (the last `*`): O(len(name) × len(pattern)) at
    /// worst, never exponential (a pattern like `*a*a*a*b` on a long name stays linear-ish).
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let (mut p, mut n) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                Some(tok) if one(tok, name[n]) => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::AnyRun)
    }
}

/// Whether a single-character token matches `c`.
fn one(tok: &Token, c: char) -> bool {
    match tok {
        Token::Literal(l) => *l == c,
        Token::AnyOne => true,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
        Token::AnyRun => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).unwrap().matches(name)
    }

    /// `*` matches any run (empty too, `::` too), `?` exactly one character.
    #[test]
    fn stars_and_questions() {
        assert!(m("read*", "read"));
        assert!(m("read*", "readline"));
        assert!(!m("read*", "xread"));
        assert!(m("*line", "readline"));
        assert!(m("ns::Widget::*", "ns::Widget::poke(int)"));
        assert!(!m("ns::Widget::*", "ns::Gadget::poke(int)"));
        assert!(m("chain_?", "chain_a"));
        assert!(!m("chain_?", "chain_ab"));
        assert!(!m("chain_?", "chain_"));
        assert!(m("*", ""));
        assert!(m("a**b", "axxb"));
        assert!(m("*a*a*b", "aaaaaaaaaaaaaaaaaaaaab"));
        assert!(!m("*a*a*b", "aaaaaaaaaaaaaaaaaaaaaa"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
    }

    /// Sets: members, ranges, negation with `!` or `^`, a leading `]` and a trailing `-` as
    /// literals; an unclosed set is an error.
    #[test]
    fn classes() {
        assert!(m("chain_[abc]", "chain_b"));
        assert!(!m("chain_[abc]", "chain_d"));
        assert!(m("f[0-9]", "f7"));
        assert!(!m("f[0-9]", "fx"));
        assert!(m("f[!0-9]", "fx"));
        assert!(m("f[^0-9]", "fx"));
        assert!(!m("f[!0-9]", "f1"));
        assert!(m("f[]]", "f]"));
        assert!(m("f[a-]", "f-"));
        assert_eq!(
            Glob::new("f[ab").unwrap_err(),
            GlobError::Unclosed("f[ab".into())
        );
    }

    /// Only `*`, `?` and `[` make a pattern.
    #[test]
    fn pattern_detection() {
        assert!(is_pattern("read*"));
        assert!(is_pattern("f?"));
        assert!(is_pattern("f[ab]"));
        assert!(!is_pattern("ns::Widget::poke"));
        assert!(!is_pattern("malloc@@GLIBC_2.2.5"));
    }
}
