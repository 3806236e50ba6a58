//! JSON text to a `Value`: a small strict (RFC 8259) reader in place of serde_json, which with
//! its map, float tables and formatting cost the `.wasm` 21.6 KB more. It follows serde_json's
//! `from_slice` (1.0, default features) step for step, so that it accepts and rejects the same
//! inputs, with the same error message, line and column, and reads numbers to the same u64 and
//! f64; `tests` checks this against serde_json itself. One difference: a number shows in error
//! messages as written (`1E2`), where serde_json re-formats it (`100.0`).

use super::ConfigError;
use std::fmt;

type Result<T> = std::result::Result<T, ConfigError>;

pub(super) enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    /// In document order, duplicates kept: a lookup takes the last one, as serde_json's map does.
    Object(Vec<(String, Value)>),
}

impl Value {
    pub(super) fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// A number as written: its value is read on demand, by the same code that checked it.
pub(super) struct Number(String);

impl Number {
    /// Some for a non-negative integer without fraction or exponent that fits, as serde_json's.
    pub(super) fn as_u64(&self) -> Option<u64> {
        self.read().and_then(|(u, _)| u)
    }

    pub(super) fn as_f64(&self) -> Option<f64> {
        self.read().map(|(_, f)| f)
    }

    fn read(&self) -> Option<(Option<u64>, f64)> {
        Parser::new(self.0.as_bytes()).number().ok()
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses one JSON value, surrounded by whitespace only. Errors read
/// `invalid JSON: <what> at line L column C`, serde_json's words and position.
pub(super) fn parse(bytes: &[u8]) -> Result<Value> {
    let mut p = Parser::new(bytes);
    let value = p.value()?;
    match p.ws() {
        Some(_) => Err(p.fail(TRAILING_CHARACTERS, p.i + 1)),
        None => Ok(value),
    }
}

const EOF_LIST: &str = "EOF while parsing a list";
const EOF_OBJECT: &str = "EOF while parsing an object";
const EOF_STRING: &str = "EOF while parsing a string";
const EOF_VALUE: &str = "EOF while parsing a value";
const EXPECTED_VALUE: &str = "expected value";
const INVALID_NUMBER: &str = "invalid number";
const INVALID_ESCAPE: &str = "invalid escape";
const LONE_SURROGATE: &str = "lone leading surrogate in hex escape";
const NUMBER_OUT_OF_RANGE: &str = "number out of range";
const TRAILING_CHARACTERS: &str = "trailing characters";
const TRAILING_COMMA: &str = "trailing comma";

/// serde_json's nesting limit: arrays and objects nest at most 127 deep, so the recursion
/// below (one `value` frame per level) stays far from the VM's stack size.
const MAX_DEPTH: u8 = 128;

struct Parser<'a> {
    s: &'a [u8],
    /// The next byte. serde_json reports an error either here (`fail(_, i)`) or one byte
    /// further (`fail(_, i + 1)`, its `peek_error`), whichever it does at that point.
    i: usize,
    depth: u8,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Self {
        Parser { s, i: 0, depth: 0 }
    }

    /// Out of line and not generic: every error of the parser goes through here.
    #[cold]
    #[inline(never)]
    fn fail(&self, what: &str, at: usize) -> ConfigError {
        let before = self.s.get(..at).unwrap_or(self.s);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |n| n + 1);
        let column = before.len() - line_start;
        ConfigError::at(
            "",
            format_args!("invalid JSON: {what} at line {line} column {column}"),
        )
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        if c.is_some() {
            self.i += 1;
        }
        c
    }

    fn digit(&self) -> Option<u64> {
        self.peek()
            .filter(u8::is_ascii_digit)
            .map(|c| u64::from(c - b'0'))
    }

    /// Skips whitespace; the next byte.
    fn ws(&mut self) -> Option<u8> {
        while let Some(c) = self.peek() {
            if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    fn value(&mut self) -> Result<Value> {
        let Some(c) = self.ws() else {
            return Err(self.fail(EOF_VALUE, self.i + 1));
        };
        Ok(match c {
            b'n' => self.ident(b"null", Value::Null)?,
            b't' => self.ident(b"true", Value::Bool(true))?,
            b'f' => self.ident(b"false", Value::Bool(false))?,
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                self.number()?;
                // ASCII: nothing is replaced.
                let text = self.s.get(start..self.i).unwrap_or_default();
                Value::Number(Number(String::from_utf8_lossy(text).into_owned()))
            }
            b'"' => {
                self.i += 1;
                Value::String(self.string()?)
            }
            b'[' | b'{' => {
                self.depth += 1;
                if self.depth == MAX_DEPTH {
                    return Err(self.fail("recursion limit exceeded", self.i + 1));
                }
                self.i += 1;
                let v = match c {
                    b'[' => Value::Array(self.array()?),
                    _ => Value::Object(self.object()?),
                };
                self.depth -= 1;
                v
            }
            _ => return Err(self.fail(EXPECTED_VALUE, self.i + 1)),
        })
    }

    fn ident(&mut self, word: &[u8], v: Value) -> Result<Value> {
        for &want in word {
            match self.next() {
                None => return Err(self.fail(EOF_VALUE, self.i)),
                Some(c) if c != want => return Err(self.fail("expected ident", self.i)),
                Some(_) => {}
            }
        }
        Ok(v)
    }

    /// After `[`, up to and with `]`.
    fn array(&mut self) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            let Some(c) = self.ws() else {
                return Err(self.fail(EOF_LIST, self.i + 1));
            };
            if c == b']' {
                self.i += 1;
                return Ok(items);
            }
            if !items.is_empty() {
                if c != b',' {
                    return Err(self.fail("expected `,` or `]`", self.i + 1));
                }
                self.i += 1;
                match self.ws() {
                    Some(b']') => return Err(self.fail(TRAILING_COMMA, self.i + 1)),
                    Some(_) => {}
                    None => return Err(self.fail(EOF_VALUE, self.i + 1)),
                }
            }
            items.push(self.value()?);
        }
    }

