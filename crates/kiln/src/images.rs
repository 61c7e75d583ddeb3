//! `kiln lock`, `kiln image pull/push/save` and `kiln registry login/logout`,
//! and the lock-file checks `kiln call`/`kiln run` make.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_engine::lockfile::lock_key;
use kiln_engine::{Engine, EngineOptions, ImagePolicy, LockFile, LOCK_FILE};
use kiln_starlark::{ImagePlan, Pipeline};

use crate::pipeline::{module_root, ModuleArg};

/// How to open an engine: what the global options say, before a command
/// adds its lock file.
#[derive(Clone, Debug)]
pub struct EngineSetup {
    pub store: PathBuf,
    pub runtime: PathBuf,
    pub registry: kiln_registry::RegistryOptions,
    pub offline: bool,
    /// Bounds on kiln.star evaluation.
    pub eval: kiln_starlark::EvalLimits,
    /// Show cached steps' output again (see `EngineOptions::replay_cached`).
    pub replay_cached: bool,
    /// Limits of steps that set none (`--memory`, `--cpus`, `--pids`,
    /// `--step-timeout`).
    pub default_limits: kiln_engine::Limits,
}

impl EngineSetup {
    pub fn with_limits(mut self, limits: kiln_engine::Limits) -> EngineSetup {
        self.default_limits = limits;
        self
    }

    /// An engine that runs things, resolving images under `lock`.
    pub fn open(&self, lock: LockFile, locked: bool) -> Result<Engine> {
        self.open_with(lock, locked, false)
    }

    /// An engine that only builds graphs (to learn what a pipeline uses).
    pub fn open_plan(&self) -> Result<Engine> {
        self.open_with(LockFile::default(), false, true)
    }

    fn open_with(&self, lock: LockFile, locked: bool, plan_only: bool) -> Result<Engine> {
        let started = std::time::Instant::now();
        let engine = Engine::open(EngineOptions {
            store: self.store.clone(),
            runtime: self.runtime.clone(),
            images: ImagePolicy {
                lock,
                locked,
                offline: self.offline,
                registry: self.registry.clone(),
            },
            plan_only,
            replay_cached: self.replay_cached,
            default_limits: self.default_limits,
            ..EngineOptions::default()
        })
        .with_context(|| format!("opening the engine (store {})", self.store.display()))?;
        tracing::debug!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            "opened the engine"
        );
        Ok(engine)
    }
}

/// The lock file of the pipeline at `root`, if there is one.
pub fn read_lock(root: &Path) -> Result<Option<LockFile>> {
    Ok(LockFile::load(&root.join(LOCK_FILE))?)
}

/// Evaluates the pipeline at `root` without running it and returns the
/// images it uses.
pub async fn plan(setup: &EngineSetup, root: &Path) -> Result<ImagePlan> {
    let engine = setup.open_plan()?;
    let handle = tokio::runtime::Handle::current();
    let root = root.to_owned();
    let eval = setup.eval;
    tokio::task::spawn_blocking(move || -> Result<ImagePlan> {
        let pipeline = Pipeline::load_with_limits(&root, engine, handle, eval)?;
        Ok(pipeline.plan_images()?)
    })
    .await?
}

/// The lock keys of a plan: tags, normalised. References that do not
/// parse are errors here, since they could never be pinned.
fn lock_keys(plan: &ImagePlan) -> Result<BTreeSet<String>> {
    let mut keys = BTreeSet::new();
    for reference in &plan.references {
        if let Err(e) = reference.parse::<kiln_oci::Reference>() {
            bail!("the pipeline uses an invalid image reference: {e}");
        }
        keys.extend(lock_key(reference));
    }
    Ok(keys)
}

