use std::path::PathBuf;
use std::sync::Arc;

/// Which files of a host directory take part in a value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    /// gitignore-style globs; empty means everything.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The combination of two filters: a file must pass both.
    pub fn and(&self, other: &Filter) -> Filter {
        let mut include = self.include.clone();
        include.extend(other.include.iter().cloned());
        let mut exclude = self.exclude.clone();
        exclude.extend(other.exclude.iter().cloned());
        Filter { include, exclude }
    }
}

/// What a step requires of its exit status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Expect {
    /// A non-zero exit fails the step (and nothing is cached).
    #[default]
    Success,
    /// Any exit status is a result; read it with `exit_code()`.
    Any,
    /// A zero exit fails the step.
    Failure,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Success => "success",
            Expect::Any => "any",
            Expect::Failure => "failure",
        }
    }
}

/// How concurrent steps share a cache volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sharing {
    /// Any number of steps use the volume at once.
    #[default]
    Shared,
    /// One step at a time; others wait.
    Locked,
}

impl Sharing {
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Shared => "shared",
            Sharing::Locked => "locked",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NetworkMode {
    Host,
    None,
}

/// Where a secret's value comes from. The value itself never enters the graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretNode {
    /// A label for messages; never the value.
    pub name: String,
    pub source: SecretSource,
}

pub type Secret = Arc<SecretNode>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheVolume {
    pub name: String,
}

pub type Container = Arc<ContainerNode>;
pub type Service = Arc<ServiceNode>;
pub type Directory = Arc<DirectoryNode>;
pub type File = Arc<FileNode>;

#[derive(Debug)]
pub struct ContainerNode {
    pub op: ContainerOp,
}

/// One operation on a container. Each holds its parent, so a container is
/// the chain of operations that made it.
#[derive(Debug)]
pub enum ContainerOp {
    From {
        reference: String,
    },
    Scratch,
    Exec {
        parent: Container,
        args: Vec<String>,
        expect: Expect,
    },
    WithDirectory {
        parent: Container,
        path: String,
        dir: Directory,
    },
    WithFile {
        parent: Container,
        path: String,
        file: File,
    },
    WithNewFile {
        parent: Container,
        path: String,
        contents: Vec<u8>,
        mode: u32,
    },
    WithEnv {
        parent: Container,
        name: String,
        value: String,
    },
    WithoutEnv {
        parent: Container,
        name: String,
    },
    WithWorkdir {
        parent: Container,
        path: String,
    },
    WithUser {
        parent: Container,
        user: String,
    },
    WithEntrypoint {
        parent: Container,
        args: Vec<String>,
    },
    WithNetwork {
        parent: Container,
        mode: NetworkMode,
    },
    WithMountedCache {
        parent: Container,
        path: String,
        volume: CacheVolume,
        sharing: Sharing,
    },
    WithMountedDirectory {
        parent: Container,
        path: String,
        dir: Directory,
    },
    WithSecretVariable {
        parent: Container,
        name: String,
        secret: Secret,
    },
    WithMountedSecret {
        parent: Container,
        path: String,
        secret: Secret,
    },
    /// Limits for later steps (`next_exec_only`: for the next exec only).
    /// Not part of any key: see [`crate::Limits`].
    WithLimits {
        parent: Container,
        limits: crate::Limits,
        next_exec_only: bool,
    },
    /// A POSIX resource limit (`ulimit`) for later steps, by its lower-case
    /// name (`nofile`, `nproc`, ...).
    WithUlimit {
        parent: Container,
        name: String,
        soft: u64,
        hard: u64,
    },
    /// The hostname later steps see (and resolve).
    WithHostname {
        parent: Container,
        hostname: String,
    },
    /// Later steps reach `service` as host `alias` (on its ports).
    WithServiceBinding {
        parent: Container,
        alias: String,
        service: Service,
    },
    /// A port a service made from this container listens on.
    WithExposedPort {
        parent: Container,
        port: u16,
    },
}

