#!/usr/bin/env bash
# What sets the p99 at half of the peak: the node and the bare server, each
# with the runtime's default worker threads (one per core) and with fewer,
# side by side in one run. For each server and setting: its peak (90% reads,
# closed loop, 64 in flight), then RUNS open-load runs at half of that peak,
# latency counted from when each request was due; prints each run's p50 and
# p99 and, per setting, the median p99 and how many runs stayed under 2 ms.
#
# Usage: bash benches/tails.sh [RUNS] (default 5); WORKERS (default "0 1":
# 0 is the runtime's default) and DURATION (5s) in the environment. Needs
# `make build` and `cargo build --release --example bare-server`.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-5}
WORKERS=${WORKERS:-0 1}
DURATION=${DURATION:-5s}
BIN=bin
BARE=target/release/examples/bare-server
PORT=56801
# shellcheck source=benches/lib.sh
source benches/lib.sh

bench=("$BIN/kilovolt-bench" --addr "127.0.0.1:$PORT" --keys 100000 --key-size 16 --json)
field() { python3 -c "import json, sys; r = json.load(sys.stdin)['total']; print($1)"; }

for server in bare node; do
	for workers in $WORKERS; do
		command=("$BARE")
		[[ $server == node ]] && command=("$BIN/kilovolt-db" --log-level warn)
		# Only the server's runtime: kilovolt-bench keeps its own default.
		if [[ $workers == 0 ]]; then
			spawn "${command[@]}" --host 127.0.0.1 --port "$PORT"
		else
			spawn env TOKIO_WORKER_THREADS="$workers" "${command[@]}" --host 127.0.0.1 --port "$PORT"
		fi
		pid=$SPAWNED
		wait_port "$PORT"
		"${bench[@]}" --duration 1ms --warmup 0s >/dev/null 2>&1
		peak=$("${bench[@]}" --no-preload --duration "$DURATION" --warmup 1s --read-ratio 0.9 2>/dev/null |
			field 'round(r["ops_per_sec"])')
		rate=$((peak / 2))
		p99s=()
		for run in $(seq "$RUNS"); do
			line=$("${bench[@]}" --no-preload --duration "$DURATION" --warmup 1s --read-ratio 0.9 \
				--rate "$rate" 2>/dev/null |
				field '"p50 %.2f ms, p99 %.2f ms" % (r["latency_us"]["p50"] / 1000, r["latency_us"]["p99"] / 1000)')
			echo "$server, workers ${workers/#0/default}: peak $peak/s, at $rate/s run $run: $line"
			p99s+=("$(sed 's/.*p99 \([0-9.]*\) ms/\1/' <<<"$line")")
		done
		python3 - "$server" "${workers/#0/default}" "${p99s[@]}" <<'PY'
import statistics, sys
server, workers, p99 = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3:]]
print(f"{server}, workers {workers}: median p99 {statistics.median(p99):.2f} ms; "
      f"{sum(p < 2 for p in p99)} of {len(p99)} runs under 2 ms")
PY
		stop "$pid"
	done
done
