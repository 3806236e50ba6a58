//! `regex` match operations through `regex-lite` (rust-lang's small linear-time engine, RE2-like
//! syntax): this module only anchors the pattern to the whole value, sets the compile limits and
//! bounds the work of one evaluation.
//!
//! Bounds (docs/configuration.md, "regex"):
//! - at load: the pattern is at most `MAX_PATTERN_LEN` bytes, nests at most `NEST_LIMIT` deep and
//!   compiles to at most `SIZE_LIMIT` bytes of program (regex-lite's `size_limit`, which counts
//!   the compiled program's memory: so `((((){1000}){1000}){1000}){1000}` is refused at
//!   once, well under 50 ms, instead of compiling for minutes);
//! - per request: regex-lite's Pike VM costs time linear in value × program, so each pattern gets
//!   a work budget: at load its program size is measured (the smallest `size_limit` that still
//!   compiles it), and a value longer than `WORK_BUDGET / (program size - the empty pattern's)`
//!   bytes (clamped to
//!   `MIN_VALUE_CAP..=MAX_VALUE_CAP`) is not evaluated and does not match. The worst this admits
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
/// Work one evaluation may cost: value bytes × program bytes beyond the empty pattern's (the
/// anchors and the search loop every pattern has; as `size_limit` counts them on this platform).
/// A pattern is evaluated against values up to `WORK_BUDGET / (program size - empty program
/// size)` bytes, clamped to `MIN_VALUE_CAP..=MAX_VALUE_CAP`; a longer value does not match.
/// Calibrated in Envoy (wasm32, BENCHMARKS.md): regex-lite's Pike VM costs up to ~2.8 ns per
/// value byte per such program byte there, so the worst pattern at its cap costs about 1 ms.
/// The CLI (64-bit) counts programs 1.4–1.6 times larger, so its caps are smaller: conservative.
pub const WORK_BUDGET: usize = 400_000;
/// Every pattern is evaluated against values of at least this many bytes.
pub const MIN_VALUE_CAP: usize = 200;
/// No pattern is evaluated against a value longer than this, however small its program.
pub const MAX_VALUE_CAP: usize = 4096;
/// Granularity of the program size measured at load (bytes): the size is rounded up to it.
const SIZE_STEP: usize = 16;

/// A compiled pattern that must match the whole value.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
    /// The compiled program, in bytes as `size_limit` counts them (rounded up to `SIZE_STEP`).
    program_size: usize,
    /// Longest value evaluated (`value_cap`).
    max_value_len: usize,
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
        let anchored = format!(r"\A(?:{source})\z");
        let regex = compile(&anchored, ignore_case)?;
        let program_size = program_size(&anchored, ignore_case);
        let work = program_size.saturating_sub(empty_program_size());
        Ok(Pattern {
            source: source.to_string(),
            regex,
            program_size,
            max_value_len: value_cap(work),
        })
    }

    /// The compiled program's size in bytes as this platform counts it (rounded up to 16).
    pub fn program_size(&self) -> usize {
        self.program_size
    }

    /// The longest value this pattern is evaluated against; a longer one does not match.
    pub fn max_value_len(&self) -> usize {
        self.max_value_len
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole `value` matches. A value longer than `max_value_len()` does not; one that
    /// is not UTF-8 is matched with each invalid sequence read as U+FFFD (as RE2 reads it: no
    /// literal in a pattern matches it, `.` does).
    pub fn is_match(&self, value: &[u8]) -> bool {
        if value.len() > self.max_value_len {
            return false;
        }
        let text = match std::str::from_utf8(value) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(value),
        };
        self.regex.is_match(&text)
    }
}

/// The longest value a program `work` bytes larger than the empty pattern's is evaluated against.
pub fn value_cap(work: usize) -> usize {
    (WORK_BUDGET / work.max(1)).clamp(MIN_VALUE_CAP, MAX_VALUE_CAP)
}

/// The program size of the empty pattern, anchored as every pattern is (once per process).
fn empty_program_size() -> usize {
    static EMPTY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *EMPTY.get_or_init(|| program_size(r"\A(?:)\z", false))
}

