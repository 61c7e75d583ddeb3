//! The solver: turns graph nodes into filesystem states, from the action
//! cache when it can, by running steps when it must.
//!
//! Every solved value is an [`FsState`]: a stack of immutable layers in the
//! store plus a path inside it (`/` for a container, the directory or file
//! path for the others). Operations that change a filesystem (exec, copying
//! a directory or file in, writing a new file, removing a path) produce one
//! new layer, and their result is recorded in the action cache under the
//! operation's key. A cache hit needs nothing but that record: the inputs
//! are not solved, no image is unpacked and no container runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt};
use kiln_graph::{
    Container, ContainerOp, Directory, DirectoryOp, Expect, File, FileOp, Key, KeyBuilder, Keyer,
    LeafKeys, SecretNode, Sharing,
};
use kiln_store::Digest;

use crate::config::{config_of, join_under, Mount};
use crate::engine::{lock, Inner};
use crate::error::{Error, Result, StepFailure, TAIL_LINES};
use crate::events::{Event, Outcome, Stream};

/// A solved value: layers (bottom first) and a path within them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FsState {
    pub layers: Vec<String>,
    pub path: String,
    /// The output of the most recent step in a container's chain.
    #[serde(default)]
    pub last_exec: Option<ExecOutput>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Digest,
    pub stderr: Digest,
}

pub(crate) type Solved = FsState;

impl FsState {
    fn root() -> FsState {
        FsState {
            layers: Vec::new(),
            path: "/".into(),
            last_exec: None,
        }
    }

    pub fn view(&self, inner: &Inner) -> kiln_fs::MergedView {
        kiln_fs::MergedView::new(
            self.layers
                .iter()
                .rev()
                .map(|id| inner.store.layer_path(id))
                .collect(),
        )
    }
}

/// Keys for one solve: leaves come from the store and the host.
pub(crate) struct Leaves {
    inner: Arc<Inner>,
}

impl LeafKeys for Leaves {
    type Error = Error;

    fn image(&mut self, reference: &str) -> Result<Key> {
        let image = self.inner.load_image(reference)?;
        Ok(KeyBuilder::new("image")
            .str(&image.manifest_digest.to_string())
            .finish())
    }

    fn host_directory(&mut self, path: &Path, filter: &kiln_graph::Filter) -> Result<Key> {
        // One snapshot per engine: every use of this directory in a run sees
        // the same files, and later terminal operations do not re-read them.
        Ok(Key(self.inner.host_snapshot(path, filter)?.digest))
    }

    fn secret(&mut self, secret: &SecretNode) -> Result<Key> {
        let value = self.inner.resolve_secret(secret)?;
        Ok(Key(*blake3::keyed_hash(
            self.inner.store.secret_salt(),
            &value,
        )
        .as_bytes()))
    }
}

/// The keys of every node reachable from what is being solved.
#[derive(Clone)]
pub(crate) struct Keys(Arc<Mutex<Keyer<Leaves>>>);

impl Keys {
    pub fn new(inner: Arc<Inner>) -> Keys {
        Keys(Arc::new(Mutex::new(Keyer::new(Leaves { inner }))))
    }
    pub fn container(&self, c: &Container) -> Result<Key> {
        lock(&self.0).container(c)
    }
    pub fn directory(&self, d: &Directory) -> Result<Key> {
        lock(&self.0).directory(d)
    }
    pub fn file(&self, f: &File) -> Result<Key> {
        lock(&self.0).file(f)
    }
    pub fn service(&self, s: &kiln_graph::Service) -> Result<Key> {
        lock(&self.0).service(s)
    }
}

/// What is being asked for.
#[derive(Clone)]
pub(crate) enum Target {
    Container(Container),
    Directory(Directory),
    File(File),
}

/// Solves one value: keys the graph (hashing host directories on a blocking
/// thread), then walks it.
pub(crate) async fn solve(inner: Arc<Inner>, target: Target) -> Result<Arc<FsState>> {
    if inner.plan_only {
        return Err(Error::PlanOnly {
            what: "solving".into(),
        });
    }
    inner.check_cancelled()?;
    let keys = Keys::new(inner.clone());
    let started = Instant::now();
    let keyed = {
        let keys = keys.clone();
        let target = target.clone();
        tokio::task::spawn_blocking(move || match &target {
            Target::Container(c) => keys.container(c).map(drop),
            Target::Directory(d) => keys.directory(d).map(drop),
            Target::File(f) => keys.file(f).map(drop),
        })
        .await?
    };
    keyed?;
    tracing::debug!(
        ms = started.elapsed().as_secs_f64() * 1e3,
        "keyed the graph"
    );
    let solver = Solver { inner, keys };
    match target {
        Target::Container(c) => solver.container(c).await,
        Target::Directory(d) => solver.directory(d).await,
        Target::File(f) => solver.file(f).await,
    }
}

#[derive(Clone)]
pub(crate) struct Solver {
    pub(crate) inner: Arc<Inner>,
    pub(crate) keys: Keys,
}

impl Solver {
    /// Runs `compute` once per key in this process: concurrent requests for
    /// the same value share one computation.
    fn memoized(
        &self,
        key: Result<Key>,
        compute: impl FnOnce(Key) -> BoxFuture<'static, Result<Arc<FsState>>>,
    ) -> BoxFuture<'static, Result<Arc<FsState>>> {
        let key = match key {
            Ok(k) => k,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let fut = {
            let mut memo = lock(&self.inner.memo);
            match memo.get(&key) {
                Some(existing) => existing.clone(),
                None => {
                    let shared = compute(key).shared();
                    memo.insert(key, shared.clone());
                    shared
                }
            }
        };
        let inner = self.inner.clone();
        async move {
            let result = fut.await;
            // A failure is not remembered: a later attempt may succeed
            // (a flaky network, a fixed input file).
            if result.is_err() {
                lock(&inner.memo).remove(&key);
            }
            result
        }
        .boxed()
    }

    pub(crate) fn container(&self, c: Container) -> BoxFuture<'static, Result<Arc<FsState>>> {
        // Limits share their parent's key (they are not part of any): solve
        // the parent, or the memo would have the node wait for itself.
        let mut c = c;
        while let ContainerOp::WithLimits { parent, .. } = &c.op {
            c = parent.clone();
        }
        let this = self.clone();

