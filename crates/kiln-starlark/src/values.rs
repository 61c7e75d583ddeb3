//! The Starlark values (`Container`, `Directory`, `File`, `Secret`,
//! `CacheVolume`), their methods and the globals that create them.
//!
//! Each value wraps the engine's value of the same name; methods are thin
//! bindings. Building methods return a new value and run nothing; solving
//! methods (`stdout`, `entries`, `contents`, ...) block the evaluating thread
//! on the engine future through the runtime handle in [`Context`].

use std::fmt;
use std::future::Future;

use allocative::Allocative;
use anyhow::{anyhow, bail};
use kiln_engine::{CacheVolume, Engine, ExecOptions, Expect, Sharing};
use kiln_graph as g;
use starlark::any::ProvidesStaticType;
use starlark::environment::{GlobalsBuilder, Methods, MethodsBuilder, MethodsStatic};
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::starlark_simple_value;
use starlark::values::list_or_tuple::UnpackListOrTuple;
use starlark::values::none::NoneOr;
use starlark::values::{starlark_value, NoSerialize, StarlarkValue, Value};

/// What native functions need from the host: the engine to build values on,
/// and the runtime to solve them with. Installed as `Evaluator::extra` for
/// every evaluation (loading modules and calling functions alike).
#[derive(ProvidesStaticType, Clone)]
pub(crate) struct Context {
    pub engine: Engine,
    pub runtime: tokio::runtime::Handle,
    pub limits: crate::EvalLimits,
}

fn context<'a>(eval: &'a Evaluator) -> anyhow::Result<&'a Context> {
    eval.extra
        .and_then(|extra| extra.downcast_ref::<Context>())
        .ok_or_else(|| anyhow!("internal error: kiln context missing from the evaluator"))
}

/// Runs an engine future to completion on the evaluating thread.
///
/// The engine error is returned as the anyhow error's root so that
/// [`crate::error::engine_error`] can recover it intact from the starlark error.
fn solve_now<T>(
    eval: &Evaluator,
    what: &str,
    fut: impl Future<Output = Result<T, kiln_engine::Error>>,
) -> anyhow::Result<T> {
    let ctx = context(eval)?;
    // On a plain thread or in a blocking-pool task, block_in_place just runs
    // the closure; on a multi-thread runtime's worker it first hands the
    // worker's other tasks away. A current-thread runtime has nobody to hand
    // them to, and both calls would panic there.
    if let Ok(current) = tokio::runtime::Handle::try_current() {
        if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            bail!(
                "{what}() cannot block inside a current-thread tokio runtime; evaluate \
                 pipelines on a plain thread (or in spawn_blocking)"
            );
        }
    }
    tokio::task::block_in_place(|| ctx.runtime.block_on(fut)).map_err(anyhow::Error::new)
}

fn parse_expect(expect: &str) -> anyhow::Result<Expect> {
    match expect {
        "success" => Ok(Expect::Success),
        "any" => Ok(Expect::Any),
        "failure" => Ok(Expect::Failure),
        other => bail!("expect must be \"success\", \"any\" or \"failure\", got {other:?}"),
    }
}

/// A limit given as a string (`"4g"`, `"30m"`) or a number (bytes,
/// seconds, CPUs), as the text the shared parsers read.
fn limit_text(value: Value, what: &str, example: &str) -> anyhow::Result<String> {
    if let Some(text) = value.unpack_str() {
        return Ok(text.to_owned());
    }
    match value.get_type() {
        "int" | "float" => Ok(value.to_str()),
        other => bail!("{what} must be a string like {example} or a number, got {other}"),
    }
}

