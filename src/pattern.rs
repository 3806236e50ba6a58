//! `regex` match operations through `regex-lite` (rust-lang's small linear-time engine, RE2-like
//! syntax): this module only anchors the pattern to the whole value, sets the compile limits and
//! bounds the work of one evaluation.
//!
//! Bounds (docs/configuration.md, "regex"):
//! - at load: the pattern is at most `MAX_PATTERN_LEN` bytes, nests at most `NEST_LIMIT` deep and
//!   compiles to at most `SIZE_LIMIT` bytes of program (regex-lite's `size_limit`, which counts
//!   the compiled program's memory: so `((((){1000}){1000}){1000}){1000}` is refused at
//!   once, well under 50 ms, instead of compiling for minutes);
//! - per request: regex-lite's Pike VM costs time linear in value × program, so a value longer
//!   than `MAX_VALUE_LEN` bytes is not evaluated and does not match. The worst the two admit
//!   (measured in Envoy, BENCHMARKS.md) is about 1 ms per evaluation.

use regex_lite::{Regex, RegexBuilder};
use std::borrow::Cow;

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Compiled program size limit, in bytes as regex-lite counts them (its `size_limit`). The
/// count depends on the platform's pointer width: the CLI (64-bit) counts a program 1.3–1.6
/// times larger than the filter in Envoy (wasm32) does, so `validate` never accepts a pattern
/// the filter refuses (but may refuse one near the limit that the filter would take).
pub const SIZE_LIMIT: usize = 1280;
/// Nesting limit of groups and repetitions (regex-lite's `nest_limit`).
pub const NEST_LIMIT: u32 = 32;
/// Longest value a pattern is evaluated against, in bytes; a longer value does not match.
pub const MAX_VALUE_LEN: usize = 200;

/// A compiled pattern that must match the whole value.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Pattern {
    /// `ignore_case`: ASCII letters match either case (for host names).
    pub fn new(source: &str, ignore_case: bool) -> Result<Pattern, String> {
        if source.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "must be at most {MAX_PATTERN_LEN} bytes, got {}",
                source.len()
            ));
        }
        // The pattern alone first: only a pattern whose groups balance may be wrapped (`a)|(b`
        // would otherwise escape the anchors).
        compile(source, ignore_case)?;
        let regex = compile(&format!(r"\A(?:{source})\z"), ignore_case)?;
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole `value` matches. A value longer than `MAX_VALUE_LEN` does not; one that
    /// is not UTF-8 is matched with each invalid sequence read as U+FFFD (as RE2 reads it: no
    /// literal in a pattern matches it, `.` does).
    pub fn is_match(&self, value: &[u8]) -> bool {
        if value.len() > MAX_VALUE_LEN {
            return false;
        }
        let text = match std::str::from_utf8(value) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(value),
        };
        self.regex.is_match(&text)
    }
}

