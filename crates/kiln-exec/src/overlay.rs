//! Mounting and unmounting the overlay rootfs of one run.
//!
//! Two ways to hand the kernel a long layer stack:
//!
//! * the new mount API (`fsopen`/`fsconfig`), one `lowerdir+` per layer
//!   (Linux 6.8+): no limit but overlayfs' own 500 layers;
//! * classic `mount(2)`, whose option string must fit in one page. Each layer
//!   gets a short per-bundle symlink (`BUNDLE/l/0`, `l/1`, ... like Docker's
//!   overlay2) and is named through `/proc/self/fd/N/<i>` of one open
//!   directory fd, about 20 bytes per layer whatever the real paths are:
//!   room for roughly 190 layers.
//!
//! Long paths reach the kernel as `/proc/self/fd/N` of an `O_PATH` fd (the
//! kernel resolves the magic link to exactly the directory opened): fsconfig
//! strings are capped at 256 bytes, and classic options would need escaping
//! of `:` and `,`. With the new API, paths that fit are passed verbatim so
//! `/proc/self/mountinfo` stays readable when debugging.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, CWD};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

/// The overlay features that would write non-standard metadata into upper
/// dirs are turned off explicitly, whatever the kernel's defaults: a step's
/// upper dir becomes a layer that other tools read as plain overlay format
/// (whiteouts and opaque dirs only). `redirect_dir` would encode directory
/// renames as xattrs pointing into lower layers (with it off, the kernel
/// returns EXDEV and `mv` copies instead), `metacopy` would leave file data
/// in lower layers, and `index` ties the upper dir to these exact lowers.
const LAYER_FORMAT_OPTIONS: [(&str, &str); 3] = [
    ("redirect_dir", "off"),
    ("metacopy", "off"),
    ("index", "off"),
];

/// fsconfig copies string values with `strndup_user(value, 256)`: 255 bytes
/// plus the terminating NUL.
const FSCONFIG_STRING_MAX: usize = 255;

/// Classic `mount(2)` copies at most one page of options.
const CLASSIC_OPTIONS_MAX: usize = 4095;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// New mount API, falling back to classic when the kernel lacks `lowerdir+`.
    Auto,
    #[cfg_attr(not(test), allow(dead_code))]
    NewApi,
    #[cfg_attr(not(test), allow(dead_code))]
    Classic,
}

/// What to stack; all paths absolute.
pub(crate) struct OverlaySpec<'a> {
    /// Topmost first.
    pub lowers: &'a [PathBuf],
    pub upper: &'a Path,
    pub work: &'a Path,
    /// Where the per-layer symlinks of the classic mount go (created and
    /// removed here).
    pub link_dir: &'a Path,
    pub target: &'a Path,
}

pub(crate) fn mount(spec: &OverlaySpec<'_>, strategy: Strategy) -> io::Result<()> {
    match strategy {
        Strategy::NewApi => mount_new_api(spec),
        Strategy::Classic => mount_classic(spec),
        Strategy::Auto => match mount_new_api(spec) {
            Ok(()) => Ok(()),
            // Kernels before 6.8 reject `lowerdir+` (EINVAL), before 5.2 have
            // no fsopen (ENOSYS), and seccomp profiles may deny it (EPERM,
            // ENOSYS). A genuine error recurs below; both are reported, the
            // new API's often with the kernel's explanation.
            Err(first)
                if matches!(
                    first.kind(),
                    io::ErrorKind::InvalidInput
                        | io::ErrorKind::Unsupported
                        | io::ErrorKind::PermissionDenied
                ) =>
            {
                tracing::debug!(error = %first, "new mount API unusable for overlay; using mount(2)");
                mount_classic(spec).map_err(|second| {
                    io::Error::new(second.kind(), format!("{second} (new mount API: {first})"))
                })
            }
            Err(e) => Err(e),
        },
    }
}

fn open_path(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| annotate(e.into(), &format!("opening {}", path.display())))
}

fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn mount_new_api(spec: &OverlaySpec<'_>) -> io::Result<()> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    let with_log = |e: rustix::io::Errno, what: &str| -> io::Error {
        let raw: io::Error = e.into();
        let log = read_fs_log(&fs);
        // The kind (from the errno) survives, so `Auto` can still tell an
        // unsupported kernel (EINVAL/ENOSYS) from a real failure.
        if log.is_empty() {
            io::Error::new(raw.kind(), format!("{what}: {raw}"))
        } else {
            io::Error::new(raw.kind(), format!("{what}: {raw} ({log})"))
        }
    };
    for (key, value) in LAYER_FORMAT_OPTIONS {
        fsconfig_set_string(fs.as_fd(), key, value)
            .map_err(|e| with_log(e, &format!("setting overlay option {key}={value}")))?;
    }
    // `volatile` (Linux 5.10+) skips syncing the upper dir: on every fsync
    // in the step (dpkg and package managers fsync a lot) and at unmount,
    // where overlayfs would otherwise sync the upper filesystem. A step's
    // upper dir was never durable before it is committed (layers are
    // renamed into place, not fsynced), so nothing that was kept is lost;
    // a kernel without the option mounts as before.
    if let Err(e) = fsconfig_set_flag(fs.as_fd(), "volatile") {
        tracing::debug!(error = %e, "overlay has no volatile option here");
    }
    let set_path = |key: &str, path: &Path| -> io::Result<()> {
        // The kernel resolves the path during this call, so a temporary fd
        // can be closed right away: long stacks never hold hundreds of fds.
        let result = match path.to_str() {
            // Overlayfs unescapes backslashes in these values; `:` and `,`
            // are literal with fsconfig.
            Some(p) if p.len() < FSCONFIG_STRING_MAX && !p.contains('\\') => {
                fsconfig_set_string(fs.as_fd(), key, p)
            }
            _ => {
                let fd = open_path(path)?;
                fsconfig_set_string(fs.as_fd(), key, fd_path(&fd))
            }
        };
        result.map_err(|e| with_log(e, &format!("setting overlay {key} {}", path.display())))
    };
    for layer in spec.lowers {
        set_path("lowerdir+", layer)?;
    }
    set_path("upperdir", spec.upper)?;
    set_path("workdir", spec.work)?;
    fsconfig_create(fs.as_fd()).map_err(|e| with_log(e, "creating the overlay superblock"))?;
    let mnt = fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(|e| with_log(e, "creating the overlay mount"))?;
    // `mnt` must be closed once attached: an open mount fd keeps the mount
    // busy and would make the final unmount fail with EBUSY.
    move_mount(
        mnt.as_fd(),
        "",
        CWD,
        spec.target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| {
        with_log(
            e,
            &format!("attaching the overlay at {}", spec.target.display()),
        )
    })?;
    Ok(())
}

/// The kernel queues human-readable reasons for fsconfig failures on the fs
/// context fd ("e overlay: ..."); they beat a bare EINVAL.
fn read_fs_log(fs: &OwnedFd) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 1024];
    // Each read returns one message; ENODATA ends the queue.
    for _ in 0..16 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => lines.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => break,
        }
    }
    lines.join("; ")
}

fn mount_classic(spec: &OverlaySpec<'_>) -> io::Result<()> {
    // Leftovers of an earlier failed attempt would make symlink() fail.
    let _ = std::fs::remove_dir_all(spec.link_dir);
    std::fs::create_dir(spec.link_dir)
        .map_err(|e| annotate(e, &format!("creating {}", spec.link_dir.display())))?;
    let result = mount_classic_with_links(spec);
    // The kernel holds its own references once mounted; the links are only
    // short names for the option string.
    let _ = std::fs::remove_dir_all(spec.link_dir);
    result
}

fn mount_classic_with_links(spec: &OverlaySpec<'_>) -> io::Result<()> {
    for (i, layer) in spec.lowers.iter().enumerate() {
        let link = spec.link_dir.join(i.to_string());
        std::os::unix::fs::symlink(layer, &link)
            .map_err(|e| annotate(e, &format!("creating layer link {}", link.display())))?;
    }
    let links = open_path(spec.link_dir)?;
    let upper = open_path(spec.upper)?;
    let work = open_path(spec.work)?;
    let prefix = fd_path(&links);
    let lowerdir: Vec<String> = (0..spec.lowers.len())
        .map(|i| format!("{prefix}/{i}"))
        .collect();
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        fd_path(&upper),
        fd_path(&work)
    );
    for (key, value) in LAYER_FORMAT_OPTIONS {
        options.push_str(&format!(",{key}={value}"));
    }
    if options.len() > CLASSIC_OPTIONS_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} lower layers need {} bytes of mount options, more than the {} mount(2) accepts; \
                 this kernel lacks overlayfs `lowerdir+` (Linux 6.8+), which has no such limit",
                spec.lowers.len(),
                options.len(),
                CLASSIC_OPTIONS_MAX
            ),
        ));
    }
    rustix::mount::mount(
        "overlay",
        spec.target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        options.as_str(),
    )
    .map_err(|e| annotate(e.into(), "mount(2) overlay"))?;
    Ok(())
}

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unmounted {
    /// Gone, or was not mounted.
    Clean,
    /// Still busy after retries: detached from the tree (MNT_DETACH); the
    /// kernel frees it when the last user goes away.
    Lazily,
}

/// After a clean unmount, removes the marker a `volatile` mount leaves in
/// its work dir (`work/incompat/volatile/dirty`), which makes the kernel
/// refuse to mount that upper and work dir again: it is there to catch a
/// crash while mounted, and a clean unmount is not one.
pub(crate) fn forget_volatile(work: &Path) {
    let incompat = work.join("work/incompat");
    let _ = std::fs::remove_file(incompat.join("volatile/dirty"));
    let _ = std::fs::remove_dir(incompat.join("volatile"));
    let _ = std::fs::remove_dir(incompat);
}

