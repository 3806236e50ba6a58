//! Lanes: a request that entered a version at the edge stays on that version at every later
//! hop that has one (`rules[].propagate`, `from_lane`, `lane_fallback`).
//!
//! The instance where a lane starts writes the chosen destination's name into a carrier: a
//! header of its own, or one member of the W3C `baggage` header (which OpenTelemetry SDKs
//! forward without code changes). Instances further down route a request that carries a lane
//! to the destination of that name.
//!
//! Trust. A carrier that no rule of this instance routes by (`from_lane`) is one where lanes
//! start: whatever a request brings on it is removed (or overwritten), so a client can never
//! pick a lane through the edge. A carrier that some rule routes by keeps incoming values; with
//! `lane_secret` every value is signed where it starts (`<name>;sig=v2.<unix s>.<tag>`, see
//! `crate::signing`) and verified where it is read, so only an instance holding the secret can
//! start a lane, whichever path a request took to get here (docs/configuration.md "Lanes").
//! A lane that is accepted passes on alone: further lines of its header, or further baggage
//! members with its key, are removed, so the application can only read the value this instance
//! routed by.

// `Incoming` lives with the request that carries it, so that `request` does not import `lane`.
pub use crate::request::Incoming;
use crate::request::{split_once, trim, HeaderPair, Request};
use crate::signing::{Domain, SigningKey, Window};
use std::borrow::Cow;

/// How long a signed lane value verifies after it was written: it crosses every hop of one
/// request chain, with room for queues between services and clock skew between hosts.
pub const LANE_MAX_AGE_S: u64 = 300;
/// How far in the future a lane's time may be: the signing host's clock may be a little ahead.
pub const LANE_MAX_FUTURE_S: u64 = 5;
const LANE_WINDOW: Window = Window {
    max_age_s: LANE_MAX_AGE_S,
    max_future_s: LANE_MAX_FUTURE_S,
};
/// The parameter that carries the signature after the name: `canary;sig=v2.<unix s>.<tag>`, in
/// the syntax of a W3C baggage member property, the same in a header of its own.
const SIGNATURE_PARAM: &[u8] = b"sig=";
pub const BAGGAGE: &str = "baggage";

/// Where a lane travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carrier {
    /// A request header of its own (lower case): its value is the lane.
    Header(String),
    /// The member with this key of the W3C `baggage` header.
    Baggage(String),
}

/// One carrier of the plan, and whether this instance routes by what arrives on it.
#[derive(Debug)]
pub struct LaneCarrier {
    pub carrier: Carrier,
    /// Some rule has `from_lane` on it: incoming values are kept (verified with `lane_secret`).
    /// Otherwise lanes start here and incoming values are removed.
    pub read: bool,
}

/// The lanes of a plan: its carriers (each once) and the key that signs and verifies them.
#[derive(Debug, Default)]
pub struct Lanes {
    pub carriers: Vec<LaneCarrier>,
    pub key: Option<SigningKey>,
}

/// A rule's `propagate`, compiled.
#[derive(Debug)]
pub struct RuleLane {
    /// Index into `Lanes::carriers`.
    pub carrier: usize,
    pub from_lane: bool,
    /// `lane_fallback`: the destination for a lane that names none of this rule's.
    pub fallback: Option<usize>,
    /// The rule's group of lane counters (`metrics::LANE_STEPS`).
    pub slot: usize,
}

/// What a routed request's lane did at its rule (counted per rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneStep {
    /// Routed to the destination its lane names.
    Followed,
    /// Its lane names no destination of the rule: sent to `lane_fallback`.
    Fallback,
    /// Its lane names no destination of the rule and there is no `lane_fallback`: decided as
    /// usual; the lane is kept for later hops.
    Unknown,
    /// No lane came in: the lane starts here with the chosen destination.
    Started,
}

impl LaneStep {
    /// As counted (`traffic_split.rule.<rule>.lane.<step>`) and shown in `x-split-decision`.
    pub fn as_str(self) -> &'static str {
        match self {
            LaneStep::Followed => "followed",
            LaneStep::Fallback => "fallback",
            LaneStep::Unknown => "unknown",
            LaneStep::Started => "started",
        }
    }
}

