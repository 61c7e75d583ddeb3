#!/usr/bin/env bash
# Sets up kiln on this machine and runs the example pipelines end to end:
# installs runc and busybox-static if missing, builds kiln, imports a busybox
# image made from the host's busybox, then runs examples/blog twice (the
# second run comes entirely from the cache), examples/parallel-tests, and the
# Rust API example.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
echo "building kiln (release) ..." >&2
cargo build --release --quiet -p kiln --bins
cargo build --release --quiet -p kiln-engine --example demo
export KILN_STORE=${KILN_STORE:-$PWD/.kiln-store}
kiln=$PWD/target/release/kiln
layout=$(mktemp -d)
trap 'rm -rf "$layout"' EXIT
scripts/busybox-image.sh "$layout" busybox:latest >/dev/null
$kiln image import "$layout" --tag busybox:latest
$kiln image ls
echo
echo "== examples/blog: kiln functions ==" >&2
$kiln functions -m examples/blog
echo
echo "== examples/blog: kiln run (install, build, check links, export to examples/blog/public) ==" >&2
time $kiln run -m examples/blog -o examples/blog/public --progress plain
echo
echo "== examples/blog again: everything cached ==" >&2
time $kiln run -m examples/blog -o examples/blog/public --progress plain
echo
echo "== examples/parallel-tests: two suites at once, artifact to dist/calc ==" >&2
$kiln run -m examples/parallel-tests -o dist/calc --progress plain
echo "dist/calc add 40 2 = $(sh dist/calc add 40 2)"
echo
echo "== the Rust API example ==" >&2
target/release/examples/demo examples/engine-demo/site examples/engine-demo/out
echo
$kiln cache du
