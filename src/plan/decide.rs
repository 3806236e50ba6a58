//! What the plan does with a request: which rule matched and which destination gets it.

use super::{FaultPolicy, Plan, Rule, Sticky, StickyKey};
use crate::body::RequestBody;
use crate::breaker::{BreakerTicket, BreakerView, State};
use crate::bucket;
use crate::lane::LaneStep;
use crate::request::Request;
use crate::rng::Rng;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No rule matched: the routing headers are removed and nothing else happens.
    Unmatched,
    Routed(Routed),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub rule: usize,
    /// The destination that gets the request (after any open breaker moved it on).
    pub destination: usize,
    /// A `Set-Cookie` value to add to the response (a newly assigned user id).
    pub set_cookie: Option<String>,
    /// Bit `i` set: destination `i`'s breaker sent this request on to its fallback.
    pub rerouted: u16,
    /// The breaker this request's outcome is counted for: the final destination's, if it has
    /// one.
    pub ticket: Option<BreakerTicket>,
    /// What the request's lane did, for a rule with `propagate`.
    pub lane: Option<LaneStep>,
    /// The request is in the rule's fault slice (`Rule::fault`): Envoy's fault filter is to
    /// delay or abort it, and its outcome is no evidence of the destination's health (no
    /// breaker ticket).
    pub fault: bool,
}

impl Plan {
    /// Decides a request. `breakers` is what this worker knows of each breaker slot (empty
    /// when the plan has none); a missing slot reads as closed.
    pub fn decide(
        &self,
        request: &Request<'_>,
        rng: &mut Rng,
        breakers: &[BreakerView],
    ) -> Decision {
        self.decide_at(request, rng, breakers, &[])
    }

    /// `decide` with the bounds in force of each rollout slot (`crate::rollout::upper_bounds`
    /// of the share now, computed by the host on its tick); a missing slot reads as 0%.
    pub fn decide_at(
        &self,
        request: &Request<'_>,
        rng: &mut Rng,
        breakers: &[BreakerView],
        rollouts: &[Vec<u32>],
    ) -> Decision {
        match &self.index {
            Some(index) => {
                let candidates = index.candidates(request.authority(), request.route_name());
                self.decide_among(candidates, request, rng, breakers, rollouts)
            }
            None => self.decide_among(0..self.rules.len(), request, rng, breakers, rollouts),
        }
    }

    /// Whether the request must wait for its body (`match.body`): the first rule that could
    /// still match it reads the body, and every other condition of that rule holds. Only for a
    /// request whose body is `RequestBody::Pending`; false for any other.
    pub fn needs_body(&self, request: &Request<'_>) -> bool {
        if !self.reads_body || !matches!(request.body(), RequestBody::Pending) {
            return false;
        }
        let first = |candidates: &mut dyn Iterator<Item = usize>| {
            candidates
                .filter_map(|i| self.rules.get(i))
                .find(|r| r.matcher.holds_before_body(request))
                .is_some_and(|r| r.matcher.reads_body())
        };
        match &self.index {
            Some(index) => first(&mut index.candidates(request.authority(), request.route_name())),
            None => first(&mut (0..self.rules.len())),
        }
    }

    /// The first of `candidates` (ascending rule indices) whose matcher holds decides.
    fn decide_among(
        &self,
        candidates: impl Iterator<Item = usize>,
        request: &Request<'_>,
        rng: &mut Rng,
        breakers: &[BreakerView],
        rollouts: &[Vec<u32>],
    ) -> Decision {
        for index in candidates {
            let Some(rule) = self.rules.get(index) else {
                continue;
            };
            if rule.matcher.holds(request) {
                let (laned, lane) = rule.follow_lane(request);
                let (bucketed, set_cookie) = match laned {
                    Some(destination) => (destination, None),
                    None => rule.pick(request, rng, rule.bounds_in_force(rollouts)),
                };
                let (destination, rerouted) = rule.follow_breakers(bucketed, breakers, rng);
                let fault = match &rule.fault {
                    Some(policy) => rule.in_fault_slice(
                        policy,
                        destination,
                        request,
                        set_cookie.as_deref(),
                        rng,
                    ),
                    None => false,
                };
                let ticket = rule
                    .destinations
                    .get(destination)
                    .and_then(|d| d.breaker_slot)
                    .filter(|_| !fault)
                    .map(|slot| BreakerTicket {
                        slot,
                        generation: BreakerView::of(breakers, slot).generation,
                    });
                return Decision::Routed(Routed {
                    rule: index,
                    destination,
                    set_cookie,
                    rerouted,
                    ticket,
                    lane,
                    fault,
                });
            }
        }
        Decision::Unmatched
    }
}

