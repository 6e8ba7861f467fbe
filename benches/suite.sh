#!/usr/bin/env bash
# The standard benchmark suite (`make bench`): Kilovolt-DB against the bare
# tonic server (benches/bare_server.rs) and Redis, every row measured in the
# same run on this machine, client and servers sharing its cores over
# loopback. Rows alternate within each pass so that the machine's noise
# spreads over all of them; each figure is the median of the passes. At the
# end the tables in docs/performance.md (between the suite markers) are
# rewritten by benches/suite_report.py, with each figure also as a ratio
# against its baseline of the same run.
#
# Rows, each pass: one node and the bare server, 90% and 0% reads; one node
# with --batch 16; Redis SET and GET without and with -P 16; three nodes
# with replication factor 3, writes at ONE and QUORUM through one node.
# Every row also gives the server's CPU time per operation (utime + stime
# from /proc/PID/stat, before and after the row, divided by the operations
# the server was sent). TLS rows (a separate block): one node and three
# nodes (RF 3, writes at ONE) with client TLS, mutual TLS between nodes and
# a token, against the plaintext rows of the same passes. Once per run:
# resident bytes per key after loading
# MEMORY_KEYS keys (node, bare server, Redis), and latency under an open
# load at half of the median peak (node and bare server). Then the
# durability rows (see their block below).
#
# Usage: bash benches/suite.sh (after `make build` and
# `cargo build --release --example bare-server`; `make bench` does all).
# Knobs (environment): PASSES (default 4), DURATION (5s), WARMUP (1s),
# MEMORY_KEYS (1000000), QUICK=1 (2 passes of 2s, 200,000 keys: a trial
# run), DOC (the file to rewrite, default docs/performance.md; DOC= to
# only print the tables), OUT (folder for raw results, target/bench).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${QUICK:-0} == 1 ]]; then
	PASSES=${PASSES:-2} DURATION=${DURATION:-2s} MEMORY_KEYS=${MEMORY_KEYS:-200000}
fi
PASSES=${PASSES:-4}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
MEMORY_KEYS=${MEMORY_KEYS:-1000000}
DOC=${DOC-docs/performance.md}
OUT=${OUT:-target/bench}
BIN=bin
BARE=target/release/examples/bare-server
KEYS=100000
CONCURRENCY=64
HZ=$(getconf CLK_TCK)
# shellcheck source=benches/lib.sh
source benches/lib.sh

for b in kilovolt-db kilovolt-cli kilovolt-bench; do
	[[ -x $BIN/$b ]] || { echo "$BIN/$b is missing: run make build" >&2; exit 1; }
done
[[ -x $BARE ]] || { echo "$BARE is missing: cargo build --release --example bare-server" >&2; exit 1; }
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null ||
	! command -v redis-cli >/dev/null; then
	echo "installing Redis from Debian's packages" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		redis-server redis-tools >/dev/null
fi

mkdir -p "$OUT"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
seconds=$(python3 -c "import sys; s=sys.argv[1]; print(float(s[:-2])/1000 if s.endswith('ms') else float(s.rstrip('s')))" "$DURATION")
echo "suite: $PASSES passes of ${DURATION} after ${WARMUP} warmup, $CONCURRENCY in flight; results in $RESULTS" >&2

# record ROW PASS JSON: one measurement.
record() { printf '{"row":"%s","pass":%s,%s}\n' "$1" "$2" "$3" >>"$RESULTS"; }

# ticks_of PID...: their CPU ticks added up.
ticks_of() {
	local sum=0 p
	for p in "$@"; do sum=$((sum + $(cpu_ticks "$p"))); done
	echo "$sum"
}