/// The `memory`, `cpus`, `pids` and `timeout` arguments of `with_exec`
/// and `with_limits`.
fn parse_limits(
    memory: NoneOr<Value>,
    cpus: NoneOr<Value>,
    pids: NoneOr<i32>,
    timeout: NoneOr<Value>,
) -> anyhow::Result<g::Limits> {
    let memory_bytes = match memory.into_option() {
        None => None,
        Some(v) => {
            Some(g::parse_memory(&limit_text(v, "memory", "\"4g\"")?).map_err(|e| anyhow!(e))?)
        }
    };
    let cpu_millis = match cpus.into_option() {
        None => None,
        Some(v) => Some(g::parse_cpus(&limit_text(v, "cpus", "\"1.5\"")?).map_err(|e| anyhow!(e))?),
    };
    let pids = match pids.into_option() {
        None => None,
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => bail!("pids must be a positive number, got {n}"),
    };
    let timeout = match timeout.into_option() {
        None => None,
        Some(v) => {
            Some(g::parse_duration(&limit_text(v, "timeout", "\"30m\"")?).map_err(|e| anyhow!(e))?)
        }
    };
    if memory_bytes.is_some_and(|m| m < 4 << 20) {
        bail!("memory must be at least 4m (4 MiB)");
    }
    Ok(g::Limits {
        memory_bytes,
        cpu_millis,
        pids,
        timeout,
    })
}

fn parse_sharing(sharing: &str) -> anyhow::Result<Sharing> {
    match sharing {
        "shared" => Ok(Sharing::Shared),
        "locked" => Ok(Sharing::Locked),
        other => bail!("sharing must be \"shared\" or \"locked\", got {other:?}"),
    }
}

fn parse_permissions(permissions: i32) -> anyhow::Result<u32> {
    match u32::try_from(permissions) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => bail!("permissions must be a file mode between 0o0 and 0o7777, got {permissions:#o}"),
    }
}

/// The image (or `scratch`) a container chain starts from, for display.
fn container_origin(node: &g::Container) -> String {
    let mut node = node;
    while let Some(parent) = node.op.parent() {
        node = parent;
    }
    match &node.op {
        g::ContainerOp::From { reference } => reference.clone(),
        _ => "scratch".to_owned(),
    }
}

fn directory_origin(node: &g::Directory) -> String {
    // Iterative: a directory built up in a loop can be a long chain.
    let mut node = node;
    let mut within = Vec::new();
    let origin = loop {
        match &node.op {
            g::DirectoryOp::Host { path, .. } => break format!("host {}", path.display()),
            g::DirectoryOp::Empty => break "empty".to_owned(),
            g::DirectoryOp::FromContainer { container, path } => {
                break format!("{path} in {}", container_origin(container))
            }
            g::DirectoryOp::Subdirectory { parent, path } => {
                within.push(path.as_str());
                node = parent;
            }
            g::DirectoryOp::WithDirectory { parent, .. }
            | g::DirectoryOp::WithFile { parent, .. }
            | g::DirectoryOp::WithNewFile { parent, .. }
            | g::DirectoryOp::Without { parent, .. } => node = parent,
        }
    };
    within.push(&origin);
    within.join(" in ")
}

// ---------------------------------------------------------------- Container

#[derive(Clone, ProvidesStaticType, NoSerialize, Allocative)]
pub(crate) struct StarContainer(#[allocative(skip)] pub kiln_engine::Container);

starlark_simple_value!(StarContainer);

impl fmt::Display for StarContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Container({})", container_origin(self.0.node()))
    }
}

impl fmt::Debug for StarContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

static CONTAINER_METHODS: MethodsStatic = MethodsStatic::new("Container", container_methods);

#[starlark_value(type = "Container")]
impl<'v> StarlarkValue<'v> for StarContainer {
    fn get_methods() -> Option<&'static Methods> {
        Some(CONTAINER_METHODS.methods())
    }
}

