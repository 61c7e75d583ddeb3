//! Images in and out: which digest a reference means (pins from
//! `kiln.lock`, the store, a registry), pulling what is missing, and turning
//! a container back into an image to publish or save.
//!
//! Resolution of `container(REF)`:
//! 1. `REF` names a digest: that manifest, from the store or pulled by digest.
//! 2. `REF` is a tag pinned in the lock: the pinned digest, the same way.
//! 3. `REF` is a tag, not pinned: an error when locked; otherwise the
//!    store's tag (imported or pulled earlier), else pulled from its registry.
//!
//! Every tag resolved is recorded, so a front end can write new pins to the
//! lock file after a run, and `kiln lock` can ask what a pipeline uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kiln_oci::Reference;
use kiln_store::Digest;

use crate::engine::{lock, Inner};
use crate::error::{Error, Result};
use crate::events::{Event, Outcome};
use crate::lockfile::{lock_key, LockFile};

/// How image references are resolved.
#[derive(Clone, Debug, Default)]
pub struct ImagePolicy {
    /// Pins from `kiln.lock`.
    pub lock: LockFile,
    /// A tag with no pin is an error instead of being resolved.
    pub locked: bool,
    /// Never contact a registry: every image must be in the store.
    pub offline: bool,
    /// How to reach registries: hosts allowed over plain HTTP, credentials.
    pub registry: kiln_registry::RegistryOptions,
}