    /// After `{`, up to and with `}`.
    fn object(&mut self) -> Result<Vec<(String, Value)>> {
        let mut fields = Vec::new();
        loop {
            let Some(c) = self.ws() else {
                return Err(self.fail(EOF_OBJECT, self.i + 1));
            };
            if c == b'}' {
                self.i += 1;
                return Ok(fields);
            }
            let c = match fields.is_empty() {
                true => Some(c),
                false if c != b',' => {
                    return Err(self.fail("expected `,` or `}`", self.i + 1));
                }
                false => {
                    self.i += 1;
                    self.ws()
                }
            };
            match c {
                Some(b'"') => {}
                Some(b'}') => return Err(self.fail(TRAILING_COMMA, self.i + 1)),
                Some(_) => return Err(self.fail("key must be a string", self.i + 1)),
                None => return Err(self.fail(EOF_VALUE, self.i + 1)),
            }
            self.i += 1;
            let key = self.string()?;
            match self.ws() {
                Some(b':') => self.i += 1,
                Some(_) => return Err(self.fail("expected `:`", self.i + 1)),
                None => return Err(self.fail(EOF_OBJECT, self.i + 1)),
            }
            fields.push((key, self.value()?));
        }
    }

    /// After the opening quote, up to and with the closing one. Like serde_json, UTF-8 is
    /// checked once the string is complete (an escape or control character error comes first),
    /// and an error points that many bytes before the end as the unescaped text is invalid.
    fn string(&mut self) -> Result<String> {
        let mut out = Vec::new();
        loop {
            // Byte by byte: copying runs would be a quarter faster, and ~100 B larger.
            match self.next() {
                Some(b'"') => break,
                Some(b'\\') => self.escape(&mut out)?,
                Some(0..0x20) => {
                    return Err(self.fail(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                        self.i,
                    ))
                }
                Some(c) => out.push(c),
                None => return Err(self.fail(EOF_STRING, self.i)),
            }
        }
        String::from_utf8(out).map_err(|e| {
            let bad = e.as_bytes().len() - e.utf8_error().valid_up_to();
            self.fail("invalid unicode code point", self.i.saturating_sub(bad))
        })
    }