# kv ROW PASS "PIDS" ADDR ARGS...: one kilovolt-bench row against ADDR,
# server CPU read from PIDS (space-separated).
kv() {
	local row=$1 pass=$2 pids=$3 addr=$4 t0 t1 json
	shift 4
	# shellcheck disable=SC2086
	t0=$(ticks_of $pids)
	json=$("$BIN/kilovolt-bench" --addr "$addr" --concurrency "$CONCURRENCY" --keys "$KEYS" \
		--key-size 16 --value-size 100 --duration "$DURATION" --warmup "$WARMUP" --no-preload \
		--json "$@" 2>/dev/null)
	# shellcheck disable=SC2086
	t1=$(ticks_of $pids)
	record "$row" "$pass" "$(python3 - "$json" "$((t1 - t0))" "$HZ" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); ticks = int(sys.argv[2]); hz = int(sys.argv[3])
t = r["total"]
sent = t["ops"] + t["errors_total"] + r["warmup_ops"]
cpu = ticks / hz * 1e6 / sent if sent else 0
print('"ops":%.1f,"cpu_us":%.3f,"p50_us":%s,"p99_us":%s,"errors":%d' % (
    t["ops_per_sec"], cpu, t["latency_us"]["p50"], t["latency_us"]["p99"], t["errors_total"]))
PY
)"
	tail -n1 "$RESULTS" >&2
}

# redis ROW PASS TEST PIPELINE REQUESTS: one redis-benchmark row.
redis() {
	local row=$1 pass=$2 test=$3 pipeline=$4 n=$5 t0 t1 csv
	t0=$(cpu_ticks "$REDIS_PID")
	csv=$(redis-benchmark -h 127.0.0.1 -p 24120 -c "$CONCURRENCY" -n "$n" -d 100 -r "$KEYS" \
		-P "$pipeline" -t "$test" --csv 2>/dev/null)
	t1=$(cpu_ticks "$REDIS_PID")
	record "$row" "$pass" "$(python3 - "$csv" "$((t1 - t0))" "$HZ" "$n" <<'PY'
import csv, io, sys
rows = list(csv.DictReader(io.StringIO(sys.argv[1])))
r = rows[-1]; ticks = int(sys.argv[2]); hz = int(sys.argv[3]); n = int(sys.argv[4])
print('"ops":%.1f,"cpu_us":%.3f,"p50_us":%.1f,"p99_us":%.1f,"errors":0' % (
    float(r["rps"]), ticks / hz * 1e6 / n, float(r["p50_latency_ms"]) * 1000,
    float(r["p99_latency_ms"]) * 1000))
PY
)"
	tail -n1 "$RESULTS" >&2
}

# preload ADDR: writes every key of the throughput runs once.
preload() {
	"$BIN/kilovolt-bench" --addr "$1" --concurrency "$CONCURRENCY" --keys "$KEYS" --key-size 16 \
		--value-size 100 --duration 1ms --warmup 0s --read-ratio 1 --json >/dev/null 2>&1
}

# ---- memory: resident bytes per key, each server fresh and alone ----
memory() { # memory ROW PID LOAD...: VmRSS before and after LOAD
	local row=$1 pid=$2 before after
	shift 2
	sleep 1
	before=$(rss_kib "$pid")
	"$@"
	sleep 1
	after=$(rss_kib "$pid")
	record "$row" 1 "$(printf '"bytes_per_key":%.1f,"rss_before_kib":%s,"rss_after_kib":%s,"keys":%s' \
		"$(python3 -c "print(($after - $before) * 1024 / $MEMORY_KEYS)")" "$before" "$after" "$MEMORY_KEYS")"
	tail -n1 "$RESULTS" >&2
}
load_kv() { # load_kv ADDR: MEMORY_KEYS keys of 16 bytes with 100-byte values
	"$BIN/kilovolt-bench" --addr "$1" --keys "$MEMORY_KEYS" --key-size 16 --value-size 100 \
		--duration 1ms --warmup 0s --read-ratio 1 --json >/dev/null 2>&1
}
load_redis() { # the same keys and values, as kilovolt-bench writes them
	python3 - "$MEMORY_KEYS" <<'PY' | redis-cli -p 24132 --pipe >/dev/null
import sys
n = int(sys.argv[1])
value = "".join(chr(ord("a") + i % 26) for i in range(100))
out = sys.stdout
for i in range(n):
    key = "key:%012d" % i
    out.write("*3\r\n$3\r\nSET\r\n$16\r\n%s\r\n$100\r\n%s\r\n" % (key, value))
PY
	local held
	held=$(redis-cli -p 24132 dbsize)
	[[ $held == "$MEMORY_KEYS" ]] || { echo "Redis holds $held keys, not $MEMORY_KEYS" >&2; return 1; }
}