fn compile(pattern: &str, ignore_case: bool) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .size_limit(SIZE_LIMIT)
        .nest_limit(NEST_LIMIT)
        .build()
        .map_err(|e| {
            let why = e.to_string();
            if why.contains("size limit") {
                format!("compiles to more than {SIZE_LIMIT} bytes (the regex size limit): use a simpler pattern")
            } else {
                why
            }
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn matches(pattern: &str, value: &str) -> bool {
        Pattern::new(pattern, false)
            .unwrap()
            .is_match(value.as_bytes())
    }

    #[test]
    fn whole_values_match() {
        let p = Pattern::new(r"v[0-9]+\.(beta|rc)", false).unwrap();
        assert!(p.is_match(b"v12.beta"));
        assert!(!p.is_match(b"xv12.beta"), "anchored at the start");
        assert!(!p.is_match(b"v12.beta2"), "anchored at the end");
        assert!(!p.is_match(b"v1\xff.beta"));
        let p = Pattern::new(r"shop\.example", true).unwrap();
        assert!(p.is_match(b"Shop.EXAMPLE"));
        assert!(matches("^/api/.*$", "/api/x"));
        assert!(matches("", ""));
        assert!(matches("a{2,3}", "aaa"));
        assert!(!matches("a{2,3}", "aaaa"));
    }

    #[test]
    fn alternation_is_anchored_as_a_whole() {
        assert!(matches("a|b", "b"));
        assert!(!matches("a|b", "ab"));
        assert!(!matches("a|b", "ba"));
        assert!(matches("pro|team-[0-9]+", "team-7"));
        assert!(!matches("pro|team-[0-9]+", "professional"));
    }

    #[test]
    fn anchors_inside_the_pattern() {
        assert!(matches("^abc$", "abc"));
        assert!(
            !matches("^abc$", "abc\n"),
            "$ is the end of the value, not of a line"
        );
        assert!(!matches("a^b", "ab"));
        assert!(matches(r"\Aab\z", "ab"));
        // A group that would close the anchors' group is an error, not an escape from them.
        assert_eq!(
            Pattern::new("a)|(b", false).unwrap_err(),
            "found closing ')' without matching '('"
        );
    }

    #[test]
    fn posix_classes_as_re2() {
        // Was a class of `[:alph` and a literal `]` in the own engine.
        assert!(matches("/[[:alpha:]]+", "/abc"));
        assert!(!matches("/[[:alpha:]]+", "/ab1"));
        assert!(matches("[[:digit:][:upper:]]+", "A1B2"));
        assert!(matches("[[:^space:]]+", "a-b"));
        assert_eq!(
            Pattern::new("[[:alphabet:]]", false).unwrap_err(),
            "nested character classes are not supported"
        );
    }

    #[test]
    fn perl_classes() {
        assert!(matches(r"a\sb", "a b"));
        assert!(matches(r"a\sb", "a\tb"));
        assert!(matches(r"\d+\w*", "12ab_"));
        assert!(!matches(r"\S+", "a b"));
        // regex-lite's \s is [\t\n\v\f\r ] (as Rust's regex and Perl), RE2's has no \v: a
        // documented difference (docs/configuration.md); write [\t\n\f\r ] for RE2's.
        assert!(matches(r"\s", "\x0b"));
        assert!(!matches(r"[\t\n\f\r ]", "\x0b"));
    }

    #[test]
    fn unsupported_syntax_is_an_error() {
        assert_eq!(
            Pattern::new(r"(a)\1", false).unwrap_err(),
            "backreferences are not supported"
        );
        assert_eq!(
            Pattern::new("a(?=b)", false).unwrap_err(),
            "look-around is not supported"
        );
        assert_eq!(
            Pattern::new("(unclosed", false).unwrap_err(),
            "found open group without closing ')'"
        );
        assert_eq!(
            Pattern::new(&"a".repeat(1025), false).unwrap_err(),
            "must be at most 1024 bytes, got 1025"
        );
        assert_eq!(
            Pattern::new(&"(".repeat(40), false).unwrap_err(),
            "pattern has too much nesting"
        );
    }

    #[test]
    fn the_hang_pattern_is_refused_at_once() {
        for pattern in [
            "((((){1000}){1000}){1000}){1000}",
            "(?:(?:(?:(?:){1000}){1000}){1000}){1000}",
            ".*[a-z]{1,1000}0",
            "x{1000}{1000}",
        ] {
            let start = std::time::Instant::now();
            let err = Pattern::new(pattern, false).unwrap_err();
            assert_eq!(
                err,
                format!("compiles to more than {SIZE_LIMIT} bytes (the regex size limit): use a simpler pattern"),
                "{pattern}"
            );
            let took = start.elapsed();
            assert!(
                took < std::time::Duration::from_millis(50),
                "{pattern}: {took:?}"
            );
        }
    }

    #[test]
    fn long_values_do_not_match() {
        let p = Pattern::new(".*", false).unwrap();
        assert!(p.is_match(&[b'a'; MAX_VALUE_LEN]));
        assert!(!p.is_match(&[b'a'; MAX_VALUE_LEN + 1]));
    }

    #[test]
    fn non_utf8_values() {
        // Each invalid sequence reads as U+FFFD: `.` matches it, no literal does.
        assert!(Pattern::new("a.b", false).unwrap().is_match(b"a\xffb"));
        assert!(!Pattern::new("a[a-z]b", false).unwrap().is_match(b"a\xffb"));
        assert!(Pattern::new("caf.", false)
            .unwrap()
            .is_match("café".as_bytes()));
    }

    #[test]
    fn pathological_patterns_stay_linear() {
        // Exponential for a backtracking engine: (a+)+$ against "aaaa...!".
        let p = Pattern::new("(a+)+", false).unwrap();
        let mut value = vec![b'a'; MAX_VALUE_LEN - 1];
        value.push(b'!');
        let start = std::time::Instant::now();
        assert!(!p.is_match(&value));
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
    }
}
