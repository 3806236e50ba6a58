//! A read-only view of the request attributes the rules look at, built from one read of the
//! header map. Values are bytes: clients can send anything, and nothing here may panic on it.

use crate::body::RequestBody;
use std::borrow::Cow;

/// One header as Envoy hands it over: lower-case name, raw value bytes.
pub type HeaderPair = (String, Vec<u8>);

/// What arrived on one lane carrier (`lane::Lanes::screen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Absent,
    /// A lane this instance routes by (verified when a key is set): the destination name.
    Lane(Vec<u8>),
    /// A value on a carrier where lanes start here: a client's, removed.
    Untrusted,
    /// A value on a carrier this instance reads that failed verification (or has no name):
    /// removed, and the request decided as if it carried none.
    Invalid,
}

pub struct Request<'a> {
    headers: &'a [HeaderPair],
    route_name: Option<&'a [u8]>,
    source_address: Option<&'a [u8]>,
    /// What arrived on each lane carrier (`Lanes::screen`), when the plan has lanes.
    lanes: &'a [Incoming],
    /// The JSON body, for `match.body` (absent unless the host read one).
    body: RequestBody<'a>,
    /// `regex` conditions not evaluated because the value was over
    /// the pattern's cap, `Pattern::max_value_len` (counted by the host: `metrics::REGEX_VALUE_TOO_LONG`).
    regex_skipped: std::cell::Cell<u32>,
}

impl<'a> Request<'a> {
    /// `headers` are the request headers including pseudo-headers (`:path`, `:method`,
    /// `:authority`); `route_name` is Envoy's route name when a rule needs it.
    pub fn new(headers: &'a [HeaderPair], route_name: Option<&'a [u8]>) -> Self {
        Request {
            headers,
            route_name,
            source_address: None,
            lanes: &[],
            body: RequestBody::Absent,
            regex_skipped: std::cell::Cell::new(0),
        }
    }

    /// With the request body as `match.body` sees it.
    pub fn with_body(mut self, body: RequestBody<'a>) -> Self {
        self.body = body;
        self
    }

    pub fn body(&self) -> RequestBody<'a> {
        self.body
    }

    /// A `regex` condition met a value too long to evaluate (it does not hold).
    pub fn note_regex_skipped(&self) {
        self.regex_skipped
            .set(self.regex_skipped.get().saturating_add(1));
    }

    /// How many `regex` conditions were not evaluated for this request (value too long).
    pub fn regex_skipped(&self) -> u32 {
        self.regex_skipped.get()
    }

    /// With what arrived on each lane carrier, in carrier order.
    pub fn with_lanes(mut self, lanes: &'a [Incoming]) -> Self {
        self.lanes = lanes;
        self
    }

    /// The accepted lane (a destination name) on carrier `carrier`.
    pub fn lane(&self, carrier: usize) -> Option<&'a [u8]> {
        match self.lanes.get(carrier) {
            Some(Incoming::Lane(name)) => Some(name),
            _ => None,
        }
    }

    /// With Envoy's `source.address` (`ip:port`), when a rule needs it.
    pub fn with_source_address(mut self, address: Option<&'a [u8]>) -> Self {
        self.source_address = address;
        self
    }

    pub fn source_address(&self) -> Option<&'a [u8]> {
        self.source_address
    }

    /// The first value of a header. Repeated headers: the first wins. Envoy hands header
    /// names over in lower case and the plan lower-cases configured ones, so an exact compare
    /// is a case-insensitive one here, and cheaper.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of a header, in order.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        let headers = self.headers;
        headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn method(&self) -> Option<&'a [u8]> {
        self.header(":method")
    }

    pub fn authority(&self) -> Option<&'a [u8]> {
        self.header(":authority")
    }

    pub fn route_name(&self) -> Option<&'a [u8]> {
        self.route_name
    }

    /// `:path` without query string and fragment.
    pub fn path(&self) -> Option<&'a [u8]> {
        let full = self.header(":path")?;
        let end = full
            .iter()
            .position(|&b| b == b'?' || b == b'#')
            .unwrap_or(full.len());
        full.get(..end)
    }

    fn query_string(&self) -> Option<&'a [u8]> {
        let full = self.header(":path")?;
        let start = full.iter().position(|&b| b == b'?')? + 1;
        let rest = full.get(start..)?;
        let end = rest.iter().position(|&b| b == b'#').unwrap_or(rest.len());
        rest.get(..end)
    }

    /// The first value of a query parameter, percent-decoded (`+` is a space). A parameter
    /// without `=` has the empty value.
    pub fn query(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        let query = self.query_string()?;
        query.split(|&b| b == b'&').find_map(|pair| {
            let (raw_name, raw_value) = split_once(pair, b'=').unwrap_or((pair, &[]));
            (percent_decode(raw_name).as_ref() == name.as_bytes())
                .then(|| percent_decode(raw_value))
        })
    }

    /// The first value of a cookie across all `Cookie` headers. Malformed pairs are skipped;
    /// surrounding double quotes are removed from the value.
    pub fn cookie(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(|&b| b == b';'))
            .find_map(|pair| {
                let (raw_name, raw_value) = split_once(pair, b'=')?;
                (trim(raw_name) == name.as_bytes()).then(|| unquote(trim(raw_value)))
            })
    }
}

