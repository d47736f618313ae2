# Everyday recipes; each is a thin wrapper over a command the README also shows.

# Run everything in one process (zero-config without DATABASE_URL).
up:
    cargo run -p jct-cli -- up

# Run the tests (a throwaway PostgreSQL cluster unless DATABASE_URL is set).
test:
    cargo test --workspace

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Regenerate openapi/openapi.yaml from the code.
openapi:
    cargo run -q -p jct-cli -- openapi > openapi/openapi.yaml

# Benchmarks (release build): the append path, HTTP enqueue/GET, the worker, and forensics on a 1M-event log.
bench:
    cargo run --release -p jct-cli -- bench append
    cargo run --release -p jct-cli -- bench enqueue
    cargo run --release -p jct-cli -- bench worker
    cargo run --release -p jct-cli -- bench service
    cargo run --release -p jct-cli -- bench service --topology split
    cargo run --release -p jct-cli -- bench forensics --events 1000000

# Exactly what CI runs.
ci:
    bash .ci/run
