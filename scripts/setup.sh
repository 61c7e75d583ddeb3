#!/usr/bin/env bash
# Sets up kiln on this machine and runs the example pipeline end to end:
# installs runc and busybox-static if missing, builds kiln, imports a busybox
# image made from the host's busybox, then runs examples/engine-demo twice
# (the second run comes entirely from the cache).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
echo "building kiln ..." >&2
cargo build --release --quiet -p kiln --bins
cargo build --release --quiet -p kiln-engine --example demo
export KILN_STORE=${KILN_STORE:-$PWD/.kiln-store}
kiln=target/release/kiln
layout=$(mktemp -d)
trap 'rm -rf "$layout"' EXIT
scripts/busybox-image.sh "$layout" busybox:latest >/dev/null
$kiln image import "$layout" --tag busybox:latest
$kiln image ls
echo
echo "== example pipeline, first run ==" >&2
target/release/examples/demo examples/engine-demo/site examples/engine-demo/out
echo
echo "== example pipeline, second run (all cached) ==" >&2
target/release/examples/demo examples/engine-demo/site examples/engine-demo/out
echo
echo "== one step from the command line ==" >&2
$kiln exec busybox:latest --dir examples/engine-demo/site:/site -- sh -c 'cat /site/*.txt | wc -w'
$kiln cache du