echo "memory: $MEMORY_KEYS keys" >&2
start_node 24131 bench-memory
pid=$SPAWNED
wait_ready 127.0.0.1:24131 1
memory memory_kv "$pid" load_kv 127.0.0.1:24131
stop "$pid"
spawn "$BARE" --port 24130
pid=$SPAWNED
wait_port 24130
memory memory_bare "$pid" load_kv 127.0.0.1:24130
stop "$pid"
spawn redis-server --port 24132 --bind 127.0.0.1 --save '' --appendonly no
pid=$SPAWNED
wait_port 24132
memory memory_redis "$pid" load_redis
stop "$pid"

# ---- throughput: every server up for the whole run ----
spawn "$BARE" --port 24100
BARE_PID=$SPAWNED
start_node 24101 bench-one
KV_PID=$SPAWNED
start_node 24111 bench-three 127.0.0.1:24112,127.0.0.1:24113
RF3_PIDS=$SPAWNED
start_node 24112 bench-three 127.0.0.1:24111,127.0.0.1:24113
RF3_PIDS="$RF3_PIDS $SPAWNED"
start_node 24113 bench-three 127.0.0.1:24111,127.0.0.1:24112
RF3_PIDS="$RF3_PIDS $SPAWNED"
spawn redis-server --port 24120 --bind 127.0.0.1 --save '' --appendonly no
REDIS_PID=$SPAWNED

# ---- TLS: certificates, token, and the secured servers ----
CERTS=$OUT/certs
rm -rf "$CERTS"
"$BIN/kilovolt-cli" cert --out "$CERTS" --node tls-one --node tls-1 --node tls-2 --node tls-3 >/dev/null
TLS_TOKEN=bench-token
TLS_ADMIN=bench-admin-token
{
	printf 'bench write %s\n' "$(printf %s "$TLS_TOKEN" | sha256sum | cut -d' ' -f1)"
	printf 'ops admin %s\n' "$(printf %s "$TLS_ADMIN" | sha256sum | cut -d' ' -f1)"
} >"$CERTS/auth"
# start_tls_node PORT CLUSTER_ID NODE_ID [SEEDS]: a node with client TLS,
# mutual TLS between nodes and the auth file; pid in SPAWNED.
start_tls_node() {
	local seeds=()
	[[ -n ${4:-} ]] && seeds=(--cluster "$4")
	spawn "$BIN/kilovolt-db" --host 127.0.0.1 --port "$1" --cluster-id "$2" --node-id "$3" \
		"${seeds[@]}" --log-level warn \
		--tls-cert "$CERTS/$3.pem" --tls-key "$CERTS/$3.key" \
		--peer-tls-cert "$CERTS/$3.pem" --peer-tls-key "$CERTS/$3.key" --peer-ca "$CERTS/ca.pem" \
		--auth-file "$CERTS/auth"
}
TLS_ARGS=(--tls-ca "$CERTS/ca.pem" --token "$TLS_TOKEN")
start_tls_node 24141 bench-tls-one tls-one
TLS_PID=$SPAWNED
start_tls_node 24151 bench-tls-three tls-1 127.0.0.1:24152,127.0.0.1:24153
TLS_RF3_PIDS=$SPAWNED
start_tls_node 24152 bench-tls-three tls-2 127.0.0.1:24151,127.0.0.1:24153
TLS_RF3_PIDS="$TLS_RF3_PIDS $SPAWNED"
start_tls_node 24153 bench-tls-three tls-3 127.0.0.1:24151,127.0.0.1:24152
TLS_RF3_PIDS="$TLS_RF3_PIDS $SPAWNED"
wait_port 24100
wait_port 24120
wait_ready 127.0.0.1:24101 1
wait_ready 127.0.0.1:24111 3
preload 127.0.0.1:24100
preload 127.0.0.1:24101
preload 127.0.0.1:24111
KILOVOLT_TLS_CA=$CERTS/ca.pem KILOVOLT_TOKEN=$TLS_ADMIN wait_ready 127.0.0.1:24141 1
KILOVOLT_TLS_CA=$CERTS/ca.pem KILOVOLT_TOKEN=$TLS_ADMIN wait_ready 127.0.0.1:24151 3
KILOVOLT_TLS_CA=$CERTS/ca.pem KILOVOLT_TOKEN=$TLS_TOKEN preload 127.0.0.1:24141
KILOVOLT_TLS_CA=$CERTS/ca.pem KILOVOLT_TOKEN=$TLS_TOKEN preload 127.0.0.1:24151
redis-benchmark -h 127.0.0.1 -p 24120 -c "$CONCURRENCY" -n $((KEYS * 3)) -d 100 -r "$KEYS" \
	-t set -q >/dev/null 2>&1
