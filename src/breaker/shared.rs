//! How workers share a breaker: the record's shared-data key, the compare-and-swap store it
//! lives in, who reports the `state` gauge, and the publish algorithm with its back-off.

use super::{BreakerPolicy, Outcomes, Record, Transition};

/// Identifies one filter instance among those sharing a `vm_id` (one shared-data namespace):
/// the plugin's name and root id, and the listener direction and metadata Envoy hands it (the
/// parts of Envoy's own plugin key besides the configuration; Envoy 1.40 was nevertheless seen
/// running one root context for a configuration repeated on listeners that differ only in
/// direction). The configuration is left out on purpose, so a breaker survives updates.
/// Length-prefixed parts, hashed (FNV-1a, 64 bits) into 16 hex digits.
pub fn instance_scope(parts: &[&[u8]]) -> String {
    let mut hash = crate::fnv::Fnv1a::default();
    for part in parts {
        hash.bytes(&(part.len() as u64).to_le_bytes());
        hash.bytes(part);
    }
    format!("{:016x}", hash.value())
}

/// The shared-data key of one breaker's record: the instance, rule and destination, and the
/// cluster, so a destination repointed to another cluster (another version) starts afresh
/// rather than inheriting the old version's state. Rule and destination names never contain
/// a `/`; the cluster comes last, so any cluster name keeps keys apart.
pub fn record_key(scope: &str, rule: &str, destination: &str, cluster: &str) -> String {
    format!("traffic-split/breaker/v2/{scope}/{rule}/{destination}/{cluster}")
}

/// A shared-data read that failed (not a missing key: that is `Ok(None)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFailed;

/// Envoy's shared data, or a test double: values with a compare-and-swap token.
pub trait SharedStore {
    /// The value and its token, `Ok(None)` when the key has none, `Err` when the read failed.
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, ReadFailed>;
    /// Writes if the value still has token `cas` (`None`: unconditionally).
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetResult {
    Written,
    /// Another writer got there first.
    Conflict,
    Failed,
}

/// Writes an empty record under `key` unless one is there already. Called at configure time,
/// before this configuration serves a request, so that every later update is a real
/// compare-and-swap: Envoy's shared data has no create-if-absent, and a write to an absent key
/// is unconditional. Envoy configures a new plugin first on the main thread (its configuration
/// check) and only then on the workers, so creation does not race with the workers' updates.
pub fn create_record(store: &mut impl SharedStore, key: &str) -> bool {
    match store.get(key) {
        Ok(Some(_)) => true,
        Ok(None) => store.set(key, &Record::default().encode(), None) == SetResult::Written,
        Err(ReadFailed) => false,
    }
}

/// The `state` gauge's name carries the rule and destination only (a public contract), so
/// several breakers can map to one gauge: the old and new configuration of an instance during
/// an update, or instances sharing a `vm_id` with the same names. One owner at a time reports
/// it (shared data under `owner_key`): the configuration loaded last claims it at configure
/// time, only the owner writes it, and a configuration going away that still owns it (no
/// successor claimed it: its breaker was removed) sets it to 0, so a `state != 0` alert
/// clears. An owner is a configuration's breaker: `gauge_owner`. Returns the previous owner
/// when another one was replaced.
pub fn claim_gauge(store: &mut impl SharedStore, owner_key: &str, owner: &str) -> Option<String> {
    let previous = match store.get(owner_key) {
        Ok(Some((bytes, _))) => bytes,
        Ok(None) => Vec::new(),
        Err(ReadFailed) => return None,
    };
    if previous == owner.as_bytes() {
        return None;
    }
    store.set(owner_key, owner.as_bytes(), None);
    (!previous.is_empty()).then(|| String::from_utf8_lossy(&previous).into_owned())
}

/// A configuration's breaker, as a gauge owner: a digest of the whole configuration (the same
/// on every worker; another after any update) and the record key. An update that keeps a
/// breaker keeps its record key, and the old configuration going away must then not release
/// the gauge its successor reports.
pub fn gauge_owner(configuration: &[u8], record_key: &str) -> String {
    format!("{}\n{record_key}", instance_scope(&[configuration]))
}

/// The record key of a `gauge_owner` value.
pub fn owner_record_key(owner: &str) -> &str {
    owner.split_once('\n').map_or(owner, |(_, key)| key)
}

/// Whether `owner` owns the gauge (see `claim_gauge`).
pub fn owns_gauge(store: &mut impl SharedStore, owner_key: &str, owner: &str) -> bool {
    matches!(store.get(owner_key), Ok(Some((current, _))) if current == owner.as_bytes())
}

/// A configuration going away gives its gauge up: `true` when it still owned it (the caller
/// then sets the gauge to 0). Compare-and-swap, so a successor's claim in between wins.
pub fn release_gauge(store: &mut impl SharedStore, owner_key: &str, owner: &str) -> bool {
    match store.get(owner_key) {
        Ok(Some((current, cas))) if current == owner.as_bytes() => {
            store.set(owner_key, b"", Some(cas)) == SetResult::Written
        }
        _ => false,
    }
}

/// Compare-and-swap attempts in one publish before it backs off.
pub const PUBLISH_ATTEMPTS: u32 = 3;
/// Back-off after a publish lost every attempt: doubles from the first to the last value.
pub const BACKOFF_MIN_MS: u64 = 10;
pub const BACKOFF_MAX_MS: u64 = 320;

/// One worker's side of one breaker: what it last saw of the shared record, the outcomes it
/// has not published yet, and its back-off after lost races.
#[derive(Debug, Clone, Default)]
pub struct Publisher {
    /// The shared record as last read or written.
    pub record: Record,
    pub pending: Outcomes,
    /// When this worker last read or wrote the shared record.
    pub synced_ms: u64,
    /// No publish before this time (after lost races).
    retry_at_ms: u64,
    backoff_ms: u64,
}

/// What one `Publisher::publish` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// The shared record was read (and written if needed): `Publisher::record` is fresh.
    pub synced: bool,
    /// The state change this publish made (only the writer that made it reports it).
    pub transition: Option<Transition>,
    /// Compare-and-swap writes that lost to another worker.
    pub conflicts: u32,
}