#[starlark_module]
fn container_methods(builder: &mut MethodsBuilder) {
    /// Runs a command (no shell: `["sh", "-c", "..."]` for one). By default a
    /// non-zero exit fails the pipeline; `expect = "any"` accepts any exit
    /// status (read it with `exit_code()`), `expect = "failure"` requires a
    /// non-zero one. `timeout` (`"10m"`, or seconds), `memory` (`"2g"`, or
    /// bytes), `cpus` (`1.5`) and `pids` limit this step only; a step over
    /// its timeout or memory fails whatever `expect` says. Limits are not
    /// part of the step's key.
    fn with_exec<'v>(
        this: &StarContainer,
        #[starlark(require = pos)] args: UnpackListOrTuple<String>,
        #[starlark(require = named, default = "success")] expect: &str,
        #[starlark(require = named, default = NoneOr::None)] timeout: NoneOr<Value<'v>>,
        #[starlark(require = named, default = NoneOr::None)] memory: NoneOr<Value<'v>>,
        #[starlark(require = named, default = NoneOr::None)] cpus: NoneOr<Value<'v>>,
        #[starlark(require = named, default = NoneOr::None)] pids: NoneOr<i32>,
    ) -> anyhow::Result<StarContainer> {
        if args.items.is_empty() {
            bail!("with_exec needs a command: an empty argument list was given");
        }
        let options = ExecOptions {
            expect: parse_expect(expect)?,
            limits: parse_limits(memory, cpus, pids, timeout)?,
        };
        Ok(StarContainer(this.0.with_exec_opts(args.items, options)))
    }

    /// Limits for every later step of this container: `memory` (`"4g"`),
    /// `cpus` (`2`), `pids`, and a per-step `timeout` (`"30m"`). Arguments
    /// left out keep what was set before (or the engine's default: `kiln
    /// call --memory ...`). Not part of any step's key.
    fn with_limits<'v>(
        this: &StarContainer,
        #[starlark(require = named, default = NoneOr::None)] memory: NoneOr<Value<'v>>,
        #[starlark(require = named, default = NoneOr::None)] cpus: NoneOr<Value<'v>>,
        #[starlark(require = named, default = NoneOr::None)] pids: NoneOr<i32>,
        #[starlark(require = named, default = NoneOr::None)] timeout: NoneOr<Value<'v>>,
    ) -> anyhow::Result<StarContainer> {
        let limits = parse_limits(memory, cpus, pids, timeout)?;
        Ok(StarContainer(this.0.with_limits(limits)))
    }

    /// A resource limit for later steps, as `ulimit`/`docker run --ulimit`:
    /// `with_ulimit("nofile", 65536)` (soft and hard), or with `hard = N`.
    /// Names: as, core, cpu, data, fsize, locks, memlock, msgqueue, nice,
    /// nofile, nproc, rss, rtprio, rttime, sigpending, stack.
    fn with_ulimit(
        this: &StarContainer,
        #[starlark(require = pos)] name: &str,
        #[starlark(require = pos)] soft: i32,
        #[starlark(require = named, default = NoneOr::None)] hard: NoneOr<i32>,
    ) -> anyhow::Result<StarContainer> {
        if !kiln_engine::Rlimit::NAMES.contains(&name) {
            bail!(
                "unknown ulimit {name:?}; known: {}",
                kiln_engine::Rlimit::NAMES.join(", ")
            );
        }
        let hard = hard.into_option().unwrap_or(soft);
        if soft < 0 || hard < 0 {
            bail!("ulimit {name}: limits must not be negative");
        }
        if soft > hard {
            bail!("ulimit {name}: soft limit {soft} is above hard limit {hard}");
        }
        Ok(StarContainer(this.0.with_ulimit(
            name,
            soft as u64,
            hard as u64,
        )))
    }

    /// The hostname later steps see (default `kiln`); it resolves inside the
    /// step, as in a Docker container.
    fn with_hostname(this: &StarContainer, hostname: &str) -> anyhow::Result<StarContainer> {
        if !kiln_engine::valid_hostname(hostname) {
            bail!("hostname {hostname:?} must be 1-63 letters, digits and inner '-' or '.'");
        }
        Ok(StarContainer(this.0.with_hostname(hostname)))
    }

    /// This container as a service: a long-running process (a database, a
    /// web server) that steps reach with `with_service_binding`. `args` is
    /// its command (default: the image's entrypoint and command); `ports`
    /// (with the container's `with_exposed_port` ones) must all accept
    /// connections before it counts as ready. `ready_log` also waits for a
    /// line of its output containing that text, `ready_command` for a
    /// command run in its image on its network to exit 0 (such as
    /// `["pg_isready", "-h", "127.0.0.1"]`), each within `ready_timeout`
    /// (default `"60s"`). It starts when the first step bound to it runs,
    /// serves every step of the run bound to it, and stops when the run
    /// ends.
    fn as_service<'v>(
        this: &StarContainer,
        #[starlark(require = named, default = UnpackListOrTuple::default())]
        args: UnpackListOrTuple<String>,
        #[starlark(require = named, default = UnpackListOrTuple::default())]
        ports: UnpackListOrTuple<i32>,
        #[starlark(require = named, default = NoneOr::None)] ready_log: NoneOr<String>,
        #[starlark(require = named, default = NoneOr::None)] ready_command: NoneOr<
            UnpackListOrTuple<String>,
        >,
        #[starlark(require = named, default = NoneOr::None)] ready_timeout: NoneOr<Value<'v>>,
    ) -> anyhow::Result<StarService> {
        let ports = ports
            .items
            .into_iter()
            .map(parse_port)
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let command = ready_command.into_option().map(|c| c.items);
        if command.as_ref().is_some_and(|c| c.is_empty()) {
            bail!("ready_command needs a command: an empty list was given");
        }
        let ready_log = ready_log.into_option();
        if ready_log.as_ref().is_some_and(|l| l.is_empty()) {
            bail!("ready_log needs text to wait for");
        }
        let timeout = match ready_timeout.into_option() {
            None => None,
            Some(v) => Some(
                g::parse_duration(&limit_text(v, "ready_timeout", "\"2m\"")?)
                    .map_err(|e| anyhow!(e))?,
            ),
        };
        Ok(StarService(this.0.as_service_opts(
            kiln_engine::ServiceOptions {
                args: args.items,
                ports,
                readiness: g::Readiness {
                    log_line: ready_log,
                    command,
                    timeout,
                },
            },
        )))
    }

    /// Later steps reach `service` as host `alias` (on its ports). A step
    /// bound to a service is keyed by it: another image or command for the
    /// service re-runs the step.
    fn with_service_binding(
        this: &StarContainer,
        #[starlark(require = pos)] alias: &str,
        #[starlark(require = pos)] service: &StarService,
    ) -> anyhow::Result<StarContainer> {
        if !kiln_engine::valid_hostname(alias) {
            bail!("service alias {alias:?} must be 1-63 letters, digits and inner '-' or '.'");
        }
        Ok(StarContainer(
            this.0.with_service_binding(alias, &service.0),
        ))
    }

    /// A port that a service made of this container listens on.
    fn with_exposed_port(
        this: &StarContainer,
        #[starlark(require = pos)] port: i32,
    ) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_exposed_port(parse_port(port)?)))
    }

    /// Copies a directory into the container at `path`. `include` and
    /// `exclude` (gitignore-style globs) narrow a host directory, such as a
    /// `Directory` parameter, before it is read.
    fn with_directory(
        this: &StarContainer,
        path: &str,
        dir: &StarDirectory,
        #[starlark(require = named, default = UnpackListOrTuple::default())]
        include: UnpackListOrTuple<String>,
        #[starlark(require = named, default = UnpackListOrTuple::default())]
        exclude: UnpackListOrTuple<String>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<StarContainer> {
        let dir = filtered(context(eval)?, dir, include.items, exclude.items)?;
        Ok(StarContainer(this.0.with_directory(path, &dir)))
    }

    /// Copies a file into the container at `path`.
    fn with_file(
        this: &StarContainer,
        path: &str,
        file: &StarFile,
    ) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_file(path, &file.0)))
    }

    /// Writes a new file with the given contents at `path`.
    fn with_new_file(
        this: &StarContainer,
        path: &str,
        contents: &str,
        #[starlark(require = named, default = 0o644)] permissions: i32,
    ) -> anyhow::Result<StarContainer> {
        let mode = parse_permissions(permissions)?;
        Ok(StarContainer(this.0.with_new_file(path, contents, mode)))
    }

    /// Sets an environment variable for later steps.
    fn with_env_variable(
        this: &StarContainer,
        name: &str,
        value: &str,
    ) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_env_variable(name, value)))
    }

    /// Removes an environment variable for later steps.
    fn without_env_variable(this: &StarContainer, name: &str) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.without_env_variable(name)))
    }

    /// Sets the working directory for later steps.
    fn with_workdir(this: &StarContainer, path: &str) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_workdir(path)))
    }

    /// Runs later steps as `user`: "uid", "uid:gid", "name" or "name:group".
    fn with_user(this: &StarContainer, user: &str) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_user(user)))
    }

    /// Sets the entrypoint in the container's configuration (what an image
    /// made from it would run); `with_exec` runs its arguments as given.
    fn with_entrypoint(
        this: &StarContainer,
        #[starlark(require = pos)] args: UnpackListOrTuple<String>,
    ) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_entrypoint(args.items)))
    }

    /// Later steps run with the host network (`True`) or only loopback (`False`).
    fn with_network(this: &StarContainer, enabled: bool) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_network(enabled)))
    }

    /// Mounts a persistent cache volume at `path`. With `sharing = "locked"`
    /// one step at a time uses it.
    fn with_mounted_cache(
        this: &StarContainer,
        path: &str,
        cache: &StarCacheVolume,
        #[starlark(require = named, default = "shared")] sharing: &str,
    ) -> anyhow::Result<StarContainer> {
        let sharing = parse_sharing(sharing)?;
        let volume = CacheVolume::new(cache.0.clone());
        Ok(StarContainer(
            this.0.with_mounted_cache_sharing(path, &volume, sharing),
        ))
    }

    /// Mounts a copy of a directory at `path`; writes to it are not kept.
    fn with_mounted_directory(
        this: &StarContainer,
        path: &str,
        dir: &StarDirectory,
    ) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_mounted_directory(path, &dir.0)))
    }

    /// Exposes a secret to later steps as an environment variable.
    fn with_secret_variable(
        this: &StarContainer,
        name: &str,
        secret: &StarSecret,
    ) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_secret_variable(name, &secret.0)))
    }

    /// Mounts a secret as a read-only file at `path`.
    fn with_mounted_secret(
        this: &StarContainer,
        path: &str,
        secret: &StarSecret,
    ) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(this.0.with_mounted_secret(path, &secret.0)))
    }

    /// The directory at `path` in the container's filesystem.
    fn directory(this: &StarContainer, path: &str) -> anyhow::Result<StarDirectory> {
        Ok(StarDirectory(this.0.directory(path)))
    }

    /// The file at `path` in the container's filesystem.
    fn file(this: &StarContainer, path: &str) -> anyhow::Result<StarFile> {
        Ok(StarFile(this.0.file(path)))
    }

    /// Solves the container and returns the standard output of its last step.
    fn stdout(this: &StarContainer, eval: &mut Evaluator) -> anyhow::Result<String> {
        solve_now(eval, "stdout", this.0.stdout())
    }

    /// Solves the container and returns the standard error of its last step.
    fn stderr(this: &StarContainer, eval: &mut Evaluator) -> anyhow::Result<String> {
        solve_now(eval, "stderr", this.0.stderr())
    }

    /// Solves the container and returns the exit code of its last step.
    fn exit_code(this: &StarContainer, eval: &mut Evaluator) -> anyhow::Result<i32> {
        solve_now(eval, "exit_code", this.0.exit_code())
    }

    /// Solves the container (runs whatever is not cached) and returns it.
    fn sync(this: &StarContainer, eval: &mut Evaluator) -> anyhow::Result<StarContainer> {
        solve_now(eval, "sync", this.0.sync()).map(StarContainer)
    }

    /// Solves the container and pushes it as an OCI image to `reference`
    /// (`HOST[:PORT]/NAME:TAG`); returns the image's digest. The same
    /// inputs give the same digest on every machine.
    fn publish(
        this: &StarContainer,
        #[starlark(require = pos)] reference: &str,
        eval: &mut Evaluator,
    ) -> anyhow::Result<String> {
        solve_now(eval, "publish", this.0.publish(reference))
    }
}