/// A long-running process made from a container: a database, a web
/// server. It starts when a step that binds it runs, and serves every step
/// of the run that binds it.
#[derive(Debug)]
pub struct ServiceNode {
    pub container: Container,
    /// The command; empty means the container's entrypoint and default
    /// command, as `docker run IMAGE` runs them.
    pub args: Vec<String>,
    /// Ports it listens on, besides the container's exposed ones; it is
    /// ready when every one accepts connections.
    pub ports: Vec<u16>,
    /// Not part of the key: when to call it ready changes nothing it does.
    pub readiness: Readiness,
}

/// What besides its ports says a service is ready.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Readiness {
    /// A line of its output containing this text.
    pub log_line: Option<String>,
    /// A command run in a container of the service's image (sharing its
    /// network) that exits 0, such as `pg_isready`.
    pub command: Option<Vec<String>>,
    /// How long to wait for all of it; `None` is the engine's default.
    pub timeout: Option<std::time::Duration>,
}

impl Drop for ContainerNode {
    // Dropping a long chain recursively would overflow the stack; unlink it
    // one node at a time instead, stopping at a node someone else still holds.
    fn drop(&mut self) {
        let mut next = std::mem::replace(&mut self.op, ContainerOp::Scratch).into_parent();
        while let Some(node) = next {
            next = match Arc::try_unwrap(node) {
                Ok(mut node) => std::mem::replace(&mut node.op, ContainerOp::Scratch).into_parent(),
                Err(_) => None,
            };
        }
    }
}

/// Lists the operations that have a parent once, for both accessors.
macro_rules! with_parent {
    ($value:expr, $parent:ident => $some:expr, $none:expr) => {{
        use ContainerOp::*;
        match $value {
            From { .. } | Scratch => $none,
            Exec { $parent, .. }
            | WithDirectory { $parent, .. }
            | WithFile { $parent, .. }
            | WithNewFile { $parent, .. }
            | WithEnv { $parent, .. }
            | WithoutEnv { $parent, .. }
            | WithWorkdir { $parent, .. }
            | WithUser { $parent, .. }
            | WithEntrypoint { $parent, .. }
            | WithNetwork { $parent, .. }
            | WithMountedCache { $parent, .. }
            | WithMountedDirectory { $parent, .. }
            | WithSecretVariable { $parent, .. }
            | WithMountedSecret { $parent, .. }
            | WithLimits { $parent, .. }
            | WithUlimit { $parent, .. }
            | WithHostname { $parent, .. }
            | WithServiceBinding { $parent, .. }
            | WithExposedPort { $parent, .. } => $some,
        }
    }};
}

impl ContainerOp {
    fn into_parent(self) -> Option<Container> {
        with_parent!(self, parent => Some(parent), None)
    }

    pub fn parent(&self) -> Option<&Container> {
        with_parent!(self, parent => Some(parent), None)
    }

    /// Whether the operation changes the filesystem (and so has a result to
    /// cache) rather than only the configuration that later steps run with.
    pub fn changes_filesystem(&self) -> bool {
        matches!(
            self,
            ContainerOp::Exec { .. }
                | ContainerOp::WithDirectory { .. }
                | ContainerOp::WithFile { .. }
                | ContainerOp::WithNewFile { .. }
        )
    }
}

#[derive(Debug)]
pub struct DirectoryNode {
    pub op: DirectoryOp,
}

#[derive(Debug)]
pub enum DirectoryOp {
    /// A directory on the host, keyed by the content of the files the filter lets through.
    Host {
        path: PathBuf,
        filter: Filter,
    },
    Empty,
    /// A directory inside a container's filesystem.
    FromContainer {
        container: Container,
        path: String,
    },
    Subdirectory {
        parent: Directory,
        path: String,
    },
    WithDirectory {
        parent: Directory,
        path: String,
        dir: Directory,
    },
    WithFile {
        parent: Directory,
        path: String,
        file: File,
    },
    WithNewFile {
        parent: Directory,
        path: String,
        contents: Vec<u8>,
        mode: u32,
    },
    Without {
        parent: Directory,
        path: String,
    },
}

#[derive(Debug)]
pub struct FileNode {
    pub op: FileOp,
}

#[derive(Debug)]
pub enum FileOp {
    FromContainer { container: Container, path: String },
    FromDirectory { dir: Directory, path: String },
}