plain=$(python3 -c "print(int(60000 * $seconds))")
piped=$(python3 -c "print(int(600000 * $seconds))")

for pass in $(seq "$PASSES"); do
	echo "pass $pass of $PASSES" >&2
	kv bare_r90 "$pass" "$BARE_PID" 127.0.0.1:24100 --read-ratio 0.9
	kv kv_r90 "$pass" "$KV_PID" 127.0.0.1:24101 --read-ratio 0.9
	kv bare_r0 "$pass" "$BARE_PID" 127.0.0.1:24100 --read-ratio 0
	kv kv_r0 "$pass" "$KV_PID" 127.0.0.1:24101 --read-ratio 0
	kv kv_batch16 "$pass" "$KV_PID" 127.0.0.1:24101 --read-ratio 0.9 --batch 16
	redis redis_set "$pass" set 1 "$plain"
	redis redis_get "$pass" get 1 "$plain"
	redis redis_set_p16 "$pass" set 16 "$piped"
	redis redis_get_p16 "$pass" get 16 "$piped"
	kv rf3_one "$pass" "$RF3_PIDS" 127.0.0.1:24111 --read-ratio 0 --consistency one
	kv rf3_quorum "$pass" "$RF3_PIDS" 127.0.0.1:24111 --read-ratio 0 --consistency quorum
	# TLS rows, against kv_r90, kv_r0 and rf3_one of the same pass.
	kv tls_r90 "$pass" "$TLS_PID" 127.0.0.1:24141 --read-ratio 0.9 "${TLS_ARGS[@]}"
	kv tls_r0 "$pass" "$TLS_PID" 127.0.0.1:24141 --read-ratio 0 "${TLS_ARGS[@]}"
	kv tls_rf3_one "$pass" "$TLS_RF3_PIDS" 127.0.0.1:24151 --read-ratio 0 --consistency one "${TLS_ARGS[@]}"
done

# ---- latency under an open load at half of the median peak ----
half() { python3 - "$RESULTS" "$1" <<'PY'
import json, statistics, sys
ops = [r["ops"] for r in map(json.loads, open(sys.argv[1])) if r["row"] == sys.argv[2]]
print(round(statistics.median(ops) / 2))
PY
}
kv_rate=$(half kv_r90)
bare_rate=$(half bare_r90)
for pass in 1 2; do
	kv bare_half "$pass" "$BARE_PID" 127.0.0.1:24100 --read-ratio 0.9 --rate "$bare_rate"
	kv kv_half "$pass" "$KV_PID" 127.0.0.1:24101 --read-ratio 0.9 --rate "$kv_rate"
