#!/usr/bin/env bash
# Sets up kiln on this machine and runs the example pipelines end to end:
# installs runc and busybox-static if missing, builds kiln, imports a busybox
# image made from the host's busybox, then runs examples/blog twice (the
# second run comes entirely from the cache), examples/parallel-tests, the
# Rust API example, examples/db-tests (a test suite against a PostgreSQL
# service, in a Debian image built with debootstrap), and one job through the
# CI service (a server, a runner, a git repository holding
# examples/parallel-tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
echo "building kiln (release) ..." >&2
cargo build --release --quiet -p kiln --bins
cargo build --release --quiet -p kiln-engine --example demo
export KILN_STORE=${KILN_STORE:-$PWD/.kiln-store}
kiln=$PWD/target/release/kiln
layout=$(mktemp -d)
service=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait; rm -rf "$layout" "$service"' EXIT
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
echo "== examples/db-tests: a Python test suite against PostgreSQL, a service bound as host db ==" >&2
# Built from Debian's packages once per machine (about a minute), kept in
# ~/.cache/kiln; offline from here on.
pg_image=$(scripts/debian-image.sh postgresql python3-psycopg2)
$kiln image import "$pg_image" --tag debian:postgres
$kiln run -m examples/db-tests --progress plain
echo
echo "== the Rust API example ==" >&2
target/release/examples/demo examples/engine-demo/site examples/engine-demo/out
echo
$kiln cache du
echo
echo "== the CI service: kiln server, a runner, a job from a git repository ==" >&2
cp -r examples/parallel-tests "$service/repo"
git -C "$service/repo" init -q -b main
git -C "$service/repo" add .
git -C "$service/repo" -c user.name=kiln -c user.email=kiln@localhost commit -q -m example
$kiln server --listen 127.0.0.1:0 --data "$service/server" >"$service/server.log" 2>&1 &
for _ in $(seq 100); do grep -q "listening on" "$service/server.log" && break; sleep 0.1; done
KILN_SERVER=$(sed -n 's/.*listening on //p' "$service/server.log")
KILN_TOKEN=$(cat "$service/server/admin.token")
export KILN_SERVER KILN_TOKEN
$kiln repo add example --url "$service/repo"
KILN_RUNNER_TOKEN=$($kiln runner-token create) $kiln runner --name setup --work "$service/work" \
  >"$service/runner.log" 2>&1 &
job=$($kiln trigger example)
echo "job $job queued; its log (the same commit ran above with this store: all cache hits):" >&2
$kiln jobs logs "$job" --follow
$kiln jobs show "$job"
