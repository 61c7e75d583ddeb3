//! The OCI runtime `config.json` of one run, close to Docker's defaults.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::user::ResolvedUser;
use crate::{BindMount, Network, Rlimit};

/// The PATH a process gets when the step sets none (Docker's and runc's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The hostname of a step that sets none. A library default such as the
/// runtime's own would not resolve; this one is in the step's `/etc/hosts`.
pub const DEFAULT_HOSTNAME: &str = "kiln";

/// The host's resolver configuration, bound into containers sharing the
/// host's network so name resolution behaves as on the host.
pub(crate) const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// A hostname as RFC 1123 allows one: labels of letters, digits and inner
/// hyphens, at most 63 characters in all (the kernel's limit is 64).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The step's own `/etc/hosts` and `/etc/hostname` in the bundle, and its
/// `/etc/resolv.conf` on a joined network with nameservers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameFiles {
    pub hosts: PathBuf,
    pub hostname: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

/// Writes the step's `/etc/hosts` (the host's, on the host network, else
/// Docker's loopback entries; either way with the hostname added, so it
/// resolves as it does in a Docker container, and on a joined network with
/// the names of its services), `/etc/hostname`, and on a joined network
/// with nameservers `/etc/resolv.conf`.
pub(crate) fn write_name_files(
    hosts: &Path,
    hostname_file: &Path,
    resolv_conf: &Path,
    network: &Network,
    hostname: &str,
) -> std::io::Result<NameFiles> {
    let mut text = match network {
        Network::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        Network::None | Network::Joined(_) => String::new(),
    };
    if text.is_empty() {
        text.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    let mut resolv = None;
    if let Network::Joined(joined) = network {
        for (address, names) in &joined.hosts {
            text.push_str(&format!("{address}\t{}\n", names.join(" ")));
        }
        if !joined.nameservers.is_empty() {
            let mut conf = String::new();
            for server in &joined.nameservers {
                conf.push_str(&format!("nameserver {server}\n"));
            }
            // The host's search domains still apply behind slirp's resolver.
            if let Ok(host) = std::fs::read_to_string(HOST_RESOLV_CONF) {
                for line in host.lines() {
                    if line.starts_with("search ") || line.starts_with("domain ") {
                        conf.push_str(line);
                        conf.push('\n');
                    }
                }
            }
            write_new(resolv_conf, conf.as_bytes())?;
            resolv = Some(resolv_conf.to_path_buf());
        }
    }
    let named = text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("");
        line.split_whitespace().skip(1).any(|n| n == hostname)
    });
    if !named {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    write_new(hosts, text.as_bytes())?;
    write_new(hostname_file, format!("{hostname}\n").as_bytes())?;
    Ok(NameFiles {
        hosts: hosts.to_path_buf(),
        hostname: hostname_file.to_path_buf(),
        resolv_conf: resolv,
    })
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(bytes)
}

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
/// filesystems, then the name files (and the host's resolver on the host
/// network), then the step's bind mounts. A step mount whose target equals
/// one of those files replaces it.
pub(crate) fn mounts(network: &Network, names: &NameFiles, binds: &[BindMount]) -> Vec<MountEntry> {
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
        // The step's own cgroups, read-only, as Docker mounts them: JVMs,
        // Node and build tools size heaps and worker pools from the limits
        // they find there.
        MountEntry::new(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ];
    let mut files = vec![
        (names.hosts.clone(), "/etc/hosts"),
        (names.hostname.clone(), "/etc/hostname"),
    ];
    if *network == Network::Host && Path::new(HOST_RESOLV_CONF).exists() {
        files.push((PathBuf::from(HOST_RESOLV_CONF), HOST_RESOLV_CONF));
    }
    if let Some(resolv) = &names.resolv_conf {
        files.push((resolv.clone(), HOST_RESOLV_CONF));
    }
    for (source, target) in files {
        if !binds.iter().any(|b| same_target(&b.target, target)) {
            out.push(MountEntry::bind(&source, target, true));
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
    pub network: &'a Network,
    pub mounts: &'a [MountEntry],
    pub hostname: &'a str,
    pub limits: crate::StepLimits,
    /// Replace the defaults of the same name.
    pub rlimits: &'a [Rlimit],
    /// Set for memory-limited steps: below kiln's parent cgroup.
    pub cgroups_path: Option<String>,
}

fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    use PosixRlimitType::*;
    Some(match name {
        "as" => RlimitAs,
        "core" => RlimitCore,
        "cpu" => RlimitCpu,
        "data" => RlimitData,
        "fsize" => RlimitFsize,
        "locks" => RlimitLocks,
        "memlock" => RlimitMemlock,
        "msgqueue" => RlimitMsgqueue,
        "nice" => RlimitNice,
        "nofile" => RlimitNofile,
        "nproc" => RlimitNproc,
        "rss" => RlimitRss,
        "rtprio" => RlimitRtprio,
        "rttime" => RlimitRttime,
        "sigpending" => RlimitSigpending,
        "stack" => RlimitStack,
        _ => return None,
    })
}

/// The defaults ([`NOFILE_SOFT`]/[`nofile_hard_limit`]) with the step's own
/// limits in place of those of the same name.
fn rlimits(step: &[Rlimit]) -> Result<Vec<PosixRlimit>, oci_spec::OciSpecError> {
    let mut out = Vec::new();
    if !step.iter().any(|r| r.name == "nofile") {
        out.push(
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(nofile_hard_limit())
                .soft(NOFILE_SOFT.min(nofile_hard_limit()))
                .build()?,
        );
    }
    for r in step {
        let typ = rlimit_type(&r.name)
            .ok_or_else(|| oci_spec::OciSpecError::Other(format!("unknown ulimit {}", r.name)))?;
        out.push(
            PosixRlimitBuilder::default()
                .typ(typ)
                .hard(r.hard)
                .soft(r.soft)
                .build()?,
        );
    }
    Ok(out)
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
        .rlimits(rlimits(input.rlimits)?)
        // Docker's default: sudo and other setuid tools keep working.
        .no_new_privileges(false)
        .build()?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if *input.network == Network::None {
        // The runtime brings up `lo` in a fresh network namespace.
        namespaces.push(LinuxNamespaceType::Network);
    }
    let mut namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()?;
    if let Network::Joined(joined) = input.network {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(joined.netns.clone())
                .build()?,
        );
    }

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
    if let Some(limit) = input.limits.memory {
        // A little above kiln's parent cgroup's limit (see the cgroup
        // module): the parent is where the OOM is seen; this is what
        // tools reading their own cgroup's limit find.
        let leaf = (limit + crate::cgroup::LEAF_HEADROOM) as i64;
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(leaf)
                .swap(leaf)
                .build()?,
        );
    }
    if let Some(millis) = input.limits.cpu_millis {
        const PERIOD_US: u64 = 100_000;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(PERIOD_US)
                .quota((millis * PERIOD_US / 1000).max(1000) as i64)
                .build()?,
        );
    }
    let resources = resources.build()?;

    let mut linux = LinuxBuilder::default();
    if let Some(path) = &input.cgroups_path {
        linux = linux.cgroups_path(PathBuf::from(path));
    }
    let linux = linux
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
    spec = spec.hostname(input.hostname);
    spec.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_files() -> NameFiles {
        NameFiles {
            hosts: PathBuf::from("/bundle/hosts"),
            hostname: PathBuf::from("/bundle/hostname"),
            resolv_conf: None,
        }
    }

    #[test]
    fn name_files_are_bound_unless_overridden() {
        let binds = vec![BindMount {
            source: PathBuf::from("/tmp"),
            target: "/etc/hosts".into(),
            readonly: false,
        }];
        let m = mounts(&Network::Host, &name_files(), &binds);
        let hosts: Vec<_> = m.iter().filter(|m| m.destination == "/etc/hosts").collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source, PathBuf::from("/tmp"));
        let none = mounts(&Network::None, &name_files(), &[]);
        let bound: Vec<&str> = none
            .iter()
            .filter(|m| m.typ == "bind")
            .map(|m| m.destination.as_str())
            .collect();
        assert_eq!(bound, ["/etc/hosts", "/etc/hostname"]);
    }

    #[test]
    fn hosts_file_names_the_hostname_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_name_files(
            &dir.path().join("hosts"),
            &dir.path().join("hostname"),
            &dir.path().join("resolv.conf"),
            &Network::None,
            "builder",
        )
        .unwrap();
        let hosts = std::fs::read_to_string(&files.hosts).unwrap();
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
        assert!(hosts.ends_with("127.0.1.1\tbuilder\n"), "{hosts}");
        assert_eq!(
            std::fs::read_to_string(&files.hostname).unwrap(),
            "builder\n"
        );
        let again = dir.path().join("again");
        std::fs::create_dir(&again).unwrap();
        let files = write_name_files(
            &again.join("hosts"),
            &again.join("hostname"),
            &again.join("resolv.conf"),
            &Network::None,
            "localhost",
        )
        .unwrap();
        let hosts = std::fs::read_to_string(files.hosts).unwrap();
        assert!(!hosts.contains("127.0.1.1"), "{hosts}");
    }

    #[test]
    fn joined_network_names_its_services_and_resolver() {
        let dir = tempfile::tempdir().unwrap();
        let network = Network::Joined(crate::JoinedNetwork {
            netns: PathBuf::from("/run/kiln/netns/1-1"),
            hosts: vec![("127.0.0.1".into(), vec!["db".into(), "svc-abc".into()])],
            nameservers: vec!["10.0.2.3".into()],
        });
        let files = write_name_files(
            &dir.path().join("hosts"),
            &dir.path().join("hostname"),
            &dir.path().join("resolv.conf"),
            &network,
            "kiln",
        )
        .unwrap();
        let hosts = std::fs::read_to_string(&files.hosts).unwrap();
        assert!(hosts.contains("127.0.0.1\tdb svc-abc\n"), "{hosts}");
        assert!(hosts.ends_with("127.0.1.1\tkiln\n"), "{hosts}");
        let resolv = std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
        assert!(resolv.starts_with("nameserver 10.0.2.3\n"), "{resolv}");
        let m = mounts(&network, &files, &[]);
        let bound: Vec<&str> = m
            .iter()
            .filter(|m| m.typ == "bind")
            .map(|m| m.destination.as_str())
            .collect();
        assert_eq!(bound, ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]);
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        for ok in ["kiln", "db", "build-1", "a.b.c", "x1"] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a_b", "a b", &"x".repeat(64)] {
            assert!(!valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn spec_serializes_like_docker() {
        let user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![5],
            home: None,
        };
        let m = mounts(&Network::None, &name_files(), &[]);
        let spec = build(&ConfigInput {
            args: &["true".into()],
            env: &["PATH=/bin".into()],
            cwd: "/",
            user: &user,
            network: &Network::None,
            mounts: &m,
            hostname: "step",
            limits: crate::StepLimits {
                pids: Some(100),
                memory: Some(64 << 20),
                cpu_millis: Some(1500),
            },
            rlimits: &[Rlimit {
                name: "nproc".into(),
                soft: 10,
                hard: 20,
            }],
            cgroups_path: Some("kiln-c/step".into()),
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
        assert_eq!(
            json["linux"]["resources"]["memory"]["limit"],
            (64 << 20) + crate::cgroup::LEAF_HEADROOM
        );
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 150_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(json["linux"]["cgroupsPath"], "kiln-c/step");
        assert_eq!(json["process"]["rlimits"][1]["type"], "RLIMIT_NPROC");
        assert_eq!(json["process"]["rlimits"][1]["soft"], 10);
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let denied = json["linux"]["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .unwrap();
        assert!(denied.iter().any(|n| n == "keyctl"), "{denied:?}");
    }
}
