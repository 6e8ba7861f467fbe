use super::*;
use crate::planted;

#[test]
fn a_seed_replays_the_identical_history() {
    let config = Config::default();
    let a = run(3, &config);
    let b = run(3, &config);
    assert_eq!(a.history.render(), b.history.render());
    assert!(a.history.ops.len() > 100);
}

/// Seeds that once failed, each for a cause since found (docs/testing.md,
/// "What it has found"): every one must pass.
const FOUND: &[u64] = &[
    // A handed-off tombstone refused as settled: an acknowledged delete lost.
    3_072_153_124,
    // The check ran while some replicas had pruned a settled removed map
    // field and another had not yet: the run now waits for equal entries.
    424_555,
    425_205,
    426_915,
    428_334,
    428_481,
    430_111,
    431_032,
    435_321,
    437_222,
    // A read after the heal found a TTL value that expired and was
    // collected before the check.
    2_761_762_188,
    // A clock off by more than the grace: one 5.5 s ahead collected a value
    // before it expired for the others; nodes cut off alone, their clocks
    // behind, stamped writes older than a delete the replicas collected.
    428_190,
    3_116_676_354,
    1_595_647_629,
    // An HLC left an hour ahead by a jump that was over stamped a version
    // an hour ahead; a TTL write over it expired and was collected, and a
    // later write stamped at the true time took its place.
    543_506_234,
    // A replica that had just restarted empty answered a read from a
    // coordinator whose view still took it for ready.
    1_837_219_848,
    1_837_223_403,
    1_837_232_825,
    1_837_232_942,
    1_837_236_285,
    // A ONE read asked a replica that had just restarted empty, which the
    // asker's view still showed in its previous life, ready; "not found"
    // from it counted as the answer.
    543_511_684,
    // A QUORUM read straddled a collection: the join of a stale replica's
    // expired value and a collecting replica's "nothing" was older than the
    // delete collected, and its read repair brought the value back.
    2_259_670_507,
    543_515_322,
    543_515_561,
    543_519_632,
];

#[test]
fn seeds_that_once_failed_pass() {
    let config = Config::default();
    let failed: Vec<String> = FOUND
        .iter()
        .map(|&seed| run(seed, &config))
        .filter(|o| !o.passed())
        .map(|o| o.report())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Seeds in which a ONE read to a reachable node once went unanswered
/// within 1 s (docs/testing.md, "Availability of ONE"): on a network that
/// lost messages, a replica whose one request timed out was not asked
/// again while a cut one's refusals spent the re-asks, re-asks went out
/// together or 300 ms apart; a node just turned ready refused reads as
/// syncing until the view of itself caught up; every replica in the
/// coordinator's view refused just after a join or leave moved placement,
/// and the read failed at once rather than wait for the newer view. None
/// may miss now. (Seeds 66 and 80 left the list when four batches in
/// flight per peer changed their histories: each now misses once for the
/// cause that is left, one replica to ask on a network losing 37% and 27%
/// of the messages, all six asks of it lost.)
const ONE_MISSED: &[u64] = &[
    47, 63, 68, 88, 101, 128, 129, 140, 146, 163, 170, 172, 181, 238, 386, 157, 174, 192, 214, 261,
    356,
];

#[test]
fn one_reads_that_once_missed_their_second_are_answered() {
    let config = Config::default();
    for &seed in ONE_MISSED {
        let outcome = run(seed, &config);
        let missed: Vec<String> = outcome
            .history
            .one_misses()
            .iter()
            .map(|(op, why)| format!("#{} {why:?}", op.id))
            .collect();
        assert!(missed.is_empty(), "seed {seed}: {missed:?}");
    }
}

#[test]
fn a_read_whose_only_replica_is_cut_off_while_it_waits_is_left_out() {
    // Seed 133, read #73: its one reachable replica was cut off from its
    // coordinator 22 ms after the read was invoked; nobody could answer it.
    let outcome = run(133, &Config::default());
    assert!(outcome.history.replicas_gone.contains(&73));
    assert_eq!(outcome.history.availability().replicas_gone, 1);
}

/// Runs up to the CI budget of seeds with `bug` planted; returns the first
/// failing outcome.
fn first_failure(bug: planted::Bug) -> Option<Outcome> {
    let _planted = planted::plant(bug);
    let config = Config::default();
    (1..=200)
        .map(|seed| run(seed, &config))
        .find(|o| !o.passed())
}

#[test]
fn the_smaller_version_winning_a_merge_is_caught() {
    let failed = first_failure(planted::Bug::SmallerVersionWins)
        .expect("the planted bug went unnoticed for 200 seeds");
    assert!(failed.report().contains("replay: make sim SEEDS=1 SEED="));
}

#[test]
fn collecting_without_acknowledgement_is_caught() {
    let failed = first_failure(planted::Bug::CollectUnacknowledged)
        .expect("the planted bug went unnoticed for 200 seeds");
    assert!(failed.report().contains("replay: make sim SEEDS=1 SEED="));
}

#[test]
fn counting_a_duplicate_increment_twice_is_caught() {
    let failed = first_failure(planted::Bug::DuplicateCountedTwice)
        .expect("the planted bug went unnoticed for 200 seeds");
    assert!(failed.report().contains("replay: make sim SEEDS=1 SEED="));
}

#[test]
fn local_levels_that_count_another_region_are_caught() {
    let failed = first_failure(planted::Bug::LocalLevelsCountAnyRegion)
        .expect("the planted bug went unnoticed for 200 seeds");
    let report = failed.report();
    // Caught by the regional rule: a LOCAL_QUORUM read in the writer's
    // region missed a LOCAL_QUORUM write (one replica each, of three).
    assert!(
        report.contains("at LOCAL_QUORUM (1 replicas)")
            && report.contains("at LOCAL_QUORUM acknowledged by 1 replicas"),
        "{report}"
    );
}

/// Two replicas of every key in each region (every node holds every key
/// but the lone one of a region): the regional levels over majorities of
/// two, and placement per region through joins and leaves.
#[test]
fn replicas_per_region_pass() {
    let mut config = Config::default();
    config.settings.replicas_per_region = Some(2);
    let failed: Vec<String> = (1..=30)
        .map(|seed| run(seed, &config))
        .filter(|o| !o.passed())
        .map(|o| o.report())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Nodes with a disk come back from a crash with what it kept: a third of
/// the seeds run each mode, and a crash in them keeps records.
#[test]
fn crashed_nodes_with_a_disk_restart_from_it() {
    let config = Config::default();
    let mut kept = 0;
    for seed in 1..=30 {
        if disk_mode(seed) == DiskMode::Memory {
            continue;
        }
        let outcome = run(seed, &config);
        assert!(outcome.passed(), "{}", outcome.report());
        let history = outcome.history.render();
        kept += history
            .lines()
            .filter(|l| l.contains("its disk keeps") && !l.contains("keeps 0 records"))
            .count();
    }
    assert!(kept > 0, "no crash kept anything on disk");
}
