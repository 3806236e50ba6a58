//! The parser against serde_json (what it replaces): same acceptance, same value tree, same
//! error message, line and column, on the fuzz corpus, the repository's JSON and a few
//! thousand generated and mutated inputs.

use super::{parse, pow10, Number, Value};
use serde_json::Value as J;
use std::collections::BTreeMap;
use std::path::Path;

/// The same value: numbers by what the decoder reads of them (`as_u64`, `as_f64` to the bit),
/// objects by their last value per key, as serde_json's map keeps.
fn same(ours: &Value, theirs: &J) -> bool {
    match (ours, theirs) {
        (Value::Null, J::Null) => true,
        (Value::Bool(a), J::Bool(b)) => a == b,
        (Value::Number(a), J::Number(b)) => {
            a.as_u64() == b.as_u64() && a.as_f64().map(f64::to_bits) == b.as_f64().map(f64::to_bits)
        }
        (Value::String(a), J::String(b)) => a == b,
        (Value::Array(a), J::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), J::Object(b)) => {
            let last: BTreeMap<&str, &Value> = a.iter().map(|(k, v)| (k.as_str(), v)).collect();
            last.len() == b.len()
                && last
                    .iter()
                    .zip(b)
                    .all(|((k, v), (l, w))| k == l && same(v, w))
        }
        _ => false,
    }
}

/// Parses `input` with both; panics on any difference. Returns whether it was accepted.
fn check(input: &[u8]) -> bool {
    let theirs = serde_json::from_slice::<J>(input);
    match (parse(input), theirs) {
        (Ok(ours), Ok(theirs)) => {
            assert!(
                same(&ours, &theirs),
                "different values for {:?}",
                String::from_utf8_lossy(input)
            );
            true
        }
        (Err(ours), Err(theirs)) => {
            assert_eq!(
                ours.reason,
                format!("invalid JSON: {theirs}"),
                "for {:?}",
                String::from_utf8_lossy(input)
            );
            assert!(ours.path.is_empty());
            false
        }
        (ours, theirs) => panic!(
            "{:?}: ours {}, serde_json {}",
            String::from_utf8_lossy(input),
            ours.map_or_else(|e| e.reason, |_| "accepts".into()),
            theirs.map_or_else(|e| e.to_string(), |_| "accepts".into()),
        ),
    }
}

/// Deterministic inputs (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The config_bytes fuzz corpus, the repository's JSON files and the JSON examples of the docs.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let dir = root().join("fuzz/corpus/config_bytes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        seeds.push(std::fs::read(file).unwrap());
    }
    assert!(seeds.len() > 1000, "the corpus is in {}", dir.display());
    for file in [
        "schema/traffic-split.schema.json",
        "schemas/compose-spec.json",
        "bench/envoy/filter.json",
        "bench/envoy/filter-sticky.json",
    ] {
        seeds.push(std::fs::read(root().join(file)).unwrap());
    }
    for doc in ["docs/configuration.md", "README.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for block in text.split("```json\n").skip(1) {
            let body = block.split("```").next().unwrap();
            seeds.push(body.as_bytes().to_vec());
            // The fragments (`"rollout": {...}`) as an object's content.
            seeds.push(format!("{{{body}}}").into_bytes());
        }
    }
    seeds
}

#[test]
fn same_as_serde_json_on_the_corpus_and_the_repository_json() {
    let seeds = seeds();
    let accepted = seeds.iter().filter(|s| check(s)).count();
    // Both kinds are there: valid configurations and the fuzzer's broken ones.
    assert!(accepted > 100 && accepted < seeds.len() - 100, "{accepted}");
}

#[test]
fn same_as_serde_json_on_truncated_and_mutated_inputs() {
    let seeds = seeds();
    let valid: Vec<&Vec<u8>> = seeds
        .iter()
        .filter(|s| s.len() < 2000 && serde_json::from_slice::<J>(s).is_ok())
        .collect();
    let mut rng = Rng(1);
    // Every truncation of a few valid configurations, of all sizes.
    for _ in 0..12 {
        let s = rng.pick(&valid);
        for n in 0..s.len() {
            check(&s[..n]);
        }
    }
    // Substitutions, insertions and deletions of bytes that matter to the grammar.
    let bytes = b"{}[],:\"\\/ \t\n\r0123456789-+.eEtrufalsn\x00\x1f\x7f\xc3\xa9\xff\xed\xa0";
    for _ in 0..20_000 {
        let mut s = rng.pick(&valid).to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(s.len() + 1);
            let b = *rng.pick(bytes);
            match rng.below(3) {
                0 if at < s.len() => s[at] = b,
                1 if at < s.len() => {
                    s.remove(at);
                }
                _ => s.insert(at, b),
            }
        }
        check(&s);
    }
}