/// `headers` (a copy of the request's) with `edits` (`Lanes::edits`) applied, as the host
/// applied them to the request.
pub fn apply_edits(headers: &mut Vec<HeaderPair>, edits: &[HeaderEdit]) {
    for (name, value) in edits {
        headers.retain(|(n, _)| n != name);
        if let Some(v) = value {
            headers.push((name.clone(), v.clone()));
        }
    }
}

/// One request-header write: `(name, None)` removes the header, `(name, Some(v))` sets it.
pub type HeaderEdit = (String, Option<Vec<u8>>);

impl Lanes {
    pub fn is_empty(&self) -> bool {
        self.carriers.is_empty()
    }

    /// What each carrier brings, in carrier order. `now_s` (unix seconds) verifies signatures,
    /// and is only asked for when a value must be verified (the host's clock is a host call);
    /// without it no signed value verifies.
    pub fn screen(
        &self,
        request: &Request<'_>,
        mut now_s: impl FnMut() -> Option<u64>,
    ) -> Vec<Incoming> {
        let mut out = Vec::with_capacity(self.carriers.len());
        for c in &self.carriers {
            let incoming = match incoming_value(&c.carrier, request) {
                None => Incoming::Absent,
                Some(_) if !c.read => Incoming::Untrusted,
                Some(value) => self.accept(&value, &mut now_s),
            };
            out.push(incoming);
        }
        out
    }

    fn accept(&self, value: &[u8], now_s: &mut impl FnMut() -> Option<u64>) -> Incoming {
        let (name, params) = split_name(value);
        if name.is_empty() {
            return Incoming::Invalid;
        }
        let Some(key) = &self.key else {
            return Incoming::Lane(name.to_vec());
        };
        let signature = signature_of(params);
        match (signature, signature.and_then(|_| now_s())) {
            (Some(sig), Some(now))
                if key.verify(Domain::Lane, &[Some(name)], sig, now, LANE_WINDOW) =>
            {
                Incoming::Lane(name.to_vec())
            }
            _ => Incoming::Invalid,
        }
    }

    /// The value that starts a lane on `name`: signed when a key is set and the clock is known
    /// (without a clock, unsigned: the next hop then decides for itself, never a forgery).
    pub fn value_for(&self, name: &str, now_s: Option<u64>) -> String {
        match (&self.key, now_s) {
            (Some(key), Some(now)) => {
                let sig = key.sign(Domain::Lane, &[Some(name.as_bytes())], now);
                format!("{name};sig={sig}")
            }
            _ => name.to_string(),
        }
    }

