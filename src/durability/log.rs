//! The write-ahead log: records appended in memory by the threads that
//! change the store, written to segment files by one dedicated writer
//! thread, fsynced at once (`sync`) or every interval (`periodic`).
//!
//! Appending only copies the record into a shared buffer under a mutex; the
//! writer takes the whole buffer at a time, so one `write` and one `fsync`
//! cover every record that arrived meanwhile (group commit): in `sync` mode
//! throughput grows with the writes in flight. Records are numbered in the
//! order they are appended (their sequence number); a segment file is named
//! after the number of its first record, so recovery knows every record's
//! number without an index.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::frame;
use crate::config::DurabilityMode;
use crate::store::JournalError;

/// How long the writer lets records gather in `periodic` mode before it
/// writes them: one wakeup and one `write` per millisecond at most, rather
/// than one per change (a change costs a buffer copy, not a thread switch).
/// What a crash of the process alone can take in that mode.
const LINGER: Duration = Duration::from_millis(1);

/// The file name of the segment whose first record is `first`.
pub fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// The first record number of a segment file name, `None` for other names.
pub fn segment_first(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok())?
}

/// How the log writes: where, how often it fsyncs, how large a segment
/// grows.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The directory of the segment files.
    pub dir: PathBuf,
    /// `periodic` or `sync`.
    pub mode: DurabilityMode,
    /// The fsync interval in `periodic` mode.
    pub fsync_interval: Duration,
    /// The size past which a new segment starts.
    pub segment_bytes: u64,
}

/// What the writer has made of the records so far.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Records fsynced (every record numbered below it).
    synced: u64,
    /// Why the log stopped, once it has.
    failed: Option<JournalError>,
}

/// Records appended and not yet taken by the writer.
struct Pending {
    bytes: Vec<u8>,
    /// The number the next record appended gets.
    next: u64,
    /// The writer waits for records.
    idle: bool,
    /// Stop once the buffer is written.
    stop: bool,
    /// Start a new segment before the next write (asked by a snapshot).
    rotate: bool,
}

