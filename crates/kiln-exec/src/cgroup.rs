//! The cgroup kiln puts above a memory-limited step's container, so that an
//! OOM kill can be told from any other SIGKILL.
//!
//! `runc run` removes the container's own cgroup when the process exits,
//! and with it every counter that said why it died. So kiln creates a
//! parent cgroup of its own, `kiln-ID`, holds the memory limit there, has the
//! runtime put the container below it (`linux.cgroupsPath`), and reads the
//! parent's OOM record once the runtime is gone:
//!
//! * **cgroup v1** counts `oom_kill` only in the victim's own cgroup (the
//!   runtime's, gone by then), but it notifies an eventfd registered on the
//!   *limiting* cgroup's `memory.oom_control` when that cgroup runs out of
//!   memory. kiln registers one on the parent before the step starts.
//! * **cgroup v2** keeps hierarchical counts: the parent's `memory.events`
//!   says `oom_kill N` for kills anywhere below it.
//!
//! The container's own limit is set a little above the parent's, so tools
//! that size themselves from their cgroup's limit (JVMs, Node) see about the
//! right figure while the parent is the one that runs out.
//!
//! Placement: on v1, below kiln's own memory cgroup, which keeps steps
//! inside whatever memory limit kiln itself runs under. The path is given
//! absolute, because runc and crun read a relative one differently (below
//! the runtime's own cgroup, or below the root); the other hierarchies get
//! the same path. On v2, under `/kiln` at the root of the unified
//! hierarchy, as Docker's cgroupfs driver does.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v2 directory kiln's step cgroups live under.
const V2_PARENT: &str = "kiln";

/// What the container's cgroup limit is set above the parent's, so the
/// parent's limit is always the one reached first.
pub(crate) const LEAF_HEADROOM: u64 = 1 << 20;

/// The name of a step's parent cgroup: container ids are unique among
/// live runs already.
pub(crate) fn parent_name(container_id: &str) -> String {
    container_id.to_string()
}

/// Which cgroup hierarchy layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Unified hierarchy only, mounted at `root`.
    V2 { root: PathBuf },
    /// Per-controller hierarchies: `(mount point, kiln's own path in it)`,
    /// for every v1 hierarchy with a controller, plus where `memory` is.
    V1 {
        hierarchies: Vec<(PathBuf, String)>,
        memory: (PathBuf, String),
    },
}

impl Layout {
    /// Reads the host's layout from `/proc/self/cgroup` and `/proc/self/mountinfo`.
    pub(crate) fn detect() -> io::Result<Layout> {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return Ok(Layout::V2 {
                root: root.to_path_buf(),
            });
        }
        let own = fs::read_to_string("/proc/self/cgroup")?;
        let mounts = fs::read_to_string("/proc/self/mountinfo")?;
        Layout::from_v1(&own, &mounts)
    }

    fn from_v1(own_cgroups: &str, mountinfo: &str) -> io::Result<Layout> {
        let mut hierarchies = Vec::new();
        let mut memory = None;
        for line in own_cgroups.lines() {
            // "4:memory:/some/path"; v2's "0::/" and named ones carry no controller.
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            // Named hierarchies (name=systemd) and, on hybrid hosts, the
            // unified one ("0::/...") hold no controller, but the runtime
            // creates the container's cgroup in them too.
            let mount = if controllers.is_empty() {
                cgroup2_mount_point(mountinfo)
            } else {
                v1_mount_point(mountinfo, controllers)
            };
            let Some(mount) = mount else {
                continue;
            };
            if controllers.split(',').any(|c| c == "memory") {
                memory = Some((mount.clone(), path.to_string()));
            }
            hierarchies.push((mount, path.to_string()));
        }
        let memory = memory.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "this host has no cgroup v1 memory controller mounted and no cgroup v2 hierarchy",
            )
        })?;
        Ok(Layout::V1 {
            hierarchies,
            memory,
        })
    }

    /// The `linux.cgroupsPath` that puts the container below the step's parent.
    pub(crate) fn runtime_path(&self, container_id: &str) -> String {
        match self {
            Layout::V1 { memory, .. } => format!(
                "{}/{}/step",
                memory.1.trim_end_matches('/'),
                parent_name(container_id)
            ),
            Layout::V2 { .. } => format!("/{V2_PARENT}/{}/step", parent_name(container_id)),
        }
    }

    /// Every directory a step's cgroups may leave behind, children first.
    fn step_dirs(&self, container_id: &str) -> Vec<PathBuf> {
        let name = parent_name(container_id);
        match self {
            Layout::V2 { root } => {
                let parent = root.join(V2_PARENT).join(&name);
                vec![parent.join("step"), parent]
            }
            Layout::V1 {
                hierarchies,
                memory,
            } => {
                let mut dirs = Vec::new();
                for (mount, _) in hierarchies {
                    let parent = join_cgroup(mount, &memory.1).join(&name);
                    dirs.push(parent.join("step"));
                    dirs.push(parent);
                }
                dirs
            }
        }
    }
}

