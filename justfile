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
