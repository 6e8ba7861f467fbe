//! The CI script itself: a step must fail only when what it checks fails.

/// Under `set -o pipefail`, `cmd | head -n 1` fails now and then: when
/// `head` exits before `cmd` has written everything, `cmd` dies of SIGPIPE
/// (exit 141) and the pipeline with it. A reader that consumes all of its
/// input (`sed -n 1p`) has no such race.
#[test]
fn ci_pipes_into_no_reader_that_may_exit_early() {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run"))
        .expect(".ci/run is readable");
    assert!(
        script.contains("pipefail"),
        "the script runs under pipefail"
    );
    for (n, line) in script.lines().enumerate() {
        let code = line.split('#').next().unwrap_or_default();
        for early in ["| head", "|head", "| grep -q", "| grep -m"] {
            assert!(
                !code.contains(early),
                ".ci/run:{}: `{}` can end its writer with SIGPIPE: {line}",
                n + 1,
                early.trim_start_matches('|').trim()
            );
        }
    }
}
