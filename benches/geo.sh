#!/usr/bin/env bash
# The geo rows of the benchmark suite (run by benches/suite.sh after its own
# rows, or alone): six nodes in three regions (two each, two replicas of
# every key per region), every link between regions delayed 40 ms each way
# through the Faults API (a WAN of about 80 ms round trip), and a client in
# r1 that talks only to r1's two nodes. For Set and Get at ONE, LOCAL_ONE,
# LOCAL_QUORUM, QUORUM and EACH_QUORUM: p50 and p99 over a closed load of
# CONCURRENCY requests in flight; and how long a ONE write at r1 takes to be
# visible at a node of r3 (kilovolt-bench --visible-at polls it at LOCAL).
# The table is printed and, when DOC names a file with the geo markers,
# written between them.
#
# Usage: bash benches/geo.sh (after `make build`). Knobs (environment):
# DURATION (5s), WARMUP (1s), DELAY_MS (40), CONCURRENCY (4), VISIBILITY
# (20 writes), DOC (default docs/performance.md; DOC= to only print), OUT
# (target/bench).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
DELAY_MS=${DELAY_MS:-40}
CONCURRENCY=${CONCURRENCY:-4}
VISIBILITY=${VISIBILITY:-20}
DOC=${DOC-docs/performance.md}
OUT=${OUT:-target/bench}
BIN=bin
KEYS=1000
# shellcheck source=benches/lib.sh
source benches/lib.sh

for b in kilovolt-db kilovolt-cli kilovolt-bench; do
	[[ -x $BIN/$b ]] || { echo "$BIN/$b is missing: run make build" >&2; exit 1; }
done
mkdir -p "$OUT"
RESULTS=$OUT/geo.jsonl
: >"$RESULTS"

# Below the ephemeral range (32768 and up on Linux), so that no outgoing
# connection of another process holds one (nor a peer port, PORT + 1000).
PORTS=(26151 26152 26153 26154 26155 26156)
REGIONS=(r1 r1 r2 r2 r3 r3)
all=$(printf '127.0.0.1:%s,' "${PORTS[@]}")
all=${all%,}
for i in "${!PORTS[@]}"; do
	spawn "$BIN/kilovolt-db" --host 127.0.0.1 --port "${PORTS[$i]}" --cluster-id bench-geo \
		--cluster "$all" --region "${REGIONS[$i]}" --replicas-per-region 2 --fault-injection \
		--log-level warn
done
wait_ready 127.0.0.1:${PORTS[0]} 6

# Each link between regions is degraded at one end, the node of the lower
# region (ids are addresses): that end delays every message over the link,
# requests and answers, both ways, so each crossing costs DELAY_MS once.
for i in "${!PORTS[@]}"; do
	far=()
	for j in "${!PORTS[@]}"; do
		[[ ${REGIONS[$i]} < "${REGIONS[$j]}" ]] && far+=("127.0.0.1:${PORTS[$j]}")
	done
	((${#far[@]})) || continue
	"$BIN/kilovolt-cli" --addr "127.0.0.1:${PORTS[$i]}" degrade "$(IFS=,; echo "${far[*]}")" \
		--delay-ms "$DELAY_MS" >/dev/null
done
CLIENT=127.0.0.1:${PORTS[0]},127.0.0.1:${PORTS[1]}
echo "geo: six nodes, three regions, ${DELAY_MS} ms each way between regions; client in r1" >&2

# geo ROW ARGS...: one kilovolt-bench row from the client in r1.
geo() {
	local row=$1 json
	shift
	json=$("$BIN/kilovolt-bench" --addr "$CLIENT" --concurrency "$CONCURRENCY" --keys "$KEYS" \
		--key-size 16 --value-size 100 --duration "$DURATION" --warmup "$WARMUP" --json "$@" \
		2>/dev/null)
	python3 - "$row" "$json" >>"$RESULTS" <<'PY'
import json, sys
t = json.loads(sys.argv[2])["total"]
print(json.dumps({"row": sys.argv[1], "ops": t["ops_per_sec"], "p50_us": t["latency_us"]["p50"],
                  "p99_us": t["latency_us"]["p99"], "errors": t["errors_total"]}))
PY
	tail -n1 "$RESULTS" >&2
}

for level in one local-one local-quorum quorum each-quorum; do
	geo "set_$level" --read-ratio 0 --no-preload --consistency "$level"
	geo "get_$level" --read-ratio 1 --consistency "$level"
done

# Visibility: ONE writes at r1's first node, each polled at LOCAL on r3's
# first over one open connection until it shows.
json=$("$BIN/kilovolt-bench" --addr "127.0.0.1:${PORTS[0]}" --visible-at "127.0.0.1:${PORTS[4]}" \
	--visible-writes "$VISIBILITY" --timeout 10s --json)
python3 - "$json" >>"$RESULTS" <<'PY'
import json, sys
v = json.loads(sys.argv[1])
print(json.dumps({"row": "visible_r3", "p50_us": v["p50_us"], "max_us": v["max_us"]}))
PY
tail -n1 "$RESULTS" >&2

python3 - "$RESULTS" "$DELAY_MS" "$DOC" <<'PY'
import json, sys
rows = {r["row"]: r for r in map(json.loads, open(sys.argv[1]))}
delay = int(sys.argv[2]); doc = sys.argv[3]
ms = lambda us: "%.1f ms" % (us / 1000)
lines = ["| level | Set p50 | Set p99 | Get p50 | Get p99 |", "|---|--:|--:|--:|--:|"]
for level, name in [("one", "ONE"), ("local-one", "LOCAL_ONE"), ("local-quorum", "LOCAL_QUORUM"),
                    ("quorum", "QUORUM"), ("each-quorum", "EACH_QUORUM")]:
    s, g = rows["set_" + level], rows["get_" + level]
    errors = s["errors"] + g["errors"]
    note = " (%d errors)" % errors if errors else ""
    lines.append("| %s%s | %s | %s | %s | %s |" % (name, note, ms(s["p50_us"]), ms(s["p99_us"]),
                                                  ms(g["p50_us"]), ms(g["p99_us"])))
v = rows["visible_r3"]
lines.append("")
lines.append("A ONE write at r1 visible at LOCAL in r3 after %s (median), %s at most "
             "(%d ms each way between regions)." % (ms(v["p50_us"]), ms(v["max_us"]), delay))
table = "\n".join(lines)
print(table)
if doc:
    text = open(doc).read()
    begin, end = "<!-- geo:begin -->", "<!-- geo:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        open(doc, "w").write(head + begin + "\n" + table + "\n" + end + tail)
PY
