//! Private network namespaces that several containers join: a run's
//! services and the steps bound to them share one, so a step reaches a
//! service on `127.0.0.1` (under the service's alias), while two runs on one
//! machine, each with a database on port 5432, never meet.
//!
//! A namespace is a bind mount of `/proc/thread-self/ns/net` taken by a
//! short-lived thread that unshared its network namespace and brought `lo`
//! up; containers join it by path (`linux.namespaces[].path`). Outbound
//! network (`pip install`, `apt-get`) comes from `slirp4netns`, a user-mode
//! TCP/IP stack in the host's namespace behind a `tap0` device in this one:
//! no bridge, no iptables rule, nothing on the host changes, and the host's
//! loopback services stay out of reach (`--disable-host-loopback`).
//! `slirp4netns` exits with the namespace's owner: it watches a pipe whose
//! write end only kiln holds.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The resolver `slirp4netns --configure` puts at this address; it forwards
/// to the host's.
pub const SLIRP_NAMESERVER: &str = "10.0.2.3";

/// How long slirp4netns may take to configure `tap0`.
const SLIRP_READY_WAIT: Duration = Duration::from_secs(10);

/// What went wrong making or using a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "network namespace {}: outbound network needs slirp4netns ({binary}): {reason}; \
         install it (Debian/Ubuntu: `apt-get install slirp4netns`, or scripts/deps.sh)",
        path.display()
    )]
    Slirp {
        path: PathBuf,
        binary: String,
        reason: String,
    },
}

/// Whether containers in the namespace reach the outside world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Loopback only.
    None,
    /// Through `slirp4netns`, found at this path or on `PATH`.
    Slirp { binary: PathBuf },
}

/// A network namespace, removed again (and its slirp4netns stopped) on drop.
#[derive(Debug)]
pub struct NetNamespace {
    path: PathBuf,
    slirp: Option<Child>,
    /// slirp4netns exits when this closes (`--exit-fd`).
    slirp_exit: Option<OwnedFd>,
}