        self.memoized(self.keys.container(&c), move |key| {
            async move { this.container_uncached(c, key).await.map(Arc::new) }.boxed()
        })
    }

    async fn container_uncached(&self, c: Container, key: Key) -> Result<FsState> {
        match &c.op {
            ContainerOp::From { reference } => self.pull(reference).await,
            ContainerOp::Scratch => Ok(FsState::root()),
            ContainerOp::Exec {
                parent,
                args,
                expect,
            } => {
                let name = self.step_name(args);
                let (parent, args, expect) = (parent.clone(), args.clone(), *expect);
                let label = name.clone();
                self.cached(key, &label, async move {
                    self.exec(&c, parent, args, expect, key, &name).await
                })
                .await
            }
            ContainerOp::WithDirectory { parent, path, dir } => {
                let target = self.config(&c)?.absolute(path);
                let base = Base::Container(parent.clone());
                self.edit(
                    key,
                    base,
                    Place::Absolute(target),
                    Edit::CopyDirectory(dir.clone()),
                )
                .await
            }
            ContainerOp::WithFile { parent, path, file } => {
                let target = self.config(&c)?.absolute(path);
                let base = Base::Container(parent.clone());
                self.edit(
                    key,
                    base,
                    Place::Absolute(target),
                    Edit::CopyFile(file.clone()),
                )
                .await
            }
            ContainerOp::WithNewFile {
                parent,
                path,
                contents,
                mode,
            } => {
                let target = self.config(&c)?.absolute(path);
                let base = Base::Container(parent.clone());
                let edit = Edit::NewFile(contents.clone(), *mode);
                self.edit(key, base, Place::Absolute(target), edit).await
            }
            // Configuration only: the filesystem is the parent's.
            other => match other.parent() {
                Some(parent) => self.container(parent.clone()).await.map(|s| (*s).clone()),
                None => Ok(FsState::root()),
            },
        }
    }

    fn directory(&self, d: Directory) -> BoxFuture<'static, Result<Arc<FsState>>> {
        let this = self.clone();
        self.memoized(self.keys.directory(&d), move |key| {
            async move { this.directory_uncached(d, key).await.map(Arc::new) }.boxed()
        })
    }

    async fn directory_uncached(&self, d: Directory, key: Key) -> Result<FsState> {
        match &d.op {
            DirectoryOp::Host { path, filter } => self.host_directory(path, filter, key).await,
            DirectoryOp::Empty => Ok(FsState::root()),
            DirectoryOp::FromContainer { container, path } => {
                let path = self.config(container)?.absolute(path);
                let base = self.container(container.clone()).await?;
                self.subpath(&base, &path, Expected::Directory).await
            }
            DirectoryOp::Subdirectory { parent, path } => {
                let base = self.directory(parent.clone()).await?;
                let path = join_under(&base.path, path);
                self.subpath(&base, &path, Expected::Directory).await
            }
            DirectoryOp::WithDirectory { parent, path, dir } => {
                let base = Base::Directory(parent.clone());
                self.edit(
                    key,
                    base,
                    Place::Below(path.clone()),
                    Edit::CopyDirectory(dir.clone()),
                )
                .await
            }
            DirectoryOp::WithFile { parent, path, file } => {
                let base = Base::Directory(parent.clone());
                self.edit(
                    key,
                    base,
                    Place::Below(path.clone()),
                    Edit::CopyFile(file.clone()),
                )
                .await
            }
            DirectoryOp::WithNewFile {
                parent,
                path,
                contents,
                mode,
            } => {
                let base = Base::Directory(parent.clone());
                let edit = Edit::NewFile(contents.clone(), *mode);
                self.edit(key, base, Place::Below(path.clone()), edit).await
            }
            DirectoryOp::Without { parent, path } => {
                let base = Base::Directory(parent.clone());
                self.edit(key, base, Place::Below(path.clone()), Edit::Remove)
                    .await
            }
        }
    }

    /// One edit of a filesystem that yields one new layer: copying a
    /// directory or file in, writing a new file, removing a path. Cached
    /// under the operation's key like any step.
    ///
    /// Files copied from a host directory carry its mtimes, which the key
    /// leaves out (see [`carries_host_times`]). An edit of or with such
    /// files is reused only if it was built on the layers those inputs
    /// solve to now, so the steps after it see the host's current times
    /// rather than those of the run that first built it (a revert to an
    /// earlier version, a fresh checkout). Those inputs are solved before
    /// the cache is asked, and name the edit's layer.
    async fn edit(&self, key: Key, base: Base, place: Place, edit: Edit) -> Result<FsState> {
        let shown = match &place {
            Place::Absolute(p) | Place::Below(p) => p.clone(),
        };
        let name = match &edit {
            Edit::CopyDirectory(_) => format!("copy directory to {shown}"),
            Edit::CopyFile(_) => format!("copy file to {shown}"),
            Edit::NewFile(..) => format!("write file {shown}"),
            Edit::Remove => format!("remove {shown}"),
        };
        let base_has_times = match &base {
            Base::Container(c) => carries_host_times(Value::Container(c)),
            Base::Directory(d) => carries_host_times(Value::Directory(d)),
        };
        let source_has_times = match &edit {
            Edit::CopyDirectory(d) => carries_host_times(Value::Directory(d)),
            Edit::CopyFile(f) => carries_host_times(Value::File(f)),
            Edit::NewFile(..) | Edit::Remove => false,
        };
        let (early_base, early_source) = futures::try_join!(
            async {
                match base_has_times {
                    true => self.solve_base(&base).await.map(Some),
                    false => Ok(None),
                }
            },
            async {
                match source_has_times {
                    true => self.solve_source(&edit).await,
                    false => Ok(None),
                }
            },
        )?;
        let id = if early_base.is_none() && early_source.is_none() {
            format!("l-{}", key.to_hex())
        } else {
            let layers = |s: &Option<Arc<FsState>>| s.as_ref().map(|s| s.layers.clone());
            let mut b = KeyBuilder::new("edit-layer");
            b.key(&key);
            for solved in [layers(&early_base), layers(&early_source)] {
                b.bool(solved.is_some()).strs(&solved.unwrap_or_default());
            }
            format!("l-{}", b.finish().to_hex())
        };
        let expected = id.clone();
        let built_here = move |state: &FsState| state.layers.last() == Some(&expected);
        self.cached_if(key, &name.clone(), built_here, async {
            let (base, source) = futures::try_join!(
                async {
                    match early_base {
                        Some(solved) => Ok(solved),
                        None => self.solve_base(&base).await,
                    }
                },
                async {
                    match early_source {
                        Some(solved) => Ok(Some(solved)),
                        None => self.solve_source(&edit).await,
                    }
                },
            )?;
            let target = match place {
                Place::Absolute(p) => p,
                Place::Below(p) => join_under(&base.path, &p),
            };
            self.build_layer(
                key,
                id,
                &name,
                &base,
                move |inner, staged, base_view| match (edit, source) {
                    (Edit::CopyDirectory(_), Some(dir)) => {
                        let dest = prepare_target(base_view, staged, &target)?;
                        dir.view(inner).link_into(Path::new(&dir.path), &dest)?;
                        Ok(())
                    }
                    (Edit::CopyFile(_), Some(file)) => {
                        link_file(inner, &file, base_view, staged, &target)
                    }
                    (Edit::NewFile(contents, mode), _) => {
                        write_new_file(base_view, staged, &target, &contents, mode)
                    }
                    (Edit::Remove, _) => remove_path(base_view, staged, &target),
                    _ => Err(Error::Internal("edit solved without its source".into())),
                },
            )
            .await
        })
        .await
    }

    fn solve_base(&self, base: &Base) -> BoxFuture<'static, Result<Arc<FsState>>> {
        match base {
            Base::Container(c) => self.container(c.clone()),
            Base::Directory(d) => self.directory(d.clone()),
        }
    }

    /// The value an edit copies in, if it copies one.
    async fn solve_source(&self, edit: &Edit) -> Result<Option<Arc<FsState>>> {
        match edit {
            Edit::CopyDirectory(d) => self.directory(d.clone()).await.map(Some),
            Edit::CopyFile(f) => self.file(f.clone()).await.map(Some),
            Edit::NewFile(..) | Edit::Remove => Ok(None),
        }
    }

    fn file(&self, f: File) -> BoxFuture<'static, Result<Arc<FsState>>> {
        let this = self.clone();
        self.memoized(self.keys.file(&f), move |_| {
            async move {
                let state = match &f.op {
                    FileOp::FromContainer { container, path } => {
                        let path = this.config(container)?.absolute(path);
                        let base = this.container(container.clone()).await?;
                        this.subpath(&base, &path, Expected::File).await?
                    }
                    FileOp::FromDirectory { dir, path } => {
                        let base = this.directory(dir.clone()).await?;
                        let path = join_under(&base.path, path);
                        this.subpath(&base, &path, Expected::File).await?
                    }
                };
                Ok(Arc::new(state))
            }
            .boxed()
        })
    }

    /// A directory or file inside a solved state; checked to exist now so the
    /// error names the path rather than surfacing later in a copy.
    async fn subpath(&self, base: &FsState, path: &str, what: Expected) -> Result<FsState> {
        let state = FsState {
            layers: base.layers.clone(),
            path: path.to_owned(),
            last_exec: None,
        };
        let inner = self.inner.clone();
        let probe = state.clone();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let found = probe.view(&inner).lookup(Path::new(&probe.path))?;
            let what_name = what.name();
            match found {
                Some(loc) if loc.metadata.is_dir() == (what == Expected::Directory) => Ok(()),
                Some(_) => Err(Error::Invalid(format!("{path} is not a {what_name}"))),
                None => Err(Error::NotFound {
                    what: what_name,
                    path,
                }),
            }
        })
        .await??;
        Ok(state)
    }

    pub(crate) fn config(&self, c: &Container) -> Result<crate::config::RunConfig> {
        config_of(&self.inner, c)
    }

    /// Returns the cached result for `key` if it is complete and intact;
    /// otherwise computes it and records it.
    async fn cached<F>(&self, key: Key, name: &str, compute: F) -> Result<FsState>
    where
        F: std::future::Future<Output = Result<FsState>>,
    {
        self.cached_if(key, name, |_| true, compute).await
    }

    /// [`Solver::cached`], taking a record only if `usable` accepts it; one
    /// it refuses is replaced by the computed result.
    async fn cached_if<F, U>(&self, key: Key, name: &str, usable: U, compute: F) -> Result<FsState>
    where
        F: std::future::Future<Output = Result<FsState>>,
        U: FnOnce(&FsState) -> bool,
    {
        self.inner.check_cancelled()?;
        if let Some(state) = self.lookup(key).await?.filter(usable) {
            let step = self.inner.next_step();
            self.inner.emit(Event::Cached {
                step,
                name: name.to_owned(),
                key: key.short(),
            });
            // Only an exec's own record names its output: other operations
            // carry the last exec's output along unchanged.
            if self.inner.replay_cached && name.starts_with("exec ") {
                self.replay(step, &state).await;
            }
            return Ok(state);
        }
        let state = compute.await?;
        let started = Instant::now();
        let record = serde_json::to_vec(&state)
            .map_err(|e| Error::Internal(format!("encode cache record: {e}")))?;
        self.inner.store.ac_put(&key.to_hex(), &record)?;
        kiln_exec::phase_done(&key.short(), "record", started.elapsed());
        Ok(state)
    }

    /// Emits a cached step's kept output, so a log shows it whichever run
    /// or machine ran the step. Best effort: the result stands without it.
    async fn replay(&self, step: crate::events::StepId, state: &FsState) {
        let Some(out) = state.last_exec.clone() else {
            return;
        };
        for (stream, digest) in [(Stream::Stdout, out.stdout), (Stream::Stderr, out.stderr)] {
            let inner = self.inner.clone();
            let bytes =
                match tokio::task::spawn_blocking(move || inner.store.read_blob(&digest)).await {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot replay a cached step's output");
                        continue;
                    }
                    Err(_) => continue,
                };
            // Kept output was scrubbed when it ran; scrub again, since this
            // run may know secrets that one did not.
            let mut redactor = self.inner.redactor().stream();
            let emit = |data: Vec<u8>| {
                if !data.is_empty() {
                    self.inner.emit(Event::Output {
                        step,
                        stream,
                        data,
                        replayed: true,
                    });
                }
            };
            for chunk in bytes.chunks(64 << 10) {
                emit(redactor.push(chunk));
                if self.inner.output_backlogged() {
                    self.inner.output_drained().await;
                }
            }
            emit(redactor.finish());
        }
    }

    async fn lookup(&self, key: Key) -> Result<Option<FsState>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let hex = key.to_hex();
            let Some(record) = inner.store.ac_get(&hex)? else {
                return Ok(None);
            };
            let state: FsState = match serde_json::from_slice(&record) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(key = %key.short(), error = %e, "unreadable cache record dropped");
                    inner.store.ac_remove(&hex);
                    return Ok(None);
                }
            };
            // A record is only as good as what it points at: layers pruned or
            // output blobs damaged since make it a miss, and the step re-runs.
            let layers_present = state.layers.iter().all(|l| inner.store.has_layer(l));
            let outputs_intact = state.last_exec.as_ref().is_none_or(|out| {
                inner.store.verify_blob(&out.stdout).is_ok()
                    && inner.store.verify_blob(&out.stderr).is_ok()
            });
            if !(layers_present && outputs_intact) {
                tracing::info!(key = %key.short(), "cache record refers to missing data; recomputing");
                inner.store.ac_remove(&hex);
                return Ok(None);
            }
            for layer in &state.layers {
                inner.store.touch_layer(layer);
            }
            Ok(Some(state))
        })
        .await?
    }

    /// Builds one new layer on top of `base` in a staging directory, then
    /// commits it as `id` (derived from the operation's key).
    async fn build_layer<B>(
        &self,
        key: Key,
        id: String,
        name: &str,
        base: &FsState,
        build: B,
    ) -> Result<FsState>
    where
        B: FnOnce(&Inner, &Path, &kiln_fs::MergedView) -> Result<()> + Send + 'static,
    {
        let step = self.inner.next_step();
        let started = Instant::now();
        self.inner.emit(Event::Started {
            step,
            name: name.to_owned(),
            key: key.short(),
        });
        let inner = self.inner.clone();
        let base_for_build = base.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<String> {
            let staged = inner.store.stage_dir()?;
            let view = base_for_build.view(&inner);
            build(&inner, staged.path(), &view)?;
            inner.store.commit_layer(staged, &id)?;
            Ok(id)
        })
        .await
        .map_err(Error::from)
        .and_then(|r| r);
        self.finish(
            step,
            name,
            started,
            result.as_ref().map(|_| 0).map_err(|e| e.to_string()),
        );
        let id = result?;
        let mut state = base.clone();
        state.layers.push(id);
        Ok(state)
    }

    fn finish(
        &self,
        step: crate::events::StepId,
        name: &str,
        started: Instant,
        result: std::result::Result<i32, String>,
    ) {
        self.finish_ending(step, name, started, result, None);
    }

    /// [`Solver::finish`] for a step whose process ran: a failure says how
    /// it ended.
    fn finish_ending(
        &self,
        step: crate::events::StepId,
        name: &str,
        started: Instant,
        result: std::result::Result<i32, String>,
        ending: Option<crate::Ending>,
    ) {
        self.inner.emit(Event::Finished {
            step,
            name: name.to_owned(),
            duration: started.elapsed(),
            outcome: match result {
                Ok(exit_code) => Outcome::Succeeded { exit_code },
                Err(message) => Outcome::Failed { message, ending },
            },
        });
    }

    async fn pull(&self, reference: &str) -> Result<FsState> {
        self.inner.check_cancelled()?;
        let image = self.inner.load_image(reference)?;
        // One budget for the layers unpacked now, in parallel: their sum is
        // held to the image limit, not only each to the layer limit.
        let options = kiln_oci::UnpackOptions {
            image_budget: Some(kiln_oci::ImageBudget::new()),
            ..kiln_oci::UnpackOptions::default()
        };
        let mut unpacks = Vec::new();
        for layer in &image.layers {
            let options = options.clone();
            let inner = self.inner.clone();
            let layer = layer.clone();
            let reference = reference.to_owned();
            let this = self.clone();
            unpacks.push(async move {
                if inner.store.has_layer(layer.digest.hex()) {
                    inner.store.touch_layer(layer.digest.hex());
                    return Ok(layer.digest.hex().to_owned());
                }
                let name = format!("unpack {reference} layer {}", layer.digest.short());
                let step = inner.next_step();
                let started = Instant::now();
                inner.emit(Event::Started {
                    step,
                    name: name.clone(),
                    key: layer.digest.short().to_owned(),
                });
                let result = {
                    let inner = inner.clone();
                    let layer = layer.clone();
                    tokio::task::spawn_blocking(move || {
                        kiln_oci::ensure_unpacked_with(&inner.store, &layer, &options)
                    })
                    .await
                    .map_err(Error::from)
                    .and_then(|r| r.map_err(Error::from))
                };
                this.finish(
                    step,
                    &name,
                    started,
                    result.as_ref().map(|_| 0).map_err(|e| e.to_string()),
                );
                result.map(|_| layer.digest.hex().to_owned())
            });
        }
        let layers = futures::future::try_join_all(unpacks).await?;
        Ok(FsState {
            layers,
            path: "/".into(),
            last_exec: None,
        })
    }

    async fn host_directory(
        &self,
        path: &Path,
        filter: &kiln_graph::Filter,
        key: Key,
    ) -> Result<FsState> {
        // Keying took the snapshot; this is a lookup.
        let tree = self.inner.host_snapshot(path, filter)?;
        // The key is content only, but the layer carries the host's mtimes
        // (make and cargo compare them with outputs kept in cache volumes),
        // so the layer is named by both: the same content with other times
        // (a revert, a fresh checkout) gets its own layer instead of one
        // holding the times of an earlier load. Read once per engine: this
        // solve is memoized by key.
        let times = {
            let tree = tree.clone();
            tokio::task::spawn_blocking(move || kiln_fs::read_host_times(&tree)).await??
        };
        let id = format!("h-{}-{}", hex::encode(tree.digest), times.digest_hex());
        if self.inner.store.has_layer(&id) {
            self.inner.store.touch_layer(&id);
        } else {
            let mut name = format!("load host directory {}", path.display());
            if !filter.include.is_empty() {
                name.push_str(&format!(" (include {})", filter.include.join(", ")));
            }
            if !filter.exclude.is_empty() {
                name.push_str(&format!(" (exclude {})", filter.exclude.join(", ")));
            }
            let step = self.inner.next_step();
            let started = Instant::now();
            self.inner.emit(Event::Started {
                step,
                name: name.clone(),
                key: key.short(),
            });
            let inner = self.inner.clone();
            let layer_id = id.clone();
            let result = tokio::task::spawn_blocking(move || -> Result<()> {
                let staged = inner.store.stage_dir()?;
                kiln_fs::materialize_host_tree_linked(
                    &tree,
                    &times,
                    staged.path(),
                    &inner.store.files_dir(),
                )?;
                inner.store.commit_layer(staged, &layer_id)?;
                Ok(())
            })
            .await
            .map_err(Error::from)
            .and_then(|r| r);
            self.finish(
                step,
                &name,
                started,
                result.as_ref().map(|_| 0).map_err(|e| e.to_string()),
            );
            result?;
        }
        Ok(FsState {
            layers: vec![id],
            path: "/".into(),
            last_exec: None,
        })
    }

    pub(crate) fn step_name(&self, args: &[String]) -> String {
        let mut name = String::from("exec");
        for arg in args {
            name.push(' ');
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c))
            {
                name.push('\'');
                name.push_str(&arg.replace('\'', r"'\''"));
                name.push('\'');
            } else {
                name.push_str(arg);
            }
        }
        let name = self.inner.redactor().redact_str(&name);
        truncate(&name, 160)
    }

    async fn exec(
        &self,
        c: &Container,
        parent: Container,
        args: Vec<String>,
        expect: Expect,
        key: Key,
        name: &str,
    ) -> Result<FsState> {
        if args.is_empty() {
            return Err(Error::Invalid(
                "with_exec needs at least one argument".into(),
            ));
        }
        let cfg = self.config(c)?;
        let limits = cfg.effective_limits(self.inner.default_limits);
        let base = self.container(parent).await?;
        let inner = self.inner.clone();

        // Inputs first (they may run steps of their own), then services,
        // then a slot.
        let inputs_started = Instant::now();
        let inputs = self.run_inputs(&cfg).await?;
        let (network, services) = self.network_of(&cfg).await?;
        let inputs_took = inputs_started.elapsed();

        // A cancelled engine starts nothing, even a step that was waiting.
        let _slot = tokio::select! {
            biased;
            cancelled = inner.cancelled() => return Err(cancelled),
            slot = inner.steps.acquire() => {
                slot.map_err(|_| Error::Internal("step slots closed".into()))?
            }
        };
        let stage_started = Instant::now();
        let upper = inner.store.stage_dir()?;
        let work = inner.store.stage_dir()?;
        let step = inner.next_step();
        let started = Instant::now();
        inner.emit(Event::Started {
            step,
            name: name.to_owned(),
            key: key.short(),
        });
        let spec = self.run_spec(RunParts {
            base: &base,
            inputs: &inputs,
            cfg: &cfg,
            args: args.clone(),
            limits: &limits,
            network,
            upper: upper.path(),
            work: work.path(),
        });
        let container = spec.container_id.clone();
        let capture = Arc::new(Mutex::new(Capture::new(inner.redactor(), &inner.store)));
        kiln_exec::phase_done(&container, "stage", stage_started.elapsed());
        kiln_exec::phase_done(&container, "inputs", inputs_took);
        let sink = {
            let capture = capture.clone();
            let inner = inner.clone();
            move |stream: kiln_exec::OutputStream, bytes: &[u8]| {
                let stream = match stream {
                    kiln_exec::OutputStream::Stdout => Stream::Stdout,
                    kiln_exec::OutputStream::Stderr => Stream::Stderr,
                };
                let live = lock(&capture).push(stream, bytes);
                for (stream, data) in live {
                    inner.emit(Event::Output {
                        step,
                        stream,
                        data,
                        replayed: false,
                    });
                }
                if inner.output_backlogged() {
                    let inner = inner.clone();
                    let wait: kiln_exec::Backpressure =
                        Some(Box::pin(async move { inner.output_drained().await }));
                    return wait;
                }
                None
            }
        };
        // Cancelling drops the run future, which kills the container and
        // tears its mounts down before the select returns.
        let status = tokio::select! {
            status = inner.runtime.run(spec, sink) => Some(status),
            _ = inner.cancelled() => None,
        };
        let captured = {
            let rest = lock(&capture).finish();
            for (stream, data) in rest {
                inner.emit(Event::Output {
                    step,
                    stream,
                    data,
                    replayed: false,
                });
            }
            // The sink went with the run future: this is the last handle.
            match Arc::try_unwrap(capture) {
                Ok(capture) => capture.into_inner().unwrap_or_else(|p| p.into_inner()),
                Err(_) => {
                    return Err(Error::Invalid(
                        "internal error: step output still in use after the step".into(),
                    ))
                }
            }
        };
        drop(inputs);
        drop(work);
        let Some(status) = status else {
            self.finish_ending(
                step,
                name,
                started,
                Err("cancelled".into()),
                Some(crate::Ending::Cancelled),
            );
            return Err(Error::Cancelled);
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let e = Error::from(e);
                let message = inner.redactor().redact_str(&e.to_string());
                self.finish(step, name, started, Err(message.clone()));
                return Err(Error::Invalid(message));
            }
        };
        let exit_code = status
            .code
            .unwrap_or_else(|| 128 + status.signal.unwrap_or(0));
        // A step kiln killed (timeout) or the kernel did (OOM) failed,
        // whatever was expected of its exit status.
        let killed = status.timed_out || status.oom_killed;
        let as_expected = match expect {
            Expect::Success => status.success() && !killed,
            Expect::Failure => !status.success() && !killed,
            Expect::Any => !killed,
        };
        if !as_expected {
            let ending = ending_of(&status, &limits);
            let failure = StepFailure {
                command: name.trim_start_matches("exec ").to_owned(),
                exit_code: status.code,
                signal: status.signal,
                ending: ending.clone(),
                expected: expect,
                output_tail: tail_lines(&captured.tail(), TAIL_LINES),
                services: services.iter().filter_map(|s| s.ended_note()).collect(),
            };
            let err = Error::StepFailed(Arc::new(failure));
            self.finish_ending(step, name, started, Err(err.to_string()), Some(ending));
            return Err(err);
        }
        let committed = {
            let inner = inner.clone();
            let id = format!("x-{}", key.to_hex());
            let container = container.clone();
            tokio::task::spawn_blocking(move || -> Result<(String, Digest, Digest)> {
                let started = Instant::now();
                inner.store.commit_layer(upper, &id)?;
                kiln_exec::phase_done(&container, "commit", started.elapsed());
                let started = Instant::now();
                let (stdout, stderr) = captured.store(&inner.store)?;
                kiln_exec::phase_done(&container, "outputs", started.elapsed());
                Ok((id, stdout, stderr))
            })
            .await
            .map_err(Error::from)
            .and_then(|r| r)
        };
        self.finish(
            step,
            name,
            started,
            committed
                .as_ref()
                .map(|_| exit_code)
                .map_err(|e| e.to_string()),
        );
        let (layer, stdout, stderr) = committed?;
        let mut layers = base.layers.clone();
        layers.push(layer);
        Ok(FsState {
            layers,
            path: "/".into(),
            last_exec: Some(ExecOutput {
                exit_code,
                stdout,
                stderr,
            }),
        })
    }
}

