# Kilovolt-DB. `make run` starts a node on port 50051; `make test` runs the tests.

CARGO ?= cargo
PORT ?= 50051
BIN_DIR := bin
COVER_DIR := coverage
BINARIES := kilovolt-db kilovolt-cli kilovolt-bench

.PHONY: all build run cluster cluster-stop test test-go test-cover sim soak bench clean clean-all fmt generate-proto install

## all: build the release binaries into bin/
all: build

## build: release binaries into bin/
build:
	$(CARGO) build --release --bins
	@mkdir -p $(BIN_DIR)
	@for b in $(BINARIES); do cp target/release/$$b $(BIN_DIR)/; done
	@echo "built: $(addprefix $(BIN_DIR)/,$(BINARIES))"

## run: build, then start one node on $(PORT) (Ctrl-C stops it gracefully)
run: build
	./$(BIN_DIR)/kilovolt-db --port $(PORT)

CLUSTER_PORTS := 50051 50052 50053
LOG_DIR := logs

## cluster: build, then start three nodes on 50051-50053 in the background, metrics on 127.0.0.1:9151-9153 (logs in logs/)
cluster: build
	@mkdir -p $(LOG_DIR)
	@for p in $(CLUSTER_PORTS); do \
		seeds=$$(for q in $(CLUSTER_PORTS); do [ $$q = $$p ] || printf 'localhost:%s,' $$q; done); \
		nohup ./$(BIN_DIR)/kilovolt-db --port $$p --cluster $${seeds%,} --metrics-addr 127.0.0.1:$$((p - 50051 + 9151)) > $(LOG_DIR)/node-$$p.log 2>&1 & \
		echo $$! > $(LOG_DIR)/node-$$p.pid; \
	done
	@echo "three nodes on ports $(CLUSTER_PORTS), metrics on 127.0.0.1:9151-9153 (deploy/prometheus.yml scrapes them); logs in $(LOG_DIR)/; stop with: make cluster-stop"

## cluster-stop: stop the nodes `make cluster` started (gracefully, SIGTERM)
cluster-stop:
	@for f in $(LOG_DIR)/node-*.pid; do \
		[ -f "$$f" ] || continue; \
		pid=$$(cat "$$f"); \
		kill "$$pid" 2>/dev/null && while kill -0 "$$pid" 2>/dev/null; do sleep 0.1; done; \
		rm -f "$$f"; \
	done
	@echo "cluster stopped"

## test: unit, property and integration tests; the alerting rules with promtool when it is installed
test:
	$(CARGO) test
	@if command -v promtool >/dev/null; then \
		promtool check rules deploy/alerts.yml && promtool check config deploy/prometheus.yml; \
	else \
		echo "promtool not installed (Debian: apt-get install prometheus); skipping the check of deploy/alerts.yml"; \
	fi

SEEDS ?= 200
SEED ?= 1

## sim: deterministic simulation of $(SEEDS) seeds from $(SEED) (replay one: make sim SEEDS=1 SEED=S)
sim:
	$(CARGO) run --quiet --features sim --bin kilovolt-sim -- --seeds $(SEEDS) --seed $(SEED)

SOAK_SEEDS ?= 20000

## soak: the long simulation before a release: $(SOAK_SEEDS) seeds from a fresh random start, release build
soak:
	$(CARGO) run --release --quiet --features sim --bin kilovolt-sim -- --seeds $(SOAK_SEEDS) --seed $$(od -An -N4 -tu4 /dev/urandom | tr -d ' ') --max-failures 10

## test-go: build the README's Go client and run it against a real node
test-go:
	$(CARGO) build --bins
	bash tests/go_client.sh

## test-cover: coverage report as coverage/coverage.out (lcov) and coverage/coverage.html
test-cover:
	@command -v cargo-tarpaulin >/dev/null || $(CARGO) install cargo-tarpaulin --locked
	$(CARGO) tarpaulin --all-targets --out Lcov --out Html --output-dir $(COVER_DIR)
	@mv $(COVER_DIR)/lcov.info $(COVER_DIR)/coverage.out
	@mv $(COVER_DIR)/tarpaulin-report.html $(COVER_DIR)/coverage.html
	@echo "coverage: $(COVER_DIR)/coverage.out $(COVER_DIR)/coverage.html"

## bench: the standard benchmark suite on this machine (about 10 minutes); rewrites the tables in docs/performance.md (QUICK=1 for a short trial, PASSES=N)
bench: build
	$(CARGO) build --release --example bare-server
	bash benches/suite.sh

## fmt: format the code
fmt:
	$(CARGO) fmt

## generate-proto: regenerate the gRPC code from proto/ (build.rs, no system protoc)
generate-proto:
	touch build.rs
	$(CARGO) build --lib

## install: fetch every dependency
install:
	$(CARGO) fetch

## clean: remove built binaries and reports
clean:
	rm -rf $(BIN_DIR) $(COVER_DIR)

## clean-all: clean, and remove every build artefact
clean-all: clean
	$(CARGO) clean
