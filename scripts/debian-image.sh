#!/usr/bin/env bash
# Builds a Debian bookworm image holding the given packages (and what they
# depend on) with debootstrap, as an OCI archive that `kiln image import`
# takes, and prints its path:
#
#   scripts/debian-image.sh PACKAGE...
#   kiln image import "$(scripts/debian-image.sh make gcc)" --tag debian:tools
#
# The archive is kept outside the repository, in
# ${XDG_CACHE_HOME:-$HOME/.cache}/kiln/debian-bookworm-HASH.tar, HASH naming
# the package list (order and repeats do not matter), so only the first
# call for a list takes minutes. It is written to a temporary file and
# renamed into place, so a killed build never leaves half an image; a lock
# makes concurrent calls for one list build it once. Needs root and network
# access to the Debian mirror (DEBIAN_MIRROR, default deb.debian.org).
# The one layer is uncompressed: it is only ever imported on this machine.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: debian-image.sh PACKAGE..." >&2; exit 2; }
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=$(printf '%s\n' "$@" | sort -u | paste -sd, -)
# The layout version: bump it when the way the image is made changes, so
# caches of the old way are not reused.
recipe="v2 $suite $(uname -m) minbase $packages"
hash=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kiln
out="$cache/debian-$suite-$hash.tar"
mkdir -p "$cache"

exec 9>"$out.lock"
flock 9
if [ -s "$out" ]; then
  echo "$out"
  exit 0
fi

debootstrap=$(command -v debootstrap || echo /usr/sbin/debootstrap)
[ -x "$debootstrap" ] || { echo "error: debootstrap missing: run scripts/deps.sh" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }

# On the cache's filesystem, so the final rename is atomic.
work=$(mktemp -d "$cache/.debian-build.XXXXXX")
cleanup() {
  # debootstrap may leave proc or sys mounted in the rootfs when killed.
  for m in proc sys dev/pts dev; do
    mountpoint -q "$work/rootfs/$m" 2>/dev/null && umount -l "$work/rootfs/$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT
echo "debian-image: building $suite with $packages (a few minutes, once) ..." >&2
if ! "$debootstrap" --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  # debootstrap's own record of what failed, when it got that far.
  tail -n 30 "$work/rootfs/debootstrap/debootstrap.log" 2>/dev/null >&2 || true
  echo "error: debootstrap failed" >&2
  exit 1
fi
root="$work/rootfs"
# Downloaded packages and index files are not part of an image, and
# documentation and translations only cost import time (as in Debian's own
# slim images).
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/debootstrap \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*

layout="$work/layout"
mkdir -p "$layout/blobs/sha256"
# Device nodes under dev/ are left out: kiln would skip them anyway, and the
# runtime provides /dev. Files keep the times the packages gave them.
tar --sort=name --numeric-owner --xattrs --exclude='./dev/*' --exclude='./proc/*' \
  --exclude='./sys/*' -C "$root" -cf "$work/layer.tar" .
layer_digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar")
mv "$work/layer.tar" "$layout/blobs/sha256/$layer_digest"

case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
blob() {
  local digest
  digest=$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)
  printf '%s' "$1" >"$layout/blobs/sha256/$digest"
  echo "$digest"
}
config='{"architecture":"'$arch'","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"],"Cmd":["bash"]},"rootfs":{"type":"layers","diff_ids":["sha256:'$layer_digest'"]}}'
config_digest=$(blob "$config")
manifest='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'$config_digest'","size":'${#config}'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'$layer_digest'","size":'$layer_size'}]}'
manifest_digest=$(blob "$manifest")
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"debian:%s-%s"}}]}' \
  "$manifest_digest" "${#manifest}" "$suite" "$hash" >"$layout/index.json"

tar -C "$layout" -cf "$work/image.tar" oci-layout index.json blobs
mv "$work/image.tar" "$out"
echo "debian-image: wrote $out ($(du -h "$out" | cut -f1))" >&2
echo "$out"