/// Counters of the log, for `Stats`.
#[derive(Default)]
struct Counters {
    bytes_written: AtomicU64,
    /// Bytes of the segment files on disk.
    disk_bytes: AtomicU64,
    /// Unix milliseconds of the last fsync.
    last_fsync_ms: AtomicU64,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Rotations done, and the first record number of the newest segment.
    rotated: Mutex<(u64, u64)>,
    rotated_wake: Condvar,
    /// Read without the lock by appends that must not buffer after a
    /// failure.
    failed: AtomicBool,
    progress: watch::Sender<Progress>,
    counters: Counters,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The open log, shared by every writer of the store.
pub struct Log {
    shared: Arc<Shared>,
    mode: DurabilityMode,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Log {
    /// Opens the log in `config.dir`, numbering records from `next` (the
    /// number after the last record recovered), with a new segment file
    /// holding `disk_bytes` of older segments; starts the writer thread.
    pub fn open(config: LogConfig, next: u64, disk_bytes: u64) -> Result<Self, std::io::Error> {
        std::fs::create_dir_all(&config.dir)?;
        let (file, path) = create_segment(&config.dir, next)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                bytes: Vec::with_capacity(1 << 20),
                next,
                idle: false,
                stop: false,
                rotate: false,
            }),
            wake: Condvar::new(),
            rotated: Mutex::new((0, next)),
            rotated_wake: Condvar::new(),
            failed: AtomicBool::new(false),
            progress: watch::Sender::new(Progress {
                synced: next,
                failed: None,
            }),
            counters: Counters {
                disk_bytes: AtomicU64::new(disk_bytes),
                ..Counters::default()
            },
        });
        let mode = config.mode;
        let writer = Writer {
            linger: match mode {
                DurabilityMode::Periodic => LINGER.min(config.fsync_interval),
                DurabilityMode::Sync => Duration::ZERO,
            },
            shared: shared.clone(),
            config,
            file,
            path,
            segment_len: 0,
            first: next,
            written: next,
            dirty: false,
            last_sync: Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name("kilovolt-log".into())
            .spawn(move || writer.run())?;
        Ok(Self {
            shared,
            mode,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Appends one record whose payload `write` appends to the buffer it is
    /// given. Dropped when the log has failed: the node refuses writes
    /// then, and buffering would only grow.
    pub fn append(&self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.shared.failed.load(Ordering::Relaxed) {
            return;
        }
        let mut pending = self.shared.pending();
        frame::append(&mut pending.bytes, write);
        pending.next += 1;
        if pending.idle {
            pending.idle = false;
            self.shared.wake.notify_one();
        }
    }

    /// The number the next record appended will get: every record appended
    /// so far is numbered below it.
    pub fn next(&self) -> u64 {
        self.shared.pending().next
    }

    /// Starts a new segment now and returns the number of its first
    /// record: every record numbered below it is in an older segment.
    /// Blocks until the writer has done it (run it off the async threads);
    /// an error once the log failed.
    pub fn rotate(&self) -> Result<u64, JournalError> {
        let before = self.rotations().0;
        {
            let mut pending = self.shared.pending();
            pending.rotate = true;
            pending.idle = false;
        }
        self.shared.wake.notify_one();
        let mut rotated = self.rotations();
        loop {
            self.check()?;
            if rotated.0 > before {
                return Ok(rotated.1);
            }
            rotated = self
                .shared
                .rotated_wake
                .wait_timeout(rotated, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn rotations(&self) -> MutexGuard<'_, (u64, u64)> {
        self.shared
            .rotated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Ok while the log takes records; the cause once it failed.
    pub fn check(&self) -> Result<(), JournalError> {
        if !self.shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        match &self.shared.progress.borrow().failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Resolves once every record appended so far is as durable as the
    /// mode promises: in `sync` mode fsynced, in `periodic` mode at once
    /// (the writer writes it without delay). An error once the log failed.
    pub async fn durable(&self) -> Result<(), JournalError> {
        if self.mode == DurabilityMode::Periodic {
            return self.check();
        }
        let target = self.next();
        self.synced(target).await
    }

    /// Resolves once every record numbered below `target` is fsynced.
    pub async fn synced(&self, target: u64) -> Result<(), JournalError> {
        let mut progress = self.shared.progress.subscribe();
        let seen = progress
            .wait_for(|p| p.synced >= target || p.failed.is_some())
            .await
            .map(|p| p.failed.clone());
        match seen {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(_) => Err(JournalError("the log writer stopped".into())),
        }
    }

    /// Records fsynced so far (every record numbered below it).
    pub fn synced_upto(&self) -> u64 {
        self.shared.progress.borrow().synced
    }

    /// Bytes written to the log since it was opened.
    pub fn bytes_written(&self) -> u64 {
        self.shared.counters.bytes_written.load(Ordering::Relaxed)
    }

    /// Bytes of the segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.counters.disk_bytes.load(Ordering::Relaxed)
    }

    /// Unix milliseconds of the last fsync; 0 before the first.
    pub fn last_fsync_ms(&self) -> u64 {
        self.shared.counters.last_fsync_ms.load(Ordering::Relaxed)
    }

    /// Takes `bytes` of deleted segments off the disk count.
    pub fn forget_bytes(&self, bytes: u64) {
        let c = &self.shared.counters.disk_bytes;
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(b.saturating_sub(bytes))
        });
    }

    /// Writes and fsyncs what is buffered, then stops the writer.
    pub fn close(&self) {
        self.shared.pending().stop = true;
        self.shared.wake.notify_one();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

/// Creates the segment whose first record is `first`, and makes its name
/// durable in the directory.
fn create_segment(dir: &Path, first: u64) -> Result<(File, PathBuf), std::io::Error> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// Fsyncs a directory, so that files created or renamed in it survive a
/// power loss.
pub fn sync_dir(dir: &Path) -> Result<(), std::io::Error> {
    File::open(dir)?.sync_all()
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The writer thread's state.
struct Writer {
    /// How long records gather after the first wakes the writer.
    linger: Duration,
    shared: Arc<Shared>,
    config: LogConfig,
    file: File,
    path: PathBuf,
    segment_len: u64,
    /// The number of the current segment's first record.
    first: u64,
    /// Records written (numbered below it).
    written: u64,
    /// Written and not yet fsynced.
    dirty: bool,
    last_sync: Instant,
}

impl Writer {
    fn run(mut self) {
        let mut spare = Vec::with_capacity(1 << 20);
        loop {
            let (upto, stop, rotate) = {
                let mut pending = self.shared.pending();
                loop {
                    if !pending.bytes.is_empty() || pending.stop || pending.rotate {
                        break;
                    }
                    pending.idle = true;
                    if self.dirty {
                        let left = self
                            .config
                            .fsync_interval
                            .saturating_sub(self.last_sync.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        pending = self
                            .shared
                            .wake
                            .wait_timeout(pending, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    } else {
                        pending = self
                            .shared
                            .wake
                            .wait(pending)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
                pending.idle = false;
                if !self.linger.is_zero()
                    && !pending.stop
                    && !pending.rotate
                    && !pending.bytes.is_empty()
                {
                    // Let more records gather (appends do not wake a writer
                    // that is not idle).
                    drop(pending);
                    std::thread::sleep(self.linger);
                    pending = self.shared.pending();
                }
                std::mem::swap(&mut pending.bytes, &mut spare);
                let rotate = std::mem::take(&mut pending.rotate);
                (pending.next, pending.stop, rotate)
            };
            if let Err(cause) = self.step(&spare, upto, stop, rotate) {
                tracing::error!(error = %cause, "the write-ahead log failed; this node refuses writes until it is restarted");
                self.shared.failed.store(true, Ordering::Relaxed);
                self.shared
                    .progress
                    .send_modify(|p| p.failed = Some(JournalError(cause.into())));
                return;
            }
            spare.clear();
            if stop {
                return;
            }
        }
    }

    /// Writes `bytes` (the records numbered below `upto`), rotating first
    /// when the segment is full, and fsyncs when the mode says so.
    fn step(&mut self, bytes: &[u8], upto: u64, stop: bool, rotate: bool) -> Result<(), String> {
        if !bytes.is_empty() && self.segment_len >= self.config.segment_bytes {
            self.rotate(false)?;
        }
        self.write(bytes, upto)?;
        // A rotation asked for comes after the records taken with it, so
        // that every record appended before the ask is in an older segment.
        if rotate {
            self.rotate(true)?;
        }
        let due = self.config.mode == DurabilityMode::Sync
            || stop
            || self.last_sync.elapsed() >= self.config.fsync_interval;
        if self.dirty && due {
            self.sync()?;
        }
        Ok(())
    }

    /// Starts a new segment, named by the next record to write; `asked`
    /// when a snapshot waits for it.
    fn rotate(&mut self, asked: bool) -> Result<(), String> {
        // An empty segment is kept: a new one would take its name.
        if self.segment_len > 0 {
            self.sync()?;
            let (file, path) = create_segment(&self.config.dir, self.written).map_err(|e| {
                format!(
                    "cannot create log segment {}: {e}",
                    self.config.dir.join(segment_name(self.written)).display()
                )
            })?;
            self.file = file;
            self.path = path;
            self.segment_len = 0;
            self.first = self.written;
        }
        if asked {
            let mut rotated = self
                .shared
                .rotated
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *rotated = (rotated.0 + 1, self.first);
            self.shared.rotated_wake.notify_all();
        }
        Ok(())
    }

    /// Writes `bytes`, the records numbered below `upto`.
    fn write(&mut self, bytes: &[u8], upto: u64) -> Result<(), String> {
        if !bytes.is_empty() {
            self.file
                .write_all(bytes)
                .map_err(|e| format!("cannot write log segment {}: {e}", self.path.display()))?;
            let n = bytes.len() as u64;
            self.segment_len += n;
            self.written = upto;
            self.dirty = true;
            let c = &self.shared.counters;
            c.bytes_written.fetch_add(n, Ordering::Relaxed);
            c.disk_bytes.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), String> {
        if !self.dirty {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| format!("cannot fsync log segment {}: {e}", self.path.display()))?;
        self.dirty = false;
        self.last_sync = Instant::now();
        self.shared
            .counters
            .last_fsync_ms
            .store(unix_ms(), Ordering::Relaxed);
        let written = self.written;
        self.shared.progress.send_modify(|p| p.synced = written);
        Ok(())
    }
}
