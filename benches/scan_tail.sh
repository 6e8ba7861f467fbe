#!/usr/bin/env bash
# Client latency while anti-entropy scans a large store: two pairs of nodes
# (replication factor 2), each node holding KEYS keys. On one pair a round
# runs every second, and each round scans every key the node holds (the
# collector looks for settled tombstones) and one whole partition (the tree
# check); the other pair is idle (its interval is a day). An open load of
# RATE requests per second, 90% reads, measures each pair's p99 in turns,
# PASSES times; the figure is the ratio of the medians, rounds against idle,
# so both sides share the machine's noise.
#
# Usage: bash benches/scan_tail.sh (after `make build`).
# Knobs (environment): KEYS (1000000), RATE (2000), DURATION (10s),
# PASSES (3), BIN (the folder of the binaries, default bin).
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-1000000}
RATE=${RATE:-2000}
DURATION=${DURATION:-10s}
PASSES=${PASSES:-3}
BIN=${BIN:-bin}
# shellcheck source=benches/lib.sh
source benches/lib.sh

for b in kilovolt-db kilovolt-cli kilovolt-bench; do
	[[ -x $BIN/$b ]] || { echo "$BIN/$b is missing: run make build" >&2; exit 1; }
done

# pair NAME PORT1 PORT2 INTERVAL: two nodes of one cluster.
pair() {
	local name=$1 p1=$2 p2=$3 interval=$4 p
	for p in "$p1" "$p2"; do
		local other=$((p == p1 ? p2 : p1))
		spawn "$BIN/kilovolt-db" --host 127.0.0.1 --port "$p" --cluster-id "$name" \
			--cluster "127.0.0.1:$other" --replication-factor 2 \
			--anti-entropy-interval "$interval" --log-level warn
	done
	wait_ready "127.0.0.1:$p1" 2
}

# keys_held ADDR: the live keys the node holds.
keys_held() {
	"$BIN/kilovolt-cli" --addr "$1" --json stats |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["keys"])'
}

# load ADDR1 ADDR2: KEYS keys written through the first node, until both hold them.
load() {
	"$BIN/kilovolt-bench" --addr "$1" --keys "$KEYS" --key-size 16 --value-size 100 \
		--duration 1ms --warmup 0s --read-ratio 1 --json >/dev/null 2>&1
	for _ in $(seq 600); do
		[[ $(keys_held "$1") -ge $KEYS && $(keys_held "$2") -ge $KEYS ]] && return 0
		sleep 0.2
	done
	echo "the pair at $1 did not take $KEYS keys" >&2
	return 1
}

# p99 ADDR: the p99 of an open load, in microseconds.
p99() {
	"$BIN/kilovolt-bench" --addr "$1" --keys "$KEYS" --key-size 16 --value-size 100 \
		--read-ratio 0.9 --rate "$RATE" --duration "$DURATION" --warmup 1s --no-preload --json 2>/dev/null |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["total"]["latency_us"]["p99"])'
}

echo "loading $KEYS keys into each pair" >&2
pair scan-rounds 24301 24302 1s
pair scan-idle 24311 24312 1d
load 127.0.0.1:24301 127.0.0.1:24302
load 127.0.0.1:24311 127.0.0.1:24312

rounds=()
idle=()
for pass in $(seq "$PASSES"); do
	rounds+=("$(p99 127.0.0.1:24301)")
	idle+=("$(p99 127.0.0.1:24311)")
	echo "pass $pass of $PASSES: p99 ${rounds[-1]} us with rounds, ${idle[-1]} us idle" >&2
done
python3 - "${rounds[*]}" "${idle[*]}" "$KEYS" "$RATE" <<'PY'
import statistics, sys
rounds = [float(x) for x in sys.argv[1].split()]
idle = [float(x) for x in sys.argv[2].split()]
r, i = statistics.median(rounds), statistics.median(idle)
print(f"{sys.argv[3]} keys, {sys.argv[4]} requests/s: p99 {r / 1000:.2f} ms with a round every second, "
      f"{i / 1000:.2f} ms idle: {r / i:.2f}x")
PY
