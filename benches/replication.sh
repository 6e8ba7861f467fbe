#!/usr/bin/env bash
# Write throughput of one node against three nodes with replication factor 3
# at ONE and QUORUM, every row measured in the same run, with kilovolt-bench
# on loopback. Passes alternate so that machine noise spreads over all rows.
# `make bench` (benches/suite.sh) measures the same rows among the others.
#
# Usage: bash benches/replication.sh [PASSES] (default 2); needs `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."

PASSES=${1:-2}
BIN=bin
BENCH=(--duration 5s --warmup 1s --read-ratio 0 --no-preload --json)
# shellcheck source=benches/lib.sh
source benches/lib.sh

start_node 24001 bench-one
start_node 24011 bench-three 127.0.0.1:24012,127.0.0.1:24013
start_node 24012 bench-three 127.0.0.1:24011,127.0.0.1:24013
start_node 24013 bench-three 127.0.0.1:24011,127.0.0.1:24012
wait_ready 127.0.0.1:24001 1
wait_ready 127.0.0.1:24011 3

for pass in $(seq "$PASSES"); do
	one=$("$BIN/kilovolt-bench" --addr 127.0.0.1:24001 "${BENCH[@]}" 2>/dev/null | total_ops)
	rf3_one=$("$BIN/kilovolt-bench" --addr 127.0.0.1:24011 --consistency one "${BENCH[@]}" 2>/dev/null | total_ops)
	rf3_quorum=$("$BIN/kilovolt-bench" --addr 127.0.0.1:24011 --consistency quorum "${BENCH[@]}" 2>/dev/null | total_ops)
	echo "pass $pass: one node $one writes/s; three nodes RF 3: ONE $rf3_one, QUORUM $rf3_quorum writes/s"
done