/// `--locked`: the lock must exist and pin exactly the tags the pipeline
/// uses, so a run can neither resolve a tag nor carry a forgotten pin.
pub async fn check_locked(setup: &EngineSetup, root: &Path) -> Result<LockFile> {
    let path = root.join(LOCK_FILE);
    let Some(lock) = LockFile::load(&path)? else {
        bail!(
            "--locked: there is no {}; run `kiln lock` to create it",
            path.display()
        );
    };
    let plan = plan(setup, root).await?;
    let used = lock_keys(&plan)?;
    let pinned: BTreeSet<String> = lock.images.keys().cloned().collect();
    let missing: Vec<&String> = used.difference(&pinned).collect();
    let stale: Vec<&String> = pinned.difference(&used).collect();
    if !missing.is_empty() || !stale.is_empty() {
        let mut message = format!("--locked: {} does not match the pipeline", path.display());
        for reference in &missing {
            message.push_str(&format!("\n  not pinned: {reference}"));
        }
        for reference in &stale {
            message.push_str(&format!("\n  pinned but no longer used: {reference}"));
        }
        message.push_str("\nrun `kiln lock` to bring the lock file up to date");
        bail!(message);
    }
    Ok(lock)
}

/// After a run that was not `--locked`: tags the run resolved that the lock
/// file does not pin yet are added to it, the way a package manager adds a
/// new dependency to its lock file.
pub fn record_new_pins(engine: &Engine, root: &Path) -> Result<()> {
    let path = root.join(LOCK_FILE);
    let Some(mut lock) = LockFile::load(&path)? else {
        return Ok(());
    };
    let mut added = Vec::new();
    for (reference, digest) in engine.resolved_images() {
        if !lock.images.contains_key(&reference) {
            lock.images.insert(reference.clone(), digest.clone());
            added.push((reference, digest));
        }
    }
    if added.is_empty() {
        return Ok(());
    }
    lock.save(&path)?;
    for (reference, digest) in added {
        eprintln!("{LOCK_FILE}: pinned {reference} to {digest}");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct LockArgs {
    #[command(flatten)]
    pub module: ModuleArg,
    /// Move pins on purpose: re-resolve these references (all, when none is
    /// named) against their registries instead of keeping their digests.
    #[arg(long, num_args = 0.., value_name = "REF")]
    pub update: Option<Vec<String>>,
}

/// `kiln lock`: pins every image tag the pipeline uses.
pub async fn lock(setup: EngineSetup, args: LockArgs) -> Result<ExitCode> {
    let root = module_root(&args.module)?;
    let path = root.join(LOCK_FILE);
    let old = LockFile::load(&path)?.unwrap_or_default();
    let plan = plan(&setup, &root).await?;
    for (function, why) in &plan.incomplete {
        eprintln!(
            "note: evaluating `{function}` stopped early ({why}); images it names after that point are found only if written as literals"
        );
    }
    let used = lock_keys(&plan)?;
    let update: Option<BTreeSet<String>> = match &args.update {
        None => Some(BTreeSet::new()),
        Some(refs) if refs.is_empty() => None,
        Some(refs) => {
            let mut keys = BTreeSet::new();
            for reference in refs {
                let Some(key) = lock_key(reference) else {
                    bail!("--update {reference}: not a tag reference (a digest is already pinned)");
                };
                if !used.contains(&key) {
                    bail!("--update {reference}: the pipeline does not use {key}");
                }
                keys.insert(key);
            }
            Some(keys)
        }
    };
    // `None` means "update everything".
    let refresh = |key: &String| update.as_ref().is_none_or(|keys| keys.contains(key));
    let engine = setup.open(LockFile::default(), false)?;
    let mut new = LockFile::default();
    for key in &used {
        let digest = match old.images.get(key) {
            Some(digest) if !refresh(key) => digest.clone(),
            _ => {
                let engine = engine.clone();
                let key_owned = key.clone();
                // A new tag comes from the store if it is there; a pin being
                // moved always asks the registry.
                let fresh = args.update.is_some() && refresh(key);
                tokio::task::spawn_blocking(move || engine.resolve_tag(&key_owned, fresh))
                    .await?
                    .with_context(|| format!("resolving {key}"))?
            }
        };
        new.images.insert(key.clone(), digest);
    }
    let changes = describe_changes(&old.images, &new.images);
    if changes.is_empty() && path.exists() {
        eprintln!(
            "{} is up to date ({} images)",
            path.display(),
            new.images.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    new.save(&path)?;
    for line in &changes {
        eprintln!("{line}");
    }
    eprintln!("wrote {} ({} images)", path.display(), new.images.len());
    Ok(ExitCode::SUCCESS)
}

fn describe_changes(
    old: &BTreeMap<String, kiln_store::Digest>,
    new: &BTreeMap<String, kiln_store::Digest>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (reference, digest) in new {
        match old.get(reference) {
            None => lines.push(format!("+ {reference} {digest}")),
            Some(was) if was != digest => lines.push(format!("~ {reference} {was} -> {digest}")),
            Some(_) => {}
        }
    }
    for reference in old.keys().filter(|r| !new.contains_key(*r)) {
        lines.push(format!("- {reference}"));
    }
    lines
}

/// `kiln image pull REF`.
pub async fn pull(setup: EngineSetup, reference: String) -> Result<ExitCode> {
    let engine = setup.open(LockFile::default(), false)?;
    let renderer = crate::progress::spawn(&engine, crate::progress::ProgressMode::Auto, "pull");
    let result = {
        let engine = engine.clone();
        let reference = reference.clone();
        tokio::task::spawn_blocking(move || engine.pull_image(&reference)).await?
    };
    renderer.finish().await;
    let digest = result.with_context(|| format!("pulling {reference}"))?;
    println!("{reference}\t{digest}");
    Ok(ExitCode::SUCCESS)
}

/// `kiln image push SOURCE [TARGET]`.
pub async fn push(setup: EngineSetup, source: String, target: Option<String>) -> Result<ExitCode> {
    let engine = setup.open(LockFile::default(), false)?;
    let target = target.unwrap_or_else(|| source.clone());
    let digest = {
        let (source, target) = (source.clone(), target.clone());
        tokio::task::spawn_blocking(move || engine.push_image(&source, &target)).await?
    }
    .with_context(|| format!("pushing {source} to {target}"))?;
    println!("{target}\t{digest}");
    Ok(ExitCode::SUCCESS)
}

/// `kiln image save REF... -o FILE`.
pub async fn save(
    setup: EngineSetup,
    references: Vec<String>,
    output: PathBuf,
) -> Result<ExitCode> {
    let engine = setup.open(LockFile::default(), false)?;
    {
        let output = output.clone();
        let references = references.clone();
        tokio::task::spawn_blocking(move || engine.save_images(&references, &output)).await?
    }
    .with_context(|| format!("saving {} to {}", references.join(", "), output.display()))?;
    eprintln!("wrote {}", output.display());
    Ok(ExitCode::SUCCESS)
}

/// `kiln registry login HOST -u USER --password-stdin`.
pub async fn login(
    registry: kiln_registry::RegistryOptions,
    host: String,
    username: String,
    password_stdin: bool,
) -> Result<ExitCode> {
    let password = if password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from standard input")?;
        text.trim_end_matches(['\r', '\n']).to_owned()
    } else if let Ok(password) = std::env::var("KILN_REGISTRY_PASSWORD") {
        password
    } else {
        bail!("give the password on standard input with --password-stdin (or in KILN_REGISTRY_PASSWORD)");
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let host_owned = host.clone();
    tokio::task::spawn_blocking(move || {
        kiln_registry::blocking::login(&host_owned, &username, &password, &registry)
    })
    .await?
    .with_context(|| format!("logging in to {host}"))?;
    eprintln!("logged in to {host}");
    Ok(ExitCode::SUCCESS)
}

/// `kiln registry logout HOST`.
pub fn logout(registry: kiln_registry::RegistryOptions, host: String) -> Result<ExitCode> {
    let removed = kiln_registry::logout(&host, &registry)
        .with_context(|| format!("logging out of {host}"))?;
    if removed {
        eprintln!("logged out of {host}");
    } else {
        eprintln!("not logged in to {host}");
    }
    Ok(ExitCode::SUCCESS)
}