/// Applies include/exclude globs, which only a host directory can take: for
/// any other directory the files are already chosen, and `without` is the tool.
fn filtered(
    ctx: &Context,
    dir: &StarDirectory,
    include: Vec<String>,
    exclude: Vec<String>,
) -> anyhow::Result<kiln_engine::Directory> {
    if include.is_empty() && exclude.is_empty() {
        return Ok(dir.0.clone());
    }
    match &dir.0.node().op {
        g::DirectoryOp::Host { path, filter } if filter.is_empty() => {
            Ok(ctx.engine.host_directory_filtered(path, include, exclude))
        }
        g::DirectoryOp::Host { .. } => {
            bail!("include/exclude: this host directory is already filtered")
        }
        _ => bail!(
            "include/exclude apply only to host directories (such as a Directory parameter), \
             not to {dir}; use without() to drop files from it"
        ),
    }
}

// ---------------------------------------------------------------- Directory

#[derive(Clone, ProvidesStaticType, NoSerialize, Allocative)]
pub(crate) struct StarDirectory(#[allocative(skip)] pub kiln_engine::Directory);

starlark_simple_value!(StarDirectory);

impl fmt::Display for StarDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Directory({})", directory_origin(self.0.node()))
    }
}

impl fmt::Debug for StarDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