/// The smallest multiple of `SIZE_STEP` that `size_limit` can be set to and still compile
/// `pattern` (which compiles at `SIZE_LIMIT`): regex-lite does not expose its program size, and
/// the memory it counts only grows while compiling, so this is a binary search (at most 7
/// compiles, each refused at once past its limit). Only at load.
fn program_size(pattern: &str, ignore_case: bool) -> usize {
    let (mut low, mut high) = (0, SIZE_LIMIT.div_ceil(SIZE_STEP));
    // Invariant: compiles at `high * SIZE_STEP`, not at `low * SIZE_STEP` (or low == 0).
    while low + 1 < high {
        let mid = low + (high - low) / 2;
        if build(pattern, ignore_case, mid * SIZE_STEP).is_ok() {
            high = mid;
        } else {
            low = mid;
        }
    }
    (high * SIZE_STEP).min(SIZE_LIMIT)
}

fn build(pattern: &str, ignore_case: bool, size_limit: usize) -> Result<Regex, regex_lite::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .size_limit(size_limit)
        .nest_limit(NEST_LIMIT)
        .build()
}

fn compile(pattern: &str, ignore_case: bool) -> Result<Regex, String> {
    build(pattern, ignore_case, SIZE_LIMIT)
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
        let cap = p.max_value_len();
        assert_eq!(cap, MAX_VALUE_CAP, "{}", p.program_size());
        assert!(p.is_match(&vec![b'a'; cap]));
        assert!(!p.is_match(&vec![b'a'; cap + 1]));
    }

    #[test]
    fn caps_follow_the_program_size() {
        // Measured: the smallest size_limit (to 16 bytes) that compiles the anchored pattern.
        let empty = empty_program_size();
        assert!(empty > 0 && empty % SIZE_STEP == 0, "{empty}");
        assert!(build(r"\A(?:)\z", false, empty).is_ok());
        assert!(build(r"\A(?:)\z", false, empty - SIZE_STEP).is_err());
        for (pattern, value) in [
            (".*iPhone.*", "iPhone"),
            ("Mozilla.*", "Mozilla/"),
            ("/api/.*", "/api/"),
        ] {
            let p = Pattern::new(pattern, false).unwrap();
            assert_eq!(
                p.max_value_len(),
                value_cap(p.program_size() - empty),
                "{pattern}"
            );
            // A long User-Agent or path with a query meets a small pattern (it met none over
            // 200 bytes with the fixed cap).
            let mut long = value.as_bytes().to_vec();
            long.resize(1024, b'x');
            assert!(p.is_match(&long), "{pattern}: cap {}", p.max_value_len());
        }
        // A 2 KiB value meets a small pattern (a program of a few states beyond the anchors).
        for pattern in [".*iPad", "M.*"] {
            let p = Pattern::new(pattern, false).unwrap();
            let mut value = vec![b'M'; 2044];
            value.extend_from_slice(b"iPad");
            assert!(p.is_match(&value), "{pattern}: cap {}", p.max_value_len());
        }
        // The costliest patterns near the size limit keep a small cap.
        for pattern in [
            ".*[a-z]{1,10}0",
            ".*(?:iPhone|iPad|Android|Mobile).*",
            "(?:a|aa|aaa|aaaa)*[a-z]{1,5}b",
        ] {
            let p = Pattern::new(pattern, false).unwrap();
            assert!(p.max_value_len() <= 500, "{pattern}: {}", p.max_value_len());
            assert!(p.max_value_len() >= MIN_VALUE_CAP);
        }
        assert_eq!(value_cap(SIZE_LIMIT), WORK_BUDGET / SIZE_LIMIT);
        assert_eq!(value_cap(WORK_BUDGET), MIN_VALUE_CAP);
        assert_eq!(value_cap(0), MAX_VALUE_CAP);
        assert_eq!(value_cap(1), MAX_VALUE_CAP);
    }

    #[test]
    fn program_size_is_measured_quickly() {
        let start = std::time::Instant::now();
        for _ in 0..100 {
            Pattern::new("(?:a|aa|aaa|aaaa)*[a-z]{1,5}b", false).unwrap();
        }
        let took = start.elapsed();
        eprintln!("100 patterns compiled and measured: {took:?}");
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
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
        let mut value = vec![b'a'; MIN_VALUE_CAP - 1];
        value.push(b'!');
        let start = std::time::Instant::now();
        assert!(!p.is_match(&value));
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
    }
}
