use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_engine::{CacheVolume, Engine, ExecOptions, Expect, LockFile, Sharing};

use crate::images::{self, EngineSetup};
use crate::progress::{self, ProgressMode};

/// kiln: pipelines as code, run in real containers, cached by content.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// More log output (-v info, -vv debug); KILN_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Store directory [default: $KILN_STORE, else /var/lib/kiln for root, else $XDG_DATA_HOME/kiln]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// OCI runtime binary (runc, crun, youki) [default: crun if installed,
    /// else runc]
    #[arg(long, global = true, env = "KILN_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// A registry to reach over plain HTTP (repeatable, or comma-separated in
    /// KILN_INSECURE_REGISTRY). Loopback hosts always may; all others use HTTPS.
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "KILN_INSECURE_REGISTRY",
        value_delimiter = ',',
        value_name = "HOST[:PORT]"
    )]
    pub insecure_registries: Vec<String>,
    /// Never contact a registry: every image must already be in the store.
    #[arg(long, global = true)]
    pub offline: bool,
    /// Interpreter steps allowed for evaluating one kiln.star file or one
    /// function call, so a runaway loop fails instead of holding a core.
    #[arg(
        long,
        global = true,
        env = "KILN_EVAL_MAX_STEPS",
        default_value_t = kiln_starlark::EvalLimits::DEFAULT_MAX_STEPS,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub eval_max_steps: u64,
    /// Starlark memory allowed for one evaluation (e.g. 512MiB, 2GiB).
    #[arg(
        long,
        global = true,
        env = "KILN_EVAL_MAX_MEMORY",
        default_value = "1GiB",
        value_name = "SIZE",
        value_parser = parse_nonzero_size
    )]
    pub eval_max_memory: u64,
    /// Show a cached step's output again (as it was when the step ran)
    /// instead of only "CACHED". `kiln runner` always does, so job logs are
    /// complete.
    #[arg(long, global = true, env = "KILN_REPLAY_CACHED")]
    pub replay_cached: bool,
}

