# The two commands a fresh machine needs (see README.md):
#   make run    build and start the daemon (ARGS="--data-dir ./data --port 7860")
#   make test   run the whole test suite (CPU)
ARGS ?=

.PHONY: run test build bootstrap lint bench bench-daemon reference

bootstrap:
	@scripts/bootstrap.sh

build: bootstrap
	cargo build --release -p daemon

run: build
	target/release/diffusiond $(ARGS)

test:
	@scripts/bootstrap.sh --clients
	cargo test --workspace --all-targets

lint: bootstrap
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Regenerates the committed fixtures and golden outputs with the pinned reference stack.
reference:
	@scripts/bootstrap.sh --reference
	.venv/bin/python reference/gen_fixtures.py

# Full-size SD1.5 UNet step and VAE decode on random weights, against diffusers in the same run.
bench:
	@scripts/bootstrap.sh --reference
	cargo build --release -p models --example bench_sd15
	.venv/bin/python reference/bench_sd15.py --ours target/release/examples/bench_sd15

# Checkpoint switching (cold load vs cached) and per-request HTTP overhead of the daemon, both
# measured in one run; ARGS="--device cuda" on a GPU. The two generated checkpoints are kept in
# target/bench-daemon for later runs.
bench-daemon: bootstrap
	cargo build --release -p daemon --example bench_daemon
	target/release/examples/bench_daemon --cache-dir target/bench-daemon $(ARGS)
