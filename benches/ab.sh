#!/usr/bin/env bash
# Compares two servers (two builds of kilovolt-db, or a node and the bare
# server), one process each, in the same run: they run side by side and
# take turns under kilovolt-bench (90% and 0% reads, 100-byte values, 64 in
# flight), and the medians of the passes
# are printed with the ratio B/A of ops/s and of server CPU per operation.
# How each change to the hot path is judged before it is kept.
#
# Usage: bash benches/ab.sh A B [PASSES] (default 4), where A and B are each
# a server's command with its flags in one word, e.g.
#   bash benches/ab.sh "bin/kilovolt-db --log-level warn" target/release/examples/bare-server
# (each is given --host 127.0.0.1 --port P after its flags);
# DURATION (default 5s) and WARMUP (1s) in the environment. Needs `make build`
# for kilovolt-bench and kilovolt-cli.
set -euo pipefail
cd "$(dirname "$0")/.."

A=$1 B=$2 PASSES=${3:-4}
DURATION=${DURATION:-5s} WARMUP=${WARMUP:-1s}
BIN=bin
HZ=$(getconf CLK_TCK)
# shellcheck source=benches/lib.sh
source benches/lib.sh

declare -A pid=()
for side in A B; do
	port=$([[ $side == A ]] && echo 24401 || echo 24402)
	read -ra command <<<"${!side}"
	spawn "${command[@]}" --host 127.0.0.1 --port "$port"
	pid[$side]=$SPAWNED
	wait_port "$port"
	"$BIN/kilovolt-bench" --addr "127.0.0.1:$port" --keys 100000 --key-size 16 --duration 1ms \
		--warmup 0s --json >/dev/null 2>&1
done

results=$(mktemp)
for pass in $(seq "$PASSES"); do
	for rr in 0.9 0; do
		for side in A B; do
			port=$([[ $side == A ]] && echo 24401 || echo 24402)
			t0=$(cpu_ticks "${pid[$side]}")
			json=$("$BIN/kilovolt-bench" --addr "127.0.0.1:$port" --keys 100000 --key-size 16 \
				--no-preload --duration "$DURATION" --warmup "$WARMUP" --read-ratio "$rr" --json 2>/dev/null)
			t1=$(cpu_ticks "${pid[$side]}")
			python3 - "$json" "$((t1 - t0))" "$HZ" "$side" "$rr" <<'PY' | tee -a "$results" >&2
import json, sys
r = json.loads(sys.argv[1]); t = r["total"]
sent = t["ops"] + t["errors_total"] + r["warmup_ops"]
print(json.dumps({"side": sys.argv[4], "reads": sys.argv[5], "ops": t["ops_per_sec"],
                  "cpu_us": int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / sent}))
PY
		done
	done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for reads in ("0.9", "0"):
    m = {}
    for side in "AB":
        sel = [r for r in rows if r["side"] == side and r["reads"] == reads]
        m[side] = (statistics.median(r["ops"] for r in sel), statistics.median(r["cpu_us"] for r in sel))
    print(f"{float(reads) * 100:.0f}% reads: ops/s A {m['A'][0]:,.0f} B {m['B'][0]:,.0f} "
          f"(B/A {m['B'][0] / m['A'][0]:.2f}x); CPU per op A {m['A'][1]:.1f} us "
          f"B {m['B'][1]:.1f} us (B/A {m['B'][1] / m['A'][1]:.2f}x)")
PY
rm -f "$results"