impl Rule {
    /// The destination ranges in force: a rollout's current ones, else the compiled ones.
    pub fn bounds_in_force<'a>(&'a self, rollouts: &'a [Vec<u32>]) -> &'a [u32] {
        self.rollout_slot
            .and_then(|slot| rollouts.get(slot))
            .map_or(&self.upper_bounds, |b| b)
    }

    /// For a rule with `propagate`: the destination the request's lane names (or
    /// `lane_fallback`), when the rule routes by lanes and one came in, and what the lane did.
    /// Breakers still apply to it after.
    fn follow_lane(&self, request: &Request<'_>) -> (Option<usize>, Option<LaneStep>) {
        let Some(lane) = &self.lane else {
            return (None, None);
        };
        let carried = if lane.from_lane {
            request.lane(lane.carrier)
        } else {
            None
        };
        let Some(name) = carried else {
            return (None, Some(LaneStep::Started));
        };
        match self
            .destinations
            .iter()
            .position(|d| d.name.as_bytes() == name)
        {
            Some(d) => (Some(d), Some(LaneStep::Followed)),
            None => match lane.fallback {
                Some(f) => (Some(f), Some(LaneStep::Fallback)),
                None => (None, Some(LaneStep::Unknown)),
            },
        }
    }

    fn pick(
        &self,
        request: &Request<'_>,
        rng: &mut Rng,
        bounds: &[u32],
    ) -> (usize, Option<String>) {
        // A fixed route hashes nothing. It still assigns cookies: users then carry an id
        // before a second destination is added, so the shares hold from the first request.
        let fixed = self.destinations.len() == 1;
        let sticky = match &self.sticky {
            Some(sticky) if !fixed || sticky.assign_cookie.is_some() => sticky,
            None if !fixed => {
                let bucket = bucket::bucket_of_random(self.hash, rng.next_u64());
                return (bucket::destination_for(bounds, bucket), None);
            }
            _ => return (0, None),
        };
        // Borrowed from the request: no copy of the key per request. (`Rule::user_key` is the
        // same for the CLI; calling it from here costs ~110 bytes of Wasm.)
        let key: Option<Cow<'_, [u8]>> = match &sticky.key {
            StickyKey::Header(name) => request.header(name).map(Cow::Borrowed),
            StickyKey::Cookie(name) => request.cookie(name).map(Cow::Borrowed),
            StickyKey::Query(name) => request.query(name),
        }
        .filter(|k| !k.is_empty());
        let mut set_cookie = None;
        let bucket = match (key, &sticky.key, &sticky.assign_cookie) {
            (Some(_), _, _) if fixed => return (0, None),
            (Some(key), _, _) => self.bucket_of_key(&key),
            // A new user's id comes from the OS (never the sampling generator); without one
            // the user is bucketed at random and gets no cookie this time.
            (None, StickyKey::Cookie(cookie), Some(attributes)) => match rng.user_id() {
                Some(id) => {
                    set_cookie = Some(format!("{cookie}={id}{attributes}"));
                    self.bucket_of_key(id.as_bytes())
                }
                None => bucket::bucket_of_random(self.hash, rng.next_u64()),
            },
            (None, _, _) => bucket::bucket_of_random(self.hash, rng.next_u64()),
        };
        (bucket::destination_for(bounds, bucket), set_cookie)
    }

    /// Whether a request routed to `destination` is in the fault slice: for a sticky rule by
    /// the user's fault bucket (`fault_bucket_of_key`; a new user's by the id just assigned in
    /// `set_cookie`), else (or without a key) at random.
    fn in_fault_slice(
        &self,
        policy: &FaultPolicy,
        destination: usize,
        request: &Request<'_>,
        set_cookie: Option<&str>,
        rng: &mut Rng,
    ) -> bool {
        let key = self
            .sticky
            .as_ref()
            .and_then(|s| Rule::user_key(s, request));
        let bucket = match (&key, set_cookie) {
            (Some(key), _) => Some(policy.bucket_of_key(key)),
            // `<cookie>=<id><attributes>`: the id is what later requests carry.
            (None, Some(cookie)) => cookie
                .split_once('=')
                .and_then(|(_, rest)| rest.split(';').next())
                .map(|id| policy.bucket_of_key(id.as_bytes())),
            (None, None) => None,
        };
        policy.selects(destination, bucket, || rng.next_u64())
    }

    /// From the bucketed destination, follows fallbacks while breakers say so: open sends the
    /// request on, half-open lets `half_open_percent` through as probes. Chains are loop-free
    /// (validated) and bounded by the destination count anyway.
    fn follow_breakers(
        &self,
        mut at: usize,
        breakers: &[BreakerView],
        rng: &mut Rng,
    ) -> (usize, u16) {
        let mut rerouted = 0u16;
        for _ in 0..self.destinations.len() {
            let Some(dest) = self.destinations.get(at) else {
                break;
            };
            let (Some(slot), Some(fallback), Some(policy)) =
                (dest.breaker_slot, dest.fallback, &dest.breaker)
            else {
                break;
            };
            let passes = match BreakerView::of(breakers, slot).state {
                State::Closed => true,
                State::Open => false,
                State::HalfOpen => rng.next_u64() < policy.half_open_threshold,
            };
            if passes {
                break;
            }
            rerouted |= 1u16 << (at as u32 & 15);
            at = fallback;
        }
        (at, rerouted)
    }

    /// The destination a sticky user key is bucketed to, before any breaker moves the request
    /// on: what the same key always gets while weights and salt stay.
    pub fn destination_of_key(&self, key: &[u8]) -> usize {
        bucket::destination_for(&self.upper_bounds, self.bucket_of_key(key))
    }

    /// `destination_of_key` under given bounds (a rollout's at some share).
    pub fn destination_of_key_in(&self, key: &[u8], bounds: &[u32]) -> usize {
        bucket::destination_for(bounds, self.bucket_of_key(key))
    }

    /// The bucket of a user key under this rule's salt and hash.
    pub fn bucket_of_key(&self, key: &[u8]) -> u32 {
        bucket::bucket_of_hash(self.hash, bucket::murmur3_of(&self.salt_colon, key))
    }

    /// The destination index owning `bucket` (before any breaker).
    pub fn destination_of_bucket(&self, bucket: u32) -> usize {
        bucket::destination_for(&self.upper_bounds, bucket)
    }

    /// The request's user key for `sticky`, as `pick` reads it (an empty value counts as none),
    /// for `traffic-split explain`; the `user_key_is_what_pick_buckets` test keeps them equal.
    pub fn user_key<'r>(sticky: &Sticky, request: &Request<'r>) -> Option<Cow<'r, [u8]>> {
        match &sticky.key {
            StickyKey::Header(name) => request.header(name).map(Cow::Borrowed),
            StickyKey::Cookie(name) => request.cookie(name).map(Cow::Borrowed),
            StickyKey::Query(name) => request.query(name),
        }
        .filter(|k| !k.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{header_pairs as headers, HeaderPair};

    fn plan(json: &str) -> Plan {
        Plan::from_json(json.as_bytes()).unwrap()
    }

    fn routed(d: Decision) -> Routed {
        match d {
            Decision::Routed(r) => r,
            Decision::Unmatched => panic!("expected a routed decision"),
        }
    }

    const RINGS: &str = r#"{"rules":[
        {"name":"employees","match":{"headers":[{"name":"x-employee","exact":"true"}]},
         "destinations":[{"name":"canary","cluster":"v2"}]},
        {"name":"beta","match":{"cookies":[{"name":"beta","present":true}]},
         "destinations":[{"name":"canary","cluster":"v2"}]},
        {"name":"everyone","match":{"path":{"prefix":"/checkout"}},
         "sticky":{"header":"x-user-id"},
         "destinations":[{"name":"canary","cluster":"v2","weight":5},
                         {"name":"stable","cluster":"v1","weight":95}]}]}"#;

    /// `Rule::user_key` (what `traffic-split explain` shows) is the key `pick` buckets.
    #[test]
    fn user_key_is_what_pick_buckets() {
        for sticky in [
            r#"{"header":"x-u"}"#,
            r#"{"cookie":"uid"}"#,
            r#"{"query":"u"}"#,
        ] {
            let p = plan(&format!(
                r#"{{"rules":[{{"name":"r","sticky":{sticky},"destinations":[
                    {{"name":"a","cluster":"a"}},{{"name":"b","cluster":"b"}},
                    {{"name":"c","cluster":"c"}}]}}]}}"#
            ));
            let rule = &p.rules[0];
            let s = rule.sticky.as_ref().unwrap();
            for i in 0..200 {
                let key = format!("user-{i}");
                let h = headers(&[
                    (":path", &format!("/p?u={key}")),
                    ("x-u", &key),
                    ("cookie", &format!("uid={key}")),
                ]);
                let r = Request::new(&h, None);
                let k = Rule::user_key(s, &r).unwrap();
                assert_eq!(&*k, key.as_bytes());
                let want = rule.destination_of_bucket(rule.bucket_of_key(&k));
                // Two different seeds: a keyed decision never depends on the generator.
                for seed in [1, 2] {
                    let got = routed(p.decide(&r, &mut Rng::from_seed(seed), &[]));
                    assert_eq!(got.destination, want, "{sticky} {key}");
                }
            }
            let h = headers(&[(":path", "/p?u="), ("x-u", ""), ("cookie", "uid=")]);
            assert!(
                Rule::user_key(s, &Request::new(&h, None)).is_none(),
                "{sticky}"
            );
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = plan(RINGS);
        let mut rng = Rng::from_seed(1);
        let h = headers(&[
            (":path", "/checkout"),
            ("x-employee", "true"),
            ("cookie", "beta=1"),
        ]);
        assert_eq!(
            routed(p.decide(&Request::new(&h, None), &mut rng, &[])).rule,
            0
        );
        let h = headers(&[(":path", "/checkout"), ("cookie", "beta=1")]);
        assert_eq!(
            routed(p.decide(&Request::new(&h, None), &mut rng, &[])).rule,
            1
        );
        let h = headers(&[(":path", "/checkout"), ("x-user-id", "u1")]);
        assert_eq!(
            routed(p.decide(&Request::new(&h, None), &mut rng, &[])).rule,
            2
        );
        let h = headers(&[(":path", "/other")]);
        assert_eq!(
            p.decide(&Request::new(&h, None), &mut rng, &[]),
            Decision::Unmatched
        );
    }

    #[test]
    fn sticky_keys_always_land_on_the_same_destination() {
        let p = plan(RINGS);
        for user in 0..500 {
            let h = headers(&[
                (":path", "/checkout"),
                ("x-user-id", &format!("user-{user}")),
            ]);
            let first = routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(1), &[]));
            for seed in 2..5 {
                let again =
                    routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(seed), &[]));
                assert_eq!(first, again);
            }
            let key = format!("user-{user}");
            assert_eq!(
                p.rules[2].destination_of_key(key.as_bytes()),
                first.destination,
                "destination_of_key says what decide does"
            );
        }
    }

    #[test]
    fn unleash_rule_routes_like_unleash_gradual_rollout() {
        // gr1:123 -> bucket 73, groupX:999 -> bucket 25.
        for (salt, user, rollout, expected_first) in [
            ("gr1", "123", 73, true),
            ("gr1", "123", 72, false),
            ("groupX", "999", 25, true),
            ("groupX", "999", 24, false),
        ] {
            let p = plan(&format!(
                r#"{{"rules":[{{"name":"r","hash":"unleash","salt":"{salt}","sticky":{{"header":"x-user-id"}},
                   "destinations":[{{"name":"on","cluster":"a","weight":{rollout}}},
                                   {{"name":"off","cluster":"b","weight":{}}}]}}]}}"#,
                100 - rollout
            ));
            let h = headers(&[("x-user-id", user)]);
            let r = routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(0), &[]));
            assert_eq!(
                r.destination == 0,
                expected_first,
                "{salt}:{user} at {rollout}%"
            );
        }
    }

    #[test]
    fn assign_cookie_when_missing_and_bucket_with_the_new_id() {
        let p = plan(
            r#"{"rules":[{"name":"r","sticky":{"cookie":"uid","assign_cookie":true,"cookie_max_age_s":60},
               "destinations":[{"name":"a","cluster":"a"},{"name":"b","cluster":"b"}]}]}"#,
        );
        let h = headers(&[("cookie", "other=1")]);
        let r = routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(9), &[]));
        let cookie = r.set_cookie.clone().unwrap();
        assert!(
            cookie.ends_with("; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"),
            "{cookie}"
        );
        let id = cookie
            .strip_prefix("uid=")
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        assert_eq!(id.len(), 32);
        // Coming back with the assigned cookie lands on the same destination, no new cookie.
        let h = headers(&[("cookie", &format!("uid={id}"))]);
        let again = routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(10), &[]));
        assert_eq!(again.destination, r.destination);
        assert_eq!(again.set_cookie, None);
    }

    #[test]
    fn assigned_ids_come_from_the_os_not_the_sampling_seed() {
        let p = plan(
            r#"{"rules":[{"name":"r","sticky":{"cookie":"uid","assign_cookie":true},
               "destinations":[{"name":"a","cluster":"a"},{"name":"b","cluster":"b"}]}]}"#,
        );
        let h = headers(&[]);
        // Same seed, same request: a PRNG-derived id would repeat; OS ids do not.
        let ids: Vec<String> = (0..2)
            .map(|_| {
                let r = routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(1), &[]));
                r.set_cookie.unwrap()
            })
            .collect();
        assert_ne!(ids[0], ids[1]);
        // No OS randomness: no id at all (never a guessable one), the request is still routed.
        let mut rng = Rng::with_id_source(1, |_| false);
        let picks: Vec<Routed> = (0..200)
            .map(|_| routed(p.decide(&Request::new(&h, None), &mut rng, &[])))
            .collect();
        assert!(picks.iter().all(|r| r.set_cookie.is_none()));
        assert!(
            picks.iter().any(|r| r.destination == 0) && picks.iter().any(|r| r.destination == 1)
        );
    }

    #[test]
    fn assigned_cookie_attributes_follow_the_config() {
        let p = plan(
            r#"{"rules":[{"name":"r","sticky":{"cookie":"__Host-uid","assign_cookie":true,
               "cookie_secure":true,"cookie_same_site":"Strict","cookie_max_age_s":1},
               "destinations":[{"name":"a","cluster":"a"}]}]}"#,
        );
        let r = routed(p.decide(&Request::new(&[], None), &mut Rng::from_seed(1), &[]));
        let cookie = r.set_cookie.unwrap();
        assert!(cookie.starts_with("__Host-uid="), "{cookie}");
        assert!(
            cookie.ends_with("; Path=/; Max-Age=1; HttpOnly; Secure; SameSite=Strict"),
            "{cookie}"
        );
    }

    #[test]
    fn a_fixed_route_still_assigns_cookies() {
        let p = plan(
            r#"{"rules":[{"name":"r","sticky":{"cookie":"uid","assign_cookie":true},
               "destinations":[{"name":"only","cluster":"a"}]}]}"#,
        );
        let h = headers(&[]);
        let r = routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(4), &[]));
        assert_eq!(r.destination, 0);
        let cookie = r.set_cookie.unwrap();
        assert!(
            cookie.starts_with("uid=") && cookie.contains("Max-Age=2592000"),
            "{cookie}"
        );
        let h = headers(&[("cookie", "uid=abc")]);
        let again = routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(5), &[]));
        assert_eq!((again.destination, again.set_cookie), (0, None));
    }

    #[test]
    fn missing_key_without_assign_cookie_is_random() {
        let p = plan(
            r#"{"rules":[{"name":"r","sticky":{"query":"u"},
               "destinations":[{"name":"a","cluster":"a"},{"name":"b","cluster":"b"}]}]}"#,
        );
        let mut rng = Rng::from_seed(3);
        let h = headers(&[(":path", "/x?u=")]);
        let picks: Vec<usize> = (0..200)
            .map(|_| routed(p.decide(&Request::new(&h, None), &mut rng, &[])).destination)
            .collect();
        assert!(picks.contains(&0) && picks.contains(&1));
        assert!(picks.iter().all(|&d| d < 2));
    }

    #[test]
    fn zero_weight_is_a_kill_switch() {
        let p = plan(
            r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a","weight":0},{"name":"b","cluster":"b"}]}]}"#,
        );
        let mut rng = Rng::from_seed(5);
        let h = headers(&[]);
        assert!((0..1000)
            .all(|_| routed(p.decide(&Request::new(&h, None), &mut rng, &[])).destination == 1));
    }

    const BREAKERS: &str = r#"{"rules":[{"name":"r","sticky":{"header":"u"},"destinations":[
        {"name":"canary","cluster":"v2","weight":50,"fallback":"stable","breaker":{"half_open_percent":10}},
        {"name":"stable","cluster":"v1","weight":50,"fallback":"old","breaker":{}},
        {"name":"old","cluster":"v0","weight":0}]}]}"#;

    fn view(state: State, generation: u64) -> BreakerView {
        BreakerView { state, generation }
    }

    /// Users the bucketing puts on the canary.
    fn canary_users(p: &Plan) -> Vec<Vec<HeaderPair>> {
        (0..200)
            .map(|i| headers(&[("u", &format!("user-{i}"))]))
            .filter(|h| {
                routed(p.decide(&Request::new(h, None), &mut Rng::from_seed(0), &[])).destination
                    == 0
            })
            .collect()
    }

    #[test]
    fn an_open_breaker_sends_its_users_to_the_fallback_and_back_when_closed() {
        let p = plan(BREAKERS);
        let users = canary_users(&p);
        assert!(users.len() > 50);
        let mut rng = Rng::from_seed(1);
        let closed = [view(State::Closed, 4), view(State::Closed, 0)];
        let open = [view(State::Open, 5), view(State::Closed, 0)];
        for h in &users {
            let r = routed(p.decide(&Request::new(h, None), &mut rng, &closed));
            assert_eq!(
                (r.destination, r.rerouted, r.ticket),
                (
                    0,
                    0,
                    Some(BreakerTicket {
                        slot: 0,
                        generation: 4
                    })
                )
            );
            let r = routed(p.decide(&Request::new(h, None), &mut rng, &open));
            // Stable has a breaker too: its outcome is counted for its own breaker.
            assert_eq!(
                (r.destination, r.rerouted, r.ticket),
                (
                    1,
                    0b1,
                    Some(BreakerTicket {
                        slot: 1,
                        generation: 0
                    })
                )
            );
            let r = routed(p.decide(&Request::new(h, None), &mut rng, &closed));
            assert_eq!(r.destination, 0, "sticky users come back when it closes");
        }
    }

    #[test]
    fn fallback_chains_and_half_open_probes() {
        let p = plan(BREAKERS);
        let users = canary_users(&p);
        let mut rng = Rng::from_seed(2);
        let both_open = [view(State::Open, 1), view(State::Open, 1)];
        for h in &users {
            let r = routed(p.decide(&Request::new(h, None), &mut rng, &both_open));
            assert_eq!((r.destination, r.rerouted, r.ticket), (2, 0b11, None));
        }
        let half_open = [view(State::HalfOpen, 2), view(State::Closed, 0)];
        let n = 10_000;
        let h = &users[0];
        let probes = (0..n)
            .map(|_| routed(p.decide(&Request::new(h, None), &mut rng, &half_open)))
            .filter(|r| r.destination == 0)
            .inspect(|r| {
                assert_eq!(
                    r.ticket,
                    Some(BreakerTicket {
                        slot: 0,
                        generation: 2
                    })
                )
            })
            .count();
        // Binomial(10000, 0.1): sd 30; 4 sigma.
        assert!((880..=1120).contains(&probes), "{probes} probes");
    }

    /// "Employees or beta cookie, but not bots" as one rule.
    #[test]
    fn not_and_any_of_make_rings_one_rule() {
        let p = plan(
            r#"{"rules":[{"name":"ring","match":{
                 "any_of":[{"headers":[{"name":"x-employee","exact":"true"}]},
                           {"cookies":[{"name":"beta","present":true}]}],
                 "not":{"headers":[{"name":"user-agent","prefix":"bot"}],"path":{"prefix":"/health"}}},
               "destinations":[{"name":"canary","cluster":"v2"}]}]}"#,
        );
        let decide = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            p.decide(&Request::new(&h, None), &mut Rng::from_seed(1), &[]) != Decision::Unmatched
        };
        assert!(decide(&[("x-employee", "true"), (":path", "/")]));
        assert!(decide(&[("cookie", "beta=1"), (":path", "/")]));
        assert!(!decide(&[("x-employee", "no"), (":path", "/")]));
        // `not` holds unless all its conditions do: a bot on /health is out, a bot elsewhere in.
        assert!(!decide(&[
            ("cookie", "beta=1"),
            ("user-agent", "bot/1"),
            (":path", "/health")
        ]));
        assert!(decide(&[
            ("cookie", "beta=1"),
            ("user-agent", "bot/1"),
            (":path", "/x")
        ]));
    }

    #[test]
    fn source_ips_match_the_reported_peer() {
        let p = plan(
            r#"{"rules":[{"name":"office","match":{"source_ips":["10.0.0.0/8","2001:db8::/32"]},
               "destinations":[{"name":"canary","cluster":"v2"}]}]}"#,
        );
        let decide = |addr: Option<&str>| {
            let r = Request::new(&[], None).with_source_address(addr.map(str::as_bytes));
            p.decide(&r, &mut Rng::from_seed(1), &[]) != Decision::Unmatched
        };
        assert!(decide(Some("10.20.30.40:5555")));
        assert!(decide(Some("[2001:db8::7]:443")));
        assert!(decide(Some("[::ffff:10.0.0.1]:1")));
        assert!(!decide(Some("11.0.0.1:5555")));
        assert!(!decide(Some("[2001:db9::7]:443")));
        assert!(!decide(Some("garbage")));
        assert!(!decide(None));
    }

    #[test]
    fn regex_matches_whole_values_of_every_kind() {
        let to = |name: &str, m: &str| {
            format!(
                r#"{{"name":"{name}","match":{m},"destinations":[{{"name":"d","cluster":"c"}}]}}"#
            )
        };
        let p = plan(&format!(
            r#"{{"rules":[{},{},{},{},{}]}}"#,
            to(
                "header",
                r#"{"headers":[{"name":"user-agent","regex":".*(iPhone|iPad).*"}]}"#
            ),
            to(
                "cookie",
                r#"{"cookies":[{"name":"plan","regex":"pro|team-[0-9]+"}]}"#
            ),
            to("query", r#"{"query":[{"name":"v","regex":"2\\.[0-9]+"}]}"#),
            to("path", r#"{"path":{"regex":"/api/v[0-9]+/orders"}}"#),
            to(
                "authority",
                r#"{"authority":{"regex":"[a-z]+\\.beta\\.example(:[0-9]+)?"}}"#
            ),
        ));
        let rule_of = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            match p.decide(&Request::new(&h, None), &mut Rng::from_seed(1), &[]) {
                Decision::Routed(r) => Some(r.rule),
                Decision::Unmatched => None,
            }
        };
        assert_eq!(
            rule_of(&[("user-agent", "Mozilla/5.0 (iPhone; CPU)")]),
            Some(0)
        );
        assert_eq!(rule_of(&[("cookie", "plan=team-42")]), Some(1));
        assert_eq!(rule_of(&[("cookie", "plan=team-42x")]), None);
        assert_eq!(rule_of(&[(":path", "/x?v=2.17")]), Some(2));
        assert_eq!(rule_of(&[(":path", "/api/v3/orders?v=1")]), Some(3));
        assert_eq!(rule_of(&[(":path", "/api/v3/orders/7")]), None);
        assert_eq!(
            rule_of(&[(":authority", "Shop.BETA.example:8443")]),
            Some(4)
        );
        assert_eq!(rule_of(&[(":authority", "shop.beta.example.evil")]), None);
    }

    /// The index changes which rules are evaluated, never the answer: the same requests
    /// against the same plan with and without it decide alike, rule by rule.
    #[test]
    fn the_rule_index_decides_exactly_like_a_linear_scan() {
        let hosts = ["a.example", "B.example", "a.example:8080", "c.example"];
        let mut rules = Vec::new();
        for i in 0..40 {
            let m = match i % 5 {
                0 => format!(r#"{{"authority":{{"exact":"{}"}}}}"#, hosts[i % 4]),
                1 => format!(
                    r#"{{"authority":{{"exact":"{}"}},"headers":[{{"name":"x-k","exact":"{}"}}]}}"#,
                    hosts[(i / 5) % 4],
                    i % 3
                ),
                2 => format!(r#"{{"route_names":["r{}","r{}"]}}"#, i % 3, (i + 1) % 3),
                3 => format!(r#"{{"headers":[{{"name":"x-k","exact":"{}"}}]}}"#, i % 4),
                _ => format!(
                    r#"{{"authority":{{"suffix":".example"}},"path":{{"prefix":"/p{}"}}}}"#,
                    i % 3
                ),
            };
            rules.push(format!(
                r#"{{"name":"r{i}","match":{m},"destinations":[{{"name":"d","cluster":"c"}}]}}"#
            ));
        }
        let json = format!(r#"{{"rules":[{}]}}"#, rules.join(","));
        let mut indexed = plan(&json);
        assert!(indexed.index.is_some());
        let linear = {
            let mut p = plan(&json);
            p.index = None;
            p
        };
        let mut checked = 0;
        for host in [
            "a.example",
            "A.EXAMPLE",
            "b.example",
            "a.example:8080",
            "c.example",
            "x",
        ] {
            for route in [None, Some(&b"r0"[..]), Some(b"r2"), Some(b"zz")] {
                for k in ["0", "1", "2", "3", "9"] {
                    for path in ["/p0", "/p1", "/q"] {
                        let h = headers(&[(":authority", host), (":path", path), ("x-k", k)]);
                        let r = Request::new(&h, route);
                        let a = indexed.decide(&r, &mut Rng::from_seed(1), &[]);
                        let b = linear.decide(&r, &mut Rng::from_seed(1), &[]);
                        assert_eq!(a, b, "{host} {route:?} {k} {path}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 360);
        // And the index is what made the difference: with a wrong index, answers change.
        indexed.index = crate::plan::RuleIndex::build(std::iter::empty());
        assert!(indexed.index.is_none());
    }

    /// A hop that routes by lanes: the lane's destination when the rule has it, else
    /// `lane_fallback`, else the usual decision; a lane that does not verify counts as none;
    /// an open breaker still moves a laned request on.
    #[test]
    fn lanes_route_to_the_named_destination_and_breakers_still_apply() {
        let secret = "0123456789abcdef-lanes";
        let downstream = |fallback: &str| {
            plan(&format!(
                r#"{{"lane_secret":"{secret}","rules":[{{"name":"b","from_lane":true,{fallback}
                   "propagate":{{"baggage":"split-lane"}},"sticky":{{"header":"u"}},
                   "destinations":[{{"name":"canary","cluster":"b2","weight":1,"fallback":"stable","breaker":{{}}}},
                                   {{"name":"stable","cluster":"b1","weight":99}}]}}]}}"#
            ))
        };
        let p = downstream("");
        let now = 1_800_000_000;
        let decide = |p: &Plan, baggage: &str, breakers: &[BreakerView]| {
            let h = headers(&[("u", "user-1"), ("baggage", baggage)]);
            let r = Request::new(&h, None);
            let incoming = p.lanes.screen(&r, || Some(now));
            let r = r.with_lanes(&incoming);
            let d = routed(p.decide(&r, &mut Rng::from_seed(1), breakers));
            (p.rules[0].destinations[d.destination].name.clone(), d.lane)
        };
        let canary = format!("k=v,split-lane={}", p.lanes.value_for("canary", Some(now)));
        let stable = format!("split-lane={}", p.lanes.value_for("stable", Some(now)));
        let other = format!("split-lane={}", p.lanes.value_for("elsewhere", Some(now)));
        // user-1 buckets to stable (weight 99 of 100) without a lane.
        assert_eq!(
            decide(&p, "", &[]),
            ("stable".into(), Some(LaneStep::Started))
        );
        assert_eq!(
            decide(&p, &canary, &[]),
            ("canary".into(), Some(LaneStep::Followed))
        );
        assert_eq!(
            decide(&p, &stable, &[]),
            ("stable".into(), Some(LaneStep::Followed))
        );
        assert_eq!(
            decide(&p, &other, &[]),
            ("stable".into(), Some(LaneStep::Unknown))
        );
        // Forged (unsigned) and stale: as if no lane came.
        assert_eq!(
            decide(&p, "split-lane=canary", &[]),
            ("stable".into(), Some(LaneStep::Started))
        );
        let open = [BreakerView {
            state: State::Open,
            generation: 1,
        }];
        assert_eq!(
            decide(&p, &canary, &open),
            ("stable".into(), Some(LaneStep::Followed))
        );
        let with_fallback = downstream(r#""lane_fallback":"canary","#);
        let other = format!(
            "split-lane={}",
            with_fallback.lanes.value_for("elsewhere", Some(now))
        );
        assert_eq!(
            decide(&with_fallback, &other, &[]),
            ("canary".into(), Some(LaneStep::Fallback))
        );
    }

    /// Where lanes start, an incoming lane never decides: it is untrusted.
    #[test]
    fn an_edge_rule_never_follows_an_incoming_lane() {
        let p = plan(
            r#"{"rules":[{"name":"edge","propagate":{"header":"x-split-lane"},"sticky":{"header":"u"},
               "destinations":[{"name":"canary","cluster":"a","weight":0},{"name":"stable","cluster":"b"}]}]}"#,
        );
        let h = headers(&[("u", "x"), ("x-split-lane", "canary")]);
        let r = Request::new(&h, None);
        let incoming = p.lanes.screen(&r, || None);
        assert_eq!(incoming, vec![crate::lane::Incoming::Untrusted]);
        let d = routed(p.decide(&r.with_lanes(&incoming), &mut Rng::from_seed(1), &[]));
        assert_eq!((d.destination, d.lane), (1, Some(LaneStep::Started)));
    }

    #[test]
    fn non_utf8_and_garbage_inputs_do_not_panic() {
        let p = plan(RINGS);
        let mut rng = Rng::from_seed(5);
        let h: Vec<HeaderPair> = vec![
            (":path".into(), b"/checkout\xff?\xfe=%%%".to_vec()),
            ("x-user-id".into(), b"\xff\x00\x01".to_vec()),
            ("cookie".into(), b";;==;\xff".to_vec()),
            ("x-employee".into(), vec![0xff; 70_000]),
        ];
        assert_eq!(
            routed(p.decide(&Request::new(&h, None), &mut rng, &[])).rule,
            2
        );
        let empty: Vec<HeaderPair> = Vec::new();
        assert_eq!(
            p.decide(&Request::new(&empty, None), &mut rng, &[]),
            Decision::Unmatched
        );
    }
}
