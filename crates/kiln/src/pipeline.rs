//! `kiln functions`, `kiln call` and `kiln run`: the commands over kiln.star,
//! and [`call_function`], the one path from kiln.star to a result, which
//! `kiln runner` takes for every job.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Arg, ArgAction, Args};
use kiln_engine::{Engine, LockFile};
use kiln_starlark::{ArgValue, FunctionInfo, Output, ParamType, Pipeline};

use crate::images::EngineSetup;
use crate::progress::{self, ProgressMode};

#[derive(Args, Debug)]
pub struct ModuleArg {
    /// Directory holding kiln.star [default: the nearest one at or above the current directory]
    #[arg(short = 'm', long = "module", value_name = "DIR")]
    pub module: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LockedArg {
    /// Refuse to run unless kiln.lock pins exactly the image tags the
    /// pipeline uses (CI should pass this; `kiln lock` fixes a mismatch).
    #[arg(long)]
    pub locked: bool,
}

#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Write a returned Directory or File here (atomically); a returned
    /// Container is written as an image tarball (OCI archive, `docker load`-able).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print progress events and the result as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(
    disable_help_flag = true,
    after_help = "Run `kiln call NAME --help` to see a function's flags. kiln's own options may also follow NAME."
)]
pub struct CallArgs {
    #[command(flatten)]
    pub module: ModuleArg,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub lock: LockedArg,
    #[command(flatten)]
    pub limits: crate::cli::LimitArgs,
    /// Time the whole run may take (e.g. 30m, 1h30m): past it the running
    /// steps are killed and kiln exits with 124, saying it timed out.
    #[arg(long, env = "KILN_TIMEOUT", value_name = "DURATION", value_parser = kiln_engine::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Print help (of the function, when NAME is given).
    #[arg(short = 'h', long = "help")]
    pub help: bool,
    /// The function to call (see `kiln functions`).
    pub name: Option<String>,
    /// The function's flags, e.g. --source . --count 3
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    pub flags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub module: ModuleArg,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub lock: LockedArg,
    #[command(flatten)]
    pub limits: crate::cli::LimitArgs,
    /// Time the whole run may take (e.g. 30m, 1h30m): past it the running
    /// steps are killed and kiln exits with 124, saying it timed out.
    #[arg(long, env = "KILN_TIMEOUT", value_name = "DURATION", value_parser = kiln_engine::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Further flags for `ci`, e.g. --token env:TOKEN
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    pub flags: Vec<String>,
}

/// The directory holding kiln.star: the one given, or the nearest upward.
pub fn module_root(module: &ModuleArg) -> Result<PathBuf> {
    match &module.module {
        Some(dir) => {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            if !dir.join("kiln.star").is_file() {
                bail!("no kiln.star in {}", dir.display());
            }
            Ok(dir)
        }
        None => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            kiln_starlark::find_root(&cwd).ok_or_else(|| {
                anyhow!(
                    "no kiln.star in {} or any directory above it (use -m DIR to point at one)",
                    cwd.display()
                )
            })
        }
    }
}