/// Random sequences of JSON fragments, valid and not: escapes and surrogates, numbers at
/// the edges of u64, i32 exponents and f64, nesting, stray bytes.
#[test]
fn same_as_serde_json_on_generated_inputs() {
    let fragments: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\n",
        "\t",
        "\r",
        "\"",
        "\"k\"",
        "\"a\":",
        "true",
        "false",
        "null",
        "tru",
        "nul",
        "fals",
        "\\",
        "\\n",
        "\\u",
        "\\u00e9",
        "\\u0000",
        "\\ud83d",
        "\\ude00",
        "\\uD83D\\uDE00",
        "\\ud800\\u0041",
        "\\uzzzz",
        "\\x",
        "\\/",
        "0",
        "-",
        "-0",
        "01",
        "1",
        "9",
        ".",
        ".5",
        "e",
        "E",
        "+",
        "e-",
        "1e5",
        "1E+2",
        "1e-7",
        "0.1",
        "100",
        "2.5",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "1e308",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1e309",
        "1e-400",
        "4.9e-324",
        "2.4e-324",
        "1e2147483647",
        "1e2147483648",
        "0e99999999999",
        "1e-99999999999",
        "1.0000000000000002",
        "0.30000000000000004",
        "9007199254740993",
        "NaN",
        "Infinity",
        "\u{e9}",
        "\u{1F600}",
        "\x01",
        "\x7f",
        "x",
        "//",
        "/*",
        "\u{feff}",
    ];
    let mut rng = Rng(2);
    let mut accepted = 0;
    for _ in 0..30_000 {
        let mut s = String::new();
        for _ in 0..1 + rng.below(12) {
            s.push_str(rng.pick::<&str>(fragments));
        }
        let mut bytes = s.into_bytes();
        // Invalid UTF-8 inside and outside strings.
        if rng.below(20) == 0 {
            let at = rng.below(bytes.len() + 1);
            bytes.insert(at, *rng.pick(&[0x80, 0xc3, 0xed, 0xf8, 0xff]));
        }
        accepted += usize::from(check(&bytes));
        // The same wrapped into a value: strings, arrays, objects.
        let wrapped = [
            [b"\"".as_slice(), &bytes, b"\""].concat(),
            [b"[".as_slice(), &bytes, b"]"].concat(),
            [b"{\"k\":".as_slice(), &bytes, b"}"].concat(),
        ];
        for w in &wrapped {
            accepted += usize::from(check(w));
        }
    }
    assert!(accepted > 5_000, "{accepted}");
}

/// Numbers as the decoder reads them (`as_u64`, `as_f64`): the shares (0..=100, 0..=1) with
/// up to 4 decimals all, with 5 and 6 a sample, then random ones of every shape.
#[test]
fn numbers_read_as_serde_json_reads_them() {
    let num = |text: &str| {
        let Ok(Value::Number(n)) = parse(text.as_bytes()) else {
            panic!("{text}: not a number");
        };
        let Ok(J::Number(m)) = serde_json::from_str::<J>(text) else {
            panic!("{text}: not a number for serde_json");
        };
        assert_eq!(n.as_u64(), m.as_u64(), "{text}");
        assert_eq!(
            n.as_f64().map(f64::to_bits),
            m.as_f64().map(f64::to_bits),
            "{text}"
        );
        assert_eq!(n.to_string(), text, "shown as written");
    };
    for i in 0..=1_000_000u32 {
        num(&format!("{}.{:04}", i / 10_000, i % 10_000));
    }
    let mut rng = Rng(3);
    for _ in 0..100_000 {
        let digits = 5 + rng.below(2);
        let scale = 10u64.pow(digits as u32);
        let v = rng.next() % (100 * scale + 1);
        num(&format!("{}.{:0w$}", v / scale, v % scale, w = digits));
    }
    for _ in 0..100_000 {
        let mut s = String::new();
        if rng.below(4) == 0 {
            s.push('-');
        }
        let int = rng.next() >> rng.below(64);
        s.push_str(&int.to_string());
        if rng.below(3) == 0 {
            // Up to 30 digits, past u64: the digits serde_json keeps or drops.
            for _ in 0..rng.below(30) {
                s.push(char::from(b'0' + rng.below(10) as u8));
            }
        }
        if rng.below(2) == 0 {
            s.push('.');
            for _ in 0..1 + rng.below(25) {
                s.push(char::from(b'0' + rng.below(10) as u8));
            }
        }
        if rng.below(2) == 0 {
            s.push_str(rng.pick::<&str>(&["e", "E", "e+", "e-", "E-"]));
            s.push_str(&rng.below(400).to_string());
        }
        // Out of range is an error for both (checked by `check`); the rest reads the same.
        if check(s.as_bytes()) {
            num(&s);
        }
    }
}

/// Run by hand (`cargo test --release --lib -- --ignored every_share`): all 100,000,001
/// numbers with 6 decimals from 0 to 100.
#[test]
#[ignore]
fn every_share_with_six_decimals_reads_as_serde_json() {
    for i in 0..=100_000_000u32 {
        let text = format!("{}.{:06}", i / 1_000_000, i % 1_000_000);
        let ours = Number(text.clone()).as_f64().unwrap();
        let theirs = serde_json::from_str::<f64>(&text).unwrap();
        assert_eq!(ours.to_bits(), theirs.to_bits(), "{text}");
    }
}

