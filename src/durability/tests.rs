use std::path::Path;
use std::time::Duration;

use super::*;
use crate::crdt::Entry;

const PARTITIONS: u32 = 16;

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kilovolt-durability-{name}-{}-{}",
        std::process::id(),
        log::unix_ms()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path, mode: DurabilityMode) -> DurabilityConfig {
    DurabilityConfig {
        dir: dir.to_path_buf(),
        mode,
        fsync_interval: Duration::from_millis(10),
        segment_bytes: 4096,
        snapshot_log_bytes: 1 << 30,
        stale_after: Duration::from_secs(3600),
    }
}

fn value(i: u64) -> Entry {
    Entry::value(Version::new(100 + i, 1), format!("value-{i}"), 0)
}

/// Opens `dir` into a new store.
fn reopen(dir: &Path, mode: DurabilityMode) -> (Store, Arc<Durability>, Recovered) {
    let store = Store::new(PARTITIONS);
    let (d, found) = Durability::open(config(dir, mode), &store).unwrap();
    (store, d, found)
}

#[tokio::test]
async fn changes_come_back_after_a_restart() {
    let dir = temp_dir("restart");
    let (store, d, _) = reopen(&dir, DurabilityMode::Sync);
    for i in 0..500 {
        store.merge(&format!("k{i}"), value(i));
        if i % 50 == 49 {
            // Each wait writes what came before: segments fill and rotate.
            store.durable().await.unwrap();
        }
    }
    store.merge("gone", Entry::tombstone(Version::new(5, 1)));
    assert!(store.remove_version("gone", Version::new(5, 1)));
    store.durable().await.unwrap();
    let roots: Vec<u128> = (0..PARTITIONS).map(|p| store.root(p)).collect();
    let stats = store.stats();
    d.close();
    drop(d);
    assert!(
        std::fs::read_dir(files::log_dir(&dir)).unwrap().count() > 1,
        "the log rotated"
    );

    let (again, _, found) = reopen(&dir, DurabilityMode::Sync);
    assert_eq!(found.replayed, 502);
    assert_eq!(again.stats(), stats);
    assert_eq!(again.get("k7"), Some(value(7)));
    assert!(!again.contains("gone"));
    let again_roots: Vec<u128> = (0..PARTITIONS).map(|p| again.root(p)).collect();
    assert_eq!(again_roots, roots, "Merkle trees rebuilt");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_snapshot_replaces_old_segments_and_replay_after_it_is_exact() {
    let dir = temp_dir("snapshot");
    let (store, d, _) = reopen(&dir, DurabilityMode::Periodic);
    for i in 0..300 {
        store.merge(&format!("k{i}"), value(i));
    }
    let size = d.snapshot(&store).unwrap();
    assert!(size > 0);
    let segments = || std::fs::read_dir(files::log_dir(&dir)).unwrap().count();
    assert_eq!(segments(), 1, "only the segment the snapshot needs is kept");
    // Changes after the snapshot, one of them removing what it holds.
    store.merge("k1", Entry::tombstone(Version::new(1000, 1)));
    store.merge("late", value(9));
    store.durable().await.unwrap();
    d.close();
    drop(d);

    let (again, _, found) = reopen(&dir, DurabilityMode::Periodic);
    assert_eq!(found.snapshot_entries, 300);
    assert_eq!(found.replayed, 2);
    assert_eq!(again.stats(), store.stats());
    assert!(!again.get("k1").unwrap().is_live());
    assert_eq!(again.get("late"), Some(value(9)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The newest segment file of `dir`.
fn last_segment(dir: &Path) -> PathBuf {
    let mut names: Vec<PathBuf> = std::fs::read_dir(files::log_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.pop().unwrap()
}

/// Writes `n` records to a new log in `dir` with segments large enough to
/// hold them all, and closes it.
fn write_records(dir: &Path, n: u64) -> PathBuf {
    let store = Store::new(PARTITIONS);
    let mut c = config(dir, DurabilityMode::Periodic);
    c.segment_bytes = 1 << 20;
    let (d, _) = Durability::open(c, &store).unwrap();
    for i in 0..n {
        store.merge(&format!("k{i}"), value(i));
    }
    d.close();
    last_segment(dir)
}

#[test]
fn a_torn_last_record_is_dropped_and_the_rest_kept() {
    let dir = temp_dir("torn");
    let segment = write_records(&dir, 10);
    let len = std::fs::metadata(&segment).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    let (store, d, found) = reopen(&dir, DurabilityMode::Periodic);
    assert!(found.torn);
    assert_eq!(found.replayed, 9);
    assert_eq!(store.stats().values, 9);
    // The log goes on after the cut, and the next recovery is clean.
    store.merge("after", value(50));
    d.close();
    drop(d);
    let (store, _, found) = reopen(&dir, DurabilityMode::Periodic);
    assert!(!found.torn);
    assert_eq!(store.stats().values, 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_record_in_the_middle_stops_recovery_naming_file_and_offset() {
    let dir = temp_dir("corrupt");
    let segment = write_records(&dir, 10);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[frame::HEADER + 2] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let store = Store::new(PARTITIONS);
    let err = match Durability::open(config(&dir, DurabilityMode::Periodic), &store) {
        Err(e) => e,
        Ok(_) => panic!("recovery went past a corrupt record"),
    };
    let text = err.to_string();
    assert!(text.contains(&segment.display().to_string()), "{text}");
    assert!(text.contains("byte offset 0"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_failing_disk_refuses_changes_and_names_the_cause() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full to stand for a full disk");
        return;
    }
    let dir = temp_dir("full");
    let (store, d, _) = reopen(&dir, DurabilityMode::Sync);
    store.merge("first", value(1));
    store.durable().await.unwrap();
    // The next segment is a full disk: whichever record starts it (one
    // record per write here, as each write waits for its fsync).
    let next = d.log().next();
    for n in next..next + 1000 {
        std::os::unix::fs::symlink("/dev/full", files::log_dir(&dir).join(log::segment_name(n)))
            .unwrap();
    }
    let mut i = 0;
    let err = loop {
        store.merge(&format!("fill{i}"), value(i));
        i += 1;
        if let Err(e) = store.durable().await {
            break e;
        }
    };
    assert!(err.0.contains("No space left on device"), "{err}");
    assert_eq!(store.check_journal(), Err(err));
    let _ = std::fs::remove_dir_all(&dir);
}
