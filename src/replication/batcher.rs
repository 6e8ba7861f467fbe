//! Gathers the deltas bound for one peer into batches: by size, or after a
//! short linger, whichever comes first. Pure state; the shell owns the clock.

use std::time::{Duration, Instant};

/// Items waiting for one peer, with their byte count and age.
pub struct Batcher<T> {
    items: Vec<T>,
    bytes: usize,
    since: Option<Instant>,
    max_bytes: usize,
    linger: Duration,
}

impl<T> Batcher<T> {
    /// A batcher that closes a batch at `max_bytes` or `linger` after its
    /// first item.
    pub fn new(max_bytes: usize, linger: Duration) -> Self {
        Self {
            items: Vec::new(),
            bytes: 0,
            since: None,
            max_bytes,
            linger,
        }
    }

    /// Adds an item of `bytes`; returns the batch when it is full.
    pub fn push(&mut self, item: T, bytes: usize, now: Instant) -> Option<Vec<T>> {
        self.since.get_or_insert(now);
        self.items.push(item);
        self.bytes += bytes;
        (self.bytes >= self.max_bytes).then(|| self.take())
    }

    /// The instant the current batch is due, if any items wait.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.linger)
    }

    /// The batch when its linger has passed at `now`.
    pub fn due(&mut self, now: Instant) -> Option<Vec<T>> {
        match self.deadline() {
            Some(d) if d <= now => Some(self.take()),
            _ => None,
        }
    }

    /// Everything waiting, at once (for shutdown).
    pub fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.since = None;
        std::mem::take(&mut self.items)
    }

    /// The items waiting, oldest first.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_on_size_or_linger() {
        let t0 = Instant::now();
        let mut b = Batcher::new(10, Duration::from_millis(5));
        assert_eq!(b.push(1, 4, t0), None);
        assert_eq!(b.due(t0 + Duration::from_millis(4)), None);
        assert_eq!(
            b.push(2, 6, t0 + Duration::from_millis(1)),
            Some(vec![1, 2])
        );
        assert!(b.is_empty() && b.deadline().is_none());
        b.push(3, 1, t0 + Duration::from_millis(10));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(15)));
        assert_eq!(b.due(t0 + Duration::from_millis(15)), Some(vec![3]));
    }
}
