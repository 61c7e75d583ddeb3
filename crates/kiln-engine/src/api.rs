//! The Rust API: pipeline values bound to an engine.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kiln_engine::Error> {
//! use kiln_engine::{Container, Engine};
//! let engine = Engine::global()?;
//! let src = engine.host_directory(".");
//! let out = Container::from("busybox:test")
//!     .with_directory("/src", &src)
//!     .with_workdir("/src")
//!     .with_exec(["sh", "-c", "ls | wc -l"])
//!     .stdout()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Building a value does nothing. Terminal operations (`stdout`, `sync`,
//! `contents`, `export`, ...) solve what they need; independent values
//! awaited together (`tokio::join!`, `try_join_all`) solve in parallel.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_graph as g;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::Stream;
use crate::solve::{read_output, solve, FsState, Target};

impl Service {
    pub fn node(&self) -> &g::Service {
        &self.node
    }

    /// The name every step bound to this service resolves it by, besides
    /// its alias: `svc-` and the start of its key.
    pub async fn hostname(&self) -> Result<String> {
        let engine = self.engine.clone()?;
        let (_, key) = crate::services::key_of(engine.inner.clone(), self.node.clone()).await?;
        Ok(crate::services::service_hostname(&key))
    }

    /// `HOST:PORT` of the service as a bound step reaches it; `port`
    /// defaults to its first one.
    pub async fn endpoint(&self, port: Option<u16>) -> Result<String> {
        let port = match port.or_else(|| self.node.ports.first().copied()) {
            Some(port) => port,
            None => {
                let engine = self.engine.clone()?;
                let node = self.node.container.clone();
                let cfg = blocking(move || crate::config::config_of(&engine.inner, &node)).await?;
                cfg.exposed_ports.first().copied().ok_or_else(|| {
                    Error::Invalid(
                        "endpoint(): the service has no ports; pass one, or give it ports".into(),
                    )
                })?
            }
        };
        Ok(format!("{}:{port}", self.hostname().await?))
    }

    /// Starts the service now (if it is not running) and waits until it is
    /// ready; returns its hostname.
    pub async fn start(&self) -> Result<String> {
        let engine = self.engine.clone()?;
        crate::services::start(engine.inner.clone(), self.node.clone()).await
    }
}

/// Options for [`Container::with_exec_opts`].
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    pub expect: g::Expect,
    /// This step's limits and timeout, over the container's
    /// ([`Container::with_limits`]) and the engine's defaults.
    pub limits: g::Limits,
}

/// A container: a filesystem and the configuration its next step runs with.
#[derive(Clone)]
pub struct Container {
    engine: Result<Engine>,
    node: g::Container,
}

/// A directory tree: from the host, from a container, or built up.
#[derive(Clone)]
pub struct Directory {
    engine: Result<Engine>,
    node: g::Directory,
}

/// One file in a container or directory.
#[derive(Clone)]
pub struct File {
    engine: Result<Engine>,
    node: g::File,
}

/// A long-running container (a database, a web server) that steps bind with
/// [`Container::with_service_binding`]. It starts when the first step that
/// binds it runs and serves every step of the run bound to it.
#[derive(Clone)]
pub struct Service {
    engine: Result<Engine>,
    node: g::Service,
}

/// Options for [`Container::as_service_opts`].
#[derive(Clone, Debug, Default)]
pub struct ServiceOptions {
    /// The command; empty runs the container's entrypoint and default command.
    pub args: Vec<String>,
    /// Ports it listens on (besides [`Container::with_exposed_port`]'s); it
    /// is ready once every one accepts connections.
    pub ports: Vec<u16>,
    /// More conditions for ready: a log line, a command, and how long to
    /// wait ([`crate::DEFAULT_READY_TIMEOUT`] unless set).
    pub readiness: g::Readiness,
}

/// A secret: its value is read when it is created, and never written to the
/// store, a cache key, a log or an error.
#[derive(Clone)]
pub struct Secret {
    pub(crate) node: g::Secret,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.node.name)
    }
}

/// A persistent cache directory shared between runs, such as a package cache.
/// Its contents are never part of a cache key.
#[derive(Clone, Debug)]
pub struct CacheVolume {
    name: String,
}

