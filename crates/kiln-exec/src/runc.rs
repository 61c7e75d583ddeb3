//! Invoking the OCI runtime binary (runc, crun or youki).
//!
//! Only the CLI the three share is used: global `--root`, `--log`,
//! `--log-format json`, and the `run`, `kill`, `delete --force` and `state`
//! commands.

use std::io;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Base command: `BINARY --root STATE`, stdin from /dev/null; for a
/// runtime that refuses this host's cgroup layout, in a mount namespace
/// that hides it (see [`hides_cgroup2`]).
pub(crate) fn std_command(binary: &Path, state_root: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("--root").arg(state_root).stdin(Stdio::null());
    if hides_cgroup2(binary) {
        use std::os::unix::process::CommandExt;
        // SAFETY: only syscalls on static strings between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::umount2(HYBRID_CGROUP2.as_ptr(), libc::MNT_DETACH) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Where a hybrid host (cgroup v1 controllers under a tmpfs at
/// /sys/fs/cgroup) mounts its cgroup2 hierarchy.
const HYBRID_CGROUP2: &std::ffi::CStr = c"/sys/fs/cgroup/unified";

/// Whether `binary` is to run with the hybrid host's cgroup2 hierarchy
/// unmounted from its view. crun (1.8, Debian's) refuses to run at all on a
/// hybrid host whose cgroup2 hierarchy has a controller available ("cgroups
/// in hybrid mode not supported, drop all controllers from cgroupv2"), even
/// one nobody enabled, such as hugetlb. In a private mount namespace
/// without that mount, crun sees a plain v1 host and uses the v1
/// controllers, as runc does; the host's own mounts are untouched, and the
/// namespace goes with the runtime process. Asked once per binary.
fn hides_cgroup2(binary: &Path) -> bool {
    static HYBRID_WITH_CONTROLLERS: OnceLock<bool> = OnceLock::new();
    static REFUSES: Mutex<Vec<(std::path::PathBuf, bool)>> = Mutex::new(Vec::new());
    let hybrid = *HYBRID_WITH_CONTROLLERS.get_or_init(|| {
        let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
        !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
            && std::fs::read_to_string(unified).is_ok_and(|c| !c.trim().is_empty())
    });
    if !hybrid {
        return false;
    }
    let mut known = REFUSES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, refuses)) = known.iter().find(|(path, _)| path == binary) {
        return *refuses;
    }
    let refuses = std::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"crun"));
    known.push((binary.to_owned(), refuses));
    refuses
}