fn join_cgroup(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// The mount point of the v1 hierarchy holding exactly `controllers`.
fn v1_mount_point(mountinfo: &str, controllers: &str) -> Option<PathBuf> {
    let wanted: Vec<&str> = controllers.split(',').collect();
    for line in mountinfo.lines() {
        // "36 25 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut fields = right.split_whitespace();
        if fields.next() != Some("cgroup") {
            continue;
        }
        let options = fields.nth(1).unwrap_or("");
        let has_all = wanted.iter().all(|c| options.split(',').any(|o| o == *c));
        if has_all {
            let Some(mount) = left.split_whitespace().nth(4) else {
                continue;
            };
            // mountinfo escapes spaces and the like as octal.
            return Some(PathBuf::from(mount.replace("\\040", " ")));
        }
    }
    None
}

fn cgroup2_mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        let mount = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(mount.replace("\\040", " ")))
    })
}

/// A step's parent cgroup, from before the runtime starts until after it
/// has deleted the container.
pub(crate) struct StepCgroup {
    layout: Layout,
    container_id: String,
    parent: PathBuf,
    /// v1: notified when the parent runs out of memory.
    oom_eventfd: Option<OwnedFd>,
    removed: bool,
}

impl StepCgroup {
    /// Creates the parent cgroup with the memory limit (swap included, so a
    /// step over its limit is killed rather than slowed to a crawl).
    pub(crate) fn create(
        layout: Layout,
        container_id: &str,
        memory_limit: u64,
    ) -> io::Result<StepCgroup> {
        let name = parent_name(container_id);
        let parent = match &layout {
            Layout::V2 { root } => {
                let base = root.join(V2_PARENT);
                enable_v2_controllers(root)?;
                create_dir(&base)?;
                enable_v2_controllers(&base)?;
                base.join(&name)
            }
            Layout::V1 { memory, .. } => join_cgroup(&memory.0, &memory.1).join(&name),
        };
        create_dir(&parent)?;
        let mut group = StepCgroup {
            layout,
            container_id: container_id.to_string(),
            parent: parent.clone(),
            oom_eventfd: None,
            removed: false,
        };
        let limit = memory_limit.to_string();
        match &group.layout {
            Layout::V2 { .. } => {
                write(&parent.join("memory.max"), &limit)?;
                write_if_present(&parent.join("memory.swap.max"), "0")?;
            }
            Layout::V1 { .. } => {
                write(&parent.join("memory.limit_in_bytes"), &limit)?;
                // memsw counts memory plus swap; it may only be set once
                // the memory limit is, and is absent when swap accounting is off.
                write_if_present(&parent.join("memory.memsw.limit_in_bytes"), &limit)?;
                group.oom_eventfd = Some(register_v1_oom_event(&parent)?);
            }
        }
        Ok(group)
    }

    /// Whether the kernel's OOM killer acted on the step for its limit.
    /// Read before [`StepCgroup::remove`].
    pub(crate) fn oom_killed(&self) -> bool {
        match &self.layout {
            Layout::V2 { .. } => fs::read_to_string(self.parent.join("memory.events"))
                .map(|events| v2_oom_kills(&events) > 0)
                .unwrap_or_else(|e| {
                    tracing::warn!(cgroup = %self.parent.display(), error = %e, "cannot read memory.events");
                    false
                }),
            Layout::V1 { .. } => self.oom_eventfd.as_ref().is_some_and(|fd| {
                let mut count = [0u8; 8];
                // Non-blocking: EAGAIN means no notification came.
                rustix::io::read(fd, &mut count).is_ok_and(|n| n == 8 && u64::from_ne_bytes(count) > 0)
            }),
        }
    }