static DIRECTORY_METHODS: MethodsStatic = MethodsStatic::new("Directory", directory_methods);

#[starlark_value(type = "Directory")]
impl<'v> StarlarkValue<'v> for StarDirectory {
    fn get_methods() -> Option<&'static Methods> {
        Some(DIRECTORY_METHODS.methods())
    }
}

#[starlark_module]
fn directory_methods(builder: &mut MethodsBuilder) {
    /// The subdirectory at `path`.
    fn directory(this: &StarDirectory, path: &str) -> anyhow::Result<StarDirectory> {
        Ok(StarDirectory(this.0.directory(path)))
    }

    /// The file at `path`.
    fn file(this: &StarDirectory, path: &str) -> anyhow::Result<StarFile> {
        Ok(StarFile(this.0.file(path)))
    }

    /// This directory with another one copied in at `path`.
    fn with_directory(
        this: &StarDirectory,
        path: &str,
        dir: &StarDirectory,
    ) -> anyhow::Result<StarDirectory> {
        Ok(StarDirectory(this.0.with_directory(path, &dir.0)))
    }

    /// This directory with a file copied in at `path`.
    fn with_file(
        this: &StarDirectory,
        path: &str,
        file: &StarFile,
    ) -> anyhow::Result<StarDirectory> {
        Ok(StarDirectory(this.0.with_file(path, &file.0)))
    }

    /// This directory with a new file holding `contents` at `path`.
    fn with_new_file(
        this: &StarDirectory,
        path: &str,
        contents: &str,
        #[starlark(require = named, default = 0o644)] permissions: i32,
    ) -> anyhow::Result<StarDirectory> {
        let mode = parse_permissions(permissions)?;
        Ok(StarDirectory(this.0.with_new_file(path, contents, mode)))
    }

    /// This directory without the file or directory at `path`.
    fn without(this: &StarDirectory, path: &str) -> anyhow::Result<StarDirectory> {
        Ok(StarDirectory(this.0.without(path)))
    }

    /// Solves the directory and returns the names directly inside it, sorted.
    fn entries(this: &StarDirectory, eval: &mut Evaluator) -> anyhow::Result<Vec<String>> {
        solve_now(eval, "entries", this.0.entries())
    }

    /// Solves the directory and returns its content digest.
    fn digest(this: &StarDirectory, eval: &mut Evaluator) -> anyhow::Result<String> {
        solve_now(eval, "digest", this.0.digest())
    }
}

