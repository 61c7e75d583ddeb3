#!/usr/bin/env bash
# Runs kiln's whole test suite: formatting, lints, then every crate's unit and
# integration tests. The integration tests run real containers under runc, so
# this needs root; scripts/deps.sh installs runc and busybox-static.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# Fail instead of skipping when a privileged test cannot run.
export KILN_REQUIRE_PRIVILEGED=1 KILN_REQUIRE_RUNC=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Doc examples first, so the run closes on the main suite's summary.
cargo test --workspace --doc --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
