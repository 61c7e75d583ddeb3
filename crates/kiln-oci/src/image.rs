//! Images already in the store: looking them up, listing them, and making
//! their layers available unpacked.

use std::path::PathBuf;

use kiln_store::{Digest, Store};
use oci_spec::image::ImageManifest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::{ImageBudget, UnpackLimits};
use crate::unpack::{unpack_layer_with, UnpackOptions};
use crate::Reference;

/// An image resolved from the store: what a container needs to run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The canonical name it was found under.
    pub name: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Base layer first.
    pub layers: Vec<LayerRef>,
}

/// The parts of an image configuration that shape how a container runs.
/// Empty strings in the image are `None` here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
}

/// One layer of an image, as its manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerRef {
    /// The digest of the layer blob (compressed, if it is).
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The sha256 of the layer's uncompressed tar as the image config lists
    /// it (`rootfs.diff_ids`), checked when the layer is unpacked; `None`
    /// when the config lists none.
    #[serde(default)]
    pub diff_id: Option<Digest>,
}

impl LayerRef {
    /// The id of the unpacked layer directory in the store.
    pub fn layer_id(&self) -> &str {
        self.digest.hex()
    }
}

/// One row of [`list_images`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub name: String,
    pub manifest_digest: Digest,
    /// Config plus layer blob sizes.
    pub size_bytes: u64,
    pub layers: usize,
}

/// The image configuration file, leniently: docker writes `null` for empty
/// lists and some tools write a string where a list belongs.
#[derive(Deserialize, Default)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub config: Option<RawConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// `rootfs` of an image config: the diff_id of each layer, base first.
#[derive(Deserialize, Default)]
pub(crate) struct RootFs {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub diff_ids: Option<Vec<String>>,
}

