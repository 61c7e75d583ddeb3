//! Helpers shared by the registry tests: options pointing at temp dirs,
//! busybox fixtures put into a real registry, and progress recording.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use kiln_registry::{PullProgress, RegistryOptions};
use kiln_store::Digest;
use kiln_testkit::Compression;
use kiln_testkit::TestRegistry;

/// Options that read no credentials from the environment and retry fast.
pub fn options(dir: &Path) -> RegistryOptions {
    RegistryOptions {
        insecure: Vec::new(),
        credentials_file: Some(dir.join("kiln-config/auth.json")),
        docker_config_file: None,
        attempts: 6,
        retry_delay: Duration::from_millis(100),
        parallel_blobs: 4,
        timeout: Duration::from_secs(20),
    }
}

/// The digests of the single image in an OCI layout.
pub struct LayoutImage {
    pub path: PathBuf,
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<(Digest, u64)>,
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn read_layout(path: &Path) -> LayoutImage {
    let index = read_json(&path.join("index.json"));
    let manifest: Digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let doc = read_json(&path.join("blobs/sha256").join(manifest.hex()));
    LayoutImage {
        path: path.to_owned(),
        manifest,
        config: doc["config"]["digest"].as_str().unwrap().parse().unwrap(),
        layers: doc["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap().parse().unwrap(),
                    l["size"].as_u64().unwrap(),
                )
            })
            .collect(),
    }
}

/// Writes the busybox fixture and copies it into `registry` as `repo_tag`
/// (`test/busybox:1`) with skopeo.
pub fn put_busybox(registry: &TestRegistry, dir: &Path, repo_tag: &str) -> LayoutImage {
    let layout = kiln_testkit::busybox_image(dir, Compression::Gzip);
    registry.skopeo_copy(
        &format!("oci:{}", layout.display()),
        &format!("docker://{}/{repo_tag}", registry.host()),
    );
    read_layout(&layout)
}

/// Records progress events.
#[derive(Default)]
pub struct Events(Mutex<Vec<PullProgress>>);

impl Events {
    pub fn record(&self, event: PullProgress) {
        self.0.lock().unwrap().push(event);
    }

    pub fn all(&self) -> Vec<PullProgress> {
        self.0.lock().unwrap().clone()
    }

    pub fn started(&self) -> Vec<Digest> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                PullProgress::Started { digest, .. } => Some(digest),
                _ => None,
            })
            .collect()
    }

    pub fn present(&self) -> Vec<Digest> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                PullProgress::Present { digest, .. } => Some(digest),
                _ => None,
            })
            .collect()
    }

    pub fn done(&self) -> Vec<Digest> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                PullProgress::Done { digest, .. } => Some(digest),
                _ => None,
            })
            .collect()
    }

    pub fn retried(&self) -> Vec<(Digest, String)> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                PullProgress::Retrying { digest, error, .. } => Some((digest, error)),
                _ => None,
            })
            .collect()
    }
}