impl Global {
    pub fn eval_limits(&self) -> kiln_starlark::EvalLimits {
        kiln_starlark::EvalLimits {
            max_steps: self.eval_max_steps,
            max_heap_bytes: usize::try_from(self.eval_max_memory).unwrap_or(usize::MAX),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the functions of kiln.star: name and the first line of its docstring.
    Functions(crate::pipeline::ModuleArg),
    /// Call one function of kiln.star with typed flags (`kiln call NAME --help`).
    Call(crate::pipeline::CallArgs),
    /// Run the pipeline as CI would: the function `ci` with the repository as `source`.
    Run(crate::pipeline::RunArgs),
    /// Run one command in a container, cached by content (like a one-step pipeline).
    Exec(ExecArgs),
    /// Pin every image tag the pipeline uses to its digest, in kiln.lock.
    ///
    /// Evaluates kiln.star without running anything to find the images its
    /// functions use, keeps the pins already there, resolves new tags (from
    /// the store if it has them, else from their registry) and drops pins
    /// the pipeline no longer uses.
    Lock(crate::images::LockArgs),
    /// Pull, push, save, import and list images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Log in to a registry, or out of it.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Inspect and prune the store.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Run the CI service: repositories, a durable job queue, the API runners pull from.
    Server(crate::service::ServerArgs),
    /// Add and list the repositories the server builds.
    #[command(subcommand)]
    Repo(crate::service::RepoCommand),
    /// Queue a job for a repository and print its id.
    Trigger(crate::service::TriggerArgs),
    /// Make registration tokens for runners.
    #[command(subcommand)]
    RunnerToken(crate::service::RunnerTokenCommand),
    /// Make API tokens and revoke tokens of any kind.
    #[command(subcommand)]
    Token(crate::service::TokenCommand),
    /// Run jobs for a server: register, wait for work, run each job's `ci` function.
    ///
    /// Registers with the server, then waits for jobs. Each job's commit is
    /// checked out into a fresh directory under --work and its `ci` function
    /// runs exactly as `kiln run` would run it there, on this machine's store
    /// (--store), so its steps hit the same cache. Output, steps and the
    /// result stream to the server as they happen.
    ///
    /// Ctrl-C or SIGTERM stops taking jobs and waits for the running ones; a
    /// second one cancels them.
    Runner(crate::runner::RunnerArgs),
    /// List, inspect, follow, cancel and retry the server's jobs.
    #[command(subcommand)]
    Jobs(crate::service::JobsCommand),
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI image layout directory, an OCI archive or a `docker save` tarball.
    Import {
        /// The layout directory or tar file.
        path: PathBuf,
        /// Name to give the image (default: the names recorded in the archive).
        #[arg(long, short)]
        tag: Option<String>,
    },
    /// Pull an image from its registry into the store (the tag is asked
    /// again, so it moves to what the registry names now).
    Pull {
        /// e.g. alpine:3.20, localhost:5000/app:1, alpine@sha256:...
        reference: String,
    },
    /// Push an image from the store to a registry.
    Push {
        /// The image in the store.
        source: String,
        /// Where to push it [default: SOURCE's own name].
        target: Option<String>,
    },
    /// Write images to one tar: an OCI archive that `docker load` and
    /// `kiln image import` also read (for moving images without a network).
    Save {
        /// Images in the store.
        #[arg(required = true)]
        references: Vec<String>,
        /// The tar file to write (atomically).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// List images in the store: name, digest, size.
    Ls {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Check credentials against a registry and store them (mode 0600) for
    /// pulls and pushes. Docker's ~/.docker/config.json is read too.
    Login {
        /// The registry host, e.g. registry.example.com or localhost:5000.
        host: String,
        #[arg(short, long)]
        username: String,
        /// Read the password from standard input (else KILN_REGISTRY_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the stored credentials for a registry.
    Logout { host: String },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Show the store's size by kind.
    Du {
        #[arg(long)]
        json: bool,
    },
    /// Remove least-recently-used entries.
    ///
    /// With no option, nothing is removed. Image blobs that a tag pins and
    /// cache volumes are kept unless --all is given.
    Prune {
        /// Keep at most this much (e.g. 10GB, 500MiB, 1048576).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        keep_bytes: Option<u64>,
        /// Remove entries unused for this long (e.g. 7d, 12h, 30m).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Remove everything: results, layers, blobs, image tags, cache volumes.
        #[arg(long)]
        all: bool,
    },
}

/// The engine's default limits for every step; a pipeline's `with_limits`
/// and `with_exec(..., memory = ...)` override them.
#[derive(Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Memory of each step, swap included (e.g. 512m, 4g): past it the
    /// kernel's OOM killer acts and the step fails as out of memory.
    /// [default: unlimited]
    #[arg(long, env = "KILN_STEP_MEMORY", value_name = "SIZE", value_parser = kiln_engine::parse_memory)]
    pub memory: Option<u64>,
    /// CPUs each step may use (e.g. 2, 0.5), as Docker's --cpus.
    /// [default: unlimited]
    #[arg(long, env = "KILN_STEP_CPUS", value_name = "CPUS", value_parser = kiln_engine::parse_cpus)]
    pub cpus: Option<u64>,
    /// Processes and threads each step may have at once. [default: 4096,
    /// or KILN_STEP_PIDS_LIMIT]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pids: Option<u64>,
    /// Time each step may run (e.g. 30m, 90s, 1h30m); a step past it is
    /// killed and fails as timed out. [default: no limit]
    #[arg(long, env = "KILN_STEP_TIMEOUT", value_name = "DURATION", value_parser = kiln_engine::parse_duration)]
    pub step_timeout: Option<std::time::Duration>,
}

impl LimitArgs {
    pub fn limits(&self) -> kiln_engine::Limits {
        kiln_engine::Limits {
            memory_bytes: self.memory,
            cpu_millis: self.cpus,
            pids: self.pids,
            timeout: self.step_timeout,
        }
    }
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Image to start from (as imported: `kiln image ls`).
    pub image: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub args: Vec<String>,
    /// Copy a host directory in: HOST_DIR:CONTAINER_PATH (keyed by content).
    #[arg(long = "dir", value_name = "HOST:PATH")]
    pub dirs: Vec<String>,
    /// Mount a cache volume: NAME:PATH[:locked].
    #[arg(long = "cache", value_name = "NAME:PATH")]
    pub caches: Vec<String>,
    /// Set an environment variable: NAME=VALUE.
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Pass a secret as an environment variable: NAME=env:VAR or NAME=file:PATH.
    #[arg(long = "secret-env", value_name = "NAME=SOURCE")]
    pub secret_env: Vec<String>,
    /// Mount a secret as a file: PATH=env:VAR or PATH=file:PATH.
    #[arg(long = "secret-file", value_name = "PATH=SOURCE")]
    pub secret_file: Vec<String>,
    /// Working directory in the container.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// User to run as: uid, uid:gid, name or name:group.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Network for the step.
    #[arg(long, value_enum, default_value_t = Network::Host)]
    pub network: Network,
    /// Accept any exit status (and print it) instead of failing on non-zero.
    #[arg(long)]
    pub any_exit: bool,
    /// Export a directory of the result: CONTAINER_PATH:HOST_PATH.
    #[arg(long, value_name = "PATH:HOST")]
    pub export: Vec<String>,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    Host,
    None,
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let store = cli
        .global
        .store
        .clone()
        .unwrap_or_else(kiln_store::Store::default_root);
    let registry = kiln_registry::RegistryOptions {
        insecure: cli.global.insecure_registries.clone(),
        ..kiln_registry::RegistryOptions::default()
    };
    let setup = EngineSetup {
        store: store.clone(),
        runtime: cli
            .global
            .runtime
            .clone()
            .unwrap_or_else(kiln_engine::default_runtime),
        registry: registry.clone(),
        offline: cli.global.offline,
        eval: cli.global.eval_limits(),
        replay_cached: cli.global.replay_cached,
        default_limits: kiln_engine::Limits::default(),
    };
    match cli.command {
        Command::Image(ImageCommand::Pull { reference }) => images::pull(setup, reference).await,
        Command::Image(ImageCommand::Push { source, target }) => {
            images::push(setup, source, target).await
        }
        Command::Image(ImageCommand::Save { references, output }) => {
            images::save(setup, references, output).await
        }
        Command::Image(ImageCommand::Import { path, tag }) => import_image(&store, &path, tag),
        Command::Image(ImageCommand::Ls { json }) => list_images(&store, json),
        Command::Registry(RegistryCommand::Login {
            host,
            username,
            password_stdin,
        }) => images::login(registry, host, username, password_stdin).await,
        Command::Registry(RegistryCommand::Logout { host }) => images::logout(registry, host),
        Command::Lock(args) => images::lock(setup, args).await,
        Command::Cache(cmd) => cache(store, cmd),
        Command::Exec(args) => {
            let setup = setup.with_limits(args.limits.limits());
            exec(setup.open(LockFile::default(), false)?, args).await
        }
        Command::Functions(module) => crate::pipeline::functions(setup, module).await,
        Command::Call(args) => crate::pipeline::call(setup, args).await,
        Command::Run(args) => crate::pipeline::run(setup, args).await,
        Command::Server(args) => crate::service::server(args).await,
        Command::Repo(cmd) => crate::service::repo(cmd).await,
        Command::Trigger(args) => crate::service::trigger(args).await,
        Command::RunnerToken(cmd) => crate::service::runner_token(cmd).await,
        Command::Jobs(cmd) => crate::service::jobs(cmd).await,
        Command::Token(cmd) => crate::service::token(cmd).await,
        Command::Runner(args) => crate::runner::run(setup, args).await,
    }
}

fn open_store(store: &Path) -> Result<kiln_store::Store> {
    kiln_store::Store::open(store)
        .with_context(|| format!("opening the store at {}", store.display()))
}

fn import_image(store: &Path, path: &Path, tag: Option<String>) -> Result<ExitCode> {
    let store = open_store(store)?;
    eprintln!("importing {} ...", path.display());
    let images = kiln_oci::import(&store, path, tag.as_deref())
        .with_context(|| format!("importing {}", path.display()))?;
    for image in images {
        println!(
            "{}\t{}\t{}",
            image.name,
            image.manifest_digest,
            bytesize::ByteSize(image.size_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list_images(store: &Path, json: bool) -> Result<ExitCode> {
    let store = open_store(store)?;
    let images = kiln_oci::list_images(&store)?;
    if json {
        for image in images {
            println!(
                "{}",
                serde_json::json!({"name": image.name, "digest": image.manifest_digest.to_string(), "size": image.size_bytes})
            );
        }
    } else {
        println!("{:<40} {:<20} {:>10}", "NAME", "DIGEST", "SIZE");
        for image in images {
            println!(
                "{:<40} {:<20} {:>10}",
                image.name,
                format!("sha256:{}", image.manifest_digest.short()),
                bytesize::ByteSize(image.size_bytes).to_string()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cache(store: PathBuf, cmd: CacheCommand) -> Result<ExitCode> {
    let store = open_store(&store)?;
    match cmd {
        CacheCommand::Du { json } => {
            let usage = store.usage()?;
            if json {
                println!("{}", serde_json::to_string(&usage)?);
            } else {
                println!("{:<14} {:>8} {:>12}", "KIND", "ENTRIES", "SIZE");
                for (kind, u) in [
                    ("action cache", usage.action_cache),
                    ("layers", usage.layers),
                    ("files", usage.files),
                    ("blobs", usage.blobs),
                    ("volumes", usage.volumes),
                ] {
                    println!(
                        "{kind:<14} {:>8} {:>12}",
                        u.entries,
                        bytesize::ByteSize(u.bytes).to_string()
                    );
                }
                println!(
                    "{:<14} {:>8} {:>12}",
                    "total",
                    "",
                    bytesize::ByteSize(usage.total_bytes()).to_string()
                );
            }
        }
        CacheCommand::Prune {
            keep_bytes,
            older_than,
            all,
        } => {
            if keep_bytes.is_none() && older_than.is_none() && !all {
                bail!("say what to prune: --keep-bytes SIZE, --older-than DURATION or --all");
            }
            let report = store.prune(&kiln_store::PruneOptions {
                keep_bytes,
                older_than,
                all,
            })?;
            let r = &report.removed;
            println!(
                "removed {} cache entries, {} layers, {} blobs, {} volumes: {} freed; {} kept",
                r.action_cache.entries,
                r.layers.entries,
                r.blobs.entries,
                r.volumes.entries,
                bytesize::ByteSize(r.total_bytes()),
                bytesize::ByteSize(report.kept_bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(engine: Engine, args: ExecArgs) -> Result<ExitCode> {
    let mut c = engine.container(&args.image);
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair}: expected NAME=VALUE"))?;
        c = c.with_env_variable(k, v);
    }
    for spec in &args.secret_env {
        let (name, source) = spec.split_once('=').with_context(|| {
            format!(
                "--secret-env: expected NAME=env:VAR or NAME=file:PATH, got {name:?}",
                name = spec.split('=').next().unwrap_or("")
            )
        })?;
        c = c.with_secret_variable(name, &secret(&engine, source)?);
    }
    for spec in &args.secret_file {
        let (path, source) = spec
            .split_once('=')
            .context("--secret-file: expected PATH=env:VAR or PATH=file:PATH")?;
        c = c.with_mounted_secret(path, &secret(&engine, source)?);
    }
    for spec in &args.dirs {
        let (host, path) = spec
            .rsplit_once(':')
            .with_context(|| format!("--dir {spec}: expected HOST_DIR:CONTAINER_PATH"))?;
        c = c.with_directory(path, &engine.host_directory(host));
    }
    for spec in &args.caches {
        let mut parts = spec.splitn(3, ':');
        let (Some(name), Some(path)) = (parts.next(), parts.next()) else {
            bail!("--cache {spec}: expected NAME:PATH[:locked]");
        };
        let sharing = match parts.next() {
            None | Some("shared") => Sharing::Shared,
            Some("locked") => Sharing::Locked,
            Some(other) => bail!("--cache {spec}: sharing must be shared or locked, not {other}"),
        };
        c = c.with_mounted_cache_sharing(path, &CacheVolume::new(name), sharing);
    }
    if let Some(dir) = &args.workdir {
        c = c.with_workdir(dir);
    }
    if let Some(user) = &args.user {
        c = c.with_user(user);
    }
    if args.network == Network::None {
        c = c.with_network(false);
    }
    let expect = if args.any_exit {
        Expect::Any
    } else {
        Expect::Success
    };
    let c = c.with_exec_opts(
        args.args.clone(),
        ExecOptions {
            expect,
            ..ExecOptions::default()
        },
    );

    // Like `kiln call`: a signal kills the container instead of leaving it.
    crate::pipeline::cancel_on_interrupt(&engine);
    let renderer = progress::spawn(&engine, args.progress, &args.image);
    let result = c.sync().await;
    renderer.finish().await;
    if engine.is_cancelled() {
        eprintln!("error: interrupted");
        return Ok(ExitCode::from(crate::pipeline::INTERRUPTED as u8));
    }
    let c = match result {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", engine.redact(&e.to_string()));
            return Ok(ExitCode::FAILURE);
        }
    };
    c.copy_output(kiln_engine::Stream::Stdout, std::io::stdout())
        .await?;
    c.copy_output(kiln_engine::Stream::Stderr, std::io::stderr())
        .await?;
    for spec in &args.export {
        let (path, host) = spec
            .split_once(':')
            .with_context(|| format!("--export {spec}: expected CONTAINER_PATH:HOST_PATH"))?;
        c.directory(path)
            .export(host)
            .await
            .with_context(|| format!("exporting {path} to {host}"))?;
        eprintln!("exported {path} to {host}");
    }
    let code = c.exit_code().await?;
    if args.any_exit {
        eprintln!("exit code: {code}");
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn secret(engine: &Engine, source: &str) -> Result<kiln_engine::Secret> {
    if let Some(var) = source.strip_prefix("env:") {
        Ok(engine.secret_from_env(var)?)
    } else if let Some(path) = source.strip_prefix("file:") {
        Ok(engine.secret_from_file(path)?)
    } else {
        bail!("secret source must be env:NAME or file:PATH")
    }
}

fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("must be more than 0".to_owned()),
        n => Ok(n),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size (e.g. 10GB, 500MiB): {e}"))
}
