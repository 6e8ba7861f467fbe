//! Durability: a write-ahead log of every change the store makes, and
//! snapshots, so that a node (or a whole cluster) restarted from its data
//! directory comes back with what it held (docs/durability.md).
//!
//! The store reports each change to its [`Journal`] under the key's lock;
//! [`Durability`] is that journal: it encodes the change as a record and
//! appends it to the [`log::Log`], whose writer thread writes and fsyncs
//! it. Callers that acknowledge a change (the coordinator, the peer
//! service, anti-entropy) wait on [`Store::durable`], which in `sync` mode
//! resolves once the record is fsynced. At start, [`Durability::recover`]
//! loads the newest snapshot and replays the log after it into the empty
//! store; the node decides whether to keep it (`rejoin`, for a directory
//! older than the dead-node grace), and [`Recovering::open`] attaches the
//! journal; snapshots are taken in the
//! background while writes go on (a fuzzy snapshot: merges are joins, so
//! replaying records it already holds is harmless), then older segments
//! are deleted.
//!
//! The module sits below the services that wait on it and above the store
//! and the entry codec it uses; only `node` builds it.

pub mod files;
pub mod frame;
pub mod log;
pub mod record;
pub mod rejoin;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use files::{DurabilityError, HeldHint, Recovered};
pub use log::{Log, LogConfig};

use crate::config::DurabilityMode;
use crate::crdt::{Entry, Version};
use crate::replication::{HintLog, Replicator};
use crate::store::{Journal, JournalError, JournalWait, Store};

/// How often the background task checks whether a snapshot is due and
/// records that the node is alive.
const TICK: Duration = Duration::from_secs(1);

/// The settings of a node's durability (from `--data-dir` and friends).
#[derive(Clone, Debug)]
pub struct DurabilityConfig {
    /// The data directory.
    pub dir: PathBuf,
    /// `periodic` or `sync`.
    pub mode: DurabilityMode,
    /// The fsync interval in `periodic` mode.
    pub fsync_interval: Duration,
    /// The size past which a log segment is closed.
    pub segment_bytes: u64,
    /// A snapshot is due once the log since the last one is larger than
    /// that snapshot and than this.
    pub snapshot_log_bytes: u64,
    /// Data older than this (since the node was last running) is stale: a
    /// node with peers keeps it only if they did not run that long without
    /// it (`--dead-node-grace`; the `rejoin` module).
    pub stale_after: Duration,
}

/// What `Stats` reports of the log and snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurabilityStats {
    /// Bytes of log segments on disk.
    pub log_bytes: u64,
    /// Unix milliseconds of the last fsync of the log (0: none yet).
    pub last_fsync_ms: u64,
    /// Unix milliseconds of the newest snapshot (0: none).
    pub last_snapshot_ms: u64,
    /// Bytes of the newest snapshot on disk.
    pub snapshot_bytes: u64,
}

/// The node's journal: the log, the data directory and its snapshots.
pub struct Durability {
    dir: PathBuf,
    config: DurabilityConfig,
    log: Log,
    /// The log's disk bytes right after the last snapshot.
    log_bytes_at_snapshot: AtomicU64,
    snapshot_bytes: AtomicU64,
    last_snapshot_ms: AtomicU64,
    /// One snapshot at a time.
    snapshotting: Mutex<()>,
    /// Whose hints a snapshot keeps.
    replicator: std::sync::OnceLock<Arc<Replicator>>,
}

impl Durability {
    /// Recovers `store` (empty, no journal) from `config.dir`, opens the
    /// log after what it found and attaches itself as the store's journal,
    /// keeping what it found however old (a node without peers, and the
    /// tests). Returns what recovery found.
    pub fn open(
        config: DurabilityConfig,
        store: &Store,
    ) -> Result<(Arc<Self>, Recovered), DurabilityError> {
        Self::recover(config, store)?.open(store, true)
    }

