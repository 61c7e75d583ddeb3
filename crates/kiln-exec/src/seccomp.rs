//! The seccomp filter every step runs under.
//!
//! Docker's default profile is an allow-list of about 350 system calls with
//! the dangerous rest answering `EPERM`. kiln keeps the same effect the
//! other way round, as a deny-list of the calls Docker's profile blocks for
//! a container without extra capabilities ("Significant syscalls blocked by
//! the default profile", <https://docs.docker.com/engine/security/seccomp/>):
//! a new system call in a newer kernel or libc then works as it does on the
//! host instead of failing in ways build tools rarely explain. Most of these
//! calls also need a capability steps do not have; the filter removes the
//! kernel code behind them from a hostile step's reach all the same.
//!
//! The one unprivileged door this shuts is the user namespace (`clone`,
//! `unshare` with `CLONE_NEWUSER`), from which a process gains capabilities
//! over fresh namespaces and with them much more kernel surface. `clone3`
//! passes its flags in memory a filter cannot read, so it answers `ENOSYS`,
//! as under Docker, and libc falls back to `clone`.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// Blocked outright, with `EPERM`.
pub(crate) const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

const CLONE_NEWUSER: u64 = 0x1000_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The filter, for the architectures kiln runs on.
pub(crate) fn default_filter() -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
    let mut syscalls: Vec<LinuxSyscall> = vec![LinuxSyscallBuilder::default()
        .names(DENIED.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .build()?];
    for call in ["clone", "unshare"] {
        // Flags are the first argument of both (on the architectures below).
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec![call.to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(EPERM)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(CLONE_NEWUSER)
                    .value_two(CLONE_NEWUSER)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()?])
                .build()?,
        );
    }
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ENOSYS)
            .build()?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

/// The host's architecture and the ones its kernel also runs binaries of.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}
