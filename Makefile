# The two commands a fresh machine needs (see README.md):
#   make run    build and start the daemon (ARGS="--data-dir ./data --port 7860")
#   make test   run the whole test suite (CPU)
ARGS ?=

.PHONY: run test build bootstrap lint bench bench-daemon bench-train reference

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

# Seconds per LoRA training step of TrainSession against a PyTorch loop (diffusers + peft) on the
# same weights, in the same run: on CPU the tiny fixture (64 px, batch 3) and full-size SD1.5
# (256 px, batch 1); ARGS="--device cuda" runs SD1.5 at 512 and 768 px, batch 3, with the
# peak CUDA memory (allocated) of both; add --mixed-precision bf16 and/or --gradient-checkpointing
# to ARGS for those modes. The generated SD1.5 folder is kept in target/bench-train.
bench-train:
	@scripts/bootstrap.sh --reference
	.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r reference/requirements-training.txt
	cargo build --release -p models --example bench_train
	.venv/bin/python reference/bench_train.py --ours target/release/examples/bench_train $(ARGS)