impl Solver {
    /// The mounts and environment of a run: cache volumes (locked if need
    /// be), copies of mounted directories, secret files and variables.
    pub(crate) async fn run_inputs(&self, cfg: &crate::config::RunConfig) -> Result<RunInputs> {
        let inner = &self.inner;
        let mut binds = Vec::new();
        let mut keep_alive: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
        let scratch = RunScratch::new(inner)?;
        for mount in &cfg.mounts {
            match mount {
                Mount::Cache {
                    path,
                    volume,
                    sharing,
                } => {
                    let dir = inner.store.volume_dir(&volume.name)?;
                    if *sharing == Sharing::Locked {
                        let inner = inner.clone();
                        let name = volume.name.clone();
                        keep_alive.push(Box::new(
                            tokio::task::spawn_blocking(move || inner.store.lock_volume(&name))
                                .await??,
                        ));
                    }
                    binds.push(kiln_exec::BindMount {
                        source: dir,
                        target: path.clone(),
                        readonly: false,
                    });
                }
                Mount::Directory { path, dir } => {
                    let state = self.directory(dir.clone()).await?;
                    // A copy, not links: the step may write through the mount,
                    // and must not reach the store's immutable layers.
                    let copy = inner.store.stage_dir()?;
                    let dest = copy.path().join("d");
                    let view_inner = inner.clone();
                    let dest_for_copy = dest.clone();
                    tokio::task::spawn_blocking(move || {
                        kiln_fs::export_dir(
                            &state.view(&view_inner),
                            Path::new(&state.path),
                            &dest_for_copy,
                        )
                    })
                    .await??;
                    binds.push(kiln_exec::BindMount {
                        source: dest,
                        target: path.clone(),
                        readonly: false,
                    });
                    keep_alive.push(Box::new(copy));
                }
                Mount::Secret { path, secret } => {
                    let value = inner.resolve_secret(secret)?;
                    let file = scratch.write_secret(&value)?;
                    binds.push(kiln_exec::BindMount {
                        source: file,
                        target: path.clone(),
                        readonly: true,
                    });
                }
            }
        }
        let mut env: Vec<String> = cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (var, secret) in &cfg.secret_env {
            let value = inner.resolve_secret(secret)?;
            env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
        }
        Ok(RunInputs {
            binds,
            env,
            scratch,
            _keep_alive: keep_alive,
        })
    }

