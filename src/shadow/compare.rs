//! Comparing shadow and primary answers: status, class and body digest, paired whichever
//! arrives first.

use super::Keyed;
use crate::fnv::Fnv1a;

/// How an exchange ended, as far as comparison is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub latency_ms: u64,
    /// Digest of the body, when bodies are compared and the body was within bounds.
    pub body_digest: Option<u64>,
}

/// What one comparison found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub status_mismatch: bool,
    pub class_mismatch: bool,
    pub body_mismatch: bool,
}

pub fn compare(primary: &Answer, shadow: &Answer) -> Verdict {
    Verdict {
        status_mismatch: primary.status != shadow.status,
        class_mismatch: primary.status / 100 != shadow.status / 100,
        body_mismatch: match (primary.body_digest, shadow.body_digest) {
            (Some(p), Some(s)) => p != s,
            _ => false,
        },
    }
}

/// A 64-bit FNV-1a digest (`crate::fnv`), fed chunk by chunk as the body passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest(Fnv1a);

impl Digest {
    /// The digest of a whole body.
    pub fn of(bytes: &[u8]) -> Digest {
        let mut digest = Digest::default();
        digest.update(bytes);
        digest
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.bytes(bytes);
    }

    pub fn value(&self) -> u64 {
        self.0.value()
    }
}

/// The digest of a body as it passes, chunk by chunk, up to `limit` bytes: past the limit, or
/// after a short read, the body has no digest (never one of a truncated body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDigest {
    digest: Digest,
    /// Bytes seen (u64: a long download passes 4 GiB).
    seen: u64,
    limit: u64,
    /// A read came back short.
    broken: bool,
}

impl BodyDigest {
    pub fn new(limit: u64) -> Self {
        BodyDigest {
            digest: Digest::default(),
            seen: 0,
            limit,
            broken: false,
        }
    }

    /// A chunk of `len` bytes passed; true when its bytes are wanted (then `feed` them).
    pub fn passed(&mut self, len: usize) -> bool {
        self.seen = self.seen.saturating_add(len as u64);
        self.seen <= self.limit && len > 0 && !self.broken
    }

    /// The wanted chunk's bytes, or `None` when they could not be read.
    pub fn feed(&mut self, chunk: Option<&[u8]>) {
        match chunk {
            Some(bytes) => self.digest.update(bytes),
            None => self.broken = true,
        }
    }

    /// The digest of the whole body, if it stayed within the limit and every read succeeded.
    pub fn value(&self) -> Option<u64> {
        (self.seen <= self.limit && !self.broken).then(|| self.digest.value())
    }
}

/// Pairs primary and shadow answers of the same request, whichever arrives first. Entries
/// live until the primary is known (or gone) and every expected shadow answered (or failed), or
/// until their deadline: a primary that streams for an hour (SSE, a download) does not keep a
/// record for an hour. At most `capacity` records (per worker); found by binary search.
pub struct CompareBook {
    entries: Keyed<Entry>,
    pub capacity: usize,
}

/// Where the primary of a compared request is.
#[derive(Clone, Copy)]
enum Primary {
    /// Still streaming: shadow answers wait for it.
    Pending,
    Answered(Answer),
    /// The client went away without an answer: nothing is compared.
    Gone,
}

struct Entry {
    primary: Primary,
    expected_shadows: usize,
    /// Shadow answers waiting for the primary: (shadow target, answer).
    waiting: Vec<(usize, Answer)>,
    deadline_ms: u64,
}

/// A finished comparison: which shadow target, and what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub target: usize,
    pub verdict: Verdict,
}

impl CompareBook {
    pub fn new(capacity: usize) -> Self {
        CompareBook {
            entries: Keyed::default(),
            capacity,
        }
    }

    /// A request will be compared with `shadows` copies, until `deadline_ms` at the latest.
    /// False (nothing is compared) when the book is full.
    pub fn open(&mut self, key: u64, shadows: usize, deadline_ms: u64) -> bool {
        if self.entries.len() >= self.capacity {
            return false;
        }
        self.entries.insert(
            key,
            Entry {
                primary: Primary::Pending,
                expected_shadows: shadows,
                waiting: Vec::new(),
                deadline_ms,
            },
        );
        true
    }