// ---------------------------------------------------------------- File

#[derive(Clone, ProvidesStaticType, NoSerialize, Allocative)]
pub(crate) struct StarFile(#[allocative(skip)] pub kiln_engine::File);

starlark_simple_value!(StarFile);

impl fmt::Display for StarFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.node().op {
            g::FileOp::FromContainer { container, path } => {
                write!(f, "File({path} in {})", container_origin(container))
            }
            g::FileOp::FromDirectory { dir, path } => {
                write!(f, "File({path} in {})", directory_origin(dir))
            }
        }
    }
}

impl fmt::Debug for StarFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

static FILE_METHODS: MethodsStatic = MethodsStatic::new("File", file_methods);

#[starlark_value(type = "File")]
impl<'v> StarlarkValue<'v> for StarFile {
    fn get_methods() -> Option<&'static Methods> {
        Some(FILE_METHODS.methods())
    }
}

#[starlark_module]
fn file_methods(builder: &mut MethodsBuilder) {
    /// Solves the file and returns its contents as text (invalid UTF-8 is
    /// replaced).
    fn contents(this: &StarFile, eval: &mut Evaluator) -> anyhow::Result<String> {
        solve_now(eval, "contents", this.0.contents_string())
    }

    /// Solves the file and returns the sha256 of its bytes as `sha256:HEX`.
    fn digest(this: &StarFile, eval: &mut Evaluator) -> anyhow::Result<String> {
        solve_now(eval, "digest", this.0.digest())
    }
}

// ---------------------------------------------------------------- Service