impl CacheVolume {
    pub fn new(name: impl Into<String>) -> CacheVolume {
        CacheVolume { name: name.into() }
    }
}

impl Engine {
    /// A container from an image reference (imported into the store).
    pub fn container(&self, reference: &str) -> Container {
        crate::engine::lock(&self.inner.image_references).insert(reference.to_owned());
        Container::with_engine(
            Ok(self.clone()),
            g::ContainerOp::From {
                reference: reference.to_owned(),
            },
        )
    }

    /// An empty container, with no filesystem and no configuration.
    pub fn scratch(&self) -> Container {
        Container::with_engine(Ok(self.clone()), g::ContainerOp::Scratch)
    }

    /// A host directory, keyed by the content of its files; honours
    /// `.gitignore` and `.kilnignore`.
    pub fn host_directory(&self, path: impl AsRef<Path>) -> Directory {
        self.host_directory_filtered(path, Vec::new(), Vec::new())
    }

    /// A host directory limited by gitignore-style include/exclude globs.
    pub fn host_directory_filtered(
        &self,
        path: impl AsRef<Path>,
        include: Vec<String>,
        exclude: Vec<String>,
    ) -> Directory {
        let path = path.as_ref();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Directory::with_engine(
            Ok(self.clone()),
            g::DirectoryOp::Host {
                path,
                filter: g::Filter { include, exclude },
            },
        )
    }

    /// An empty directory.
    pub fn directory(&self) -> Directory {
        Directory::with_engine(Ok(self.clone()), g::DirectoryOp::Empty)
    }

    /// One host file, keyed by its content (its directory filtered down to it).
    pub fn host_file(&self, path: impl AsRef<Path>) -> File {
        let path = path.as_ref();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("/"));
        // Anchored so that a same-named file deeper in the tree is not included.
        let include = vec![format!("/{}", glob_escape(&name))];
        self.host_directory_filtered(parent, include, Vec::new())
            .file(&name)
    }
}

/// Escapes gitignore glob metacharacters in a literal file name.
fn glob_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '!' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The configuration a container's next step would run with, as an image
/// config would record it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ContainerConfig {
    pub env: Vec<String>,
    pub workdir: String,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

impl Container {
    /// A container from an image reference, on the global engine.
    pub fn from(reference: &str) -> Container {
        Container::with_engine(
            Engine::global(),
            g::ContainerOp::From {
                reference: reference.to_owned(),
            },
        )
    }

    fn with_engine(engine: Result<Engine>, op: g::ContainerOp) -> Container {
        Container {
            engine,
            node: Arc::new(g::ContainerNode { op }),
        }
    }

    fn then(&self, op: g::ContainerOp) -> Container {
        Container::with_engine(self.engine.clone(), op)
    }

    fn parent(&self) -> g::Container {
        self.node.clone()
    }

    pub fn node(&self) -> &g::Container {
        &self.node
    }

    /// Runs a command. A non-zero exit fails the pipeline.
    pub fn with_exec<I, S>(&self, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.with_exec_opts(args, ExecOptions::default())
    }