impl NetNamespace {
    /// Makes a namespace bound at `path` (a file that must not exist yet; its
    /// directory must), with `lo` up and the given outbound network.
    pub fn create(path: &Path, outbound: &Outbound) -> Result<NetNamespace, NetError> {
        let io_err = |action, source| NetError::Io {
            path: path.to_owned(),
            action,
            source,
        };
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(path)
                .map_err(|e| io_err("creating the mount point", e))?;
        }
        let mut ns = NetNamespace {
            path: path.to_owned(),
            slirp: None,
            slirp_exit: None,
        };
        let target = path.to_owned();
        // A thread of its own: unsharing changes only the calling thread's
        // namespace, and this thread ends right after.
        std::thread::Builder::new()
            .name("kiln-netns".into())
            .spawn(move || -> io::Result<()> {
                rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNET)?;
                bring_up_loopback()?;
                rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)?;
                Ok(())
            })
            .map_err(|e| io_err("starting a thread to create it", e))?
            .join()
            .map_err(|_| io_err("creating it", io::Error::other("the thread panicked")))?
            .map_err(|e| io_err("creating it (unshare, lo up, bind mount)", e))?;
        if let Outbound::Slirp { binary } = outbound {
            ns.start_slirp(binary)?;
        }
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The resolvers containers in the namespace should use: slirp4netns's
    /// when there is outbound network.
    pub fn nameservers(&self) -> Vec<String> {
        if self.slirp.is_some() {
            vec![SLIRP_NAMESERVER.to_owned()]
        } else {
            Vec::new()
        }
    }

    fn start_slirp(&mut self, binary: &Path) -> Result<(), NetError> {
        let slirp_err = |reason: String| NetError::Slirp {
            path: self.path.clone(),
            binary: binary.display().to_string(),
            reason,
        };
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
        let (exit_read, exit_write) = pipe().map_err(|e| slirp_err(format!("pipe: {e}")))?;
        let (ready_read, ready_write) = pipe().map_err(|e| slirp_err(format!("pipe: {e}")))?;
        const EXIT_FD: i32 = 3;
        const READY_FD: i32 = 4;
        let mut cmd = Command::new(binary);
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
        ])
        .arg(format!("--exit-fd={EXIT_FD}"))
        .arg(format!("--ready-fd={READY_FD}"))
        .args(["--netns-type=path"])
        .arg(&self.path)
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let (exit_raw, ready_raw) = (exit_read.as_raw_fd(), ready_write.as_raw_fd());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls (dup2, prctl) between
            // fork and exec; nothing is allocated.
            unsafe {
                cmd.pre_exec(move || {
                    // dup2 clears close-on-exec on the copies, and only them.
                    // Moved out of the way first in case they already sit
                    // on the numbers wanted.
                    let exit_tmp = libc::fcntl(exit_raw, libc::F_DUPFD_CLOEXEC, 10);
                    let ready_tmp = libc::fcntl(ready_raw, libc::F_DUPFD_CLOEXEC, 10);
                    if exit_tmp < 0
                        || ready_tmp < 0
                        || libc::dup2(exit_tmp, EXIT_FD) < 0
                        || libc::dup2(ready_tmp, READY_FD) < 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    );
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| slirp_err(e.to_string()))?;
        drop(exit_read);
        drop(ready_write);
        self.slirp_exit = Some(exit_write);
        let ready = wait_readable(&ready_read, SLIRP_READY_WAIT).and_then(|()| {
            let mut byte = [0u8; 1];
            let mut file = std::fs::File::from(ready_read);
            match file.read(&mut byte)? {
                1 => Ok(()),
                _ => Err(io::Error::other("it exited before it was ready")),
            }
        });
        if let Err(e) = ready {
            let _ = child.kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let _ = child.wait();
            let stderr = stderr.trim();
            return Err(slirp_err(if stderr.is_empty() {
                e.to_string()
            } else {
                format!("{e}: {}", last_lines(stderr, 5))
            }));
        }
        // Its stderr is not read from here on; it must not block on a full
        // pipe.
        drop(child.stderr.take());
        self.slirp = Some(child);
        Ok(())
    }

    /// Whether something in the namespace accepts TCP connections on
    /// `127.0.0.1:port`, trying for at most `wait`. Blocks; it runs on a
    /// thread of its own, which enters the namespace and ends.
    pub fn accepts_tcp(&self, port: u16, wait: Duration) -> io::Result<bool> {
        let file = std::fs::File::open(&self.path)?;
        std::thread::Builder::new()
            .name("kiln-probe".into())
            .spawn(move || -> io::Result<bool> {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                match std::net::TcpStream::connect_timeout(&address, wait) {
                    Ok(_) => Ok(true),
                    Err(_) => Ok(false),
                }
            })?
            .join()
            .map_err(|_| io::Error::other("the probe thread panicked"))?
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        drop(self.slirp_exit.take());
        if let Some(mut child) = self.slirp.take() {
            // It exits on its own once the pipe closes; do not wait for that.
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_mount(&self.path);
    }
}

fn remove_mount(path: &Path) {
    if let Err(e) = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOENT {
            tracing::warn!(path = %path.display(), error = %e, "unmounting a network namespace");
        }
    }
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "removing a network namespace's mount point");
        }
    }
}

/// Removes the namespaces under `dir` whose owner (the process id that
/// starts each file name, `PID-...`) is gone: what a killed kiln left.
/// Returns how many.
pub fn cleanup_stale_namespaces(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_mount(&entry.path());
        removed += 1;
    }
    removed
}

/// `ip link set lo up`, in the calling thread's namespace.
fn bring_up_loopback() -> io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq whose name is set;
    // the socket is closed by OwnedFd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn wait_readable(fd: &OwnedFd, wait: Duration) -> io::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not ready after {} s", wait.as_secs()),
            ));
        }
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        match rustix::event::poll(&mut fds, millis) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}