    /// The request-header writes that carry out `incoming` (removing what must not pass, and
    /// leaving an accepted lane alone on its carrier) and `start` (`(carrier, value)`: the lane
    /// this request starts); empty when nothing changes. Baggage members other than the lanes'
    /// are kept byte for byte; several `baggage` lines become one (a list header: the same
    /// value, RFC 9110 5.3).
    pub fn edits(
        &self,
        request: &Request<'_>,
        incoming: &[Incoming],
        start: Option<(usize, &str)>,
    ) -> Vec<HeaderEdit> {
        let mut out = Vec::new();
        let mut baggage: Option<Cow<'_, [u8]>> = None;
        let mut baggage_changes: Vec<(&str, Option<Cow<'_, [u8]>>)> = Vec::new();
        for (i, c) in self.carriers.iter().enumerate() {
            let write = start.filter(|(at, _)| *at == i).map(|(_, v)| v);
            let change = match (write, incoming.get(i)) {
                (Some(v), _) => Some(Some(Cow::Borrowed(v.as_bytes()))),
                (None, Some(Incoming::Untrusted | Incoming::Invalid)) => Some(None),
                // An accepted lane passes on alone, exactly as verified: a second line or
                // member with the same name, or anything after the signature, which the
                // application might read instead, is removed.
                (None, Some(Incoming::Lane(_))) => {
                    let signed = self.key.is_some();
                    match &c.carrier {
                        Carrier::Header(name) => {
                            let mut lines = request.all(name);
                            let (first, second) = (lines.next(), lines.next());
                            first.and_then(|raw| {
                                let exact = verified_form(raw, signed);
                                let unchanged =
                                    second.is_none() && matches!(exact, Cow::Borrowed(_));
                                (!unchanged).then_some(Some(exact))
                            })
                        }
                        Carrier::Baggage(key) => {
                            let all = baggage.get_or_insert_with(|| baggage_of(request));
                            let mut values = member_values(all, key);
                            let (first, second) = (values.next(), values.next());
                            first.and_then(|raw| {
                                let exact = verified_form(raw, signed);
                                let unchanged =
                                    second.is_none() && matches!(exact, Cow::Borrowed(_));
                                (!unchanged).then(|| Some(Cow::Owned(exact.into_owned())))
                            })
                        }
                    }
                }
                (None, Some(Incoming::Absent) | None) => None,
            };
            let Some(value) = change else {
                continue;
            };
            match &c.carrier {
                Carrier::Header(name) => out.push((name.clone(), value.map(Cow::into_owned))),
                Carrier::Baggage(key) => baggage_changes.push((key, value)),
            }
        }
        if !baggage_changes.is_empty() {
            let all = baggage.unwrap_or_else(|| baggage_of(request));
            let edited = edit_baggage(&all, &baggage_changes);
            out.push((BAGGAGE.to_string(), (!edited.is_empty()).then_some(edited)));
        }
        out
    }
}

/// The `sig=` parameter of a lane value's parameters, if any (the first).
fn signature_of(params: &[u8]) -> Option<&[u8]> {
    params
        .split(|&b| b == b';')
        .find_map(|p| trim(p).strip_prefix(SIGNATURE_PARAM))
}

/// An accepted lane value exactly as it was verified: `name;sig=<signature>` with a key (other
/// parameters, spaces and anything after the signature dropped), the bare name without one.
/// Borrowed when `raw` is already exactly that, as it nearly always is.
fn verified_form(raw: &[u8], signed: bool) -> Cow<'_, [u8]> {
    let (name, params) = split_name(raw);
    let sig = if signed { signature_of(params) } else { None };
    let Some(sig) = sig else {
        return if name == raw {
            Cow::Borrowed(raw)
        } else {
            Cow::Owned(name.to_vec())
        };
    };
    let exact = raw.len() == name.len() + 1 + SIGNATURE_PARAM.len() + sig.len()
        && raw.starts_with(name)
        && raw.ends_with(sig)
        && raw.get(name.len()) == Some(&b';')
        && raw
            .get(name.len() + 1..)
            .is_some_and(|rest| rest.starts_with(SIGNATURE_PARAM));
    if exact {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(name.len() + 1 + SIGNATURE_PARAM.len() + sig.len());
    out.extend_from_slice(name);
    out.push(b';');
    out.extend_from_slice(SIGNATURE_PARAM);
    out.extend_from_slice(sig);
    Cow::Owned(out)
}

/// The raw value on `carrier`: the first header line, or the baggage member's value.
fn incoming_value<'a>(carrier: &Carrier, request: &Request<'a>) -> Option<Cow<'a, [u8]>> {
    match carrier {
        Carrier::Header(name) => request.header(name).map(Cow::Borrowed),
        Carrier::Baggage(key) => match baggage_of(request) {
            Cow::Borrowed(all) => member_value(all, key).map(Cow::Borrowed),
            Cow::Owned(all) => member_value(&all, key).map(|v| Cow::Owned(v.to_vec())),
        },
    }
}

/// The value (with its properties) of the first baggage member named `key`.
fn member_value<'b>(baggage: &'b [u8], key: &str) -> Option<&'b [u8]> {
    baggage.split(|&b| b == b',').find_map(|member| {
        let (k, v) = split_member(member)?;
        (k == key.as_bytes()).then_some(v)
    })
}

/// The values (with their properties) of every baggage member named `key`, in order.
fn member_values<'b>(baggage: &'b [u8], key: &'b str) -> impl Iterator<Item = &'b [u8]> {
    baggage.split(|&b| b == b',').filter_map(move |member| {
        let (k, v) = split_member(member)?;
        (k == key.as_bytes()).then_some(v)
    })
}