#[test]
fn powers_of_ten_are_the_literals() {
    for e in 0..=308 {
        let literal: f64 = format!("1e{e}").parse().unwrap();
        assert_eq!(pow10(e).to_bits(), literal.to_bits(), "1e{e}");
    }
}

#[test]
fn nesting_stops_at_serde_jsons_limit_without_overflowing_the_stack() {
    for open in ["[", "{\"a\":", "[{\"a\":"] {
        let deep = open.repeat(100_000);
        assert!(!check(deep.as_bytes()));
        let err = parse(deep.as_bytes()).err().unwrap().reason;
        assert!(err.contains("recursion limit exceeded"), "{err}");
    }
    // 127 levels are fine, 128 are not.
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert!(check(nested(127).as_bytes()));
    assert_eq!(
        parse(nested(128).as_bytes()).err().unwrap().reason,
        "invalid JSON: recursion limit exceeded at line 1 column 128"
    );
}

#[test]
fn a_duplicated_key_counts_once_with_its_last_value() {
    let top = |json: &str| crate::config::parse(json.as_bytes());
    assert!(check(br#"{"a": 1, "b": 2, "a": 3}"#));
    assert!(
        top(r#"{"debug_header": false, "debug_header": true}"#)
            .unwrap()
            .debug_header
    );
    // The last one is null: absent, the default.
    let c = top(r#"{"max_in_flight": 5, "max_in_flight": null}"#).unwrap();
    assert_eq!(c.max_in_flight, crate::config::DEFAULT_MAX_IN_FLIGHT);
    // Of several unknown fields, the first in byte order is named, as from serde_json's map.
    assert_eq!(
        top(r#"{"zeta": 1, "rules": [], "alpha": 2}"#)
            .unwrap_err()
            .path,
        "alpha"
    );
}

#[test]
fn whitespace_and_byte_order_marks_as_serde_json() {
    for input in [
        " \t\r\n{} \n",
        "\u{feff}{}",
        "{}\u{feff}",
        "\x0c{}",
        "{}\x0c",
        "{\u{a0}}",
        "",
        "   ",
        "\n\n  x",
        "{\n\"a\" :\n\t[1,\r\n 2 ,]}",
    ] {
        check(input.as_bytes());
    }
    assert_eq!(
        parse("\u{feff}{}".as_bytes()).err().unwrap().reason,
        "invalid JSON: expected value at line 1 column 1"
    );
}

#[test]
fn error_messages_of_every_kind() {
    for (input, message) in [
        ("{", "EOF while parsing an object at line 1 column 1"),
        (r#"{"rules": [}"#, "expected value at line 1 column 12"),
        ("{} x", "trailing characters at line 1 column 4"),
        ("[1", "EOF while parsing a list at line 1 column 2"),
        ("\"ab", "EOF while parsing a string at line 1 column 3"),
        ("[1,", "EOF while parsing a value at line 1 column 3"),
        (r#"{"a" 1}"#, "expected `:` at line 1 column 6"),
        (r#"{"a":1 "b":2}"#, "expected `,` or `}` at line 1 column 8"),
        ("[1 2]", "expected `,` or `]` at line 1 column 4"),
        ("{1:2}", "key must be a string at line 1 column 2"),
        ("[01]", "invalid number at line 1 column 3"),
        ("1e400", "number out of range at line 1 column 5"),
        (r#""\q""#, "invalid escape at line 1 column 3"),
        (
            "\"a\x01\"",
            "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 3",
        ),
        ("\"\u{e9}\u{e9}\"", "not an error"),
        (
            "\"\\udc00\"",
            "lone leading surrogate in hex escape at line 1 column 7",
        ),
        (
            "\"\\ud800x\"",
            "unexpected end of hex escape at line 1 column 8",
        ),
        ("[1,]", "trailing comma at line 1 column 4"),
        (r#"{"a":1,}"#, "trailing comma at line 1 column 8"),
        ("tru", "EOF while parsing a value at line 1 column 3"),
        ("trux", "expected ident at line 1 column 4"),
        ("\n\n  [1,\n x]", "expected value at line 4 column 2"),
    ] {
        check(input.as_bytes());
        if message != "not an error" {
            let err = parse(input.as_bytes()).err().unwrap();
            assert_eq!(err.reason, format!("invalid JSON: {message}"));
        }
    }
    // Invalid UTF-8 in a string: serde_json's column counts back from the closing quote.
    let bad = b"{\"a\": \"x\xff\xfey\"}";
    assert!(!check(bad));
    assert_eq!(
        parse(bad).err().unwrap().reason,
        "invalid JSON: invalid unicode code point at line 1 column 9"
    );
}
