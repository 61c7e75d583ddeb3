#!/usr/bin/env bash
# Makes crun usable on a hybrid cgroup host (v1 controllers plus a cgroup2
# hierarchy at /sys/fs/cgroup/unified): Debian's crun 1.8.1 refuses such a
# host when its cgroup2 hierarchy holds any controller ("cgroups in hybrid
# mode not supported, drop all controllers from cgroupv2"). A controller no
# cgroup2 group has enabled can be moved to a v1 hierarchy of its own by
# mounting one; this does that for each (hugetlb, typically), and nothing on
# a pure v1 or pure v2 host. Undo: umount /sys/fs/cgroup/NAME.
set -euo pipefail
unified=/sys/fs/cgroup/unified
if [ ! -f "$unified/cgroup.controllers" ]; then
  echo "not a hybrid cgroup host: nothing to do" >&2
  exit 0
fi
if [ -n "$(cat "$unified/cgroup.subtree_control")" ]; then
  echo "error: cgroup2 controllers are in use ($(cat "$unified/cgroup.subtree_control")); not moving them" >&2
  exit 1
fi
for controller in $(cat "$unified/cgroup.controllers"); do
  mkdir -p "/sys/fs/cgroup/$controller"
  mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller"
  echo "moved the $controller controller to /sys/fs/cgroup/$controller (cgroup v1)" >&2
done