    /// Removes what the step's cgroups left behind, in every hierarchy: the
    /// runtime creates (and on exit removes) only the container's own.
    pub(crate) fn remove(&mut self) -> io::Result<()> {
        if self.removed {
            return Ok(());
        }
        self.oom_eventfd = None;
        remove_step_dirs(&self.layout, &self.container_id)?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(cgroup = %self.parent.display(), error = %e, "cannot remove a step's cgroup");
        }
    }
}

/// Removes a step's leftover cgroup directories (after a crash too).
/// Missing ones are fine; a cgroup that still has processes is an error.
pub(crate) fn remove_step_dirs(layout: &Layout, container_id: &str) -> io::Result<()> {
    let mut first_error = None;
    for dir in layout.step_dirs(container_id) {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error.get_or_insert(io::Error::new(
                    e.kind(),
                    format!("removing cgroup {}: {e}", dir.display()),
                ));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn create_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("creating cgroup {}: {e}", path.display()),
        )),
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value} to {}: {e}", path.display()),
        )
    })
}

fn write_if_present(path: &Path, value: &str) -> io::Result<()> {
    if path.exists() {
        write(path, value)
    } else {
        Ok(())
    }
}

/// Lets `dir`'s children use the memory, cpu and pids controllers, as far
/// as the host has them.
fn enable_v2_controllers(dir: &Path) -> io::Result<()> {
    let available = fs::read_to_string(dir.join("cgroup.controllers"))?;
    let enable: Vec<String> = available
        .split_whitespace()
        .filter(|c| matches!(*c, "memory" | "cpu" | "pids"))
        .map(|c| format!("+{c}"))
        .collect();
    if !available.split_whitespace().any(|c| c == "memory") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the memory controller is not available in {} (cgroup.controllers: {})",
                dir.display(),
                available.trim()
            ),
        ));
    }
    write(&dir.join("cgroup.subtree_control"), &enable.join(" "))
}

/// `cgroup.event_control` takes "EVENTFD FD-OF-memory.oom_control".
fn register_v1_oom_event(cgroup: &Path) -> io::Result<OwnedFd> {
    use rustix::event::{eventfd, EventfdFlags};
    let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
    let control = fs::File::open(cgroup.join("memory.oom_control"))?;
    let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
    write(&cgroup.join("cgroup.event_control"), &line)?;
    Ok(efd)
}

fn v2_oom_kills(memory_events: &str) -> u64 {
    memory_events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/sandbox/a1\n2:cpu,cpuacct:/\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_layout_places_steps_below_kilns_own_cgroups() {
        let layout = Layout::from_v1(HYBRID_CGROUP, HYBRID_MOUNTS).unwrap();
        let Layout::V1 {
            hierarchies,
            memory,
        } = &layout
        else {
            panic!("{layout:?}");
        };
        assert_eq!(memory.0, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(memory.1, "/sandbox/a1");
        // pids, memory, cpu,cpuacct, name=systemd and the unified one.
        assert_eq!(hierarchies.len(), 5, "{hierarchies:?}");
        assert!(hierarchies.contains(&(PathBuf::from("/sys/fs/cgroup/unified"), "/".into())));
        assert_eq!(layout.runtime_path("c1"), "/sandbox/a1/c1/step");
        let dirs = layout.step_dirs("c1");
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/memory/sandbox/a1/c1/step")));
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/sandbox/a1/c1")));
        // Children come before their parents, so rmdir can succeed.
        let leaf = dirs
            .iter()
            .position(|d| d.ends_with("pids/sandbox/a1/c1/step"));
        let parent = dirs.iter().position(|d| d.ends_with("pids/sandbox/a1/c1"));
        assert!(leaf < parent);
    }

    #[test]
    fn v1_without_memory_controller_is_unsupported() {
        let err = Layout::from_v1("8:pids:/\n", HYBRID_MOUNTS).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn v2_paths_and_oom_counts() {
        let layout = Layout::V2 {
            root: PathBuf::from("/sys/fs/cgroup"),
        };
        assert_eq!(layout.runtime_path("c1"), "/kiln/c1/step");
        assert_eq!(
            layout.step_dirs("c1"),
            [
                PathBuf::from("/sys/fs/cgroup/kiln/c1/step"),
                PathBuf::from("/sys/fs/cgroup/kiln/c1")
            ]
        );
        assert_eq!(
            v2_oom_kills("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(v2_oom_kills("low 0\nmax 3\noom 0\noom_kill 0\n"), 0);
    }
}
