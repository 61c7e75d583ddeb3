#!/usr/bin/env bash
# Installs what kiln needs from Debian when it is missing: runc and crun
# (the OCI runtimes), busybox-static (the base of the test and example images), and
# for the registry tests docker-registry (CNCF distribution), skopeo and
# apache2-utils (htpasswd), git for the CI service's runners, and
# debootstrap for the Debian test images.
set -euo pipefail
missing=()
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /bin/busybox ] || missing+=(busybox-static)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
# The CI service's runners check commits out with git.
command -v git >/dev/null 2>&1 || missing+=(git)
# scripts/debian-image.sh builds the Debian images of the tests that need
# real toolchains (make, gcc, cargo, python3) from Debian's packages.
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
# Services share a private network namespace per run; slirp4netns gives it
# outbound network (pip install, apt-get) without touching the host's.
command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
# crun starts a container in about half runc's time; bench/step-overhead
# measures both.
command -v crun >/dev/null 2>&1 || missing+=(crun)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing ${missing[*]} needs root (apt-get)" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