/// Unmounts everything stacked at `target`. Busy mounts are retried briefly
/// (a dying container can hold them for a moment), then detached lazily.
pub(crate) fn unmount(target: &Path) -> io::Result<Unmounted> {
    let mut outcome = Unmounted::Clean;
    let mut busy_retries = 0;
    // Bounded: something may have stacked mounts, but not thousands.
    for _ in 0..64 {
        match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            // EINVAL: not a mount point (any more); ENOENT: target is gone.
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOENT => {
                return Ok(outcome)
            }
            Err(e) if e == rustix::io::Errno::BUSY => {
                if busy_retries < 10 {
                    busy_retries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
                    .map_err(|e| {
                        annotate(e.into(), &format!("lazily unmounting {}", target.display()))
                    })?;
                outcome = Unmounted::Lazily;
            }
            Err(e) => {
                return Err(annotate(
                    e.into(),
                    &format!("unmounting {}", target.display()),
                ))
            }
        }
    }
    Err(io::Error::other(format!(
        "{} stays mounted after 64 unmounts",
        target.display()
    )))
}

/// Whether something is mounted at `path` in this mount namespace, per
/// `/proc/self/mountinfo` (which, unlike comparing st_dev with the parent,
/// also sees bind mounts from the same filesystem).
pub(crate) fn is_mount_point(path: &Path) -> io::Result<bool> {
    let path = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| Path::new(&unescape_mountinfo(mount_point)) == path))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Stacks `count` layers, each adding a file, with `:`, `,` and `\\` in
    /// their names; `long` puts them under ~250-byte paths.
    fn stack(strategy: Strategy, count: usize, long: bool) {
        if !is_root() {
            eprintln!("skipping overlay {strategy:?} test: needs root to mount");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let deep = if long {
            dir.path().join("x".repeat(120)).join("y".repeat(120))
        } else {
            dir.path().to_path_buf()
        };
        let mut lowers = Vec::new();
        for i in 0..count {
            // Characters that would need escaping in mount options.
            let special = ["a:b,c", "back\\slash", "plain"][i % 3];
            let pad = if long { "z".repeat(60) } else { String::new() };
            let layer = deep.join(format!("layer-{i:03}-{special}-{pad}"));
            std::fs::create_dir_all(&layer).unwrap();
            std::fs::write(layer.join(format!("f{i}")), i.to_string()).unwrap();
            std::fs::write(layer.join("top"), i.to_string()).unwrap();
            lowers.push(layer);
        }
        let (upper, work, target, links) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("rootfs"),
            dir.path().join("l"),
        );
        for d in [&upper, &work, &target] {
            std::fs::create_dir(d).unwrap();
        }
        let spec = OverlaySpec {
            lowers: &lowers,
            upper: &upper,
            work: &work,
            link_dir: &links,
            target: &target,
        };
        mount(&spec, strategy).unwrap();
        let seen = (0..count)
            .filter(|i| target.join(format!("f{i}")).exists())
            .count();
        // Topmost first: layer 0 wins.
        let top = std::fs::read_to_string(target.join("top"));
        std::fs::write(target.join("new"), "n").unwrap();
        assert!(is_mount_point(&target).unwrap());
        assert_eq!(unmount(&target).unwrap(), Unmounted::Clean);
        assert!(!is_mount_point(&target).unwrap());
        assert_eq!(seen, count);
        assert_eq!(top.unwrap(), "0");
        assert!(upper.join("new").exists());
        assert!(!links.exists());
    }

    fn kernel_has_lowerdir_add() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut version = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
        if (major, minor) < (6, 8) {
            // Older kernels take the classic path, tested separately.
            eprintln!(
                "skipping: kernel {} lacks overlayfs lowerdir+",
                release.trim()
            );
            return false;
        }
        true
    }

    /// The classic path is what kernels before 6.8 (e.g. Debian bookworm's
    /// 6.1) use.
    #[test]
    fn classic_mount_stacks_130_long_layers() {
        stack(Strategy::Classic, 130, true);
    }

    #[test]
    fn classic_mount_short_special_paths() {
        stack(Strategy::Classic, 6, false);
    }

    #[test]
    fn new_api_mount_stacks_130_long_layers() {
        if kernel_has_lowerdir_add() {
            stack(Strategy::NewApi, 130, true);
        }
    }

    #[test]
    fn new_api_mount_short_special_paths() {
        if kernel_has_lowerdir_add() {
            stack(Strategy::NewApi, 6, false);
        }
    }

    #[test]
    fn mountinfo_fields_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c\011d"), "/a b\\c\td");
        assert_eq!(unescape_mountinfo(r"/plain\x"), r"/plain\x");
    }

    #[test]
    fn classic_mount_reports_too_many_layers() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        let lowers = vec![layer; 400];
        let (upper, work, target) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("rootfs"),
        );
        for d in [&upper, &work, &target] {
            std::fs::create_dir(d).unwrap();
        }
        let spec = OverlaySpec {
            lowers: &lowers,
            upper: &upper,
            work: &work,
            link_dir: &dir.path().join("l"),
            target: &target,
        };
        let e = mount(&spec, Strategy::Classic).unwrap_err();
        assert!(e.to_string().contains("400 lower layers"), "{e}");
        assert!(!is_mount_point(&target).unwrap());
    }
}