pub async fn functions(setup: EngineSetup, module: ModuleArg) -> Result<ExitCode> {
    let root = module_root(&module)?;
    let engine = setup.open(LockFile::default(), false)?;
    let handle = tokio::runtime::Handle::current();
    let eval = setup.eval;
    let infos = tokio::task::spawn_blocking(move || -> Result<Vec<FunctionInfo>> {
        let pipeline = Pipeline::load_with_limits(&root, engine, handle, eval)?;
        Ok(pipeline.functions())
    })
    .await??;
    if infos.is_empty() {
        eprintln!("kiln.star defines no function with a docstring");
    }
    let width = infos
        .iter()
        .map(|f| kebab(&f.name).len())
        .max()
        .unwrap_or(0);
    for info in infos {
        println!("{:<width$}  {}", kebab(&info.name), info.summary);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn call(setup: EngineSetup, mut args: CallArgs) -> Result<ExitCode> {
    let Some(name) = args.name.take() else {
        use clap::CommandFactory;
        let mut cli = crate::cli::Cli::command();
        if let Some(call) = cli.find_subcommand_mut("call") {
            call.clone().bin_name("kiln call").print_long_help()?;
        }
        return Ok(if args.help {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    };
    if args.help {
        args.flags.push("--help".into());
    }
    let call = FunctionCall {
        root: module_root(&args.module)?,
        locked: args.lock.locked,
        name,
        flags: args.flags,
        source: None,
    };
    invoke(
        setup.with_limits(args.limits.limits()),
        call,
        args.out,
        args.timeout,
    )
    .await
}

pub async fn run(setup: EngineSetup, args: RunArgs) -> Result<ExitCode> {
    let root = module_root(&args.module)?;
    let setup = setup.with_limits(args.limits.limits());
    let call = ci_call(root, args.lock.locked, args.flags);
    invoke(setup, call, args.out, args.timeout).await
}

/// One call of a kiln.star function, as `kiln call` and `kiln run` make it
/// from the command line and `kiln runner` makes it for a job.
pub struct FunctionCall {
    /// The directory holding kiln.star.
    pub root: PathBuf,
    /// `--locked`: kiln.lock must pin exactly the images the pipeline uses.
    pub locked: bool,
    /// The function, in either spelling (`check-links`, `check_links`).
    pub name: String,
    /// The function's flags (kiln's own `--progress`, `--json` and `-o`
    /// may be among them).
    pub flags: Vec<String>,
    /// The `source` argument when the flags do not set it.
    pub source: Option<String>,
}

/// What `kiln run` calls: `ci`, with the repository as `source`. A runner
/// calls exactly this on its checkout, so both get the same cache keys.
pub fn ci_call(root: PathBuf, locked: bool, flags: Vec<String>) -> FunctionCall {
    let source = root.display().to_string();
    FunctionCall {
        root,
        locked,
        name: "ci".into(),
        flags,
        source: Some(source),
    }
}

/// Watches a call while it runs: the terminal's progress display, or a
/// runner streaming the job's log to its server.
pub trait Watch {
    /// The engine is open and nothing has been loaded yet. A watcher that
    /// must be able to cancel the run keeps a clone of the engine.
    fn opened(&mut self, _engine: &Engine) {}
    /// The function is about to be called; its events start here.
    fn calling(&mut self, _engine: &Engine, _name: &str, _own: &OwnOptions) {}
    /// The result is solved or failed: every event emitted is in.
    fn finish(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// How a call ended, once the engine was open.
pub enum Called {
    /// `--help` was asked for: print this and stop.
    Help(String),
    /// kiln.star did not load or the flags did not parse: nothing ran.
    NotStarted {
        engine: Engine,
        error: anyhow::Error,
    },
    /// The function ran; `output` is its solved result or why it failed.
    Ran {
        engine: Engine,
        own: OwnOptions,
        output: Result<Output>,
    },
}

/// Calls a kiln.star function and solves its result: checks or reads
/// kiln.lock, opens the engine, loads kiln.star, parses the flags, calls,
/// solves, and (unless `--locked`) pins newly resolved tags in kiln.lock.
/// The one path from kiln.star to a result, for `kiln call`, `kiln run` and
/// `kiln runner`. Errors before the engine is open, and a kiln.lock that
/// cannot be updated, are `Err`.
pub async fn call_function(
    setup: &EngineSetup,
    call: FunctionCall,
    watch: &mut impl Watch,
) -> Result<Called> {
    let FunctionCall {
        root,
        locked,
        name,
        flags,
        source,
    } = call;
    let lock = if locked {
        crate::images::check_locked(setup, &root).await?
    } else {
        crate::images::read_lock(&root)?.unwrap_or_default()
    };
    let engine = setup.open(lock, locked)?;
    watch.opened(&engine);
    let lock_root = root.clone();
    // Read likely inputs while kiln.star loads: a directory named on the
    // command line is almost always a Directory argument, and `kiln run`
    // passes the repository. The engine shares this work with the solve.
    for value in flags.iter().chain(&source).filter(|v| !v.starts_with('-')) {
        if Path::new(value).is_dir() {
            engine.prefetch_host_directory(value);
        }
    }
    let handle = tokio::runtime::Handle::current();
    let started = std::time::Instant::now();
    let prepared = {
        let engine = engine.clone();
        let eval = setup.eval;
        tokio::task::spawn_blocking(move || {
            prepare(&root, engine, handle, eval, &name, flags, source)
        })
        .await?
    };
    tracing::debug!(
        ms = started.elapsed().as_secs_f64() * 1e3,
        "loaded kiln.star, parsed flags"
    );
    let (pipeline, name, args, own) = match prepared {
        Ok(Prepared::Help(text)) => return Ok(Called::Help(text)),
        Ok(Prepared::Ready {
            pipeline,
            name,
            args,
            own,
        }) => (pipeline, name, args, own),
        Err(error) => {
            engine.shutdown().await;
            return Ok(Called::NotStarted { engine, error });
        }
    };
    // Watching covers the call too: a function may solve values itself.
    watch.calling(&engine, &name, &own);
    let phase = std::time::Instant::now();
    let called = tokio::task::spawn_blocking(move || pipeline.call(&name, args)).await?;
    tracing::debug!(
        ms = phase.elapsed().as_secs_f64() * 1e3,
        "called the function"
    );
    let phase = std::time::Instant::now();
    let output = match called {
        Ok(output) => kiln_starlark::solve(output)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    tracing::debug!(
        ms = phase.elapsed().as_secs_f64() * 1e3,
        "solved the result"
    );
    // The run is over: its services stop (their progress steps end) before
    // progress finishes.
    engine.shutdown().await;
    watch.finish().await;
    if output.is_ok() && !locked {
        crate::images::record_new_pins(&engine, &lock_root)?;
    }
    Ok(Called::Ran {
        engine,
        own,
        output,
    })
}

enum Prepared {
    /// `--help` was asked for: print this and stop.
    Help(String),
    Ready {
        pipeline: Box<Pipeline>,
        name: String,
        args: Vec<(String, ArgValue)>,
        own: OwnOptions,
    },
}

/// kiln's own options found among a function's flags.
#[derive(Default)]
pub struct OwnOptions {
    output: Option<PathBuf>,
    progress: Option<ProgressMode>,
    json: bool,
}

/// The terminal's watcher: progress in the mode the command line chose.
struct Progress {
    progress: ProgressMode,
    json: bool,
    renderer: Option<progress::Renderer>,
    /// The steps a cancellation stopped, once the renderer has finished.
    cancelled: Vec<progress::CancelledStep>,
    /// `--timeout`: the run is cancelled when it is over.
    run_timeout: Option<std::time::Duration>,
}

/// Cancels the run once `timeout` has passed, as an interrupt would, and
/// records that it was the timeout.
fn cancel_after(engine: &Engine, timeout: std::time::Duration) {
    let engine = engine.clone();
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if engine.is_cancelled() {
            return;
        }
        let _ = TIMED_OUT_AFTER.set(timeout);
        eprintln!(
            "kiln: timed out after {}: stopping the running steps",
            seconds(timeout)
        );
        let _ = tokio::task::spawn_blocking(move || engine.cancel()).await;
    });
}

/// `90 s`, `0.5 s`: a duration as messages give it.
pub(crate) fn seconds(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// The exit status of a run stopped by `--timeout`, as `timeout(1)` has it.
pub(crate) const TIMED_OUT: u8 = 124;

/// Set when `--timeout` cancelled the run.
static TIMED_OUT_AFTER: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// Ctrl-C (or SIGTERM) cancels the run instead of killing the process: the
/// engine kills the running steps' containers and starts nothing more, so
/// no container outlives `kiln`. A second signal exits at once (the next
/// kiln process cleans up what that leaves).
pub(crate) fn cancel_on_interrupt(engine: &Engine) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let engine = engine.clone();
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        let _ = INTERRUPTED_BY.set(signal);
        eprintln!(
            "kiln: interrupted: stopping the running steps (interrupt again to quit at once)"
        );
        let cancelling = tokio::task::spawn_blocking(move || engine.cancel());
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        drop(cancelling);
        if JSON_RESULT_OWED.swap(false, std::sync::atomic::Ordering::SeqCst) {
            use std::io::Write;
            // Held to the end: no event line can follow the result.
            let mut stdout = std::io::stdout().lock();
            let result = serde_json::json!({
                "event": "result",
                "ok": false,
                "error": format!("cancelled: interrupted by {signal}, and again: quit without waiting for the steps to stop"),
            });
            let _ = writeln!(stdout, "{result}");
            let _ = stdout.flush();
        }
        std::process::exit(INTERRUPTED);
    });
}

/// The exit status of a run stopped by Ctrl-C, as shells report it.
pub(crate) const INTERRUPTED: i32 = 130;

/// The signal that cancelled the run, for its `result` event.
static INTERRUPTED_BY: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Set while `--json` owes a `result` event: a second interrupt, which
/// exits at once, still ends the output with one.
static JSON_RESULT_OWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Watch for Progress {
    fn opened(&mut self, engine: &Engine) {
        cancel_on_interrupt(engine);
        if let Some(timeout) = self.run_timeout {
            cancel_after(engine, timeout);
        }
    }

    fn calling(&mut self, engine: &Engine, name: &str, own: &OwnOptions) {
        let json = self.json || own.json;
        JSON_RESULT_OWED.store(json, std::sync::atomic::Ordering::SeqCst);
        let mode = if json {
            ProgressMode::Json
        } else {
            own.progress.unwrap_or(self.progress)
        };
        self.renderer = Some(progress::spawn(engine, mode, name));
    }

    async fn finish(&mut self) {
        if let Some(renderer) = self.renderer.take() {
            self.cancelled = renderer.finish().await;
        }
    }
}

/// Runs a call for `kiln call` and `kiln run`. With `--json` the last line
/// of stdout is a `result` event however the run ends: with its value, an
/// error, or the cancellation.
async fn invoke(
    setup: EngineSetup,
    call: FunctionCall,
    out: OutputArgs,
    run_timeout: Option<std::time::Duration>,
) -> Result<ExitCode> {
    // Until kiln.star is loaded, `--json` among the function's flags can
    // only be taken as kiln's own.
    let json_asked = out.json || call.flags.iter().any(|f| f == "--json");
    JSON_RESULT_OWED.store(json_asked, std::sync::atomic::Ordering::SeqCst);
    match invoke_inner(setup, call, out, json_asked, run_timeout).await {
        Ok(code) => Ok(code),
        // Failed before the engine was open (kiln.lock, the store) or
        // while writing the result: no secret can be in the message.
        Err(error) => {
            print_result(serde_json::json!({
                "event": "result",
                "ok": false,
                "error": format!("{error:#}"),
            }));
            Err(error)
        }
    }
}

async fn invoke_inner(
    setup: EngineSetup,
    call: FunctionCall,
    mut out: OutputArgs,
    json_asked: bool,
    run_timeout: Option<std::time::Duration>,
) -> Result<ExitCode> {
    let function_name = call.name.clone();
    let mut watch = Progress {
        progress: out.progress,
        json: out.json,
        renderer: None,
        cancelled: Vec::new(),
        run_timeout,
    };
    let called = call_function(&setup, call, &mut watch).await?;
    let json = match &called {
        // Now known: `--json` may have been one of the function's own flags.
        Called::Ran { own, .. } => out.json || own.json,
        Called::Help(_) => false,
        Called::NotStarted { .. } => json_asked,
    };
    JSON_RESULT_OWED.store(json, std::sync::atomic::Ordering::SeqCst);
    match called {
        Called::Help(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Called::NotStarted { engine, .. } | Called::Ran { engine, .. } if engine.is_cancelled() => {
            if let Some(timeout) = TIMED_OUT_AFTER.get() {
                let message = format!("timed out after {} (--timeout)", seconds(*timeout));
                if json {
                    print_result(serde_json::json!({
                        "event": "result",
                        "ok": false,
                        "error": message,
                        "timeout_s": timeout.as_secs_f64(),
                        "cancelled": watch.cancelled,
                    }));
                }
                eprintln!("error: {message}");
                return Ok(ExitCode::from(TIMED_OUT));
            }
            if json {
                let signal = INTERRUPTED_BY.get().copied().unwrap_or("a signal");
                print_result(serde_json::json!({
                    "event": "result",
                    "ok": false,
                    "error": format!("cancelled: interrupted by {signal}"),
                    "cancelled": watch.cancelled,
                }));
            }
            eprintln!("error: interrupted");
            Ok(ExitCode::from(INTERRUPTED as u8))
        }
        Called::NotStarted { engine, error } => fail(&engine, &error, json),
        Called::Ran {
            engine,
            own,
            output,
        } => {
            out.output = own.output.or(out.output);
            out.json = json;
            match output {
                Ok(output) => {
                    let phase = std::time::Instant::now();
                    let printed =
                        print_output(&output, out.output.as_deref(), out.json, &function_name)
                            .await;
                    if let Err(e) = printed {
                        return fail(&engine, &e, out.json);
                    }
                    tracing::debug!(ms = phase.elapsed().as_secs_f64() * 1e3, "wrote the result");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => fail(&engine, &e, out.json),
            }
        }
    }
}

/// Prints the `result` event, the last line of `--json` output, if one is
/// owed (once: a second interrupt may be printing it at the same moment).
fn print_result(result: serde_json::Value) {
    if JSON_RESULT_OWED.swap(false, std::sync::atomic::Ordering::SeqCst) {
        println!("{result}");
    }
}

fn fail(engine: &Engine, error: &anyhow::Error, json: bool) -> Result<ExitCode> {
    let message = engine.redact(&format!("{error:#}"));
    if json {
        print_result(serde_json::json!({"event": "result", "ok": false, "error": message}));
    }
    // Starlark's diagnostics already begin with "error:".
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("error: {message}");
    Ok(ExitCode::FAILURE)
}

fn prepare(
    root: &Path,
    engine: Engine,
    handle: tokio::runtime::Handle,
    eval: kiln_starlark::EvalLimits,
    name: &str,
    flags: Vec<String>,
    source: Option<String>,
) -> Result<Prepared> {
    let pipeline = Pipeline::load_with_limits(root, engine.clone(), handle, eval)?;
    // Commands are shown in kebab-case like their flags; either spelling works.
    let name = resolve_name(&pipeline, name)?;
    let info = pipeline.function(&name)?;
    if let Some(p) = info
        .params
        .iter()
        .find(|p| p.required && !p.ty.is_supported())
    {
        bail!(
            "{name}: parameter `{}` cannot be set from the command line ({}); annotate it as Directory, File, Secret, str, int, bool or list[str]",
            p.name,
            p.ty.name()
        );
    }
    let (flags, own) = take_own_options(&info, flags)?;
    let command = function_command(&info);
    let matches = match command.clone().try_get_matches_from(&flags) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp) => {
            return Ok(Prepared::Help(
                command.clone().render_long_help().to_string(),
            ));
        }
        Err(e) => bail!("{}", e.to_string().trim_start_matches("error: ").trim_end()),
    };
    let mut given: Vec<(String, ArgValue)> = Vec::new();
    for param in &info.params {
        let mut raw: Vec<String> = matches
            .get_many::<String>(&param.name)
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        if raw.is_empty() && param.name == "source" {
            if let Some(source) = &source {
                raw.push(source.clone());
            }
        }
        if raw.is_empty() {
            continue;
        }
        let value = kiln_starlark::parse_arg(&engine, param, &raw)?;
        given.push((param.name.clone(), value));
    }
    kiln_starlark::check_args(&info, &given)?;
    Ok(Prepared::Ready {
        pipeline: Box::new(pipeline),
        name,
        args: given,
        own,
    })
}

/// Pulls `--progress`, `--json` and `-o/--output` out of the function's
/// flags, so they may be written after the function name, unless the
/// function has a parameter of that name (then the flag is the function's).
fn take_own_options(info: &FunctionInfo, flags: Vec<String>) -> Result<(Vec<String>, OwnOptions)> {
    let taken = |flag: &str| info.params.iter().any(|p| p.flag == flag);
    let mut own = OwnOptions::default();
    let mut rest = Vec::new();
    let mut tokens = flags.into_iter();
    while let Some(token) = tokens.next() {
        let (key, inline) = match token.split_once('=') {
            Some((k, v)) if k.starts_with('-') => (k.to_owned(), Some(v.to_owned())),
            _ => (token.clone(), None),
        };
        let mut value = |what: &str| -> Result<String> {
            match inline.clone().or_else(|| tokens.next()) {
                Some(v) => Ok(v),
                None => bail!("{what} needs a value"),
            }
        };
        match key.as_str() {
            "--progress" if !taken("progress") => {
                let v = value("--progress")?;
                own.progress = Some(
                    <ProgressMode as clap::ValueEnum>::from_str(&v, true).map_err(|_| {
                        anyhow!("--progress: expected auto, tty, plain, json or quiet, got {v:?}")
                    })?,
                );
            }
            "--json" if !taken("json") => own.json = true,
            "-o" | "--output" if !taken("output") => {
                own.output = Some(PathBuf::from(value("--output")?))
            }
            _ => rest.push(token),
        }
    }
    Ok((rest, own))
}

/// `check-links` and `check_links` both name the function `check_links`.
fn resolve_name(pipeline: &Pipeline, name: &str) -> Result<String> {
    let snake = name.replace('-', "_");
    if pipeline.function(&snake).is_ok() {
        return Ok(snake);
    }
    match pipeline.function(name) {
        Ok(_) => Ok(name.to_owned()),
        Err(kiln_starlark::Error::UnknownFunction { suggestions, .. }) => {
            let hint = match suggestions.as_slice() {
                [] => "run `kiln functions` to list them".to_owned(),
                names => format!(
                    "did you mean {}?",
                    names
                        .iter()
                        .map(|n| format!("`{}`", kebab(n)))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            };
            bail!("kiln.star has no function `{name}`: {hint}")
        }
        Err(e) => Err(e.into()),
    }
}

fn kebab(name: &str) -> String {
    name.replace('_', "-")
}

/// A command whose flags are the function's parameters, for parsing and
/// for `--help`.
fn function_command(info: &FunctionInfo) -> clap::Command {
    let mut cmd = clap::Command::new(format!("kiln call {}", kebab(&info.name)))
        .no_binary_name(true)
        .about(info.summary.clone())
        .disable_version_flag(true);
    if !info.doc.is_empty() {
        cmd = cmd.long_about(info.doc.clone());
    }
    for param in &info.params {
        let mut help = match &param.help {
            Some(text) => format!("{text} — {} ({})", param.ty.name(), param.ty.hint()),
            None => format!("{} ({})", param.ty.name(), param.ty.hint()),
        };
        match (&param.default, param.required) {
            (_, true) => help.push_str(" [required]"),
            (Some(default), false) => help.push_str(&format!(" [default: {default}]")),
            (None, false) => {}
        }
        let mut arg = Arg::new(param.name.clone())
            .long(param.flag.clone())
            .value_name(if param.ty.is_supported() {
                param.ty.name().to_uppercase()
            } else {
                "VALUE".into()
            })
            .help(help)
            .action(ArgAction::Append);
        if matches!(param.ty, ParamType::Bool) {
            arg = arg.num_args(0..=1).default_missing_value("true");
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

async fn print_output(
    output: &Output,
    dest: Option<&Path>,
    json: bool,
    function: &str,
) -> Result<()> {
    if let Some(dest) = dest {
        // Directories and files are what -o is mostly for; a container is
        // written as an image only when nothing else was returned.
        let mut exportable = exportables(output);
        if exportable
            .iter()
            .any(|o| !matches!(o, Output::Container(_)))
        {
            exportable.retain(|o| !matches!(o, Output::Container(_)));
        }
        match exportable.as_slice() {
            [one] => export(one, dest, function).await?,
            [] => bail!(
                "-o/--output: the function returned nothing to write (no Directory, File or Container)"
            ),
            _ => bail!(
                "-o/--output: the function returned {} directories/files/containers; return one to export it",
                exportable.len()
            ),
        }
    }
    if json {
        print_result(
            serde_json::json!({"event": "result", "ok": true, "value": to_json(output).await?}),
        );
        return Ok(());
    }
    print_human(output, dest.is_some()).await
}

fn exportables(output: &Output) -> Vec<&Output> {
    match output {
        Output::Directory(_) | Output::File(_) | Output::Container(_) => vec![output],
        Output::List(items) => items.iter().flat_map(exportables).collect(),
        _ => Vec::new(),
    }
}

async fn export(output: &Output, dest: &Path, function: &str) -> Result<()> {
    match output {
        Output::Container(c) => {
            // The image inside is named after the function, so `docker load`
            // lists it as e.g. `build:latest`.
            let name = format!("{}:latest", kebab(function));
            let digest = c.export_image(dest, &name).await?;
            eprintln!("image {name} {digest}");
        }
        Output::Directory(d) => {
            d.export(dest).await?;
        }
        Output::File(f) => {
            f.export(dest).await?;
        }
        _ => {}
    }
    eprintln!("wrote {}", dest.display());
    Ok(())
}

fn print_human<'a>(
    output: &'a Output,
    exported: bool,
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        match output {
            Output::None => {}
            Output::Str(s) => {
                print!("{s}");
                if !s.is_empty() && !s.ends_with('\n') {
                    println!();
                }
            }
            Output::Int(n) => println!("{n}"),
            Output::Bool(b) => println!("{b}"),
            Output::Other(s) => println!("{s}"),
            Output::Container(c) => {
                let config = c.config().await?;
                println!("Container {}", c.rootfs_digest().await?);
                println!("  workdir:    {}", config.workdir);
                println!("  user:       {}", config.user.as_deref().unwrap_or("root"));
                println!("  entrypoint: {:?}", config.entrypoint);
                println!("  cmd:        {:?}", config.cmd);
                for var in &config.env {
                    println!("  env:        {var}");
                }
            }
            Output::Directory(d) => {
                if !exported {
                    println!("Directory {}", d.digest().await?);
                    for entry in d.entries().await? {
                        println!("  {entry}");
                    }
                }
            }
            Output::File(f) => {
                if !exported {
                    let bytes = f.contents().await?;
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes)?;
                }
            }
            Output::List(items) => {
                for item in items {
                    print_human(item, exported).await?;
                }
            }
        }
        Ok(())
    })
}

fn to_json<'a>(output: &'a Output) -> futures::future::BoxFuture<'a, Result<serde_json::Value>> {
    Box::pin(async move {
        use serde_json::json;
        Ok(match output {
            Output::None => serde_json::Value::Null,
            Output::Str(s) => json!(s),
            Output::Int(n) => json!(n),
            Output::Bool(b) => json!(b),
            Output::Other(s) => json!(s),
            Output::Container(c) => {
                json!({"type": "Container", "rootfs": c.rootfs_digest().await?, "config": c.config().await?})
            }
            Output::Directory(d) => {
                json!({"type": "Directory", "digest": d.digest().await?, "entries": d.entries().await?})
            }
            Output::File(f) => json!({"type": "File", "digest": f.digest().await?}),
            Output::List(items) => {
                let mut values = Vec::new();
                for item in items {
                    values.push(to_json(item).await?);
                }
                serde_json::Value::Array(values)
            }
        })
    })
}
