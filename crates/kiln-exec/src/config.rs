//! The OCI runtime `config.json` of one run, close to Docker's defaults.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::user::ResolvedUser;
use crate::{BindMount, Network};

/// The PATH a process gets when the step sets none (Docker's and runc's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host files bound into containers sharing the host's network, so name
/// resolution behaves as on the host.
pub(crate) const HOST_NETWORK_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];

/// One entry of `mounts`; kept separate from oci-spec's type because the
/// destinations also feed the mount-stub bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub destination: String,
    pub typ: String,
    pub source: PathBuf,
    pub options: Vec<String>,
}

impl MountEntry {
    fn new(destination: &str, typ: &str, source: &str, options: &[&str]) -> MountEntry {
        MountEntry {
            destination: destination.to_string(),
            typ: typ.to_string(),
            source: PathBuf::from(source),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn bind(source: &Path, destination: &str, readonly: bool) -> MountEntry {
        MountEntry {
            destination: destination.to_string(),
            typ: "bind".to_string(),
            source: source.to_path_buf(),
            // rprivate: mounts made inside the container never propagate
            // back to the host, nor host mounts into a running step.
            options: vec![
                "rbind".to_string(),
                "rprivate".to_string(),
                if readonly { "ro" } else { "rw" }.to_string(),
            ],
        }
    }
}

/// Every mount of the container, in mount order: the standard pseudo
/// filesystems, then the host network files, then the step's bind mounts.
/// A step mount whose target equals a host network file replaces it.
pub(crate) fn mounts(network: Network, binds: &[BindMount]) -> Vec<MountEntry> {
    let mut out = vec![
        MountEntry::new("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        MountEntry::new(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        MountEntry::new(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        MountEntry::new(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        MountEntry::new(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        MountEntry::new(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ];
    if network == Network::Host {
        for file in HOST_NETWORK_FILES {
            let overridden = binds.iter().any(|b| same_target(&b.target, file));
            if !overridden && Path::new(file).exists() {
                out.push(MountEntry::bind(Path::new(file), file, true));
            }
        }
    }
    for b in binds {
        out.push(MountEntry::bind(&b.source, &b.target, b.readonly));
    }
    out
}

fn same_target(a: &str, b: &str) -> bool {
    Path::new(a).components().eq(Path::new(b).components())
}

/// Docker's default capability set.
fn default_capabilities() -> Capabilities {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// Docker's masked and read-only paths: kernel interfaces a build step has
/// no business reading or writing.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's (containerd's) default open-file limits: select()-era programs
/// keep 1024, and test runners, JVMs, bundlers and databases can raise their
/// own soft limit up to the hard one, as they do on a host.
const NOFILE_SOFT: u64 = 1024;
const NOFILE_HARD: u64 = 524_288;

/// The hard limit, lowered to kiln's own hard limit: raising it needs
/// CAP_SYS_RESOURCE, which a sandboxed or rootless kiln may lack, and the
/// step would then fail to start at all.
fn nofile_hard_limit() -> u64 {
    let own = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    NOFILE_HARD.min(own).max(NOFILE_SOFT)
}

pub(crate) struct ConfigInput<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub user: &'a ResolvedUser,
    pub network: Network,
    pub mounts: &'a [MountEntry],
    pub hostname: Option<&'a str>,
    pub limits: crate::StepLimits,
}

pub(crate) fn build(input: &ConfigInput<'_>) -> Result<Spec, oci_spec::OciSpecError> {
    let caps = default_capabilities();
    // Like Docker (20.10+): a non-root user keeps the bounding set, so
    // setuid binaries work, but starts with no effective capabilities.
    let (effective, permitted) = if input.user.uid == 0 {
        (caps.clone(), caps.clone())
    } else {
        (Capabilities::new(), Capabilities::new())
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(effective)
        .permitted(permitted)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;

    let mut user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid);
    if !input.user.additional_gids.is_empty() {
        user = user.additional_gids(input.user.additional_gids.clone());
    }

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build()?)
        .args(input.args.to_vec())
        .env(input.env.to_vec())
        .cwd(input.cwd)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(nofile_hard_limit())
            .soft(NOFILE_SOFT.min(nofile_hard_limit()))
            .build()?])
        // Docker's default: sudo and other setuid tools keep working.
        .no_new_privileges(false)
        .build()?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if input.network == Network::None {
        // The runtime brings up `lo` in a fresh network namespace.
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()?;

    // Deny every device, then the runtime adds its standard allow list
    // (null, zero, full, tty, random, urandom, pts). Without a rule at all,
    // cgroup v1 would leave the host's "allow everything" in place.
    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?]);
    if let Some(limit) = input.limits.pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    let resources = resources.build()?;

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .seccomp(crate::seccomp::default_filter()?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .build()?;

    let mounts = input
        .mounts
        .iter()
        .map(|m| {
            MountBuilder::default()
                .destination(&m.destination)
                .typ(&m.typ)
                .source(&m.source)
                .options(m.options.clone())
                .build()
        })
        .collect::<Result<Vec<Mount>, _>>()?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux);
    if let Some(hostname) = input.hostname {
        spec = spec.hostname(hostname);
    }
    spec.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_network_binds_resolver_files_unless_overridden() {
        let binds = vec![BindMount {
            source: PathBuf::from("/tmp"),
            target: "/etc/hosts".into(),
            readonly: false,
        }];
        let m = mounts(Network::Host, &binds);
        let hosts: Vec<_> = m.iter().filter(|m| m.destination == "/etc/hosts").collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source, PathBuf::from("/tmp"));
        assert!(mounts(Network::None, &[]).iter().all(|m| m.typ != "bind"));
    }

    #[test]
    fn spec_serializes_like_docker() {
        let user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![5],
            home: None,
        };
        let m = mounts(Network::None, &[]);
        let spec = build(&ConfigInput {
            args: &["true".into()],
            env: &["PATH=/bin".into()],
            cwd: "/",
            user: &user,
            network: Network::None,
            mounts: &m,
            hostname: Some("step"),
            limits: crate::StepLimits { pids: Some(100) },
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["process"]["terminal"], false);
        assert_eq!(json["process"]["user"]["additionalGids"][0], 5);
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert!(json["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(json["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(json["hostname"], "step");
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let denied = json["linux"]["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .unwrap();
        assert!(denied.iter().any(|n| n == "keyctl"), "{denied:?}");
    }
}