    /// Loads `config.dir` into `store` (empty, no journal) without writing
    /// anything: the caller then decides, with [`Recovering::stale`] and
    /// the rejoin rule (`rejoin`), whether to keep what it loaded, and
    /// calls [`Recovering::open`]. Damage in the middle of the log stops
    /// the node here, with the file and offset.
    pub fn recover(config: DurabilityConfig, store: &Store) -> Result<Recovering, DurabilityError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| DurabilityError::Io {
            what: "cannot create",
            path: dir.clone(),
            source,
        })?;
        let started = std::time::Instant::now();
        let found = files::recover(&dir, store)?;
        Ok(Recovering {
            config,
            found,
            started,
        })
    }

    /// Logs the hints `replicator` takes from now on and keeps them in
    /// snapshots; holds again the `recovered` ones younger than
    /// `max_age`, with their age.
    pub fn attach_replicator(
        self: &Arc<Self>,
        replicator: &Arc<Replicator>,
        recovered: Vec<HeldHint>,
        max_age: Duration,
    ) {
        let _ = self.replicator.set(replicator.clone());
        replicator.attach_hint_log(self.clone());
        let now = log::unix_ms();
        let mut held = 0;
        for (peer, taken, key, entry) in recovered {
            let age = Duration::from_millis(now.saturating_sub(taken));
            if age < max_age {
                replicator.restore_hint(&peer, key, entry, age);
                held += 1;
            }
        }
        if held > 0 {
            tracing::info!(hints = held, "holding hints recovered from disk again");
        }
    }

    /// `periodic` or `sync`.
    pub fn mode(&self) -> DurabilityMode {
        self.config.mode
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The log and snapshot figures for `Stats`.
    pub fn stats(&self) -> DurabilityStats {
        DurabilityStats {
            log_bytes: self.log.disk_bytes(),
            last_fsync_ms: self.log.last_fsync_ms(),
            last_snapshot_ms: self.last_snapshot_ms.load(Ordering::Relaxed),
            snapshot_bytes: self.snapshot_bytes.load(Ordering::Relaxed),
        }
    }

    /// Takes a snapshot of `store` now (blocking: run it off the async
    /// threads), then deletes the segments and snapshots it replaces.
    /// Writes go on meanwhile. Returns its size in bytes.
    pub fn snapshot(&self, store: &Store) -> Result<u64, DurabilityError> {
        let _one = self
            .snapshotting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Every record before the new segment's first is in an older one,
        // and its change is in the store by the time the scan reaches its
        // key (records are appended under the key's lock): those segments
        // go once the snapshot is written.
        let from = self.log.rotate().map_err(|e| DurabilityError::Io {
            what: "cannot rotate the log in",
            path: files::log_dir(&self.dir),
            source: std::io::Error::other(e.to_string()),
        })?;
        let before = self.log.disk_bytes();
        let now = log::unix_ms();
        let hints: Vec<HeldHint> = self
            .replicator
            .get()
            .map(|r| r.held_hints())
            .unwrap_or_default()
            .into_iter()
            .map(|(peer, key, entry, age)| {
                (peer, now.saturating_sub(age.as_millis() as u64), key, entry)
            })
            .collect();
        let size = files::write_snapshot(&self.dir, store, &hints, from)?;
        let freed = files::prune(&self.dir, from)?;
        self.log.forget_bytes(freed);
        self.snapshot_bytes.store(size, Ordering::Relaxed);
        self.log_bytes_at_snapshot
            .store(before.saturating_sub(freed), Ordering::Relaxed);
        self.last_snapshot_ms
            .store(log::unix_ms(), Ordering::Relaxed);
        tracing::info!(bytes = size, from, freed, "snapshot taken");
        Ok(size)
    }

    /// Whether the log grew past the snapshot's size (and the floor) since
    /// the last snapshot: disk then stays about twice the snapshot.
    fn snapshot_due(&self) -> bool {
        let grown = self
            .log
            .disk_bytes()
            .saturating_sub(self.log_bytes_at_snapshot.load(Ordering::Relaxed));
        grown
            > self
                .config
                .snapshot_log_bytes
                .max(self.snapshot_bytes.load(Ordering::Relaxed))
    }

    /// The background work: every second, records that the node is alive
    /// and takes a snapshot when one is due. Runs until aborted.
    pub async fn run(self: Arc<Self>, store: Arc<Store>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = files::write_alive(&self.dir, log::unix_ms()) {
                tracing::warn!(error = %e, "cannot record that this node is alive");
            }
            if !self.snapshot_due() {
                continue;
            }
            let (me, store) = (self.clone(), store.clone());
            let taken = tokio::task::spawn_blocking(move || me.snapshot(&store)).await;
            match taken {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "snapshot failed; the log keeps growing until one succeeds")
                }
                Err(e) => tracing::error!(error = %e, "snapshot task failed"),
            }
        }
    }

    /// Writes and fsyncs what the log holds, and records the node alive:
    /// at graceful shutdown.
    pub fn close(&self) {
        self.log.close();
        if let Err(e) = files::write_alive(&self.dir, log::unix_ms()) {
            tracing::warn!(error = %e, "cannot record that this node is alive");
        }
    }
}