/// `kill ID KILL`. Failures are expected (already stopped or never created)
/// and only matter through the `delete --force` that follows.
pub(crate) fn kill_sync(binary: &Path, state_root: &Path, id: &str) {
    let out = std_command(binary, state_root)
        .args(["kill", id, "KILL"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    if let Ok(out) = out {
        if !out.status.success() {
            tracing::debug!(container = id, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "runtime kill failed");
        }
    }
}

/// [`kill_sync`] without blocking the executor thread.
pub(crate) async fn kill_async(binary: &Path, state_root: &Path, id: &str) {
    let mut cmd = tokio::process::Command::from(std_command(binary, state_root));
    let out = cmd
        .args(["kill", id, "KILL"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await;
    if let Ok(out) = out {
        if !out.status.success() {
            tracing::debug!(container = id, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "runtime kill failed");
        }
    }
}

/// Whether the runtime still keeps state for container `id`. runc, crun
/// and youki all keep it in `STATE/ID`; a foreground `run` removes it when
/// the container exits, which makes the `delete` after it redundant.
pub(crate) fn has_state(state_root: &Path, id: &str) -> bool {
    std::fs::symlink_metadata(state_root.join(id)).is_ok()
}

/// `delete --force ID`, blocking.
pub(crate) fn delete_sync(binary: &Path, state_root: &Path, id: &str) -> Result<(), String> {
    let out = std_command(binary, state_root)
        .args(["delete", "--force", id])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    check_delete(binary, id, out)
}

/// `delete --force ID` without blocking the executor thread.
pub(crate) async fn delete_async(binary: &Path, state_root: &Path, id: &str) -> Result<(), String> {
    let mut cmd = tokio::process::Command::from(std_command(binary, state_root));
    let out = cmd
        .args(["delete", "--force", id])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await;
    check_delete(binary, id, out)
}

fn check_delete(binary: &Path, id: &str, out: io::Result<Output>) -> Result<(), String> {
    let out =
        out.map_err(|e| format!("running `{} delete --force {id}`: {e}", binary.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // runc succeeds on a missing container with --force; crun and youki
    // report it. Either way there is nothing left to delete.
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("does not exist")
        || lower.contains("not found")
        || lower.contains("no such file")
    {
        return Ok(());
    }
    Err(format!(
        "`{} delete --force {id}` failed ({}): {}",
        binary.display(),
        out.status,
        stderr.trim()
    ))
}

/// Messages the runtime logged at error level, from its `--log-format json`
/// log. Lines that are not JSON are kept if they mention an error, so a
/// runtime with a slightly different log format still gets surfaced.
pub(crate) fn logged_errors(log: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(
            |line| match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => {
                    let level = v.get("level").and_then(|l| l.as_str()).unwrap_or("");
                    let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or("");
                    (matches!(level, "error" | "fatal" | "panic") && !msg.is_empty())
                        .then(|| msg.trim().to_string())
                }
                Err(_) => line
                    .to_ascii_lowercase()
                    .contains("error")
                    .then(|| line.trim().to_string()),
            },
        )
        .collect()
}

struct SpawnRequest {
    cmd: tokio::process::Command,
    handle: tokio::runtime::Handle,
    reply: mpsc::SyncSender<io::Result<tokio::process::Child>>,
}

/// Spawns `cmd` from a dedicated thread that lives as long as the process.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
/// the process. A tokio blocking-pool thread, or any short-lived thread the
/// caller polls from, would take runc down with it mid-step. The spawner
/// thread never exits, so the signal only comes when kiln itself dies.
///
/// Blocks the caller for the fork/exec only; keeping this synchronous means
/// there is no await point at which the run future could be dropped with a
/// runtime process started but not yet owned by its guard.
pub(crate) fn spawn(
    cmd: tokio::process::Command,
    handle: tokio::runtime::Handle,
) -> io::Result<tokio::process::Child> {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let (reply, response) = mpsc::sync_channel(1);
    let mut request = SpawnRequest { cmd, handle, reply };
    // Two attempts: the thread can only be gone if it panicked, in which
    // case one fresh thread is started.
    for _ in 0..2 {
        let sender = {
            let mut guard = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(s) => s.clone(),
                None => {
                    let (tx, rx) = mpsc::channel::<SpawnRequest>();
                    std::thread::Builder::new()
                        .name("kiln-exec-spawner".into())
                        .spawn(move || spawner_loop(rx))?;
                    *guard = Some(tx.clone());
                    tx
                }
            }
        };
        match sender.send(request) {
            Ok(()) => {
                return response.recv().unwrap_or_else(|_| {
                    Err(io::Error::other(
                        "the kiln-exec spawner thread died while spawning",
                    ))
                })
            }
            Err(mpsc::SendError(back)) => {
                request = back;
                *SPAWNER.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
    }
    Err(io::Error::other(
        "cannot start the kiln-exec spawner thread",
    ))
}

fn spawner_loop(requests: mpsc::Receiver<SpawnRequest>) {
    for mut request in requests {
        // tokio registers the child with the caller's runtime (for reaping
        // and async wait), so spawn inside that runtime's context.
        let result = {
            let _context = request.handle.enter();
            request.cmd.spawn()
        };
        // If the caller is gone the child is dropped here, and kill_on_drop
        // takes care of it.
        let _ = request.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_error_lines_from_json_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            concat!(
                r#"{"level":"warning","msg":"cgroup thing","time":"t"}"#,
                "\n",
                r#"{"level":"error","msg":"runc run failed: unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"t"}"#,
                "\n",
                "garbage line\n",
                "plain error: something\n",
            ),
        )
        .unwrap();
        let errors = logged_errors(&log);
        assert_eq!(errors.len(), 2);
        assert!(errors[0].contains("executable file not found"));
        assert_eq!(errors[1], "plain error: something");
        assert!(logged_errors(&dir.path().join("missing")).is_empty());
    }
}