impl Inner {
    /// The image `reference` means under the engine's policy, pulled into
    /// the store if it is not there yet. Remembered for the engine's life.
    pub fn load_image(&self, reference: &str) -> Result<Arc<kiln_oci::Image>> {
        if let Some(image) = lock(&self.images).get(reference) {
            return Ok(image.clone());
        }
        if self.plan_only {
            return Err(Error::PlanOnly {
                what: format!("resolving image {reference}"),
            });
        }
        let parsed: Reference = reference.parse().map_err(Error::from)?;
        let policy = &self.image_policy;
        let wanted = match (parsed.digest(), policy.lock.pin(reference)) {
            (Some(_), _) => parsed.clone(),
            (None, Some(pinned)) => format!("{parsed}@{pinned}").parse().map_err(Error::from)?,
            (None, None) if policy.locked => {
                return Err(Error::NotLocked {
                    reference: parsed.to_string(),
                })
            }
            (None, None) => parsed.clone(),
        };
        let image = match kiln_oci::load_image(&self.store, &wanted.to_string()) {
            Ok(image) => image,
            Err(kiln_oci::Error::ImageNotFound { .. }) if !policy.offline => {
                match self.pull(&wanted) {
                    Ok(_) => {}
                    Err(Error::Pull { cause, .. }) => {
                        return Err(Error::ImageUnavailable {
                            reference: reference.to_owned(),
                            store: self.store.root().display().to_string(),
                            cause,
                        })
                    }
                    Err(e) => return Err(e),
                }
                kiln_oci::load_image(&self.store, &wanted.to_string()).map_err(Error::from)?
            }
            Err(kiln_oci::Error::ImageNotFound { .. }) => {
                return Err(Error::ImageNotFound {
                    reference: reference.to_owned(),
                    store: self.store.root().display().to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(key) = lock_key(reference) {
            lock(&self.resolved_images).insert(key, image.manifest_digest.clone());
        }
        let image = Arc::new(image);
        lock(&self.images).insert(reference.to_owned(), image.clone());
        Ok(image)
    }

    /// Pulls `reference` into the store, as a step of its own in the
    /// progress stream.
    pub fn pull(&self, reference: &Reference) -> Result<Digest> {
        if self.image_policy.offline {
            return Err(Error::Offline {
                reference: reference.to_string(),
            });
        }
        let name = format!("pull {reference}");
        let step = self.next_step();
        let started = Instant::now();
        self.emit(Event::Started {
            step,
            name: name.clone(),
            key: reference
                .digest()
                .map(|d| d.short().to_owned())
                .unwrap_or_default(),
        });
        // One line of step output per blob fetched (and per retry), so a
        // long pull shows progress and a flaky network shows itself.
        let report = |progress: kiln_registry::PullProgress| {
            use kiln_registry::PullProgress as P;
            let line = match progress {
                P::Resolved { blobs, bytes, .. } => {
                    format!("{blobs} blobs, {} in all\n", human_bytes(bytes))
                }
                P::Done { digest, size } => {
                    format!("fetched {} ({})\n", digest.short(), human_bytes(size))
                }
                P::Retrying {
                    digest,
                    attempt,
                    error,
                } => format!(
                    "{}: attempt {attempt} failed ({error}); resuming\n",
                    digest.short()
                ),
                P::Present { .. } | P::Started { .. } | P::Received { .. } => return,
            };
            self.emit(Event::Output {
                step,
                stream: crate::events::Stream::Stdout,
                data: line.into_bytes(),
                replayed: false,
            });
        };
        let result = kiln_registry::blocking::pull(
            &self.store,
            reference,
            &self.image_policy.registry,
            &report,
        )
        .map(|pulled| pulled.manifest)
        .map_err(|e| Error::Pull {
            reference: reference.to_string(),
            cause: Arc::new(e),
        });
        self.emit(Event::Finished {
            step,
            name,
            duration: started.elapsed(),
            outcome: match &result {
                Ok(_) => Outcome::Succeeded { exit_code: 0 },
                Err(e) => Outcome::Failed {
                    message: e.to_string(),
                    ending: None,
                },
            },
        });
        result
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl crate::Engine {
    /// Every image reference given to `container()` on this engine so far,
    /// as written.
    pub fn image_references(&self) -> BTreeSet<String> {
        lock(&self.inner.image_references).clone()
    }

    /// Every tag resolved so far (normalised) and the digest it meant.
    pub fn resolved_images(&self) -> BTreeMap<String, Digest> {
        lock(&self.inner.resolved_images).clone()
    }

    /// The digest a tag stands for now: the store's tag unless `refresh`,
    /// else (or when the store has none) the registry's answer. Does not
    /// consult the lock: this is how pins are made.
    pub fn resolve_tag(&self, reference: &str, refresh: bool) -> Result<Digest> {
        let parsed: Reference = reference.parse().map_err(Error::from)?;
        if let Some(digest) = parsed.digest() {
            return Ok(digest.clone());
        }
        if !refresh {
            if let Some(tag) = self.inner.store.resolve_tag(&parsed.name_in_store())? {
                return Ok(tag.manifest);
            }
        }
        if self.inner.image_policy.offline {
            return Err(Error::Offline {
                reference: reference.to_owned(),
            });
        }
        kiln_registry::blocking::resolve(&parsed, &self.inner.image_policy.registry)
            .map_err(Error::from)
    }

    /// Pulls `reference` from its registry into the store (always asking
    /// the registry, so a tag moves to what it names now).
    pub fn pull_image(&self, reference: &str) -> Result<Digest> {
        let parsed: Reference = reference.parse().map_err(Error::from)?;
        let digest = self.inner.pull(&parsed)?;
        lock(&self.inner.images).remove(reference);
        Ok(digest)
    }

    /// Pushes an image of the store to `target` (a registry reference);
    /// returns the manifest digest, which is the stored one.
    pub fn push_image(&self, source: &str, target: &str) -> Result<Digest> {
        let image = kiln_oci::load_image(&self.inner.store, source).map_err(Error::from)?;
        let target: Reference = target.parse().map_err(Error::from)?;
        kiln_registry::blocking::push(
            &self.inner.store,
            &image.manifest_digest,
            &target,
            &self.inner.image_policy.registry,
        )
        .map_err(Error::from)
    }

    /// Writes images of the store to one tar that is an OCI archive and
    /// loads with `docker load`.
    pub fn save_images(&self, references: &[String], out: &Path) -> Result<()> {
        let mut images = Vec::new();
        for reference in references {
            let image = kiln_oci::load_image(&self.inner.store, reference).map_err(Error::from)?;
            images.push((image.name.clone(), image.manifest_digest.clone()));
        }
        kiln_oci::save(&self.inner.store, &images, out).map_err(Error::from)
    }
}

impl Inner {
    /// A solved container as an image in the store: the base image's layers
    /// as they are, each layer kiln made packed into a deterministic tar,
    /// and the container's configuration (secret variables left out).
    pub(crate) fn build_image(
        &self,
        node: &kiln_graph::Container,
        state: &crate::solve::FsState,
        name: Option<&str>,
    ) -> Result<kiln_oci::BuiltImage> {
        let mut root = node;
        while let Some(parent) = root.op.parent() {
            root = parent;
        }
        let base = match &root.op {
            kiln_graph::ContainerOp::From { reference } => Some(self.load_image(reference)?),
            _ => None,
        };
        // The solver starts a container from its image's layers, bottom
        // first, and only ever adds layers above them.
        let base = base.filter(|image| {
            image.layers.len() <= state.layers.len()
                && image
                    .layers
                    .iter()
                    .zip(&state.layers)
                    .all(|(layer, id)| layer.layer_id() == id)
        });
        let reused = base.as_ref().map_or(0, |image| image.layers.len());
        // SOURCE_DATE_EPOCH when set (the reproducible-builds convention),
        // else the Unix epoch; never the clock.
        let epoch = kiln_oci::source_date_epoch()?.unwrap_or(0);
        let options = kiln_oci::PackOptions { mtime: epoch };
        let mut layers = Vec::new();
        for id in &state.layers[reused..] {
            layers.push(kiln_oci::pack_layer(&self.store, id, &options)?);
        }
        let cfg = crate::config::config_of(self, node)?;
        let config = kiln_oci::ImageConfig {
            env: cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: Some(cfg.workdir.clone()),
            user: cfg.user.clone(),
            entrypoint: cfg.entrypoint.clone(),
            cmd: cfg.cmd.clone(),
        };
        let spec = kiln_oci::ImageSpec {
            base: base.map(|image| kiln_oci::BaseImage::from(&*image)),
            layers,
            config,
            created: epoch,
        };
        let built = kiln_oci::write_image(&self.store, &spec)?;
        if let Some(name) = name {
            built.tag(&self.store, name)?;
        }
        Ok(built)
    }
}
