//! One peer's delta queue: gathers the deltas bound for the peer into
//! batches, by size or after a short linger, whichever comes first, and
//! holds the batches waiting to be sent. Bounded in bytes: a delta that
//! would pass the bound is refused, and the caller holds it as a hint
//! instead. Pure state; the shell owns the clock and the sending.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a peer's queue batches and how much it may hold.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Bytes that fill a batch.
    pub max_bytes: usize,
    /// How long a delta may wait for others to share its batch.
    pub linger: Duration,
    /// The most bytes waiting for one peer (the batch in flight excluded):
    /// a slow peer must not make its queue grow without limit, since ONE
    /// writes are acknowledged at once.
    pub max_queued_bytes: usize,
}

/// Items waiting for one peer: full batches, then the open one.
pub struct Batcher<T> {
    full: VecDeque<(Vec<T>, usize)>,
    open: Vec<T>,
    open_bytes: usize,
    since: Option<Instant>,
    queued_bytes: usize,
    limits: BatchLimits,
}

/// An item the queue refused: taking it would pass the byte bound.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow<T> {
    /// The item, handed back.
    pub item: T,
    /// Bytes waiting when it was refused.
    pub queued_bytes: usize,
}

impl<T> Batcher<T> {
    /// An empty queue under `limits`.
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            full: VecDeque::new(),
            open: Vec::new(),
            open_bytes: 0,
            since: None,
            queued_bytes: 0,
            limits,
        }
    }

    /// Adds an item of `bytes` at `now`, closing the open batch when it is
    /// full. Refused when the items waiting and this one would pass
    /// `max_queued_bytes`; an item is always taken by an empty queue, so
    /// that one larger than the bound still travels.
    pub fn push(&mut self, item: T, bytes: usize, now: Instant) -> Result<(), Overflow<T>> {
        if !self.is_empty() && self.queued_bytes + bytes > self.limits.max_queued_bytes {
            return Err(Overflow {
                item,
                queued_bytes: self.queued_bytes,
            });
        }
        self.since.get_or_insert(now);
        self.open.push(item);
        self.open_bytes += bytes;
        self.queued_bytes += bytes;
        if self.open_bytes >= self.limits.max_bytes {
            let batch = std::mem::take(&mut self.open);
            self.full.push_back((batch, self.open_bytes));
            self.open_bytes = 0;
            self.since = None;
        }
        Ok(())
    }

    /// The next batch to send at `now`: the oldest full one, else the open
    /// one when its linger has passed.
    pub fn next(&mut self, now: Instant) -> Option<Vec<T>> {
        if let Some((batch, bytes)) = self.full.pop_front() {
            self.queued_bytes -= bytes;
            return Some(batch);
        }
        match self.since {
            Some(s) if s + self.limits.linger <= now => Some(self.take_open()),
            _ => None,
        }
    }

    /// The instant the open batch is due, if it holds items (full batches
    /// are due at once: [`Batcher::next`] returns them first).
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.limits.linger)
    }

    /// Everything waiting, oldest first, at once (for shutdown).
    pub fn take(&mut self) -> Vec<T> {
        let mut all: Vec<T> = self.full.drain(..).flat_map(|(b, _)| b).collect();
        all.append(&mut self.take_open());
        self.queued_bytes = 0;
        all
    }

    /// The items waiting, oldest first.
    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.full.iter().flat_map(|(b, _)| b).chain(&self.open)
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.full.is_empty() && self.open.is_empty()
    }

    fn take_open(&mut self) -> Vec<T> {
        self.queued_bytes -= self.open_bytes;
        self.open_bytes = 0;
        self.since = None;
        std::mem::take(&mut self.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: usize, max_queued_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_bytes,
            linger: Duration::from_millis(5),
            max_queued_bytes,
        }
    }

    #[test]
    fn closes_on_size_or_linger() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(10, 1000));
        b.push(1, 4, t0).unwrap();
        assert_eq!(b.next(t0 + Duration::from_millis(4)), None);
        b.push(2, 6, t0 + Duration::from_millis(1)).unwrap();
        b.push(3, 1, t0 + Duration::from_millis(10)).unwrap();
        assert_eq!(b.next(t0 + Duration::from_millis(10)), Some(vec![1, 2]));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(15)));
        assert_eq!(b.next(t0 + Duration::from_millis(14)), None);
        assert_eq!(b.next(t0 + Duration::from_millis(15)), Some(vec![3]));
        assert!(b.is_empty() && b.deadline().is_none());
        assert_eq!(b.queued_bytes(), 0);
    }

    #[test]
    fn a_slow_peer_cannot_grow_its_queue_past_the_bound() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(10, 25));
        // Nothing is sent: the peer is slow. Five items of 5 bytes fit...
        for i in 0..5 {
            b.push(i, 5, t0).unwrap();
        }
        assert_eq!(b.queued_bytes(), 25);
        // ...the sixth would pass 25 bytes and is handed back.
        assert_eq!(
            b.push(5, 5, t0),
            Err(Overflow {
                item: 5,
                queued_bytes: 25
            })
        );
        assert_eq!(b.items().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        // Sending a batch makes room again.
        assert_eq!(b.next(t0), Some(vec![0, 1]));
        b.push(5, 5, t0).unwrap();
        assert_eq!(b.take(), vec![2, 3, 4, 5]);
        assert_eq!(b.queued_bytes(), 0);
    }

    #[test]
    fn an_empty_queue_takes_an_item_larger_than_the_bound() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(10, 25));
        b.push("big", 100, t0).unwrap();
        assert!(b.push("next", 1, t0).is_err());
        assert_eq!(b.next(t0), Some(vec!["big"]));
        b.push("next", 1, t0).unwrap();
    }
}