    /// The runtime's spec of one run.
    pub(crate) fn run_spec(&self, parts: RunParts<'_>) -> kiln_exec::RunSpec {
        let RunParts {
            base,
            inputs,
            cfg,
            args,
            limits,
            network,
            upper,
            work,
        } = parts;
        let inner = &self.inner;
        kiln_exec::RunSpec {
            // Unique in the process, not only in this engine: a runner runs
            // several jobs at once, each on its own engine.
            container_id: format!("kiln-{}-{}", std::process::id(), next_container()),
            bundle_dir: inputs.scratch.bundle.clone(),
            lower_layers: {
                let stack: Vec<PathBuf> = base
                    .layers
                    .iter()
                    .map(|l| inner.store.layer_path(l))
                    .collect();
                // A layer whose root is opaque hides all below it; overlayfs
                // ignores that mark on a lower's root, so they are left out.
                kiln_oci::visible_layers(&stack)
                    .iter()
                    .rev()
                    .cloned()
                    .collect()
            },
            upper_dir: upper.to_owned(),
            work_dir: work.to_owned(),
            args,
            env: inputs.env.clone(),
            cwd: cfg.workdir.clone(),
            user: cfg.user.clone(),
            network,
            mounts: inputs.binds.clone(),
            hostname: cfg.hostname.clone(),
            limits: kiln_exec::StepLimits {
                pids: match limits.pids {
                    Some(n) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
                    None => kiln_exec::StepLimits::default().pids,
                },
                memory: limits.memory_bytes,
                cpu_millis: limits.cpu_millis,
            },
            rlimits: cfg
                .ulimits
                .iter()
                .map(|(name, soft, hard)| kiln_exec::Rlimit {
                    name: name.clone(),
                    soft: *soft,
                    hard: *hard,
                })
                .collect(),
            timeout: limits.timeout,
        }
    }
}

