//! The files of a data directory, their reading at recovery and the
//! writing of snapshots.
//!
//! ```text
//! DIR/snapshot-<from>.snap   the newest snapshot: every entry held, with the
//!                            number of the first log record it may lack
//! DIR/log/<first>.log        log segments, each named by its first record
//! DIR/alive                  unix milliseconds this node was last running
//! ```

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::frame;
use super::log::{segment_first, sync_dir};
use super::record::{self, Record};
use crate::crdt::{Entry, Version};
use crate::store::{Key, Store};

const SNAPSHOT_MAGIC: &[u8] = b"KVSNAP1";
const SNAPSHOT_END: &[u8] = b"KVEND";

/// Why the data directory could not be read or written.
#[derive(Debug, Error)]
pub enum DurabilityError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A record in the middle of the log, or in a snapshot, is damaged:
    /// recovery stops rather than skip what may be acknowledged writes.
    #[error("corrupt record in {path} at byte offset {offset}: {why}; see docs/durability.md, Recovery, for the way out")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: usize,
        /// What is wrong with it.
        why: String,
    },
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DurabilityError + 'a {
    move |source| DurabilityError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The name of the snapshot that needs log records from `from` on.
pub fn snapshot_name(from: u64) -> String {
    format!("snapshot-{from:020}.snap")
}

fn snapshot_from(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    (digits.len() == 20).then(|| digits.parse().ok())?
}

/// The directory of the log segments.
pub fn log_dir(dir: &Path) -> PathBuf {
    dir.join("log")
}

/// What recovery found and loaded.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Records (entries and hints) loaded from the snapshot.
    pub snapshot_entries: u64,
    /// The snapshot's size in bytes (0 without one).
    pub snapshot_bytes: u64,
    /// Unix milliseconds the snapshot was written (0 without one).
    pub snapshot_ms: u64,
    /// Log records replayed.
    pub replayed: u64,
    /// The number the next log record gets.
    pub next: u64,
    /// Bytes of the log segments kept.
    pub log_bytes: u64,
    /// Whether a torn last record was dropped.
    pub torn: bool,
    /// The highest version loaded.
    pub latest: Option<Version>,
    /// Unix milliseconds this node was last known running (0 when the
    /// directory is new).
    pub alive_ms: u64,
    /// The hints logged, as `(peer, unix ms taken, key, entry)`, oldest
    /// first: the caller holds again those younger than `--max-hint-age`
    /// (a hint delivered before the crash is delivered again, which merges
    /// to nothing).
    pub hints: Vec<HeldHint>,
}

/// A hint found on disk: peer, unix milliseconds taken, key, entry.
pub type HeldHint = (String, u64, Key, Entry);

/// Where replayed records go.
struct Replay<'a> {
    store: &'a Store,
    latest: Version,
    hints: Vec<HeldHint>,
}

impl Replay<'_> {
    fn apply(&mut self, rec: Record) {
        match rec {
            Record::Merged(key, entry) => {
                self.latest = self.latest.max(entry.version);
                self.store.merge(&key, entry);
            }
            Record::Removed(key, version) => {
                self.store.remove_version(&key, version);
            }
            Record::Dropped(p) => {
                self.store.drop_partition(p);
            }
            Record::Hinted(peer, taken, key, entry) => {
                self.latest = self.latest.max(entry.version);
                self.hints.push((peer, taken, key, entry));
            }
        }
    }
}