    pub fn with_exec_opts<I, S>(&self, args: I, options: ExecOptions) -> Container
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let base = if options.limits.is_empty() {
            self.clone()
        } else {
            self.then(g::ContainerOp::WithLimits {
                parent: self.parent(),
                limits: options.limits,
                next_exec_only: true,
            })
        };
        base.then(g::ContainerOp::Exec {
            parent: base.parent(),
            args: args.into_iter().map(Into::into).collect(),
            expect: options.expect,
        })
    }

    /// Memory, CPU, pids limits and a timeout for every later step; fields
    /// left `None` keep what was set before. Limits are not part of any
    /// step's key: raising a timeout does not re-run a cached step.
    pub fn with_limits(&self, limits: g::Limits) -> Container {
        self.then(g::ContainerOp::WithLimits {
            parent: self.parent(),
            limits,
            next_exec_only: false,
        })
    }

    /// A POSIX resource limit for later steps, as `docker run --ulimit
    /// NAME=SOFT:HARD`: `nofile`, `nproc`, `core`, `stack`, `memlock`, ...
    pub fn with_ulimit(&self, name: &str, soft: u64, hard: u64) -> Container {
        self.then(g::ContainerOp::WithUlimit {
            parent: self.parent(),
            name: name.to_owned(),
            soft,
            hard,
        })
    }

    /// This container as a service that runs `args` (empty: its entrypoint
    /// and default command) and listens on `ports`.
    pub fn as_service<I, S>(&self, args: I, ports: &[u16]) -> Service
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.as_service_opts(ServiceOptions {
            args: args.into_iter().map(Into::into).collect(),
            ports: ports.to_vec(),
            readiness: g::Readiness::default(),
        })
    }

    pub fn as_service_opts(&self, options: ServiceOptions) -> Service {
        Service {
            engine: self.engine.clone(),
            node: Arc::new(g::ServiceNode {
                container: self.node.clone(),
                args: options.args,
                ports: options.ports,
                readiness: options.readiness,
            }),
        }
    }

    /// Later steps reach `service` as host `alias`, on its ports. They are
    /// keyed by the service: another image or command re-runs them.
    pub fn with_service_binding(&self, alias: &str, service: &Service) -> Container {
        self.then(g::ContainerOp::WithServiceBinding {
            parent: self.parent(),
            alias: alias.to_owned(),
            service: service.node.clone(),
        })
    }

    /// A port a service made of this container listens on.
    pub fn with_exposed_port(&self, port: u16) -> Container {
        self.then(g::ContainerOp::WithExposedPort {
            parent: self.parent(),
            port,
        })
    }

    /// The hostname later steps see; it resolves to a loopback address
    /// inside the step. The default is `kiln`.
    pub fn with_hostname(&self, hostname: &str) -> Container {
        self.then(g::ContainerOp::WithHostname {
            parent: self.parent(),
            hostname: hostname.to_owned(),
        })
    }

    pub fn with_directory(&self, path: &str, dir: &Directory) -> Container {
        self.then(g::ContainerOp::WithDirectory {
            parent: self.parent(),
            path: path.to_owned(),
            dir: dir.node.clone(),
        })
    }

    pub fn with_file(&self, path: &str, file: &File) -> Container {
        self.then(g::ContainerOp::WithFile {
            parent: self.parent(),
            path: path.to_owned(),
            file: file.node.clone(),
        })
    }

    pub fn with_new_file(&self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Container {
        self.then(g::ContainerOp::WithNewFile {
            parent: self.parent(),
            path: path.to_owned(),
            contents: contents.into(),
            mode,
        })
    }

    pub fn with_env_variable(&self, name: &str, value: &str) -> Container {
        self.then(g::ContainerOp::WithEnv {
            parent: self.parent(),
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }

    pub fn without_env_variable(&self, name: &str) -> Container {
        self.then(g::ContainerOp::WithoutEnv {
            parent: self.parent(),
            name: name.to_owned(),
        })
    }

    pub fn with_workdir(&self, path: &str) -> Container {
        self.then(g::ContainerOp::WithWorkdir {
            parent: self.parent(),
            path: path.to_owned(),
        })
    }

    /// Runs later steps as `user`: "uid", "uid:gid", "name" or "name:group".
    pub fn with_user(&self, user: &str) -> Container {
        self.then(g::ContainerOp::WithUser {
            parent: self.parent(),
            user: user.to_owned(),
        })
    }

    pub fn with_entrypoint<I, S>(&self, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.then(g::ContainerOp::WithEntrypoint {
            parent: self.parent(),
            args: args.into_iter().map(Into::into).collect(),
        })
    }

    /// Later steps run with no network (only loopback) when `enabled` is false.
    pub fn with_network(&self, enabled: bool) -> Container {
        self.then(g::ContainerOp::WithNetwork {
            parent: self.parent(),
            mode: if enabled {
                g::NetworkMode::Host
            } else {
                g::NetworkMode::None
            },
        })
    }

    pub fn with_mounted_cache(&self, path: &str, volume: &CacheVolume) -> Container {
        self.with_mounted_cache_sharing(path, volume, g::Sharing::Shared)
    }

    pub fn with_mounted_cache_sharing(
        &self,
        path: &str,
        volume: &CacheVolume,
        sharing: g::Sharing,
    ) -> Container {
        self.then(g::ContainerOp::WithMountedCache {
            parent: self.parent(),
            path: path.to_owned(),
            volume: g::CacheVolume {
                name: volume.name.clone(),
            },
            sharing,
        })
    }

    /// Mounts a copy of `dir`: the step may write to it, but its writes are
    /// not kept.
    pub fn with_mounted_directory(&self, path: &str, dir: &Directory) -> Container {
        self.then(g::ContainerOp::WithMountedDirectory {
            parent: self.parent(),
            path: path.to_owned(),
            dir: dir.node.clone(),
        })
    }

    pub fn with_secret_variable(&self, name: &str, secret: &Secret) -> Container {
        self.then(g::ContainerOp::WithSecretVariable {
            parent: self.parent(),
            name: name.to_owned(),
            secret: secret.node.clone(),
        })
    }

    /// Mounts a secret as a read-only file (on tmpfs; nothing is left in the
    /// container's filesystem afterwards).
    pub fn with_mounted_secret(&self, path: &str, secret: &Secret) -> Container {
        self.then(g::ContainerOp::WithMountedSecret {
            parent: self.parent(),
            path: path.to_owned(),
            secret: secret.node.clone(),
        })
    }

    pub fn directory(&self, path: &str) -> Directory {
        Directory::with_engine(
            self.engine.clone(),
            g::DirectoryOp::FromContainer {
                container: self.parent(),
                path: path.to_owned(),
            },
        )
    }

    pub fn file(&self, path: &str) -> File {
        File {
            engine: self.engine.clone(),
            node: Arc::new(g::FileNode {
                op: g::FileOp::FromContainer {
                    container: self.parent(),
                    path: path.to_owned(),
                },
            }),
        }
    }

    async fn solved(&self) -> Result<(Engine, Arc<FsState>)> {
        let engine = self.engine.clone()?;
        let state = solve(engine.inner.clone(), Target::Container(self.node.clone())).await?;
        Ok((engine, state))
    }

    /// Solves the container (runs whatever is not cached).
    pub async fn sync(&self) -> Result<Container> {
        self.solved().await?;
        Ok(self.clone())
    }

    /// Standard output of the latest step, scrubbed of secrets.
    pub async fn stdout(&self) -> Result<String> {
        let (engine, state) = self.solved().await?;
        blocking(move || read_output(&engine.inner, &state, Stream::Stdout)).await
    }

    pub async fn stderr(&self) -> Result<String> {
        let (engine, state) = self.solved().await?;
        blocking(move || read_output(&engine.inner, &state, Stream::Stderr)).await
    }

    /// Copies the latest step's output (scrubbed, as kept) to `to`, in
    /// bounded memory whatever its size; returns the bytes copied.
    pub async fn copy_output(
        &self,
        stream: Stream,
        mut to: impl std::io::Write + Send + 'static,
    ) -> Result<u64> {
        let (engine, state) = self.solved().await?;
        blocking(move || crate::solve::copy_output(&engine.inner, &state, stream, &mut to)).await
    }

    /// Exit code of the latest step (use `Expect::Any` to see non-zero ones).
    pub async fn exit_code(&self) -> Result<i32> {
        let (_, state) = self.solved().await?;
        state
            .last_exec
            .as_ref()
            .map(|e| e.exit_code)
            .ok_or_else(|| {
                Error::Invalid(
                    "no command has run in this container yet: call with_exec first".into(),
                )
            })
    }

    /// The container's configuration (environment, working directory, user,
    /// entrypoint). Secret variables are listed by name only.
    pub async fn config(&self) -> Result<ContainerConfig> {
        let engine = self.engine.clone()?;
        let node = self.node.clone();
        blocking(move || {
            let cfg = crate::config::config_of(&engine.inner, &node)?;
            let mut env: Vec<String> = cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.extend(cfg.secret_env.iter().map(|(k, _)| format!("{k}=***")));
            Ok(ContainerConfig {
                env,
                workdir: cfg.workdir,
                user: cfg.user,
                entrypoint: cfg.entrypoint,
                cmd: cfg.cmd,
            })
        })
        .await
    }

    /// A digest of the container's whole filesystem.
    pub async fn rootfs_digest(&self) -> Result<String> {
        self.directory("/").digest().await
    }

    /// Solves the container and pushes it to `reference`
    /// (`HOST[:PORT]/NAME:TAG`) as an OCI image; returns the image's
    /// manifest digest. Layers are packed deterministically, stamped with
    /// `SOURCE_DATE_EPOCH` (else the Unix epoch), so the same inputs give
    /// the same digest on every run and every machine.
    pub async fn publish(&self, reference: &str) -> Result<String> {
        let (engine, state) = self.solved().await?;
        let node = self.node.clone();
        let reference = reference.to_owned();
        blocking(move || {
            let target: kiln_oci::Reference = reference.parse()?;
            let inner = &engine.inner;
            let name = format!("publish {target}");
            let step = inner.next_step();
            let started = std::time::Instant::now();
            inner.emit(crate::Event::Started {
                step,
                name: name.clone(),
                key: String::new(),
            });
            let result = inner.build_image(&node, &state, None).and_then(|built| {
                kiln_registry::blocking::push(
                    &inner.store,
                    &built.manifest,
                    &target,
                    &inner.image_policy.registry,
                )
                .map_err(Error::from)
            });
            inner.emit(crate::Event::Finished {
                step,
                name,
                duration: started.elapsed(),
                outcome: match &result {
                    Ok(_) => crate::Outcome::Succeeded { exit_code: 0 },
                    Err(e) => crate::Outcome::Failed {
                        message: e.to_string(),
                        ending: None,
                    },
                },
            });
            result.map(|digest| digest.to_string())
        })
        .await
    }

    /// Solves the container and writes it to `dest` as an image tarball (an
    /// OCI archive that `docker load` and `kiln image import` read), under
    /// the image name `name`; also tags it in the store. Returns the
    /// manifest digest.
    pub async fn export_image(&self, dest: impl AsRef<Path>, name: &str) -> Result<String> {
        let (engine, state) = self.solved().await?;
        let node = self.node.clone();
        let dest = dest.as_ref().to_owned();
        let name: kiln_oci::Reference = name.parse()?;
        blocking(move || {
            let name = name.to_string();
            let built = engine.inner.build_image(&node, &state, Some(&name))?;
            kiln_oci::save(
                &engine.inner.store,
                &[(name, built.manifest.clone())],
                &dest,
            )?;
            Ok(built.manifest.to_string())
        })
        .await
    }
}

impl Directory {
    fn with_engine(engine: Result<Engine>, op: g::DirectoryOp) -> Directory {
        Directory {
            engine,
            node: Arc::new(g::DirectoryNode { op }),
        }
    }

    fn then(&self, op: g::DirectoryOp) -> Directory {
        Directory::with_engine(self.engine.clone(), op)
    }

    pub fn node(&self) -> &g::Directory {
        &self.node
    }

    /// A subdirectory. Of a host directory, it is keyed by the content of
    /// that subtree alone, so changes elsewhere in the tree do not reach it.
    pub fn directory(&self, path: &str) -> Directory {
        let parent = match &self.node.op {
            // Narrowing with an include keeps the root's .gitignore rules in
            // force. Only without includes of its own: two include lists
            // would widen (either matches), not narrow.
            g::DirectoryOp::Host { path: root, filter } if filter.include.is_empty() => {
                let sub = crate::config::normalize(path);
                let narrowed = g::Filter {
                    include: vec![format!("{}/", sub)],
                    exclude: filter.exclude.clone(),
                };
                Arc::new(g::DirectoryNode {
                    op: g::DirectoryOp::Host {
                        path: root.clone(),
                        filter: narrowed,
                    },
                })
            }
            _ => self.node.clone(),
        };
        self.then(g::DirectoryOp::Subdirectory {
            parent,
            path: path.to_owned(),
        })
    }

    pub fn file(&self, path: &str) -> File {
        File {
            engine: self.engine.clone(),
            node: Arc::new(g::FileNode {
                op: g::FileOp::FromDirectory {
                    dir: self.node.clone(),
                    path: path.to_owned(),
                },
            }),
        }
    }

    pub fn with_directory(&self, path: &str, dir: &Directory) -> Directory {
        self.then(g::DirectoryOp::WithDirectory {
            parent: self.node.clone(),
            path: path.to_owned(),
            dir: dir.node.clone(),
        })
    }

    pub fn with_file(&self, path: &str, file: &File) -> Directory {
        self.then(g::DirectoryOp::WithFile {
            parent: self.node.clone(),
            path: path.to_owned(),
            file: file.node.clone(),
        })
    }

    pub fn with_new_file(&self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Directory {
        self.then(g::DirectoryOp::WithNewFile {
            parent: self.node.clone(),
            path: path.to_owned(),
            contents: contents.into(),
            mode,
        })
    }

    pub fn without(&self, path: &str) -> Directory {
        self.then(g::DirectoryOp::Without {
            parent: self.node.clone(),
            path: path.to_owned(),
        })
    }

    async fn solved(&self) -> Result<(Engine, Arc<FsState>)> {
        let engine = self.engine.clone()?;
        let state = solve(engine.inner.clone(), Target::Directory(self.node.clone())).await?;
        Ok((engine, state))
    }

    pub async fn sync(&self) -> Result<Directory> {
        self.solved().await?;
        Ok(self.clone())
    }

    /// Names directly inside the directory, sorted.
    pub async fn entries(&self) -> Result<Vec<String>> {
        let (engine, state) = self.solved().await?;
        blocking(move || {
            let walk = state.view(&engine.inner).walk(Path::new(&state.path))?;
            Ok(walk
                .into_iter()
                .filter(|e| e.rel.components().count() == 1)
                .map(|e| e.rel.to_string_lossy().into_owned())
                .collect())
        })
        .await
    }

    /// The content digest: the same files give the same digest wherever they are.
    pub async fn digest(&self) -> Result<String> {
        let (engine, state) = self.solved().await?;
        blocking(move || {
            let digest = state.view(&engine.inner).digest(Path::new(&state.path))?;
            Ok(format!("blake3:{}", hex::encode(digest)))
        })
        .await
    }

    /// Writes the directory to a host path atomically: the old contents stay
    /// until the new ones are complete, then one rename swaps them.
    pub async fn export(&self, dest: impl AsRef<Path>) -> Result<PathBuf> {
        let dest = dest.as_ref().to_owned();
        let (engine, state) = self.solved().await?;
        blocking(move || {
            kiln_fs::export_dir(&state.view(&engine.inner), Path::new(&state.path), &dest)?;
            Ok(dest)
        })
        .await
    }
}

impl File {
    pub fn node(&self) -> &g::File {
        &self.node
    }

    async fn solved(&self) -> Result<(Engine, Arc<FsState>)> {
        let engine = self.engine.clone()?;
        let state = solve(engine.inner.clone(), Target::File(self.node.clone())).await?;
        Ok((engine, state))
    }

    pub async fn contents(&self) -> Result<Vec<u8>> {
        let (engine, state) = self.solved().await?;
        blocking(move || {
            Ok(state
                .view(&engine.inner)
                .read_file(Path::new(&state.path))?)
        })
        .await
    }

    pub async fn contents_string(&self) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.contents().await?).into_owned())
    }

    /// The sha256 of the file's bytes, as `sha256:HEX`.
    pub async fn digest(&self) -> Result<String> {
        Ok(kiln_store::Digest::of(&self.contents().await?).to_string())
    }

    /// Writes the file to a host path atomically (temp file, then rename).
    pub async fn export(&self, dest: impl AsRef<Path>) -> Result<PathBuf> {
        let dest = dest.as_ref().to_owned();
        let (engine, state) = self.solved().await?;
        blocking(move || {
            kiln_fs::export_file(&state.view(&engine.inner), Path::new(&state.path), &dest)?;
            Ok(dest)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}