impl Publisher {
    /// Starts from the shared record as it is (at configure time), so a configuration that
    /// replaces another decides its first requests with the breaker's current state rather
    /// than as closed until its first publish.
    pub fn load(store: &mut impl SharedStore, key: &str) -> Publisher {
        let record = match store.get(key) {
            Ok(Some((bytes, _))) => Record::decode(&bytes).unwrap_or_default(),
            _ => Record::default(),
        };
        Publisher {
            pending: Outcomes {
                generation: record.generation,
                ..Outcomes::default()
            },
            record,
            ..Publisher::default()
        }
    }

    /// Whether a publish may run now (not backing off after lost races).
    pub fn may_publish(&self, now_ms: u64) -> bool {
        now_ms >= self.retry_at_ms
    }

    /// `publish` from a response: skipped while backing off after lost races, so a contended
    /// record never costs a retry loop under Envoy's shared-data lock on every response.
    pub fn publish_if_due(
        &mut self,
        store: &mut impl SharedStore,
        key: &str,
        policy: &BreakerPolicy,
        now_ms: u64,
    ) -> Published {
        if !self.may_publish(now_ms) {
            return Published::default();
        }
        self.publish(store, key, policy, now_ms)
    }

    /// Merges the pending outcomes into the shared record under `key` and moves it on, with
    /// compare-and-swap. A lost race is retried with the fresh record up to
    /// `PUBLISH_ATTEMPTS` times; then the outcomes are kept for later and responses stop
    /// publishing for a while (`publish_if_due`: `BACKOFF_MIN_MS`, doubling up to
    /// `BACKOFF_MAX_MS`). The tick (and a configuration going away) publishes regardless: at
    /// most once per tick, and nothing counted is left behind.
    pub fn publish(
        &mut self,
        store: &mut impl SharedStore,
        key: &str,
        policy: &BreakerPolicy,
        now_ms: u64,
    ) -> Published {
        let mut done = Published::default();
        for _ in 0..PUBLISH_ATTEMPTS {
            let (mut record, cas) = match store.get(key) {
                Ok(Some((bytes, cas))) => (Record::decode(&bytes).unwrap_or_default(), cas),
                // Created at configure time, so absent only if something removed it: create it
                // again (an empty record: nothing of ours is lost if that write races) and
                // update it with compare-and-swap like any other.
                Ok(None) => {
                    if store.set(key, &Record::default().encode(), None) != SetResult::Written {
                        return done;
                    }
                    continue;
                }
                Err(ReadFailed) => return done,
            };
            let merges = self.pending.requests > 0 && self.pending.generation == record.generation;
            record.merge(policy, now_ms, &self.pending);
            let rebased = record.rebase_clock(now_ms);
            let transition = record.advance(policy, now_ms);
            if merges || rebased || transition.is_some() {
                match store.set(key, &record.encode(), Some(cas)) {
                    SetResult::Written => {}
                    SetResult::Conflict => {
                        done.conflicts += 1;
                        continue;
                    }
                    SetResult::Failed => return done,
                }
            }
            self.pending = self.pending.after_publish(record.generation);
            self.synced_ms = now_ms;
            self.backoff_ms = 0;
            self.record = record;
            done.synced = true;
            done.transition = transition;
            return done;
        }
        self.backoff_ms = (self.backoff_ms * 2).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        self.retry_at_ms = now_ms.saturating_add(self.backoff_ms);
        done
    }
}