/// Sorted `(number, path)` of the files in `dir` that `parse` names.
fn numbered(
    dir: &Path,
    parse: fn(&str) -> Option<u64>,
) -> Result<Vec<(u64, PathBuf)>, DurabilityError> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(io("cannot list", dir))? {
        let item = item.map_err(io("cannot list", dir))?;
        if let Some(n) = item.file_name().to_str().and_then(parse) {
            found.push((n, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Replays record payloads (as the log holds them, without framing) into
/// `store`: what the simulator's disks keep across a crash. Returns the
/// highest version merged and the hints found; a payload that does not
/// decode is an error naming its index.
pub fn replay_payloads<'a>(
    store: &Store,
    payloads: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(Option<Version>, Vec<HeldHint>), String> {
    let mut replay = Replay {
        store,
        latest: Version::default(),
        hints: Vec::new(),
    };
    for (i, payload) in payloads.into_iter().enumerate() {
        replay.apply(record::decode(payload).map_err(|why| format!("record {i}: {why}"))?);
    }
    let latest = (replay.latest != Version::default()).then_some(replay.latest);
    Ok((latest, replay.hints))
}

/// Loads the newest snapshot of `dir` and replays the log after it into
/// `store`, which must be empty and have no journal yet. A torn last
/// record is dropped (and the segment cut before it) with one log line;
/// damage anywhere else is an error naming the file and offset.
pub fn recover(dir: &Path, store: &Store) -> Result<Recovered, DurabilityError> {
    let logs = log_dir(dir);
    fs::create_dir_all(&logs).map_err(io("cannot create", &logs))?;
    let mut found = Recovered {
        alive_ms: read_alive(dir),
        ..Recovered::default()
    };
    let mut replay = Replay {
        store,
        latest: Version::default(),
        hints: Vec::new(),
    };
    let from = match numbered(dir, snapshot_from)?.pop() {
        Some((from, path)) => {
            let bytes = fs::read(&path).map_err(io("cannot read", &path))?;
            found.snapshot_bytes = bytes.len() as u64;
            found.snapshot_ms = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            found.snapshot_entries = load_snapshot(&path, &bytes, from, &mut replay)?;
            from
        }
        None => 0,
    };
    let segments = numbered(&logs, segment_first)?;
    found.next = from;
    let mut expected: Option<u64> = None;
    for (i, (first, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if segments.get(i + 1).is_some_and(|(next, _)| *next <= from) {
            continue; // wholly before the snapshot
        }
        let bytes = fs::read(path).map_err(io("cannot read", path))?;
        let starts = expected.unwrap_or(from.min(*first));
        if *first != starts {
            return Err(DurabilityError::Corrupt {
                path: path.clone(),
                offset: 0,
                why: format!(
                    "the segment starts at record {first} but the one before ends at {starts}: records are missing"
                ),
            });
        }
        let mut seq = *first;
        let mut at = 0;
        loop {
            match frame::next(&bytes, at) {
                Ok(None) => break,
                Ok(Some((payload, end))) => {
                    if seq >= from {
                        let rec =
                            record::decode(payload).map_err(|why| DurabilityError::Corrupt {
                                path: path.clone(),
                                offset: at,
                                why,
                            })?;
                        replay.apply(rec);
                        found.replayed += 1;
                    }
                    seq += 1;
                    at = end;
                }
                Err(bad) if last && frame::is_torn_tail(&bytes, at, bad) => {
                    tracing::warn!(file = %path.display(), offset = at, dropped_bytes = bytes.len() - at, reason = %bad, "dropped a torn last log record (a write cut short by a crash)");
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io("cannot open", path))?;
                    f.set_len(at as u64).map_err(io("cannot truncate", path))?;
                    f.sync_all().map_err(io("cannot fsync", path))?;
                    found.torn = true;
                    break;
                }
                Err(bad) => {
                    return Err(DurabilityError::Corrupt {
                        path: path.clone(),
                        offset: at,
                        why: bad.to_string(),
                    })
                }
            }
        }
        found.log_bytes += at as u64;
        found.next = found.next.max(seq);
        expected = Some(seq);
    }
    found.latest = (replay.latest != Version::default()).then_some(replay.latest);
    found.hints = replay.hints;
    Ok(found)
}

fn load_snapshot(
    path: &Path,
    bytes: &[u8],
    from: u64,
    replay: &mut Replay<'_>,
) -> Result<u64, DurabilityError> {
    let corrupt = |offset, why: String| DurabilityError::Corrupt {
        path: path.to_path_buf(),
        offset,
        why,
    };
    let mut at = 0;
    let mut entries = 0u64;
    let mut header = true;
    loop {
        let (payload, end) = match frame::next(bytes, at) {
            Ok(Some(found)) => found,
            Ok(None) => return Err(corrupt(at, "snapshot ends without its end record".into())),
            Err(bad) => return Err(corrupt(at, bad.to_string())),
        };
        if header {
            let mut want = SNAPSHOT_MAGIC.to_vec();
            want.extend_from_slice(&from.to_le_bytes());
            if payload != want {
                return Err(corrupt(
                    at,
                    "not a snapshot header for this file name".into(),
                ));
            }
            header = false;
        } else if let Some(count) = payload.strip_prefix(SNAPSHOT_END) {
            if count != entries.to_le_bytes() {
                return Err(corrupt(
                    at,
                    format!("end record does not count {entries} entries"),
                ));
            }
            return Ok(entries);
        } else {
            match record::decode(payload).map_err(|why| corrupt(at, why))? {
                rec @ (Record::Merged(..) | Record::Hinted(..)) => replay.apply(rec),
                _ => {
                    return Err(corrupt(
                        at,
                        "a snapshot holds entries and hints only".into(),
                    ))
                }
            }
            entries += 1;
        }
        at = end;
    }
}

/// Writes a snapshot of `store` that needs the log from record `from` on
/// (the log's next number before the scan starts: every change before it
/// is in the store when the scan reaches its key), atomically (a temporary
/// file, fsynced, renamed, directory fsynced), with the `hints` held.
/// Returns its size in bytes.
pub fn write_snapshot(
    dir: &Path,
    store: &Store,
    hints: &[HeldHint],
    from: u64,
) -> Result<u64, DurabilityError> {
    let tmp = dir.join("snapshot.tmp");
    let file = File::create(&tmp).map_err(io("cannot create", &tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(1 << 20);
    frame::append(&mut buf, |b| {
        b.extend_from_slice(SNAPSHOT_MAGIC);
        b.extend_from_slice(&from.to_le_bytes());
    });
    let mut entries = 0u64;
    let mut size = 0u64;
    let mut failed = None;
    store.for_each(|key, entry| {
        if failed.is_some() {
            return;
        }
        frame::append(&mut buf, |b| record::merged(b, key, entry));
        entries += 1;
        if buf.len() >= 1 << 20 {
            size += buf.len() as u64;
            failed = out.write_all(&buf).err();
            buf.clear();
        }
    });
    for (peer, taken, key, entry) in hints {
        frame::append(&mut buf, |b| record::hinted(b, peer, *taken, key, entry));
        entries += 1;
    }
    frame::append(&mut buf, |b| {
        b.extend_from_slice(SNAPSHOT_END);
        b.extend_from_slice(&entries.to_le_bytes());
    });
    size += buf.len() as u64;
    if let Some(e) = failed {
        return Err(io("cannot write", &tmp)(e));
    }
    out.write_all(&buf).map_err(io("cannot write", &tmp))?;
    let file = out
        .into_inner()
        .map_err(|e| io("cannot write", &tmp)(e.into_error()))?;
    file.sync_all().map_err(io("cannot fsync", &tmp))?;
    let path = dir.join(snapshot_name(from));
    fs::rename(&tmp, &path).map_err(io("cannot rename", &tmp))?;
    sync_dir(dir).map_err(io("cannot fsync", dir))?;
    Ok(size)
}

/// Deletes the snapshots older than the one at `from` and the log
/// segments wholly before it; returns the bytes of segments deleted.
pub fn prune(dir: &Path, from: u64) -> Result<u64, DurabilityError> {
    for (n, path) in numbered(dir, snapshot_from)? {
        if n < from {
            fs::remove_file(&path).map_err(io("cannot delete", &path))?;
        }
    }
    let logs = log_dir(dir);
    let segments = numbered(&logs, segment_first)?;
    let mut freed = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next, _)) = (&pair[0], &pair[1]);
        if *next <= from {
            freed += fs::metadata(path).map_or(0, |m| m.len());
            fs::remove_file(path).map_err(io("cannot delete", path))?;
        }
    }
    Ok(freed)
}

/// Records that this node is running now (unix milliseconds), for the
/// rule that a node gone longer than the dead-node grace does not bring
/// its old data back.
pub fn write_alive(dir: &Path, unix_ms: u64) -> Result<(), DurabilityError> {
    let path = dir.join("alive");
    let tmp = dir.join("alive.tmp");
    fs::write(&tmp, unix_ms.to_string()).map_err(io("cannot write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("cannot rename", &tmp))
}

fn read_alive(dir: &Path) -> u64 {
    fs::read_to_string(dir.join("alive"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Deletes every snapshot and log segment of `dir`: the node starts empty.
pub fn discard(dir: &Path) -> Result<(), DurabilityError> {
    for (_, path) in numbered(dir, snapshot_from)? {
        fs::remove_file(&path).map_err(io("cannot delete", &path))?;
    }
    let logs = log_dir(dir);
    for (_, path) in numbered(&logs, segment_first)? {
        fs::remove_file(&path).map_err(io("cannot delete", &path))?;
    }
    sync_dir(&logs).map_err(io("cannot fsync", &logs))
}
