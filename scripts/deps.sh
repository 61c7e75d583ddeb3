#!/usr/bin/env bash
# Installs what kiln needs from Debian when it is missing: runc (the OCI
# runtime) and busybox-static (the base of the test and example images).
set -euo pipefail
missing=()
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing ${missing[*]} needs root (apt-get)" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
