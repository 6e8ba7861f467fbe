#!/usr/bin/env bash
# Write throughput of one node against three nodes with replication factor 3
# at ONE and QUORUM, every row measured in the same run, with kilovolt-bench
# on loopback. Passes alternate so that machine noise spreads over all rows.
#
# Usage: bash benches/replication.sh [PASSES] (default 2); needs `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."

PASSES=${1:-2}
BIN=bin
BENCH=(--duration 5s --warmup 1s --read-ratio 0 --no-preload --json)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() { # start PORT CLUSTER_ID [SEEDS]
	local seeds=()
	[[ -n ${3:-} ]] && seeds=(--cluster "$3")
	"$BIN/kilovolt-db" --host 127.0.0.1 --port "$1" --cluster-id "$2" "${seeds[@]}" \
		--log-level warn >/dev/null 2>&1 &
	pids+=($!)
}

wait_ready() { # wait_ready ADDR N: until N members are alive and ready, 30 s at most
	for _ in $(seq 300); do
		n=$("$BIN/kilovolt-cli" --addr "$1" --json members 2>/dev/null |
			grep -o '"alive":true,"id":"[^"]*","region":"[^"]*","state":"ready"' | wc -l || true)
		[[ $n -ge $2 ]] && return 0
		sleep 0.1
	done
	echo "the cluster at $1 did not form" >&2
	return 1
}

total_ops() { python3 -c 'import json, sys; print(round(json.load(sys.stdin)["total"]["ops_per_sec"]))'; }

start 56001 bench-one
start 56011 bench-three 127.0.0.1:56012,127.0.0.1:56013
start 56012 bench-three 127.0.0.1:56011,127.0.0.1:56013
start 56013 bench-three 127.0.0.1:56011,127.0.0.1:56012
wait_ready 127.0.0.1:56001 1
wait_ready 127.0.0.1:56011 3

for pass in $(seq "$PASSES"); do
	one=$("$BIN/kilovolt-bench" --addr 127.0.0.1:56001 "${BENCH[@]}" 2>/dev/null | total_ops)
	rf3_one=$("$BIN/kilovolt-bench" --addr 127.0.0.1:56011 --consistency one "${BENCH[@]}" 2>/dev/null | total_ops)
	rf3_quorum=$("$BIN/kilovolt-bench" --addr 127.0.0.1:56011 --consistency quorum "${BENCH[@]}" 2>/dev/null | total_ops)
	echo "pass $pass: one node $one writes/s; three nodes RF 3: ONE $rf3_one, QUORUM $rf3_quorum writes/s"
done