/// A data directory loaded into the store, before the node decides
/// whether to keep it: nothing is written to the directory (its `alive`
/// file included) until [`Recovering::open`].
pub struct Recovering {
    config: DurabilityConfig,
    found: Recovered,
    started: std::time::Instant,
}

impl Recovering {
    /// Unix milliseconds the node was last running, from `DIR/alive` (0:
    /// the directory is new).
    pub fn alive_ms(&self) -> u64 {
        self.found.alive_ms
    }

    /// How long ago the node last ran, when that is longer than the
    /// dead-node grace (`stale_after`): its peers may have dropped it from
    /// placement and collected deletes without it meanwhile.
    pub fn stale(&self) -> Option<Duration> {
        let away = Duration::from_millis(log::unix_ms().saturating_sub(self.found.alive_ms));
        (self.found.alive_ms != 0 && away > self.config.stale_after).then_some(away)
    }

    /// Opens the log after what recovery found and attaches the journal to
    /// `store`. Unless `keep`, first empties `store` and deletes the
    /// directory's snapshots and segments: the node starts empty and
    /// refills from its peers. Returns what recovery found (nothing when
    /// discarded).
    pub fn open(
        self,
        store: &Store,
        keep: bool,
    ) -> Result<(Arc<Durability>, Recovered), DurabilityError> {
        let Recovering {
            config,
            mut found,
            started,
        } = self;
        let dir = config.dir.clone();
        if !keep {
            let held = store.stats();
            tracing::warn!(
                dir = %dir.display(),
                discarded = held.values + held.tombstones,
                "this node discards what it held on disk and refills from its peers (docs/durability.md)"
            );
            for p in 0..store.partitions() {
                store.drop_partition(p);
            }
            files::discard(&dir)?;
            found = Recovered::default();
        }
        files::write_alive(&dir, log::unix_ms())?;
        let log = Log::open(
            LogConfig {
                dir: files::log_dir(&dir),
                mode: config.mode,
                fsync_interval: config.fsync_interval,
                segment_bytes: config.segment_bytes,
            },
            found.next,
            found.log_bytes,
        )
        .map_err(|source| DurabilityError::Io {
            what: "cannot open the log in",
            path: files::log_dir(&dir),
            source,
        })?;
        let held = store.stats();
        tracing::info!(
            dir = %dir.display(),
            mode = ?config.mode,
            snapshot_entries = found.snapshot_entries,
            replayed = found.replayed,
            keys = held.values,
            tombstones = held.tombstones,
            torn_tail = found.torn,
            took = ?started.elapsed(),
            "recovered from disk"
        );
        let me = Arc::new(Durability {
            dir,
            config,
            log,
            log_bytes_at_snapshot: AtomicU64::new(found.log_bytes),
            snapshot_bytes: AtomicU64::new(found.snapshot_bytes),
            last_snapshot_ms: AtomicU64::new(found.snapshot_ms),
            snapshotting: Mutex::new(()),
            replicator: std::sync::OnceLock::new(),
        });
        store.attach_journal(me.clone());
        Ok((me, found))
    }
}

impl HintLog for Durability {
    fn hinted(&self, peer: &str, key: &str, entry: &Entry, age: Duration) {
        let taken = log::unix_ms().saturating_sub(age.as_millis() as u64);
        self.log
            .append(|b| record::hinted(b, peer, taken, key, entry));
    }
}

impl Journal for Durability {
    fn merged(&self, key: &str, entry: &Entry) {
        self.log.append(|b| record::merged(b, key, entry));
    }

    fn removed(&self, key: &str, version: Version) {
        self.log.append(|b| record::removed(b, key, version));
    }

    fn dropped(&self, partition: u32) {
        self.log.append(|b| record::dropped(b, partition));
    }

    fn check(&self) -> Result<(), JournalError> {
        self.log.check()
    }

    fn durable(&self) -> JournalWait<'_> {
        Box::pin(self.log.durable())
    }

    fn synced(&self) -> JournalWait<'_> {
        Box::pin(self.log.synced(self.log.next()))
    }
}

#[cfg(test)]
mod tests;