impl RootFs {
    /// The diff_ids as digests, checked against the number of layers.
    pub(crate) fn diff_ids_for(&self, layers: usize, image: &str) -> Result<Vec<Digest>> {
        if let Some(kind) = self.kind.as_deref().filter(|k| *k != "layers") {
            return Err(Error::BadImage {
                image: image.to_owned(),
                why: format!("its config's rootfs.type is {kind:?}, not \"layers\""),
            });
        }
        let diff_ids = self.diff_ids.as_deref().unwrap_or_default();
        if diff_ids.len() != layers {
            return Err(Error::BadImage {
                image: image.to_owned(),
                why: format!(
                    "its manifest lists {layers} layers but its config has {} diff_ids; rootfs.diff_ids must list the sha256 of each layer's uncompressed tar, base first",
                    diff_ids.len()
                ),
            });
        }
        diff_ids
            .iter()
            .enumerate()
            .map(|(i, d)| {
                d.parse().map_err(|_| Error::BadImage {
                    image: image.to_owned(),
                    why: format!(
                        "rootfs.diff_ids[{i}] is {d:?}, not a sha256 digest (kiln handles sha256 only)"
                    ),
                })
            })
            .collect()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawConfig {
    #[serde(default)]
    env: Option<StringOrList>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    entrypoint: Option<StringOrList>,
    #[serde(default)]
    cmd: Option<StringOrList>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

impl ImageConfig {
    /// Extracts the run settings from an image configuration blob.
    pub fn from_config_json(bytes: &[u8]) -> Result<ImageConfig, serde_json::Error> {
        let file: ConfigFile = serde_json::from_slice(bytes)?;
        let raw = file.config.unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(ImageConfig {
            env: raw.env.map(StringOrList::into_vec).unwrap_or_default(),
            working_dir: non_empty(raw.working_dir),
            user: non_empty(raw.user),
            entrypoint: raw
                .entrypoint
                .map(StringOrList::into_vec)
                .unwrap_or_default(),
            cmd: raw.cmd.map(StringOrList::into_vec).unwrap_or_default(),
        })
    }
}

/// Looks up an image in the store by reference (`busybox`,
/// `localhost:5000/app:1`, `alpine@sha256:...`) and reads its manifest and
/// config.
pub fn load_image(store: &Store, reference: &str) -> Result<Image> {
    let parsed: Reference = reference.parse()?;
    let name = parsed.name_in_store();
    let mut tag = store.resolve_tag(&name)?;
    if tag.is_none() {
        // name@digest: any tag of the same repository pointing at that
        // manifest is the image asked for.
        if let Some(digest) = parsed.digest() {
            let repository = parsed.repository();
            tag = store.list_tags()?.into_iter().find(|t| {
                &t.manifest == digest
                    && t.name
                        .parse::<Reference>()
                        .is_ok_and(|r| r.repository() == repository)
            });
        }
    }
    let Some(tag) = tag else {
        return Err(Error::ImageNotFound {
            reference: reference.to_owned(),
            name,
            store: store.root().to_owned(),
        });
    };
    if let Some(digest) = parsed.digest() {
        if digest != &tag.manifest {
            return Err(Error::ImageNotFound {
                reference: reference.to_owned(),
                name: format!("{name} (the store has {} under that name)", tag.manifest),
                store: store.root().to_owned(),
            });
        }
    }
    let damaged = |source| Error::DamagedImage {
        image: name.clone(),
        source,
    };
    let manifest_bytes = store.read_blob(&tag.manifest).map_err(damaged)?;
    let manifest: ImageManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| Error::BadImage {
            image: name.clone(),
            why: format!("manifest {} is not valid: {e}", tag.manifest),
        })?;
    let digest_of = |d: &oci_spec::image::Descriptor| -> Result<Digest> {
        d.digest().to_string().parse().map_err(|_| Error::BadImage {
            image: name.clone(),
            why: format!("unsupported digest {}", d.digest()),
        })
    };
    let config_digest = digest_of(manifest.config())?;
    let config_bytes = store.read_blob(&config_digest).map_err(damaged)?;
    let config = ImageConfig::from_config_json(&config_bytes).map_err(|e| Error::BadImage {
        image: name.clone(),
        why: format!("config {config_digest} is not valid: {e}"),
    })?;
    // Images from a registry never went through import's checks, so the
    // diff_ids go with the layers and are checked as each is unpacked. A
    // config with no rootfs at all has nothing to check against.
    let file: ConfigFile = serde_json::from_slice(&config_bytes).unwrap_or_default();
    let diff_ids = match &file.rootfs {
        Some(rootfs) => Some(rootfs.diff_ids_for(manifest.layers().len(), &name)?),
        None => None,
    };
    let layers = manifest
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(LayerRef {
                digest: digest_of(l)?,
                size: l.size(),
                media_type: l.media_type().to_string(),
                diff_id: diff_ids.as_ref().map(|d| d[i].clone()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Image {
        name,
        manifest_digest: tag.manifest,
        config_digest,
        config,
        layers,
    })
}

/// Every tagged image in the store, by name.
pub fn list_images(store: &Store) -> Result<Vec<ImageSummary>> {
    let mut images = Vec::new();
    for tag in store.list_tags()? {
        let parsed = store
            .read_blob(&tag.manifest)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ImageManifest>(&bytes).ok());
        let (size_bytes, layers) = match parsed {
            Some(m) => (
                m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>(),
                m.layers().len(),
            ),
            None => {
                // Still listed, so the user can see it and remove or
                // re-import it; the size is what the store holds.
                tracing::warn!(image = %tag.name, manifest = %tag.manifest, "image manifest unreadable");
                let size = tag
                    .blobs
                    .iter()
                    .filter(|b| **b != tag.manifest)
                    .filter_map(|b| store.blob_size(b))
                    .sum();
                (size, tag.blobs.len().saturating_sub(2))
            }
        };
        images.push(ImageSummary {
            name: tag.name,
            manifest_digest: tag.manifest,
            size_bytes,
            layers,
        });
    }
    Ok(images)
}

/// Makes sure a layer is unpacked in the store and returns its directory.
///
/// The blob is verified as it is opened; a corrupt one is removed by the
/// store and reported, naming the layer, with the advice to re-import.
/// The layer is held to the default [`UnpackLimits`]; see
/// [`ensure_unpacked_with`].
pub fn ensure_unpacked(store: &Store, layer: &LayerRef) -> Result<PathBuf> {
    ensure_unpacked_with(store, layer, &UnpackOptions::default())
}

/// [`ensure_unpacked`] with explicit limits (and, to cap a whole image, an
/// [`ImageBudget`] shared by its layers). The layer is unpacked into a
/// staging directory and committed only if it is within the limits and its
/// uncompressed tar matches [`LayerRef::diff_id`] (when known); otherwise
/// the staging directory is removed and nothing is committed. A layer that
/// is already unpacked is returned as it is, and not counted.
pub fn ensure_unpacked_with(
    store: &Store,
    layer: &LayerRef,
    options: &UnpackOptions,
) -> Result<PathBuf> {
    let id = layer.layer_id();
    if store.has_layer(id) {
        store.touch_layer(id);
        return Ok(store.layer_path(id));
    }
    let blob = store
        .open_blob(&layer.digest)
        .map_err(|source| Error::LayerBlob {
            layer: layer.digest.to_string(),
            source,
        })?;
    let failed = |e: Error| Error::Layer {
        layer: layer.digest.to_string(),
        source: Box::new(e),
    };
    // Dropping `staged` on any error below removes the partial layer.
    let staged = store.stage_dir()?;
    let stats = unpack_layer_with(
        std::io::BufReader::with_capacity(256 * 1024, blob),
        staged.path(),
        options,
    )
    .map_err(failed)?;
    if let (Some(expected), Some(actual)) = (&layer.diff_id, &stats.diff_id) {
        if expected != actual {
            if let Some(budget) = &options.image_budget {
                budget.give_back(stats.unpacked_bytes);
            }
            return Err(failed(Error::LayerDiffIdMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            }));
        }
    }
    if stats.devices_dropped > 0 {
        // Said once: the layer is unpacked once per store.
        tracing::warn!(
            "layer {}: left out {} device node(s) ({}{}); a container gets its devices from the runtime",
            layer.digest.short(),
            stats.devices_dropped,
            stats.dropped_devices.join(", "),
            if stats.devices_dropped > stats.dropped_devices.len() as u64 { ", ..." } else { "" }
        );
    }
    tracing::debug!(layer = %layer.digest, ?stats, "layer unpacked");
    Ok(store.commit_layer(staged, id)?)
}

/// Unpacks every layer of `image` that is not unpacked yet, base first,
/// and returns the layer directories, base first. Each layer is held to
/// `limits.max_layer_bytes`, and the layers unpacked by this call together
/// to `limits.max_image_bytes` (layers already in the store were checked
/// when they were unpacked and take no new space, so they are not counted).
///
/// Stack the result through [`crate::visible_layers`]: a layer whose tar
/// has an opaque marker at its root hides the layers below it.
pub fn ensure_image_unpacked(
    store: &Store,
    image: &Image,
    limits: &UnpackLimits,
) -> Result<Vec<PathBuf>> {
    let options = UnpackOptions {
        limits: *limits,
        image_budget: Some(ImageBudget::new()),
    };
    image
        .layers
        .iter()
        .map(|layer| ensure_unpacked_with(store, layer, &options))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_read_leniently() {
        let c = ImageConfig::from_config_json(
            br#"{"architecture":"amd64","config":{"Env":["A=1"],"WorkingDir":"","User":"1000","Entrypoint":null,"Cmd":"sh"}}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            ImageConfig {
                env: vec!["A=1".into()],
                working_dir: None,
                user: Some("1000".into()),
                entrypoint: vec![],
                cmd: vec!["sh".into()],
            }
        );
        assert_eq!(
            ImageConfig::from_config_json(b"{}").unwrap(),
            ImageConfig::default()
        );
        assert!(ImageConfig::from_config_json(b"[").is_err());
    }
}
