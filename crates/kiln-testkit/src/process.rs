//! Looking for processes on the host by command line: how tests prove a
//! step's process was killed, not only that kiln says so.

/// Whether any live (non-zombie) process has a command line matching `pred`
/// (its arguments, split at NUL).
pub fn process_alive(pred: impl Fn(&[&[u8]]) -> bool) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.filter_map(Result::ok).any(|p| {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        !zombie && pred(&args)
    })
}

/// Whether a `sleep MARKER` process runs: tests give their step a `sleep`
/// with an argument nobody else uses and look for it.
pub fn sleeper_alive(marker: &str) -> bool {
    process_alive(|args| {
        args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == marker.as_bytes()
    })
}

/// The containers `runtime` (runc or crun, as kiln runs them) still knows
/// under `state_root`. Panics if the runtime cannot list them, so a check
/// that none is left cannot pass by not looking.
pub fn runtime_containers(runtime: &std::path::Path, state_root: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new(runtime)
        .arg("--root")
        .arg(state_root)
        .args(["list", "-q"])
        .output()
        .unwrap_or_else(|e| panic!("running {} list: {e}", runtime.display()));
    assert!(
        out.status.success(),
        "{} list failed: {}",
        runtime.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