    /// After a backslash.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let c = match self.next() {
            None => return Err(self.fail(EOF_STRING, self.i)),
            Some(c @ (b'"' | b'\\' | b'/')) => c,
            Some(b'b') => 8,
            Some(b'f') => 12,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                let mut n = self.hex4()?;
                if (0xDC00..0xE000).contains(&n) {
                    return Err(self.fail(LONE_SURROGATE, self.i));
                }
                if (0xD800..0xDC00).contains(&n) {
                    // A leading surrogate: a trailing one must follow as `\uXXXX`.
                    for want in [b'\\', b'u'] {
                        match self.next() {
                            None => return Err(self.fail(EOF_STRING, self.i)),
                            Some(c) if c != want => {
                                return Err(self.fail("unexpected end of hex escape", self.i))
                            }
                            Some(_) => {}
                        }
                    }
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(self.fail(LONE_SURROGATE, self.i));
                    }
                    n = 0x10000 + ((n - 0xD800) << 10) + (low - 0xDC00);
                }
                // Every value left is a char: surrogates were paired or rejected above.
                let mut buf = [0; 4];
                let ch = char::from_u32(n).unwrap_or_default();
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            Some(_) => return Err(self.fail(INVALID_ESCAPE, self.i)),
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32> {
        let Some(hex) = self.s.get(self.i..).and_then(|r| r.get(..4)) else {
            self.i = self.s.len();
            return Err(self.fail(EOF_STRING, self.i));
        };
        self.i += 4;
        let mut n = 0;
        for &c in hex {
            match char::from(c).to_digit(16) {
                Some(d) => n = n * 16 + d,
                None => return Err(self.fail(INVALID_ESCAPE, self.i)),
            }
        }
        Ok(n)
    }

    /// A number from its first byte (`-` or a digit): what serde_json reads for `as_u64`
    /// and `as_f64` (without its `float_roundtrip` feature), the same way. A number beyond
    /// u64 keeps its first 19 or 20 digits, the rest scaling the exponent, and the f64 is that
    /// significand times or divided by a power of ten (exact for the usual ≤ 15 digits,
    /// |exponent| ≤ 22; at most a unit in the last place off otherwise, as serde_json's).
    fn number(&mut self) -> Result<(Option<u64>, f64)> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let mut sig: u64 = 0;
        let mut exp: i32 = 0;
        // Digits only, within u64: an integer.
        let mut integer = true;
        match self.next() {
            None => return Err(self.fail(EOF_VALUE, self.i)),
            Some(b'0') => {
                if self.digit().is_some() {
                    return Err(self.fail(INVALID_NUMBER, self.i + 1));
                }
            }
            Some(c @ b'1'..=b'9') => {
                sig = u64::from(c - b'0');
                while let Some(d) = self.digit() {
                    self.i += 1;
                    match sig.checked_mul(10).and_then(|v| v.checked_add(d)) {
                        Some(v) if integer => sig = v,
                        _ => {
                            integer = false;
                            exp = exp.saturating_add(1);
                        }
                    }
                }
            }
            Some(_) => return Err(self.fail(INVALID_NUMBER, self.i)),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            integer = false;
            let mut digits = false;
            let mut full = false;
            while let Some(d) = self.digit() {
                self.i += 1;
                digits = true;
                match sig.checked_mul(10).and_then(|v| v.checked_add(d)) {
                    Some(v) if !full => {
                        sig = v;
                        exp = exp.saturating_sub(1);
                    }
                    // serde_json ignores the digits after the first that does not fit.
                    _ => full = true,
                }
            }
            if !digits {
                let what = match self.peek() {
                    Some(_) => INVALID_NUMBER,
                    None => EOF_VALUE,
                };
                return Err(self.fail(what, self.i + 1));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            integer = false;
            let negative_exp = self.peek() == Some(b'-');
            if matches!(self.peek(), Some(b'-' | b'+')) {
                self.i += 1;
            }
            let mut e = match self.next() {
                None => return Err(self.fail(EOF_VALUE, self.i)),
                Some(c @ b'0'..=b'9') => i32::from(c - b'0'),
                Some(_) => return Err(self.fail(INVALID_NUMBER, self.i)),
            };
            while let Some(d) = self.digit() {
                self.i += 1;
                match e.checked_mul(10).and_then(|v| v.checked_add(d as i32)) {
                    Some(v) => e = v,
                    // An exponent beyond i32: infinite (an error) or zero.
                    None if sig != 0 && !negative_exp => {
                        return Err(self.fail(NUMBER_OUT_OF_RANGE, self.i))
                    }
                    None => {
                        while self.digit().is_some() {
                            self.i += 1;
                        }
                        return Ok((None, if negative { -0.0 } else { 0.0 }));
                    }
                }
            }
            exp = match negative_exp {
                true => exp.saturating_sub(e),
                false => exp.saturating_add(e),
            };
        }
        let mut f = sig as f64;
        if integer {
            return Ok(match negative {
                true => (None, -f),
                false => (Some(sig), f),
            });
        }
        loop {
            let e = exp.unsigned_abs();
            if e <= 308 {
                match exp >= 0 {
                    true => f *= pow10(e),
                    false => f /= pow10(e),
                }
                break;
            }
            if f == 0.0 {
                break;
            }
            if exp >= 0 {
                f = f64::INFINITY;
                break;
            }
            f /= 1e308;
            exp += 308;
        }
        if f.is_infinite() {
            return Err(self.fail(NUMBER_OUT_OF_RANGE, self.i));
        }
        Ok((None, if negative { -f } else { f }))
    }
}

/// 10^e for e ≤ 308, rounded to the nearest f64 like the literal `1e{e}`: serde_json's 2.4 KB
/// table, computed instead. 5^e is kept as m·2^x in 128 bits (exact up to 5^54, truncated
/// beyond with the lost bits noted in `sticky`), then rounded to 53 bits, half to even; the
/// unit test checks all 309 values against the literals.
fn pow10(e: u32) -> f64 {
    let (mut m, mut x, mut sticky) = (1u128, 0i32, false);
    for _ in 0..e {
        if m >> 125 != 0 {
            sticky |= m & 7 != 0;
            m >>= 3;
            x += 3;
        }
        m *= 5;
    }
    let z = m.leading_zeros();
    m <<= z;
    let mut mantissa = (m >> 75) as u64;
    let rest = m & ((1 << 75) - 1);
    let half = 1 << 74;
    if rest > half || (rest == half && (sticky || mantissa & 1 == 1)) {
        mantissa += 1;
    }
    // 10^e = mantissa · 2^(75 + x - z + e); the f64 exponent field counts from 2^-1075.
    let mut exp = 75 + x - z as i32 + e as i32;
    if mantissa >> 53 != 0 {
        mantissa >>= 1;
        exp += 1;
    }
    f64::from_bits(((exp + 1075) as u64) << 52 | (mantissa & ((1 << 52) - 1)))
}

#[cfg(test)]
mod tests;
