#!/usr/bin/env bash
# Runs kiln's whole test suite: formatting, lints, then every crate's unit and
# integration tests. The integration tests run real containers under runc, so
# this needs root; scripts/deps.sh installs runc and busybox-static.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# Fail instead of skipping when a privileged test cannot run.
export KILN_REQUIRE_PRIVILEGED=1 KILN_REQUIRE_RUNC=1 KILN_REQUIRE_REGISTRY=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Doc examples first, so the run closes on the main suite's summary.
cargo test --workspace --doc --quiet
# The benchmark harness in its quick mode: correctness only (same md5 as the
# host, cache hit on the second run, one re-run after a one-file change).
# Timing is judged by `bench/compare w1` outside CI.
cargo build --quiet -p kiln --bins
python3 bench/compare w1 --quick --kiln target/debug/kiln --work "$(mktemp -d)/w1"
# The step-cost benchmarks in their quick modes: a chain and a fan of
# trivial steps give the expected result, and a few steps run under each
# runtime with every phase of a step reported. Judged by `bench/compare
# chain|fan` and `bench/step-overhead --phases` outside CI.
python3 bench/compare chain --quick --kiln target/debug/kiln --work "$(mktemp -d)/chain"
python3 bench/compare fan --quick --kiln target/debug/kiln --work "$(mktemp -d)/fan"
python3 bench/step-overhead --quick --phases --kiln target/debug/kiln
# The dispatch benchmark in its quick mode: a server, 2 runners, 20 jobs, each
# run exactly once and successfully; 20 idle runner connections held open.
# Latency and the 500-runner figures are judged by `bench/dispatch` outside CI.
python3 bench/dispatch --quick --kiln target/debug/kiln
# The requeue benchmark in its quick mode: one killed runner's job claimed
# again by the other, two jobs under CPU load never requeued. The timing of
# the trade-off is judged by `bench/requeue` outside CI.
python3 bench/requeue --quick --kiln target/debug/kiln
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