/// What [`Solver::run_inputs`] prepared, held until the run ends.
pub(crate) struct RunInputs {
    pub binds: Vec<kiln_exec::BindMount>,
    /// `KEY=VALUE`, secret values included: never log it.
    pub env: Vec<String>,
    pub scratch: RunScratch,
    /// Volume locks and directory copies.
    _keep_alive: Vec<Box<dyn std::any::Any + Send>>,
}

/// The parts of [`Solver::run_spec`].
pub(crate) struct RunParts<'a> {
    pub base: &'a FsState,
    pub inputs: &'a RunInputs,
    pub cfg: &'a crate::config::RunConfig,
    pub args: Vec<String>,
    pub limits: &'a kiln_graph::Limits,
    pub network: kiln_exec::Network,
    pub upper: &'a Path,
    pub work: &'a Path,
}

/// What the events and the failure say about how a step's process ended.
fn ending_of(status: &kiln_exec::ExitStatus, limits: &kiln_graph::Limits) -> crate::Ending {
    if status.timed_out {
        return crate::Ending::TimedOut {
            timeout_s: limits.timeout.map_or(0.0, |t| t.as_secs_f64()),
        };
    }
    if status.oom_killed {
        return crate::Ending::OomKilled {
            memory_limit_bytes: limits.memory_bytes.unwrap_or(0),
            exit_code: status.code,
            signal: status.signal,
        };
    }
    match (status.code, status.signal) {
        (_, Some(signal)) => crate::Ending::Signaled { signal },
        (Some(exit_code), None) => crate::Ending::Exited { exit_code },
        (None, None) => crate::Ending::Exited { exit_code: -1 },
    }
}