/// Test requests from text pairs (one helper for every module's tests).
#[cfg(test)]
pub(crate) fn header_pairs(pairs: &[(&str, &str)]) -> Vec<HeaderPair> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

pub(crate) fn split_once(bytes: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == sep)?;
    Some((bytes.get(..at)?, bytes.get(at + 1..)?))
}

/// `bytes` without leading and trailing spaces and tabs (optional white space, RFC 9110).
pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or(&[])
}

fn unquote(bytes: &[u8]) -> &[u8] {
    match bytes {
        [b'"', inner @ .., b'"'] => inner,
        _ => bytes,
    }
}

/// Decodes `%XX` and `+`; an invalid escape is kept as it is.
fn percent_decode(bytes: &[u8]) -> Cow<'_, [u8]> {
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                bytes.get(i + 1).and_then(|h| hex_value(*h)),
                bytes.get(i + 2).and_then(|l| hex_value(*l)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> Vec<HeaderPair> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn path_strips_query_and_fragment() {
        let h = headers(&[(":path", b"/a/b?x=1#frag")]);
        let r = Request::new(&h, None);
        assert_eq!(r.path(), Some(&b"/a/b"[..]));
        let h = headers(&[(":path", b"/a#f?x")]);
        assert_eq!(Request::new(&h, None).path(), Some(&b"/a"[..]));
        let h = headers(&[]);
        assert_eq!(Request::new(&h, None).path(), None);
    }

    #[test]
    fn query_is_decoded_and_first_value_wins() {
        let h = headers(&[(":path", b"/?a=1&user%5Fid=j%C3%B6+x&a=2&flag&bad=%G1%")]);
        let r = Request::new(&h, None);
        assert_eq!(r.query("a").as_deref(), Some(&b"1"[..]));
        assert_eq!(r.query("user_id").as_deref(), Some("jö x".as_bytes()));
        assert_eq!(r.query("flag").as_deref(), Some(&b""[..]));
        assert_eq!(r.query("bad").as_deref(), Some(&b"%G1%"[..]));
        assert_eq!(r.query("missing"), None);
        let h = headers(&[(":path", b"/?x=1#a=2")]);
        assert_eq!(Request::new(&h, None).query("a"), None);
    }

    #[test]
    fn cookies_across_headers_malformed_and_quoted() {
        let h = headers(&[
            ("cookie", b"junk; a=1;; =x; uid = \"abc\" "),
            ("cookie", b"uid=second; b=\xff\xfe"),
        ]);
        let r = Request::new(&h, None);
        assert_eq!(r.cookie("uid"), Some(&b"abc"[..]));
        assert_eq!(r.cookie("a"), Some(&b"1"[..]));
        assert_eq!(r.cookie("b"), Some(&b"\xff\xfe"[..]));
        assert_eq!(r.cookie("junk"), None);
        assert_eq!(r.cookie(""), Some(&b"x"[..]));
    }

    #[test]
    fn repeated_header_first_value_wins() {
        let h = headers(&[("x-a", b"1"), ("x-a", b"2")]);
        assert_eq!(Request::new(&h, None).header("x-a"), Some(&b"1"[..]));
    }
}