done

# ---- the cost of metrics: one node with --metrics-addr, scraped ----
# Two fresh nodes, alike but for --metrics-addr on the second, which a
# scraper reads every second (Prometheus' default is 15 s: this is the
# pessimistic side); rows alternate within each pass, same mixes.
start_node 24105 bench-metrics-off
OFF_PID=$SPAWNED
spawn "$BIN/kilovolt-db" --host 127.0.0.1 --port 24106 --cluster-id bench-metrics-on \
	--log-level warn --metrics-addr 127.0.0.1:24107
ON_PID=$SPAWNED
wait_ready 127.0.0.1:24105 1
wait_ready 127.0.0.1:24106 1
wait_port 24107
spawn python3 -c '
import time, urllib.request
while True:
    urllib.request.urlopen("http://127.0.0.1:24107/metrics").read()
    time.sleep(1)
'
preload 127.0.0.1:24105
preload 127.0.0.1:24106
for pass in $(seq "$PASSES"); do
	echo "metrics pass $pass of $PASSES" >&2
	kv metrics_off_r90 "$pass" "$OFF_PID" 127.0.0.1:24105 --read-ratio 0.9
	kv metrics_on_r90 "$pass" "$ON_PID" 127.0.0.1:24106 --read-ratio 0.9
	kv metrics_off_r0 "$pass" "$OFF_PID" 127.0.0.1:24105 --read-ratio 0
	kv metrics_on_r0 "$pass" "$ON_PID" 127.0.0.1:24106 --read-ratio 0
done

# ---- durability: the same node with --data-dir, against in-memory ----
# Rows alternate within each pass with the in-memory node's own (dur_mem):
# writes (0% reads) on one node with --durability periodic and sync, 64 in
# flight. Once per run: MEMORY_KEYS keys loaded into a periodic node, a
# snapshot taken, the data directory's bytes per key (against memory_kv's
# resident bytes per key), then the node killed with SIGKILL and the time
# it takes to restart from disk until it answers. Targets (issue 15):
# periodic >= 0.9x and sync >= 0.5x in-memory writes/s, recovery of
# 1,000,000 keys under 5 s, disk after a snapshot <= 2x memory per key.
DUR_DIR=$(mktemp -d)
start_durable() { # start_durable PORT CLUSTER_ID MODE DIR: pid in SPAWNED
	spawn "$BIN/kilovolt-db" --host 127.0.0.1 --port "$1" --cluster-id "$2" --log-level warn \
		--data-dir "$4" --durability "$3"
}
start_durable 24161 bench-periodic periodic "$DUR_DIR/periodic"
PERIODIC_PID=$SPAWNED
start_durable 24162 bench-sync sync "$DUR_DIR/sync"
SYNC_PID=$SPAWNED
wait_ready 127.0.0.1:24161 1
wait_ready 127.0.0.1:24162 1
preload 127.0.0.1:24161
preload 127.0.0.1:24162
for pass in $(seq "$PASSES"); do
	echo "durability pass $pass of $PASSES" >&2
	kv dur_mem_r0 "$pass" "$KV_PID" 127.0.0.1:24101 --read-ratio 0
	kv dur_periodic_r0 "$pass" "$PERIODIC_PID" 127.0.0.1:24161 --read-ratio 0
	kv dur_sync_r0 "$pass" "$SYNC_PID" 127.0.0.1:24162 --read-ratio 0