/// A number no other step of this process has had: container ids must be
/// unique among every engine the process opened.
fn next_container() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Per-step scratch space on tmpfs: the runtime bundle (whose config.json
/// holds secret environment values) and mounted secret files. tmpfs means
/// neither ever reaches the store's disk; the directory goes with the step.
pub(crate) struct RunScratch {
    root: PathBuf,
    bundle: PathBuf,
    secrets: Mutex<u32>,
    // Held while the step lives; a free lock marks the scratch as stale.
    _lock: kiln_store::FileLock,
}

impl RunScratch {
    fn new(inner: &Inner) -> Result<RunScratch> {
        let runs = runs_root(&inner.store);
        let io = |what: &str, path: &Path, e: std::io::Error| {
            Error::Invalid(format!("{what} {}: {e}", path.display()))
        };
        // /dev/shm is world-writable: both levels must be ours and closed,
        // or another user could plant the directory and read step secrets.
        if let Some(parent) = runs.parent() {
            kiln_store::ensure_private_dir(parent)?;
        }
        kiln_store::ensure_private_dir(&runs)?;
        // Built and locked under a hidden name, then renamed into view, so
        // a cleaner never sees a live scratch without its lock.
        let hidden = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&runs)
            .map_err(|e| io("create run directory in", &runs, e))?
            .keep();
        let lock = kiln_store::FileLock::exclusive(&hidden.join(".lock"))?;
        let name = hidden
            .file_name()
            .map(|n| n.to_string_lossy().replacen(".new-", "run-", 1))
            .unwrap_or_default();
        let root = runs.join(name);
        std::fs::rename(&hidden, &root).map_err(|e| io("create", &root, e))?;
        let bundle = root.join("bundle");
        std::fs::create_dir(&bundle).map_err(|e| io("create", &bundle, e))?;
        Ok(RunScratch {
            root,
            bundle,
            secrets: Mutex::new(0),
            _lock: lock,
        })
    }

    fn write_secret(&self, value: &[u8]) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let n = {
            let mut count = lock(&self.secrets);
            *count += 1;
            *count
        };
        let path = self.root.join(format!("secret-{n}"));
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o400)
            .open(&path)
            .map_err(|e| Error::Invalid(format!("create secret file {}: {e}", path.display())))?;
        file.write_all(value)
            .map_err(|e| Error::Invalid(format!("write secret file {}: {e}", path.display())))?;
        Ok(path)
    }
}

impl Drop for RunScratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(path = %self.root.display(), error = %e, "could not remove step scratch");
        }
    }
}

/// Removes the scratch of steps whose process was killed: the runtime
/// stops and unmounts their container, then the scratch (bundle, secret
/// files) goes. Returns how many were cleaned.
pub(crate) fn cleanup_stale_runs(
    store: &kiln_store::Store,
    runtime: &kiln_exec::Runtime,
) -> Result<usize> {
    let runs = runs_root(store);
    let Ok(entries) = std::fs::read_dir(&runs) else {
        return Ok(0);
    };
    let mut cleaned = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("run-") {
            continue;
        }
        if !kiln_store::FileLock::try_exclusive_existing(&path.join(".lock"))? {
            continue;
        }
        // Only remove the scratch once its container is gone and its rootfs
        // unmounted: removing through a live mount would be wrong.
        runtime.cleanup_stale(&path)?;
        std::fs::remove_dir_all(&path).map_err(|e| {
            Error::Invalid(format!("remove stale step scratch {}: {e}", path.display()))
        })?;
        cleaned += 1;
    }
    Ok(cleaned)
}

/// Where step bundles live: tmpfs when the machine has one, one directory
/// per store so stale-step cleanup only touches this store's containers.
pub(crate) fn runs_root(store: &kiln_store::Store) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let id = blake3::hash(store.root().as_os_str().as_encoded_bytes()).to_hex();
        shm.join("kiln").join(&id[..16])
    } else {
        store.runs_dir()
    }
}

/// How much of a step's output (per stream) is kept for the cache and for
/// `stdout()`: output beyond it still streams live, but is not stored.
pub(crate) fn kept_output_limit() -> u64 {
    const DEFAULT: u64 = 64 << 20;
    match std::env::var(KEPT_OUTPUT_ENV) {
        Ok(v) => v.trim().parse::<u64>().ok().filter(|n| *n > 0).unwrap_or_else(|| {
            tracing::warn!(value = %v, "{KEPT_OUTPUT_ENV} is not a positive byte count; using {DEFAULT}");
            DEFAULT
        }),
        Err(_) => DEFAULT,
    }
}

