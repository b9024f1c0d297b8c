# Recipes for paysaga developers. The plain commands are in README.md.

# Run the demo (the engine's main job).
demo:
    cargo run -p paysaga-cli -- demo

# Run every test against a real PostgreSQL.
test:
    cargo test --workspace

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# What CI runs.
ci:
    bash .ci/run

# Benchmark suite (issue 6): release build, every scenario on a private PostgreSQL cluster,
# table on stdout, JSON in target/bench/latest.json. `just bench --quick` for a short run.
# `--peers`: the peer engine (underway) runs the same workflow in the same run (issue 14).
bench *ARGS:
    cargo run --release -p paysaga-bench -- --peers {{ARGS}}

# Fuzz every cargo-fuzz target for 60 s each (ARGS go to libFuzzer after the time limit).
# Needs a nightly toolchain and cargo-fuzz: `rustup toolchain install nightly` and
# `cargo install cargo-fuzz`. On stable, the short run is
# `cargo test -p paysaga-providers --test fuzz_short` (part of `cargo test --workspace`).
fuzz *ARGS:
    for t in webhook_lumanu webhook_blaaiz webhook_lean definition_toml saga_input; do \
        cargo +nightly fuzz run "$t" -- -max_total_time=60 {{ARGS}} || exit 1; \
    done

# The long chaos run (issue 5): 5,000 sagas of the three payout workflows on real processes
# while workers are killed, frozen and stopped and PostgreSQL crashes; prints the check table
# (recorded in docs/RELIABILITY.md). The CI-sized run is part of `cargo test --workspace`.
chaos sagas="5000" seconds="600" rate="8" seed="":
    PAYSAGA_CHAOS_SAGAS={{sagas}} PAYSAGA_CHAOS_SECONDS={{seconds}} PAYSAGA_CHAOS_RATE={{rate}} PAYSAGA_CHAOS_SETTLE_SECONDS=1800 \
    PAYSAGA_CHAOS_SEED={{seed}} cargo test --release -p paysaga-cli --test chaos -- --nocapture
