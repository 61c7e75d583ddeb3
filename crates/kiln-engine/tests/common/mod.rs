//! Shared set-up for engine tests. These tests run real containers: they
//! need root and runc (scripts/setup.sh installs runc and busybox-static).
//! Without them a test prints why and returns, unless KILN_REQUIRE_PRIVILEGED
//! is set (as .ci/run does), in which case it fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln_engine::{Engine, EngineOptions, Event};

pub const IMAGE: &str = "busybox:test";

pub use kiln_testkit::privileged;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub engine: Engine,
}

impl Fixture {
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A second engine on the same store, as another process would open it.
    pub fn reopen(&self) -> Engine {
        open_engine(&self.store_path())
    }

    pub fn volume(&self, name: &str) -> PathBuf {
        self.store_path().join("volumes").join(name)
    }

    /// Reads a counter file that steps increment in a cache volume.
    pub fn counter(&self, volume: &str, name: &str) -> u32 {
        std::fs::read_to_string(self.volume(volume).join(name))
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

/// A store with the busybox test image imported.
pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = kiln_testkit::busybox_image(dir.path(), kiln_testkit::Compression::Gzip);
    let engine = open_engine(&dir.path().join("store"));
    kiln_oci::import(engine.store(), &layout, Some(IMAGE)).expect("import busybox");
    Fixture { dir, engine }
}

/// A shell snippet that increments /count/NAME; proves a step really ran.
pub fn bump(name: &str) -> String {
    format!("n=$(cat /count/{name} 2>/dev/null || echo 0); echo $((n+1)) > /count/{name}")
}

pub fn collect(rx: &mut kiln_engine::Subscription) -> Vec<Event> {
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    events
}

pub fn write(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, contents).expect("write");
}