    /// A copy will never answer (dropped or failed): nothing to compare for it.
    pub fn shadow_gone(&mut self, key: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.expected_shadows = e.expected_shadows.saturating_sub(1);
        }
        self.tidy(key);
    }

    /// A shadow answered; returns the finding if the primary is already known.
    pub fn shadow_answered(&mut self, key: u64, target: usize, answer: Answer) -> Option<Finding> {
        let e = self.entries.get_mut(key)?;
        e.expected_shadows = e.expected_shadows.saturating_sub(1);
        let finding = match &e.primary {
            Primary::Answered(primary) => Some(Finding {
                target,
                verdict: compare(primary, &answer),
            }),
            Primary::Gone => None,
            Primary::Pending => {
                e.waiting.push((target, answer));
                None
            }
        };
        self.tidy(key);
        finding
    }

    /// The primary answered (`None`: the client went away without an answer); returns the
    /// findings for the shadows that answered first.
    pub fn primary_done(&mut self, key: u64, answer: Option<Answer>) -> Vec<Finding> {
        let Some(e) = self.entries.get_mut(key) else {
            return Vec::new();
        };
        if !matches!(e.primary, Primary::Pending) {
            return Vec::new();
        }
        e.primary = answer.map_or(Primary::Gone, Primary::Answered);
        let findings = match &answer {
            Some(primary) => e
                .waiting
                .drain(..)
                .map(|(target, shadow)| Finding {
                    target,
                    verdict: compare(primary, &shadow),
                })
                .collect(),
            None => {
                e.waiting.clear();
                Vec::new()
            }
        };
        self.tidy(key);
        findings
    }

    /// Forgets records past their deadline (nothing is compared for them); returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        self.entries.take_if(|e| e.deadline_ms <= now_ms).len()
    }

    fn tidy(&mut self, key: u64) {
        let done = self
            .entries
            .get_mut(key)
            .is_some_and(|e| !matches!(e.primary, Primary::Pending) && e.expected_shadows == 0);
        if done {
            self.entries.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_digest_covers_whole_bodies_within_the_limit_only() {
        let mut d = BodyDigest::new(6);
        assert!(d.passed(3));
        d.feed(Some(b"abc"));
        assert!(!d.passed(0), "an empty chunk has nothing to read");
        assert!(d.passed(3));
        d.feed(Some(b"def"));
        assert_eq!(d.value(), Some(Digest::of(b"abcdef").value()));
        assert!(!d.passed(1), "past the limit");
        assert_eq!(d.value(), None);
        let mut short = BodyDigest::new(100);
        assert!(short.passed(3));
        short.feed(None);
        assert!(!short.passed(3), "nothing more after a short read");
        assert_eq!(short.value(), None);
        assert_eq!(BodyDigest::new(0).value(), Some(Digest::default().value()));
    }

    #[test]
    fn comparison_classes_and_bodies() {
        let a = |status, digest| Answer {
            status,
            latency_ms: 1,
            body_digest: digest,
        };
        assert_eq!(compare(&a(200, None), &a(200, None)), Verdict::default());
        assert_eq!(
            compare(&a(200, None), &a(201, None)),
            Verdict {
                status_mismatch: true,
                ..Verdict::default()
            }
        );
        assert_eq!(
            compare(&a(200, Some(1)), &a(500, Some(2))),
            Verdict {
                status_mismatch: true,
                class_mismatch: true,
                body_mismatch: true
            }
        );
        assert!(!compare(&a(200, Some(1)), &a(200, None)).body_mismatch);
    }

    #[test]
    fn compare_book_pairs_answers_in_either_order_and_forgets_finished_requests() {
        let ok = Answer {
            status: 200,
            latency_ms: 3,
            body_digest: None,
        };
        let err = Answer { status: 500, ..ok };
        let mut book = CompareBook::new(8);
        // Shadow first, then primary.
        book.open(1, 2, u64::MAX);
        assert_eq!(book.shadow_answered(1, 0, err), None);
        let findings = book.primary_done(1, Some(ok));
        assert_eq!(findings.len(), 1);
        assert!(findings[0].verdict.class_mismatch);
        assert_eq!(book.len(), 1);
        // Primary first, then the second shadow.
        let late = book.shadow_answered(1, 1, ok).unwrap();
        assert_eq!(
            late,
            Finding {
                target: 1,
                verdict: Verdict::default()
            }
        );
        assert!(book.is_empty());
        // A failed shadow and a vanished client leave nothing behind.
        book.open(2, 1, u64::MAX);
        book.shadow_gone(2);
        assert!(book.primary_done(2, None).is_empty());
        assert!(book.is_empty());
        book.open(3, 1, u64::MAX);
        assert!(book.primary_done(3, None).is_empty());
        assert_eq!(book.shadow_answered(3, 0, ok), None);
        assert!(book.is_empty());
    }

    #[test]
    fn compare_records_are_bounded_and_expire() {
        let ok = Answer {
            status: 200,
            latency_ms: 3,
            body_digest: None,
        };
        let mut book = CompareBook::new(2);
        assert!(book.open(1, 1, 1_000));
        assert!(book.open(2, 1, 5_000));
        assert!(!book.open(3, 1, 5_000), "full");
        // The shadow answered; the primary (a long download) has not finished.
        assert_eq!(book.shadow_answered(1, 0, ok), None);
        assert_eq!(book.expire(999), 0);
        assert_eq!(book.expire(1_000), 1);
        assert_eq!(book.len(), 1);
        // Gone: the primary's late end finds nothing and compares nothing.
        assert!(book.primary_done(1, Some(ok)).is_empty());
        assert!(book.open(3, 1, 5_000), "room again");
        assert_eq!(book.expire(u64::MAX), 2);
        assert!(book.is_empty());
    }

    #[test]
    fn digest_is_chunking_independent() {
        let mut whole = Digest::default();
        whole.update(b"hello world");
        let mut parts = Digest::default();
        parts.update(b"hello");
        parts.update(b" world");
        assert_eq!(whole, parts);
        let mut other = Digest::default();
        other.update(b"hello worle");
        assert_ne!(whole, other);
    }
}
