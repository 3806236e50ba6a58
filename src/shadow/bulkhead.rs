//! The bulkhead that bounds a slow or dead shadow, and the small sorted map the host keys
//! its copies and calls by.

/// Outstanding shadow copies (collecting their body, queued, or awaiting the shadow's answer)
/// and the bytes they hold, per worker. Both are bounded: beyond them copies are dropped.
///
/// A copy holds its header copy and its body from the moment it is made until its call
/// completes: the VM keeps them until dispatch, then Envoy keeps its own copy until the answer
/// (or failure) arrives. Bytes are u64: wasm32's usize would wrap at 4 GiB.
pub struct Bulkhead {
    pub max_in_flight: usize,
    pub max_held_bytes: u64,
    in_flight: usize,
    held_bytes: u64,
}

impl Bulkhead {
    pub fn new(max_in_flight: usize, max_held_bytes: u64) -> Self {
        Bulkhead {
            max_in_flight,
            max_held_bytes,
            in_flight: 0,
            held_bytes: 0,
        }
    }

    /// Takes a slot and holds `bytes` (the header copy) for a new copy, or neither.
    pub fn try_start_copy(&mut self, bytes: u64) -> bool {
        if self.in_flight < self.max_in_flight && self.try_hold(bytes) {
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// Gives back a copy's slot and everything it held.
    pub fn end_copy(&mut self, held: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.release(held);
    }

    pub fn try_hold(&mut self, bytes: u64) -> bool {
        match self.held_bytes.checked_add(bytes) {
            Some(total) if total <= self.max_held_bytes => {
                self.held_bytes = total;
                true
            }
            _ => false,
        }
    }

    pub fn release(&mut self, bytes: u64) {
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }
}

/// A small map from u64 keys, kept sorted: lookups are binary searches. Keys handed out in
/// increasing order (as the shadow code does) make an insert a push. Far smaller in Wasm than
/// `BTreeMap` or `HashMap`.
pub struct Keyed<T> {
    entries: Vec<(u64, T)>,
}

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Keyed {
            entries: Vec::new(),
        }
    }
}

impl<T> Keyed<T> {
    pub fn insert(&mut self, key: u64, value: T) {
        match self.entries.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(at) => {
                if let Some(slot) = self.entries.get_mut(at) {
                    slot.1 = value;
                }
            }
            Err(at) => self.entries.insert(at, (key, value)),
        }
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        let at = self.entries.binary_search_by_key(&key, |(k, _)| *k).ok()?;
        self.entries.get_mut(at).map(|(_, v)| v)
    }

    pub fn contains(&self, key: u64) -> bool {
        self.entries.binary_search_by_key(&key, |(k, _)| *k).is_ok()
    }

    pub fn remove(&mut self, key: u64) -> Option<T> {
        let at = self.entries.binary_search_by_key(&key, |(k, _)| *k).ok()?;
        Some(self.entries.remove(at).1)
    }

    /// Removes and returns every entry `expired` says is due (a sweep, on the tick).
    pub fn take_if(&mut self, mut expired: impl FnMut(&T) -> bool) -> Vec<(u64, T)> {
        if !self.entries.iter().any(|(_, v)| expired(v)) {
            return Vec::new();
        }
        let (gone, kept) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(_, v)| expired(v));
        self.entries = kept;
        gone
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulkhead_bounds_copies_and_everything_they_hold() {
        let mut b = Bulkhead::new(2, 100);
        assert!(b.try_start_copy(30));
        assert!(b.try_start_copy(30));
        assert!(!b.try_start_copy(0), "no third slot");
        b.end_copy(30);
        assert_eq!(b.held_bytes(), 30);
        assert!(
            !b.try_start_copy(71),
            "headers alone would pass the byte bound"
        );
        assert_eq!(b.in_flight(), 1, "a refused copy takes no slot");
        assert!(b.try_start_copy(20));
        assert!(b.try_hold(50));
        assert!(!b.try_hold(1));
        b.end_copy(30 + 50);
        assert_eq!(b.held_bytes(), 20);
        b.end_copy(20);
        b.end_copy(0);
        assert_eq!((b.in_flight(), b.held_bytes()), (0, 0));
        // Byte counts are u64 on every target: 5 GiB held is 5 GiB, not 1 GiB (wasm32 usize).
        let mut big = Bulkhead::new(4, 6 << 30);
        assert!(big.try_start_copy(5 << 30));
        assert_eq!(big.held_bytes(), 5 << 30);
        assert!(!big.try_hold(2 << 30));
        assert!(!big.try_hold(u64::MAX), "overflow is a refusal, not a wrap");
    }

    #[test]
    fn keyed_finds_by_binary_search_and_sweeps() {
        let mut k: Keyed<&str> = Keyed::default();
        for (key, v) in [(3, "c"), (1, "a"), (7, "g"), (5, "e")] {
            k.insert(key, v);
        }
        assert_eq!(k.get_mut(5).copied(), Some("e"));
        assert!(k.contains(1) && !k.contains(2));
        assert_eq!(k.remove(3), Some("c"));
        assert_eq!(k.remove(3), None);
        k.insert(7, "G");
        assert_eq!(k.len(), 3);
        let gone = k.take_if(|v| *v != "a");
        assert_eq!(gone, vec![(5, "e"), (7, "G")]);
        assert_eq!(k.len(), 1);
        assert!(k.take_if(|_| false).is_empty());
    }
}
