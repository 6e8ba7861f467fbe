#!/usr/bin/env bash
# Instructions per request of a server, counted by valgrind's callgrind: the
# one measure of the hot path that other load on the machine does not move.
# The server runs under callgrind on loopback; kilovolt-bench writes 10,000
# keys of 16 bytes with 100-byte values, then the counters are zeroed and
# it sends Sets (0% reads) for DURATION, dumps the counts, zeroes them and
# sends Gets (100% reads) for DURATION, each phase at RATE requests per
# second (default 500), so that the server's background work (gossip,
# timers) weighs the same per request in every run whatever else the
# machine does. Prints the instructions per Set and per Get (background
# included); the profiles stay in OUT for callgrind_annotate.
#
# Usage: bash benches/callgrind.sh NAME SERVER [ARGS...], e.g.
#   bash benches/callgrind.sh node bin/kilovolt-db --log-level warn
#   bash benches/callgrind.sh bare target/release/examples/bare-server
# The server is given --host 127.0.0.1 --port 24501 after ARGS. Needs
# valgrind (Debian's package) and `make build`. DURATION defaults to 8s;
# OUT to target/bench/callgrind.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=$1
shift
DURATION=${DURATION:-8s}
RATE=${RATE:-500}
OUT=${OUT:-target/bench/callgrind}
BIN=bin
PORT=24501
# shellcheck source=benches/lib.sh
source benches/lib.sh
command -v valgrind >/dev/null || {
	echo "valgrind is missing: apt-get install valgrind" >&2
	exit 1
}
mkdir -p "$OUT"
rm -f "$OUT/$NAME".out*

spawn valgrind --tool=callgrind --callgrind-out-file="$OUT/$NAME.out" "$@" --host 127.0.0.1 --port "$PORT"
server=$SPAWNED
wait_port "$PORT"
bench=("$BIN/kilovolt-bench" --addr "127.0.0.1:$PORT" --keys 10000 --key-size 16 --value-size 100
	--concurrency 16 --conns 4 --json)
"${bench[@]}" --duration 1ms --warmup 0s --read-ratio 1 >/dev/null 2>&1

for phase in set get; do
	ratio=$([[ $phase == set ]] && echo 0 || echo 1)
	callgrind_control -z "$server" >/dev/null
	json=$("${bench[@]}" --no-preload --duration "$DURATION" --warmup 0s --read-ratio "$ratio" \
		--rate "$RATE" 2>/dev/null)
	callgrind_control -d "$phase" "$server" >/dev/null
	file=$(grep -l "^desc: Trigger: dump $phase" "$OUT/$NAME".out.* | head -n1)
	python3 - "$json" "$file" "$NAME" "$phase" <<'PY'
import json, sys
r = json.loads(sys.argv[1])["total"]
ops = r["ops"] + r["errors_total"]
total = next(int(l.split()[1]) for l in open(sys.argv[2]) if l.startswith("summary:"))
print(f"{sys.argv[3]} {sys.argv[4]}: {ops} requests, {total / ops:,.0f} instructions per request ({sys.argv[2]})")
PY
done
