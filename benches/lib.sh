# Shared by the benchmark scripts (sourced, not run): starting servers on
# loopback, waiting for a cluster to form, and reading kilovolt-bench's JSON
# and a process's CPU time and resident memory from /proc. Every process a
# script starts through `spawn` is stopped when the script exits.
#
# The scripts' ports are all below 32768, Linux's first ephemeral port: a
# listener on a port in that range can find it taken by an outgoing
# connection (the load generator's own), and the run then stops.
#
# Expects BIN, the folder holding kilovolt-db, kilovolt-cli and kilovolt-bench.

pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

# spawn COMMAND...: start it in the background, output discarded; its pid is
# left in SPAWNED and stopped at exit.
spawn() {
	"$@" >/dev/null 2>&1 &
	SPAWNED=$!
	pids+=("$SPAWNED")
}

# stop PID: stop one spawned process and wait until it is gone.
stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# start_node PORT CLUSTER_ID [SEEDS]: a kilovolt-db on 127.0.0.1:PORT; pid in SPAWNED.
start_node() {
	local seeds=()
	[[ -n ${3:-} ]] && seeds=(--cluster "$3")
	spawn "$BIN/kilovolt-db" --host 127.0.0.1 --port "$1" --cluster-id "$2" "${seeds[@]}" \
		--log-level warn
}

# wait_ready ADDR N: until N members are alive and ready, 30 s at most.
wait_ready() {
	local n
	for _ in $(seq 300); do
		n=$("$BIN/kilovolt-cli" --addr "$1" --json members 2>/dev/null |
			grep -o '"alive":true,"id":"[^"]*","region":"[^"]*","state":"ready"' | wc -l || true)
		[[ $n -ge $2 ]] && return 0
		sleep 0.1
	done
	echo "the cluster at $1 did not form" >&2
	return 1
}

# wait_port PORT: until something accepts TCP connections on 127.0.0.1:PORT, 30 s at most.
wait_port() {
	for _ in $(seq 300); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "nothing listens on port $1" >&2
	return 1
}

# total_ops: the measured ops/s from kilovolt-bench --json on stdin.
total_ops() { python3 -c 'import json, sys; print(round(json.load(sys.stdin)["total"]["ops_per_sec"]))'; }

# cpu_ticks PID: user + system CPU time of the process so far, in clock ticks.
cpu_ticks() {
	# Fields 14 and 15 of /proc/PID/stat, counted after the command name,
	# which is in parentheses and may hold spaces.
	local stat
	stat=$(<"/proc/$1/stat")
	stat=${stat##*) }
	awk '{ print $12 + $13 }' <<<"$stat"
}

# rss_kib PID: the process's resident memory (VmRSS), in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
