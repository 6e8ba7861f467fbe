#!/usr/bin/env bash
# Proves that the README's Go client works against a real Kilovolt-DB node.
#
# It takes the ```go block between <!-- go-client:begin --> and
# <!-- go-client:end --> in README.md as written, generates the Go stubs from
# proto/kilovolt.proto, builds the client offline with Debian's Go packages
# (GOPATH mode), starts a node on 127.0.0.1:50051 and checks what the client
# prints. Then the same for the TLS-and-token variant (between
# <!-- go-client-tls:begin --> and <!-- go-client-tls:end -->), against a
# node with TLS and an auth file, certificates made by kilovolt-cli cert.
#
# Usage: bash tests/go_client.sh
#   KILOVOLT_BIN  server binary (default: target/debug/kilovolt-db); the
#                 kilovolt-cli next to it makes the certificates
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=50051
HOST=127.0.0.1
BIN=${KILOVOLT_BIN:-target/debug/kilovolt-db}
README=README.md
PACKAGES=(
	golang-go
	golang-google-grpc-dev
	golang-google-protobuf-dev
	# grpc-dev's dependency is also met by the old 1.3 API, which cannot
	# marshal the messages protoc-gen-go generates: name 1.5 explicitly.
	golang-github-golang-protobuf-1-5-dev
	protobuf-compiler
	protoc-gen-go
	protoc-gen-go-grpc
)

work=""
server_pid=""
reported=""

dump() { # dump TITLE FILE
	if [[ -n $2 && -s $2 ]]; then
		echo "----- $1 -----"
		cat "$2"
		echo "----- end of $1 -----"
	fi
}

fail() {
	echo "go_client: FAIL: $*"
	if [[ -n $work ]]; then
		dump "go build output" "$work/build.log"
		dump "client output" "$work/client.log"
		dump "server output" "$work/server.log"
	fi
	reported=1
	echo "0 passed, 1 failed"
	exit 1
}

cleanup() {
	local rc=$?
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill "$server_pid" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$server_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	if [[ $rc -ne 0 && -z $reported ]]; then
		echo "go_client: FAIL: stopped by an error or a signal (exit code $rc)"
		if [[ -n $work ]]; then
			dump "go build output" "$work/build.log"
			dump "client output" "$work/client.log"
			dump "server output" "$work/server.log"
		fi
		echo "0 passed, 1 failed"
	fi
	if [[ -n $work ]]; then rm -rf "$work"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { # port_open HOST: something accepts connections on HOST:$PORT
	(exec 3<>"/dev/tcp/$1/$PORT") 2>/dev/null
}

# The client, verbatim from the README: the first ```go block between the
# markers.
[[ -f $README ]] || fail "$README not found in $(pwd)"
extract_client() { # extract_client MARKER
	awk -v begin="<!-- $1:begin -->" -v end="<!-- $1:end -->" '
		index($0, begin) { inside = 1; next }
		index($0, end) { inside = 0; code = 0; next }
		inside && !code && /^```go[[:space:]]*$/ { code = 1; blocks++; next }
		inside && code && /^```[[:space:]]*$/ { code = 0; next }
		inside && code && blocks == 1 { print }
	' "$README"
}
client_src=$(extract_client go-client)
if [[ -z $client_src ]]; then
	fail "no \`\`\`go block between <!-- go-client:begin --> and <!-- go-client:end --> in $README"
fi
tls_src=$(extract_client go-client-tls)
if [[ -z $tls_src ]]; then
	fail "no \`\`\`go block between <!-- go-client-tls:begin --> and <!-- go-client-tls:end --> in $README"
fi
CLI=$(dirname "$BIN")/kilovolt-cli

[[ -f $BIN && -x $BIN ]] || fail "server binary $BIN not found or not executable: run 'cargo build' first (or set KILOVOLT_BIN)"

# Debian's packages, installed only when missing.
missing=()
for pkg in "${PACKAGES[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$pkg")
	fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
	sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		command -v sudo >/dev/null || fail "not root and no sudo: install ${missing[*]}"
		sudo=(sudo)
	fi
	echo "go_client: installing ${missing[*]}"
	"${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
		fail "apt-get install ${missing[*]} failed"