done
stop "$PERIODIC_PID"
stop "$SYNC_PID"
echo "durability: $MEMORY_KEYS keys, snapshot, kill -9, recovery" >&2
start_durable 24163 bench-recovery periodic "$DUR_DIR/recovery"
pid=$SPAWNED
wait_ready 127.0.0.1:24163 1
load_kv 127.0.0.1:24163
"$BIN/kilovolt-cli" --addr 127.0.0.1:24163 snapshot >/dev/null
disk_bytes=$(du -sb "$DUR_DIR/recovery" | cut -f1)
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
t0=$(date +%s.%N)
start_durable 24163 bench-recovery periodic "$DUR_DIR/recovery"
pid=$SPAWNED
wait_ready 127.0.0.1:24163 1
t1=$(date +%s.%N)
keys_back=$("$BIN/kilovolt-cli" --addr 127.0.0.1:24163 --json stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["keys"])')
stop "$pid"
record dur_recovery 1 "$(printf '"seconds":%s,"keys":%s,"disk_bytes_per_key":%s' \
	"$(python3 -c "print(round($t1 - $t0, 3))")" "$keys_back" \
	"$(python3 -c "print(round($disk_bytes / $MEMORY_KEYS, 1))")")"
tail -n1 "$RESULTS" >&2
rm -rf "$DUR_DIR"
python3 - "$RESULTS" <<'PY' >&2
import json, statistics, sys
rows = {}
for r in map(json.loads, open(sys.argv[1])):
    rows.setdefault(r["row"], []).append(r)
med = lambda row, f: statistics.median(r[f] for r in rows[row])
mem = med("dur_mem_r0", "ops")
rec = rows["dur_recovery"][0]
per_key = med("memory_kv", "bytes_per_key")
print("durability (median of passes; targets from issue 15):")
print("  in-memory writes/s %.0f" % mem)
print("  periodic  writes/s %.0f = %.2fx (target >= 0.9x)" % (med("dur_periodic_r0", "ops"), med("dur_periodic_r0", "ops") / mem))
print("  sync      writes/s %.0f = %.2fx (target >= 0.5x)" % (med("dur_sync_r0", "ops"), med("dur_sync_r0", "ops") / mem))
print("  recovery of %d keys: %.2f s (target < 5 s)" % (rec["keys"], rec["seconds"]))
print("  disk after a snapshot: %.1f bytes per key = %.2fx memory's %.1f (target <= 2x)" % (
    rec["disk_bytes_per_key"], rec["disk_bytes_per_key"] / per_key, per_key))
PY

machine=$OUT/machine.json
python3 - "$PASSES" "$DURATION" "$WARMUP" "$CONCURRENCY" "$LOAD_START" >"$machine" <<'PY'
import json, os, platform, subprocess, sys
def cmd(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
def build():
    # How both servers were built: `make bench` builds the node and the bare
    # server with the one release profile of Cargo.toml, and both set
    # mimalloc as their allocator.
    import tomllib
    profile = tomllib.load(open("Cargo.toml", "rb")).get("profile", {}).get("release", {})
    keys = ("opt-level", "lto", "codegen-units", "panic")
    said = ", ".join(f"{k} = {json.dumps(profile[k])}" for k in keys if k in profile)
    return f"`cargo build --release` ({said or 'the defaults'}), allocator mimalloc"
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
print(json.dumps({
    "cores": os.cpu_count(), "model": model, "memory_gib": round(mem / 2**20),
    "kernel": platform.release(), "rustc": cmd("rustc", "--version"),
    "redis": cmd("redis-server", "--version").split(" sha=")[0],
    "passes": int(sys.argv[1]), "duration": sys.argv[2], "warmup": sys.argv[3],
    "concurrency": int(sys.argv[4]),
    # Other work on the machine shows here: the suite itself keeps about
    # two runnable processes (client and server).
    "load_start": sys.argv[5], "load_end": " ".join(open("/proc/loadavg").read().split()[:3]),
    "build": build(),
}))
PY
python3 benches/suite_report.py "$RESULTS" "$machine" "$DOC"

# ---- geo: six nodes in three regions over a simulated WAN (benches/geo.sh) ----
stop_all() { local p; for p in "${pids[@]}"; do stop "$p"; done; pids=(); }
stop_all
DOC="$DOC" OUT="$OUT" DURATION="$DURATION" WARMUP="$WARMUP" bash benches/geo.sh