pub(crate) const KEPT_OUTPUT_ENV: &str = "KILN_STEP_OUTPUT_LIMIT";

/// The interleaved output kept for a failure's tail: enough for the last
/// [`TAIL_LINES`] lines of ordinary output, whatever the output's size.
const TAIL_BYTES: usize = 64 << 10;

/// One stream's kept output: a file in the store's staging area, up to
/// `limit` bytes, hashed as it is written. The file is made with the first
/// byte, so a silent step costs no file at all.
struct KeptStream {
    staging: PathBuf,
    file: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
    digest: kiln_store::DigestWriter,
    kept: u64,
    limit: u64,
    cut: bool,
    error: Option<std::io::Error>,
}

impl KeptStream {
    fn new(staging: PathBuf, limit: u64) -> KeptStream {
        KeptStream {
            staging,
            file: None,
            digest: kiln_store::DigestWriter::default(),
            kept: 0,
            limit,
            cut: false,
            error: None,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        if self.error.is_some() {
            return;
        }
        let file = match self.file.as_mut() {
            Some(file) => file,
            None => match tempfile::Builder::new()
                .prefix("out-")
                .tempfile_in(&self.staging)
            {
                Ok(file) => self
                    .file
                    .insert(std::io::BufWriter::with_capacity(64 << 10, file)),
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            },
        };
        match file.write_all(bytes) {
            Ok(()) => self.digest.update(bytes),
            Err(e) => self.error = Some(e),
        }
    }

    /// Keeps what fits; returns the notice to show when the limit is hit.
    fn keep(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.cut || self.error.is_some() {
            return None;
        }
        let room = (self.limit - self.kept).min(bytes.len() as u64) as usize;
        self.write(&bytes[..room]);
        if self.error.is_some() {
            return None;
        }
        self.kept += room as u64;
        if room == bytes.len() {
            return None;
        }
        self.cut = true;
        let notice = format!(
            "\n[kiln: this step's output passed {} bytes; the rest is shown live but not kept (set {KEPT_OUTPUT_ENV} to keep more)]\n",
            self.limit
        );
        self.write(notice.as_bytes());
        Some(notice.into_bytes())
    }

    /// Puts what was kept in the store as a blob, by renaming its file
    /// (see [`kiln_store::Store::adopt_blob`]); an empty stream is the empty
    /// blob, written once per store.
    fn into_blob(mut self, store: &kiln_store::Store) -> Result<Digest> {
        let io = |e: std::io::Error| Error::Invalid(format!("keeping step output: {e}"));
        if let Some(e) = self.error.take() {
            return Err(io(e));
        }
        let digest = self.digest.finish();
        match self.file {
            None => {
                // An empty file is the empty blob's only possible content.
                if store.blob_size(&digest) != Some(0) {
                    store.put_blob(b"")?;
                }
            }
            Some(file) => {
                let file = file.into_inner().map_err(|e| io(e.into_error()))?;
                let path = file.into_temp_path();
                store.adopt_blob(&path, &digest)?;
                // Renamed away: nothing is left for the guard to remove.
                let _ = path.keep();
            }
        }
        Ok(digest)
    }
}

/// A step's output as captured: scrubbed per stream, written to a file per
/// stream (memory stays bounded whatever the output's size), and the last
/// bytes of both interleaved for the failure tail.
pub(crate) struct Capture {
    redactors: Option<(kiln_scrub::StreamRedactor, kiln_scrub::StreamRedactor)>,
    stdout: KeptStream,
    stderr: KeptStream,
    tail: std::collections::VecDeque<u8>,
}

impl Capture {
    pub(crate) fn new(redactor: kiln_scrub::Redactor, store: &kiln_store::Store) -> Capture {
        let limit = kept_output_limit();
        let staging = store.staging_root().to_owned();
        Capture {
            redactors: Some((redactor.stream(), redactor.stream())),
            stdout: KeptStream::new(staging.clone(), limit),
            stderr: KeptStream::new(staging, limit),
            tail: std::collections::VecDeque::new(),
        }
    }

    /// Scrubs a chunk and keeps it; returns what to show live (the chunk,
    /// then a notice if it passed the kept-output limit).
    pub(crate) fn push(&mut self, stream: Stream, bytes: &[u8]) -> Vec<(Stream, Vec<u8>)> {
        let Some((out, err)) = self.redactors.as_mut() else {
            return Vec::new();
        };
        let clean = match stream {
            Stream::Stdout => out.push(bytes),
            Stream::Stderr => err.push(bytes),
        };
        self.record(stream, clean)
    }

    fn record(&mut self, stream: Stream, clean: Vec<u8>) -> Vec<(Stream, Vec<u8>)> {
        let mut live = Vec::new();
        if clean.is_empty() {
            return live;
        }
        let notice = match stream {
            Stream::Stdout => self.stdout.keep(&clean),
            Stream::Stderr => self.stderr.keep(&clean),
        };
        self.tail.extend(&clean);
        if self.tail.len() > TAIL_BYTES {
            let excess = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..excess);
        }
        live.push((stream, clean));
        if let Some(notice) = notice {
            live.push((Stream::Stderr, notice));
        }
        live
    }

    pub(crate) fn finish(&mut self) -> Vec<(Stream, Vec<u8>)> {
        let Some((out, err)) = self.redactors.take() else {
            return Vec::new();
        };
        let mut rest = self.record(Stream::Stdout, out.finish());
        rest.extend(self.record(Stream::Stderr, err.finish()));
        rest
    }

    pub(crate) fn tail(&self) -> Vec<u8> {
        self.tail.iter().copied().collect()
    }

    /// Puts both streams in the store as blobs.
    fn store(self, store: &kiln_store::Store) -> Result<(Digest, Digest)> {
        Ok((self.stdout.into_blob(store)?, self.stderr.into_blob(store)?))
    }
}

pub(crate) fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn parent_of(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => path[..i].to_owned(),
    }
}

/// What a path inside a solved value must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expected {
    Directory,
    File,
}

impl Expected {
    fn name(self) -> &'static str {
        match self {
            Expected::Directory => "directory",
            Expected::File => "file",
        }
    }
}

