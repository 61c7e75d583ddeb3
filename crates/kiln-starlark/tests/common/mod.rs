//! Shared set-up: a repository in a tempdir, an engine on a store beside
//! it, and a runtime. Evaluation runs on the test thread (a plain thread);
//! only `solve` goes through `runtime.block_on`.
//!
//! Tests that run containers need root and runc. Without them they print why
//! and return, unless KILN_REQUIRE_PRIVILEGED is set, in which case they fail.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln_engine::{Engine, EngineOptions};
use kiln_starlark::{Error, Output, Pipeline};

pub const IMAGE: &str = "busybox:test";

pub struct Repo {
    pub dir: tempfile::TempDir,
    pub engine: Engine,
    pub runtime: tokio::runtime::Runtime,
}

impl Repo {
    /// A repository holding `files` (path relative to the root, contents).
    pub fn new(files: &[(&str, &str)]) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let engine = open_engine(&dir.path().join("store"));
        let repo = Repo {
            dir,
            engine,
            runtime,
        };
        std::fs::create_dir_all(repo.root()).expect("mkdir repo");
        for (path, contents) in files {
            repo.write(path, contents);
        }
        repo
    }

    /// The same, with the busybox test image imported into the store.
    pub fn with_busybox(files: &[(&str, &str)]) -> Repo {
        let repo = Repo::new(files);
        let layout = kiln_testkit::busybox_image(
            &repo.dir.path().join("image"),
            kiln_testkit::Compression::Gzip,
        );
        kiln_oci::import(repo.engine.store(), &layout, Some(IMAGE)).expect("import busybox");
        repo
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A path next to the repository (outside it).
    pub fn outside(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) {
        write(&self.root().join(rel), contents);
    }

    pub fn load(&self) -> Result<Pipeline, Error> {
        Pipeline::load(
            &self.root(),
            self.engine.clone(),
            self.runtime.handle().clone(),
        )
    }

    /// Loads with a second engine on the same store, as another kiln process would.
    pub fn load_with(&self, engine: Engine) -> Result<Pipeline, Error> {
        Pipeline::load(&self.root(), engine, self.runtime.handle().clone())
    }

    pub fn pipeline(&self) -> Pipeline {
        match self.load() {
            Ok(p) => p,
            Err(e) => panic!("kiln.star does not load:\n{e}"),
        }
    }

    pub fn solve(&self, output: Output) -> Result<Output, kiln_engine::Error> {
        self.runtime.block_on(kiln_starlark::solve(output))
    }

    /// Reads a counter file that steps increment in a cache volume.
    pub fn counter(&self, volume: &str, name: &str) -> u32 {
        std::fs::read_to_string(self.store().join("volumes").join(volume).join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

pub fn open_engine(store: &Path) -> Engine {
    Engine::open(EngineOptions {
        store: store.to_owned(),
        // Tests never reach for the network: a missing image is missing.
        images: kiln_engine::ImagePolicy {
            offline: true,
            ..kiln_engine::ImagePolicy::default()
        },
        ..EngineOptions::default()
    })
    .expect("open engine")
}

pub fn write(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, contents).expect("write");
}

#[allow(unused_imports)] // not every test file runs containers
pub use kiln_testkit::privileged;

/// Unwraps a result, printing the error's full message on failure.
pub fn ok<T>(result: Result<T, Error>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("unexpected error ({e:?}):\n{e}"),
    }
}

/// The error of a result that must have failed.
pub fn err<T>(result: Result<T, Error>) -> Error {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}
