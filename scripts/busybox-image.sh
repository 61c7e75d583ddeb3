#!/usr/bin/env bash
# Writes an OCI image layout holding one layer: the host's static busybox with
# every applet linked, /etc/passwd and /etc/group. No download involved.
#
#   scripts/busybox-image.sh OUT_DIR [REF_NAME]
set -euo pipefail
out=${1:?usage: busybox-image.sh OUT_DIR [REF_NAME]}
ref=${2:-busybox:latest}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "error: $busybox missing: run scripts/deps.sh" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

# Reproducible layer: sorted entries, fixed times and owners.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -9 "$work/layer.tar"
layer_digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar.gz")

case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
mkdir -p "$out/blobs/sha256"
cp "$work/layer.tar.gz" "$out/blobs/sha256/$layer_digest"
config='{"architecture":"'$arch'","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:'$diff_id'"]}}'
printf '%s' "$config" > "$work/config.json"
config_digest=$(sha256sum "$work/config.json" | cut -d' ' -f1)
config_size=$(stat -c %s "$work/config.json")
cp "$work/config.json" "$out/blobs/sha256/$config_digest"
manifest='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'$config_digest'","size":'$config_size'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'$layer_digest'","size":'$layer_size'}]}'
printf '%s' "$manifest" > "$work/manifest.json"
manifest_digest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
manifest_size=$(stat -c %s "$work/manifest.json")
cp "$work/manifest.json" "$out/blobs/sha256/$manifest_digest"
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$ref" > "$out/index.json"
echo "$out"