/// A value of the graph, for walks over it.
#[derive(Clone, Copy)]
enum Value<'a> {
    Container(&'a Container),
    Directory(&'a Directory),
    File(&'a File),
}

/// Whether a value holds files copied from a host directory with no step
/// in between. Those files carry the host's mtimes, which keys leave out,
/// so edits of or with such values are checked against the layers their
/// inputs solve to now (see [`Solver::edit`]). A step ends the walk: its
/// result is cached by content, with the times its inputs had when it ran
/// (README, "File times"). Past a bound the answer is yes, since checking
/// costs some solving, never a wrong result; the bound also keeps shared
/// subgraphs from being walked once per path to them.
fn carries_host_times(start: Value<'_>) -> bool {
    const BOUND: usize = 1024;
    let mut todo = vec![start];
    let mut walked = 0;
    while let Some(value) = todo.pop() {
        walked += 1;
        if walked > BOUND {
            return true;
        }
        match value {
            Value::Container(c) => match &c.op {
                ContainerOp::Exec { .. } | ContainerOp::From { .. } | ContainerOp::Scratch => {}
                ContainerOp::WithDirectory { parent, dir, .. } => {
                    todo.extend([Value::Directory(dir), Value::Container(parent)]);
                }
                ContainerOp::WithFile { parent, file, .. } => {
                    todo.extend([Value::File(file), Value::Container(parent)]);
                }
                // Configuration, mounts included (a mounted directory is
                // copied at run time from its current solve), and new
                // files: the filesystem is the parent's plus nothing from
                // the host.
                other => todo.extend(other.parent().map(Value::Container)),
            },
            Value::Directory(d) => match &d.op {
                DirectoryOp::Host { .. } => return true,
                DirectoryOp::Empty => {}
                DirectoryOp::FromContainer { container, .. } => {
                    todo.push(Value::Container(container));
                }
                DirectoryOp::Subdirectory { parent, .. }
                | DirectoryOp::WithNewFile { parent, .. }
                | DirectoryOp::Without { parent, .. } => todo.push(Value::Directory(parent)),
                DirectoryOp::WithDirectory { parent, dir, .. } => {
                    todo.extend([Value::Directory(dir), Value::Directory(parent)]);
                }
                DirectoryOp::WithFile { parent, file, .. } => {
                    todo.extend([Value::File(file), Value::Directory(parent)]);
                }
            },
            Value::File(f) => match &f.op {
                FileOp::FromContainer { container, .. } => todo.push(Value::Container(container)),
                FileOp::FromDirectory { dir, .. } => todo.push(Value::Directory(dir)),
            },
        }
    }
    false
}

/// What an edit starts from.
enum Base {
    Container(Container),
    Directory(Directory),
}

/// Where an edit lands: an absolute container path, or a path below the
/// base directory's own path.
enum Place {
    Absolute(String),
    Below(String),
}

enum Edit {
    CopyDirectory(Directory),
    CopyFile(File),
    NewFile(Vec<u8>, u32),
    Remove,
}

fn remove_path(base: &kiln_fs::MergedView, staged: &Path, target: &str) -> Result<()> {
    if base.lookup(Path::new(target))?.is_none() {
        return Ok(());
    }
    let dir = prepare_target(base, staged, &parent_of(target))?;
    let name = Path::new(target)
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("cannot remove {target}")))?;
    kiln_fs::write_whiteout(&dir.join(name))?;
    Ok(())
}

/// Creates `target` and its ancestors inside a staged layer, giving each the
/// mode and owner it has in the layers below, so that adding content under
/// an existing directory does not change that directory's attributes.
fn prepare_target(base: &kiln_fs::MergedView, staged: &Path, target: &str) -> Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut container_path = PathBuf::from("/");
    let mut host_path = staged.to_path_buf();
    for part in target.split('/').filter(|p| !p.is_empty()) {
        container_path.push(part);
        host_path.push(part);
        if host_path.is_dir() {
            continue;
        }
        std::fs::create_dir(&host_path)
            .map_err(|e| Error::Invalid(format!("create {}: {e}", container_path.display())))?;
        let below = base
            .lookup(&container_path)?
            .filter(|l| l.metadata.is_dir());
        let (mode, uid, gid) = below
            .map(|l| {
                (
                    l.metadata.mode() & 0o7777,
                    l.metadata.uid(),
                    l.metadata.gid(),
                )
            })
            .unwrap_or((0o755, 0, 0));
        std::fs::set_permissions(&host_path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::Invalid(format!("chmod {}: {e}", container_path.display())))?;
        if rustix::process::geteuid().is_root() {
            let _ = std::os::unix::fs::lchown(&host_path, Some(uid), Some(gid));
        }
    }
    Ok(host_path)
}

fn link_file(
    inner: &Inner,
    file: &FsState,
    base: &kiln_fs::MergedView,
    staged: &Path,
    target: &str,
) -> Result<()> {
    let source = file
        .view(inner)
        .lookup(Path::new(&file.path))?
        .ok_or_else(|| Error::NotFound {
            what: "file",
            path: file.path.clone(),
        })?;
    let dest_dir = prepare_target(base, staged, &parent_of(target))?;
    let name = Path::new(target)
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{target} is not a file path")))?;
    let dest = dest_dir.join(name);
    if std::fs::hard_link(&source.host_path, &dest).is_err() {
        std::fs::copy(&source.host_path, &dest)
            .map_err(|e| Error::Invalid(format!("copy {} to {target}: {e}", file.path)))?;
        // A copy gets the time of now; the file must keep its own, as a
        // link does (make compares it with outputs on cache volumes).
        let modified = source
            .metadata
            .modified()
            .map_err(|e| Error::Invalid(format!("read the time of {}: {e}", file.path)))?;
        std::fs::File::options()
            .write(true)
            .open(&dest)
            .and_then(|f| {
                f.set_times(
                    std::fs::FileTimes::new()
                        .set_modified(modified)
                        .set_accessed(modified),
                )
            })
            .map_err(|e| Error::Invalid(format!("set the time of {target}: {e}")))?;
    }
    Ok(())
}

fn write_new_file(
    base: &kiln_fs::MergedView,
    staged: &Path,
    target: &str,
    contents: &[u8],
    mode: u32,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dest_dir = prepare_target(base, staged, &parent_of(target))?;
    let name = Path::new(target)
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{target} is not a file path")))?;
    let dest = dest_dir.join(name);
    std::fs::write(&dest, contents).map_err(|e| Error::Invalid(format!("write {target}: {e}")))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| Error::Invalid(format!("chmod {target}: {e}")))?;
    Ok(())
}

/// Outputs of a solved container's latest step.
pub(crate) fn read_output(inner: &Inner, state: &FsState, stream: Stream) -> Result<String> {
    let out = state.last_exec.as_ref().ok_or_else(|| {
        Error::Invalid("no command has run in this container yet: call with_exec first".into())
    })?;
    let digest = match stream {
        Stream::Stdout => &out.stdout,
        Stream::Stderr => &out.stderr,
    };
    let bytes = inner.store.read_blob(digest)?;
    // Valid UTF-8 (the usual case) is taken as is, without a second copy.
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Copies an output of a solved container's latest step to `to`, without
/// holding it in memory.
pub(crate) fn copy_output(
    inner: &Inner,
    state: &FsState,
    stream: Stream,
    to: &mut dyn std::io::Write,
) -> Result<u64> {
    let out = state.last_exec.as_ref().ok_or_else(|| {
        Error::Invalid("no command has run in this container yet: call with_exec first".into())
    })?;
    let digest = match stream {
        Stream::Stdout => &out.stdout,
        Stream::Stderr => &out.stderr,
    };
    let mut blob = inner.store.open_blob(digest)?;
    std::io::copy(&mut blob, to)
        .map_err(|e| Error::Invalid(format!("writing the step's {stream:?} output: {e}")))
}