fi

# Stubs and client in a throwaway GOPATH; Debian's libraries come from
# /usr/share/gocode. GOPATH mode needs no network and no go.mod.
work=$(mktemp -d)
gen="$work/src/kilovolt-db/proto"
mkdir -p "$gen" "$work/src/kilovolt-client"
if ! protoc -I proto \
	--go_out="$gen" --go_opt=paths=source_relative \
	--go-grpc_out="$gen" --go-grpc_opt=paths=source_relative \
	proto/kilovolt.proto >"$work/build.log" 2>&1; then
	fail "protoc could not generate the Go stubs from proto/kilovolt.proto"
fi
build_client() { # build_client SOURCE NAME
	mkdir -p "$work/src/$2"
	printf '%s\n' "$1" >"$work/src/$2/main.go"
	(cd "$work/src/$2" &&
		env GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOCACHE="$work/gocache" \
			GOFLAGS= GOPROXY=off go build -o "$work/$2" .) >>"$work/build.log" 2>&1
}
build_client "$client_src" kilovolt-client || fail "the README's Go client does not build"
build_client "$tls_src" kilovolt-client-tls || fail "the README's Go client with TLS and a token does not build"

# A node of our own on the port the client dials, with the flags given.
start_server() {
	for host in 127.0.0.1 ::1; do
		if port_open "$host"; then
			fail "port $PORT is already in use on $host: stop whatever listens there"
		fi
	done
	"$BIN" --port "$PORT" --host "$HOST" "$@" >"$work/server.log" 2>&1 &
	server_pid=$!
	deadline=$((SECONDS + 30))
	until port_open "$HOST"; do
		kill -0 "$server_pid" 2>/dev/null || fail "the server exited before it accepted connections"
		((SECONDS < deadline)) || fail "the server did not accept connections on $HOST:$PORT within 30 s"
		sleep 0.1
	done
}

stop_server() {
	kill "$server_pid"
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
}

check_output() { # check_output WHAT
	grep -qF 'Set response: OK' "$work/client.log" || fail "$1: output lacks 'Set response: OK'"
	grep -qF 'Got value: bar' "$work/client.log" || fail "$1: output lacks 'Got value: bar'"
	cat "$work/client.log"
}

start_server
if ! timeout 60 "$work/kilovolt-client" >"$work/client.log" 2>&1; then
	fail "the client failed"
fi
check_output "the client"
stop_server

# The TLS-and-token variant: it reads certs/ca.pem and KILOVOLT_TOKEN.
[[ -x $CLI ]] || fail "$CLI not found: run 'cargo build' first"
mkdir -p "$work/run"
"$CLI" cert --out "$work/run/certs" --node n1 >>"$work/build.log" 2>&1 ||
	fail "kilovolt-cli cert failed"
token=go-client-test-token
printf 'go write %s\n' "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" >"$work/run/auth"
start_server --node-id n1 --tls-cert "$work/run/certs/n1.pem" --tls-key "$work/run/certs/n1.key" \
	--auth-file "$work/run/auth"
if ! (cd "$work/run" && KILOVOLT_TOKEN=wrong timeout 60 "$work/kilovolt-client-tls") >"$work/client.log" 2>&1; then
	grep -qF 'Unauthenticated' "$work/client.log" || fail "a wrong token failed otherwise than Unauthenticated"
else
	fail "the client with TLS succeeded with a wrong token"
fi
if ! (cd "$work/run" && KILOVOLT_TOKEN=$token timeout 60 "$work/kilovolt-client-tls") >"$work/client.log" 2>&1; then
	fail "the client with TLS and a token failed"
fi
check_output "the client with TLS and a token"

echo "go_client: the README's Go clients work against $BIN"
echo "2 passed, 0 failed"
