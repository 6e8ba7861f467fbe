# Kilovolt-DB. `make run` starts a node on port 50051; `make test` runs the tests.

CARGO ?= cargo
PORT ?= 50051
BIN_DIR := bin
COVER_DIR := coverage
BINARIES := kilovolt-db kilovolt-cli

.PHONY: all build run test test-go test-cover clean clean-all fmt generate-proto install

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

## test: unit, property and integration tests
test:
	$(CARGO) test

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
