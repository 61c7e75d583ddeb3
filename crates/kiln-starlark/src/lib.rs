//! The kiln language: pipelines as typed Starlark functions.
//!
//! A repository's `kiln.star` defines its pipeline. Every top-level function
//! with a docstring is a command (`_private` ones are not); its typed
//! parameters are the command's flags:
//!
//! ```python
//! load("lib/go.star", "go_build")
//!
//! def ci(source: Directory, race: bool = False) -> Container:
//!     """Builds and tests everything."""
//!     base = container("golang:1.22").with_mounted_cache("/root/.cache", cache_volume("go"))
//!     return go_build(base, source).with_exec(["go", "test", "./..."])
//! ```
//!
//! # Language
//!
//! Starlark with type annotations (checked at runtime when a function is
//! called or returns), f-strings and the standard library (`struct`,
//! `record`, `enum`, `json`, `print`, ...).
//!
//! - Globals: `container(ref)`, `scratch()`, `directory()`,
//!   `cache_volume(name)`.
//! - Types for annotations: `Container`, `Directory`, `File`, `Secret`,
//!   `CacheVolume`.
//! - `Container` methods build a new container: `with_exec(args, expect =
//!   "success"|"any"|"failure")`, `with_directory(path, dir, include = [],
//!   exclude = [])` (include/exclude only for host directories),
//!   `with_file`, `with_new_file(path, contents, permissions = 0o644)`,
//!   `with_env_variable`, `without_env_variable`, `with_workdir`,
//!   `with_user`, `with_entrypoint`, `with_network(enabled)`,
//!   `with_mounted_cache(path, cache, sharing = "shared"|"locked")`,
//!   `with_mounted_directory`, `with_secret_variable`,
//!   `with_mounted_secret`, `directory(path)`, `file(path)`. Solving methods:
//!   `stdout()`, `stderr()`, `exit_code()`, `sync()`, `publish(ref)` (pushes
//!   the container as an image and returns its digest).
//! - `Directory`: `directory`, `file`, `with_directory`, `with_file`,
//!   `with_new_file`, `without`; solving: `entries()`, `digest()`.
//! - `File`: solving `contents()`, `digest()`.
//! - `load("lib/go.star", "name")` loads another file of the same
//!   repository, relative to the loading file. Each file is evaluated once
//!   per [`Pipeline::load`]; loaded names are not re-exported.
//!
//! Values are lazy: building one records an operation and runs nothing.
//! A solving method solves only what it needs, there and then (so two
//! `stdout()` calls in a function solve one after the other); what a called
//! function returns is solved by [`solve`], independent parts in parallel —
//! return a list of containers to run them concurrently.
//!
//! # Threading
//!
//! Starlark evaluation is synchronous, so [`Pipeline::load`] and
//! [`Pipeline::call`] run on the calling thread, which should be a plain
//! thread (or a `spawn_blocking` task). A solving method blocks that thread
//! on the engine future with the [`tokio::runtime::Handle`] given to
//! [`Pipeline::load`]; no runtime is created per call. (On a multi-thread
//! runtime's worker it still works, through `block_in_place`; inside a
//! current-thread runtime it is an error.) Returned values are solved
//! afterwards, on the runtime, with [`solve`]:
//!
//! ```no_run
//! # fn demo(root: &std::path::Path, engine: kiln_engine::Engine) -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Runtime::new()?;
//! let pipeline = kiln_starlark::Pipeline::load(root, engine, runtime.handle().clone())?;
//! let output = pipeline.call("ci", vec![])?;
//! let solved = runtime.block_on(kiln_starlark::solve(output))?;
//! # let _ = solved; Ok(()) }
//! ```
//!
//! # Errors
//!
//! Syntax and evaluation errors carry starlark's rendering: the call stack,
//! `file:line:col` (paths relative to the repository root) and the source
//! line underlined. An engine failure inside a solving method comes back as
//! [`Error::Engine`] with the engine's error intact.

mod error;
mod limits;
mod output;
mod params;
mod pipeline;
mod plan;
mod suggest;
mod values;

pub use error::Error;
pub use limits::EvalLimits;
pub use output::{solve, Output};
pub use params::{check_args, parse_arg, ArgValue, FunctionInfo, ParamInfo, ParamType};
pub use pipeline::{find_root, Pipeline, KILN_STAR};
pub use plan::ImagePlan;
