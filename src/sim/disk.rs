//! A simulated node's disk: the records its store's journal logged, each
//! with the virtual instant it was appended, and what a crash keeps of
//! them. `sync` keeps everything (a change is acknowledged only once it is
//! on disk, and the simulated node acknowledges after the merge);
//! `periodic` keeps what was appended up to the last fsync tick (every
//! `interval` from the node's start) or before a forced fsync (an
//! anti-entropy session that merged something, as the real node does).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::crdt::{Entry, Version};
use crate::durability::{files, record};
use crate::store::{Journal, JournalError, JournalWait, Store};

/// How the simulated nodes keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskMode {
    /// In memory only: a crash loses everything (no `--data-dir`).
    Memory,
    /// Written at once, fsynced every `interval`.
    Periodic {
        /// The fsync interval.
        interval: Duration,
    },
    /// Fsynced before each acknowledgement.
    Sync,
}

struct Records {
    /// Payloads with their virtual append instant.
    records: Vec<(Instant, Vec<u8>)>,
    /// Records fsynced by a forced fsync.
    forced: usize,
    /// The node's virtual now.
    now: Instant,
}

/// One life's journal of a simulated node.
pub struct SimDisk {
    mode: DiskMode,
    /// The node's start: fsync ticks count from it.
    start: Instant,
    records: Mutex<Records>,
}

impl SimDisk {
    /// A disk for a node starting at `start_us` holding `kept` (what the
    /// previous life's crash kept, all of it on disk already).
    pub fn new(mode: DiskMode, start: Instant, kept: Vec<Vec<u8>>) -> Arc<Self> {
        let forced = kept.len();
        Arc::new(Self {
            mode,
            start,
            records: Mutex::new(Records {
                records: kept.into_iter().map(|r| (start, r)).collect(),
                forced,
                now: start,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the virtual instant of the next records.
    pub fn set_now(&self, now: Instant) {
        self.lock().now = now;
    }

    /// Fsyncs everything appended so far (periodic mode's forced fsync).
    pub fn force_sync(&self) {
        let mut r = self.lock();
        r.forced = r.records.len();
    }

    /// What a crash at `now` keeps.
    pub fn kept(&self, now: Instant) -> Vec<Vec<u8>> {
        let r = self.lock();
        let upto = match self.mode {
            DiskMode::Memory => 0,
            DiskMode::Sync => r.records.len(),
            DiskMode::Periodic { interval } => {
                let step = interval.as_micros().max(1);
                let ticks = now.saturating_duration_since(self.start).as_micros() / step;
                let tick = self.start + Duration::from_micros((ticks * step) as u64);
                let ticked = r.records.iter().take_while(|(at, _)| *at <= tick).count();
                ticked.max(r.forced)
            }
        };
        r.records[..upto].iter().map(|(_, p)| p.clone()).collect()
    }

    fn append(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut payload = Vec::new();
        write(&mut payload);
        let mut r = self.lock();
        let at = r.now;
        r.records.push((at, payload));
    }
}

/// A store holding what `kept` records; for the checker, which counts a
/// crashed node's disk as a copy of what it holds.
pub fn store_of(partitions: u32, kept: &[Vec<u8>]) -> Store {
    let store = Store::new(partitions);
    // The records were encoded by the same code: a failure is a bug.
    files::replay_payloads(&store, kept.iter().map(|p| p.as_slice()))
        .expect("simulated disk records decode");
    store
}

impl Journal for SimDisk {
    fn merged(&self, key: &str, entry: &Entry) {
        self.append(|b| record::merged(b, key, entry));
    }

    fn removed(&self, key: &str, version: Version) {
        self.append(|b| record::removed(b, key, version));
    }

    fn dropped(&self, partition: u32) {
        self.append(|b| record::dropped(b, partition));
    }

    fn check(&self) -> Result<(), JournalError> {
        Ok(())
    }

    fn durable(&self) -> JournalWait<'_> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn synced(&self) -> JournalWait<'_> {
        self.force_sync();
        Box::pin(std::future::ready(Ok(())))
    }
}