/// Every `baggage` line of the request, joined with `,` (one list, RFC 9110 5.3): borrowed
/// when there is at most one line, as there nearly always is.
fn baggage_of<'a>(request: &Request<'a>) -> Cow<'a, [u8]> {
    let mut lines = request.all(BAGGAGE);
    let Some(first) = lines.next() else {
        return Cow::Borrowed(&[]);
    };
    let Some(second) = lines.next() else {
        return Cow::Borrowed(first);
    };
    let mut out = first.to_vec();
    for line in std::iter::once(second).chain(lines) {
        out.push(b',');
        out.extend_from_slice(line);
    }
    Cow::Owned(out)
}

/// A baggage member `key=value[;properties]` as (trimmed key, value with its properties).
fn split_member(member: &[u8]) -> Option<(&[u8], &[u8])> {
    let (key, value) = split_once(member, b'=')?;
    Some((trim(key), trim(value)))
}

/// A lane value `name[;params]` as (trimmed name, params).
fn split_name(value: &[u8]) -> (&[u8], &[u8]) {
    match split_once(value, b';') {
        Some((name, params)) => (trim(name), params),
        None => (trim(value), &[]),
    }
}

/// `baggage` with each `(key, value)` applied: `Some(v)` replaces the first member with that
/// key by `key=v` (appended when there is none), `None` removes it; further members with the
/// key are removed either way. Every other member is kept byte for byte, spaces and bytes that
/// are not UTF-8 included.
fn edit_baggage<V: AsRef<[u8]>>(baggage: &[u8], changes: &[(&str, Option<V>)]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(baggage.len() + 64);
    let mut written = vec![false; changes.len()];
    let push = |out: &mut Vec<u8>, member: &[u8]| {
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(member);
    };
    let push_member = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
    };
    if !baggage.is_empty() {
        for member in baggage.split(|&b| b == b',') {
            let key = split_member(member).map(|(k, _)| k);
            let change = changes.iter().position(|(k, _)| key == Some(k.as_bytes()));
            match change {
                None => push(&mut out, member),
                Some(i) => {
                    if let (Some((k, Some(v))), Some(done)) = (changes.get(i), written.get_mut(i)) {
                        if !*done {
                            push_member(&mut out, k, v.as_ref());
                            *done = true;
                        }
                    }
                }
            }
        }
    }
    for (i, (k, v)) in changes.iter().enumerate() {
        if let (Some(v), Some(false)) = (v, written.get(i)) {
            push_member(&mut out, k, v.as_ref());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::header_pairs as headers;

    fn lanes(read: bool, key: Option<&[u8]>) -> Lanes {
        Lanes {
            carriers: vec![
                LaneCarrier {
                    carrier: Carrier::Header("x-split-lane".into()),
                    read,
                },
                LaneCarrier {
                    carrier: Carrier::Baggage("split-lane".into()),
                    read,
                },
            ],
            key: key.map(SigningKey::from_secret),
        }
    }

    #[test]
    fn baggage_edits_keep_other_members_byte_for_byte() {
        let edit = |b: &str, c: &[(&str, Option<&str>)]| {
            String::from_utf8(edit_baggage(b.as_bytes(), c)).unwrap()
        };
        assert_eq!(
            edit("", &[("split-lane", Some("canary"))]),
            "split-lane=canary"
        );
        assert_eq!(
            edit(
                "userId=alice,  serverNode = DF%2028 ;p=1,isProduction=false",
                &[("split-lane", Some("canary"))]
            ),
            "userId=alice,  serverNode = DF%2028 ;p=1,isProduction=false,split-lane=canary"
        );
        assert_eq!(
            edit(
                "a=1, split-lane = stable;sig=1.2 ,b=2,split-lane=x",
                &[("split-lane", Some("canary"))]
            ),
            "a=1,split-lane=canary,b=2"
        );
        assert_eq!(
            edit("a=1, split-lane=evil ,b=2", &[("split-lane", None)]),
            "a=1,b=2"
        );
        assert_eq!(edit("split-lane=evil", &[("split-lane", None)]), "");
        // Bytes that are not UTF-8 in other members pass unchanged.
        assert_eq!(
            edit_baggage(b"a=\xff\xfe,split-lane=x", &[("split-lane", Some("c"))]),
            b"a=\xff\xfe,split-lane=c".to_vec()
        );
        // A member without `=` or an empty one is someone else's: kept as it came.
        assert_eq!(
            edit("junk,,a=1", &[("split-lane", Some("c"))]),
            "junk,,a=1,split-lane=c"
        );
    }

    #[test]
    fn where_lanes_start_every_incoming_value_is_untrusted() {
        let l = lanes(false, None);
        let h = headers(&[
            ("x-split-lane", "canary"),
            ("baggage", "a=1"),
            ("baggage", "split-lane=canary"),
        ]);
        let r = Request::new(&h, None);
        let incoming = l.screen(&r, || Some(1));
        assert_eq!(incoming, vec![Incoming::Untrusted, Incoming::Untrusted]);
        assert_eq!(
            l.edits(&r, &incoming, None),
            vec![
                ("x-split-lane".to_string(), None),
                ("baggage".to_string(), Some(b"a=1".to_vec()))
            ]
        );
        // Starting a lane overwrites instead.
        assert_eq!(
            l.edits(&r, &incoming, Some((1, "stable"))),
            vec![
                ("x-split-lane".to_string(), None),
                (
                    "baggage".to_string(),
                    Some(b"a=1,split-lane=stable".to_vec())
                )
            ]
        );
        let none = headers(&[("baggage", "a=1")]);
        let r = Request::new(&none, None);
        let incoming = l.screen(&r, || Some(1));
        assert_eq!(incoming, vec![Incoming::Absent, Incoming::Absent]);
        assert!(l.edits(&r, &incoming, None).is_empty(), "nothing to change");
    }

    #[test]
    fn signed_lanes_verify_only_with_the_secret_and_while_fresh() {
        let secret = b"0123456789abcdef-lanes";
        let l = lanes(true, Some(secret));
        let now = 1_800_000_000;
        let value = l.value_for("canary", Some(now));
        assert!(value.starts_with("canary;sig=v2.1800000000."), "{value}");
        assert_eq!(value.len(), "canary;sig=v2.1800000000.".len() + 32);
        let screen = |v: &str, at: Option<u64>| {
            let h = headers(&[
                ("x-split-lane", v),
                ("baggage", &format!("k=v,split-lane={v}")),
            ]);
            l.screen(&Request::new(&h, None), || at)
        };
        let lane = Incoming::Lane(b"canary".to_vec());
        assert_eq!(screen(&value, Some(now + 299)), vec![lane.clone(), lane]);
        for (forged, at) in [
            ("canary", Some(now)),
            ("stable;sig=1800000000.0123456789abcdef", Some(now)),
            (value.as_str(), Some(now + LANE_MAX_AGE_S + 1)),
            (value.as_str(), Some(now - LANE_MAX_FUTURE_S - 1)),
            (value.as_str(), None),
            (&value.replace("canary", "stable"), Some(now)),
            (";sig=1.2", Some(now)),
        ] {
            assert_eq!(
                screen(forged, at),
                vec![Incoming::Invalid, Incoming::Invalid],
                "{forged}"
            );
        }
        let other = lanes(true, Some(b"0123456789abcdef-other!"));
        assert_eq!(
            other.value_for("canary", None),
            "canary",
            "no clock: unsigned"
        );
        // Without a secret, the name is taken as it comes, parameters ignored.
        let open = lanes(true, None);
        let h = headers(&[("x-split-lane", " canary ;x=1")]);
        assert_eq!(
            open.screen(&Request::new(&h, None), || None)[0],
            Incoming::Lane(b"canary".to_vec())
        );
    }

    /// Item 2 of issue 20: `v10;sig=<t>.<tag>` re-framed as `v1;sig=0<t>.<tag>` (the same
    /// bytes under an unframed MAC) must not verify; nor a value of the earlier format.
    #[test]
    fn a_reframed_or_old_format_lane_is_unsigned() {
        let l = lanes(true, Some(b"0123456789abcdef-lanes"));
        let now = 1_800_000_000;
        let screen = |v: &str| {
            let h = headers(&[("x-split-lane", v)]);
            l.screen(&Request::new(&h, None), || Some(now))[0].clone()
        };
        let v10 = l.value_for("v10", Some(now));
        assert_eq!(screen(&v10), Incoming::Lane(b"v10".to_vec()));
        let (_, sig) = v10.split_once(";sig=v2.").unwrap();
        for reframed in [
            format!("v1;sig=v2.0{sig}"),
            format!("v1;sig=v2.00{sig}"),
            format!("v1;sig=0{sig}"),
            format!("v10;sig=v2.0{sig}"),
            format!("v10;sig={sig}"),
            format!("v10;sig=v1.{sig}"),
        ] {
            assert_eq!(screen(&reframed), Incoming::Invalid, "{reframed}");
        }
        // The earlier format (SipHash, `<t>.<16 hex>`): treated as unsigned.
        assert_eq!(
            screen("canary;sig=1800000000.0123456789abcdef"),
            Incoming::Invalid
        );
    }

    /// Item 4 of issue 20: behind an accepted lane, a second line of the header or a second
    /// baggage member with the lane's key does not pass on; exactly the accepted value does.
    #[test]
    fn an_accepted_lane_passes_on_alone() {
        for key in [Some(&b"0123456789abcdef-lanes"[..]), None] {
            let l = lanes(true, key);
            let now = 1_800_000_000;
            let good = l.value_for("canary", Some(now));
            let h = headers(&[
                ("x-split-lane", &good),
                ("x-split-lane", "stable"),
                ("baggage", &format!("a=1, split-lane = {good} ,b=2")),
                ("baggage", "split-lane=stable,c=3"),
            ]);
            let r = Request::new(&h, None);
            let incoming = l.screen(&r, || Some(now));
            let lane = Incoming::Lane(b"canary".to_vec());
            assert_eq!(incoming, vec![lane.clone(), lane]);
            assert_eq!(
                l.edits(&r, &incoming, None),
                vec![
                    ("x-split-lane".to_string(), Some(good.as_bytes().to_vec())),
                    (
                        "baggage".to_string(),
                        Some(format!("a=1,split-lane={good},b=2,c=3").into_bytes())
                    )
                ]
            );
            let mut applied = h.clone();
            apply_edits(&mut applied, &l.edits(&r, &incoming, None));
            let r2 = Request::new(&applied, None);
            assert_eq!(
                r2.all("x-split-lane").collect::<Vec<_>>(),
                [good.as_bytes()]
            );
            assert_eq!(r2.all("baggage").count(), 1);
            // One value on each: nothing to write (no host call).
            let single = headers(&[
                ("x-split-lane", &good),
                ("baggage", &format!("a=1,split-lane={good}")),
            ]);
            let r = Request::new(&single, None);
            let incoming = l.screen(&r, || Some(now));
            assert!(l.edits(&r, &incoming, None).is_empty());
            // One value with more after the signature (a list the application might split):
            // exactly what was verified passes on.
            let padded = headers(&[
                ("x-split-lane", &format!(" {good} ;p=1, stable")),
                ("baggage", &format!("a=1,split-lane={good};p=1")),
            ]);
            let r = Request::new(&padded, None);
            let incoming = l.screen(&r, || Some(now));
            assert_eq!(incoming[0], Incoming::Lane(b"canary".to_vec()));
            assert_eq!(
                l.edits(&r, &incoming, None),
                vec![
                    ("x-split-lane".to_string(), Some(good.as_bytes().to_vec())),
                    (
                        "baggage".to_string(),
                        Some(format!("a=1,split-lane={good}").into_bytes())
                    )
                ]
            );
        }
        assert_eq!(verified_form(b"canary;sig=x", false), &b"canary"[..]);
        assert_eq!(verified_form(b"canary;sig=x", true), &b"canary;sig=x"[..]);
        assert!(matches!(
            verified_form(b"canary;sig=x", true),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            verified_form(b"canary;p;sig=x ", true),
            &b"canary;sig=x"[..]
        );
    }
}