#[derive(Clone, ProvidesStaticType, NoSerialize, Allocative)]
pub(crate) struct StarService(#[allocative(skip)] pub kiln_engine::Service);

starlark_simple_value!(StarService);

impl fmt::Display for StarService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service({})", container_origin(&self.0.node().container))
    }
}

impl fmt::Debug for StarService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

static SERVICE_METHODS: MethodsStatic = MethodsStatic::new("Service", service_methods);

#[starlark_value(type = "Service")]
impl<'v> StarlarkValue<'v> for StarService {
    fn get_methods() -> Option<&'static Methods> {
        Some(SERVICE_METHODS.methods())
    }
}

#[starlark_module]
fn service_methods(builder: &mut MethodsBuilder) {
    /// `HOST:PORT` by which a step bound to this service (under any alias)
    /// reaches it; `port` defaults to its first. Starts nothing.
    fn endpoint(
        this: &StarService,
        #[starlark(require = named, default = NoneOr::None)] port: NoneOr<i32>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<String> {
        let port = port.into_option().map(parse_port).transpose()?;
        solve_now(eval, "endpoint", this.0.endpoint(port))
    }

    /// The hostname a bound step resolves it by, besides its alias.
    fn hostname(this: &StarService, eval: &mut Evaluator) -> anyhow::Result<String> {
        solve_now(eval, "hostname", this.0.hostname())
    }

    /// Starts the service now and waits until it is ready (steps that bind
    /// it do this themselves); returns its hostname.
    fn start(this: &StarService, eval: &mut Evaluator) -> anyhow::Result<String> {
        solve_now(eval, "start", this.0.start())
    }
}

fn parse_port(port: i32) -> anyhow::Result<u16> {
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => bail!("port {port} is not a TCP port (1-65535)"),
    }
}

// ---------------------------------------------------------------- Secret

#[derive(Clone, ProvidesStaticType, NoSerialize, Allocative)]
pub(crate) struct StarSecret(#[allocative(skip)] pub kiln_engine::Secret);

starlark_simple_value!(StarSecret);

// Only the secret's label (variable name or path), never its value.
impl fmt::Display for StarSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Debug for StarSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[starlark_value(type = "Secret")]
impl<'v> StarlarkValue<'v> for StarSecret {}

// ---------------------------------------------------------------- CacheVolume

#[derive(Clone, Debug, ProvidesStaticType, NoSerialize, Allocative)]
pub(crate) struct StarCacheVolume(pub String);

starlark_simple_value!(StarCacheVolume);

impl fmt::Display for StarCacheVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheVolume({:?})", self.0)
    }
}

#[starlark_value(type = "CacheVolume")]
impl<'v> StarlarkValue<'v> for StarCacheVolume {}

// ---------------------------------------------------------------- globals

#[starlark_module]
#[starlark_types(
    StarContainer as Container,
    StarDirectory as Directory,
    StarFile as File,
    StarSecret as Secret,
    StarService as Service,
    StarCacheVolume as CacheVolume
)]
pub(crate) fn kiln_globals(builder: &mut GlobalsBuilder) {
    /// A container from an image reference, such as `"alpine:3.20"`.
    fn container(
        #[starlark(require = pos)] reference: &str,
        eval: &mut Evaluator,
    ) -> anyhow::Result<StarContainer> {
        if reference.trim().is_empty() {
            bail!("container() needs an image reference, such as \"alpine:3.20\"");
        }
        Ok(StarContainer(context(eval)?.engine.container(reference)))
    }

    /// An empty container, with no filesystem and no configuration.
    fn scratch(eval: &mut Evaluator) -> anyhow::Result<StarContainer> {
        Ok(StarContainer(context(eval)?.engine.scratch()))
    }

    /// An empty directory.
    fn directory(eval: &mut Evaluator) -> anyhow::Result<StarDirectory> {
        Ok(StarDirectory(context(eval)?.engine.directory()))
    }

    /// A persistent cache directory shared between runs, identified by name.
    fn cache_volume(#[starlark(require = pos)] name: &str) -> anyhow::Result<StarCacheVolume> {
        if name.is_empty() {
            bail!("cache_volume() needs a name");
        }
        Ok(StarCacheVolume(name.to_owned()))
    }
}
