//! Writing an image (config and manifest) over packed layers, optionally on
//! top of an image already in the store.
//!
//! Every JSON document is serialised from structs, so field order is fixed
//! and no map with a random order is involved: the same inputs give the
//! same config and manifest digests.

use kiln_store::{Digest, Store};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::{host_platform, Image, ImageConfig, PackedLayer, Reference};

pub(crate) const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// What `created_by` says in the history entry of each layer kiln adds.
const HISTORY_CREATED_BY: &str = "kiln";
/// 9999-12-31T23:59:59Z: RFC 3339 has four-digit years.
const MAX_CREATED: u64 = 253_402_300_799;

/// An image already in the store to build on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImage {
    /// Its manifest; the manifest, config and layer blobs must be in the store.
    pub manifest: Digest,
}

impl From<&Image> for BaseImage {
    fn from(image: &Image) -> BaseImage {
        BaseImage {
            manifest: image.manifest_digest.clone(),
        }
    }
}

/// What [`write_image`] builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// The image whose layers come first, reused as they are.
    pub base: Option<BaseImage>,
    /// Appended after the base's layers, in order.
    pub layers: Vec<PackedLayer>,
    /// The run settings; they replace the base's.
    pub config: ImageConfig,
    /// The image's creation time in seconds since 1970: `SOURCE_DATE_EPOCH`
    /// when the caller has one, else 0, so that it never varies by itself.
    pub created: u64,
}

/// An image written to the store by [`write_image`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    pub manifest: Digest,
    pub config: Digest,
    /// Every blob the image needs (manifest, config, layers), each once:
    /// what a tag must pin.
    pub blobs: Vec<Digest>,
}

impl BuiltImage {
    /// Tags the image in the store as `name` (`app:1`,
    /// `localhost:5000/team/app:1`), pinning its blobs. Returns the
    /// canonical name it is stored under.
    pub fn tag(&self, store: &Store, name: &str) -> Result<String> {
        let reference: Reference = name.parse()?;
        if let Some(digest) = reference.digest() {
            if digest != &self.manifest {
                return Err(Error::InvalidReference {
                    reference: name.to_owned(),
                    why: format!("its digest is not the image's ({})", self.manifest),
                });
            }
        }
        let canonical = reference.name_in_store();
        store.tag_image(&canonical, &self.manifest, &self.blobs)?;
        Ok(canonical)
    }
}

/// Writes an OCI image config and manifest for `spec` into the store.
///
/// The config has `created` (RFC 3339, UTC), the host's `architecture` and
/// `os`, the run settings, `rootfs.diff_ids` (the base's, then the new
/// layers'), and a `history` when the base has a consistent one (or there
/// is no base): the base's entries plus one per new layer, all derived from
/// the inputs. Every layer blob must already be in the store.
pub fn write_image(store: &Store, spec: &ImageSpec) -> Result<BuiltImage> {
    let created = rfc3339(spec.created)?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Some(Vec::new());
    if let Some(base) = &spec.base {
        let parts = read_base(store, base)?;
        layers = parts.layers;
        diff_ids = parts.diff_ids;
        history = parts.history;
    }
    for layer in &spec.layers {
        match store.blob_size(&layer.digest) {
            Some(size) if size == layer.size => {}
            Some(size) => {
                return Err(Error::BuildImage {
                    why: format!(
                        "layer blob {} is {size} bytes in the store, but {} were packed; pack the layer again",
                        layer.digest, layer.size
                    ),
                })
            }
            None => {
                return Err(Error::BuildImage {
                    why: format!(
                        "layer blob {} is not in the store; pack the layer again",
                        layer.digest
                    ),
                })
            }
        }
        layers.push(Descriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
        });
        diff_ids.push(layer.diff_id.clone());
        if let Some(history) = &mut history {
            history.push(History {
                created: Some(created.clone()),
                created_by: Some(HISTORY_CREATED_BY.to_owned()),
                ..History::default()
            });
        }
    }

    let (os, architecture) = host_platform();
    let config = ConfigFileOut {
        created,
        architecture,
        os,
        config: RunConfigOut {
            user: non_empty(&spec.config.user),
            env: &spec.config.env,
            entrypoint: &spec.config.entrypoint,
            cmd: &spec.config.cmd,
            working_dir: non_empty(&spec.config.working_dir),
        },
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids,
        },
        history,
    };
    let config_bytes = to_json(&config, "image config")?;
    let config_digest = store.put_blob(&config_bytes)?;

    let manifest = ManifestOut {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE,
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE.to_owned(),
            digest: config_digest.clone(),
            size: config_bytes.len() as u64,
        },
        layers,
    };
    let manifest_bytes = to_json(&manifest, "image manifest")?;
    let manifest_digest = store.put_blob(&manifest_bytes)?;

    let mut blobs = vec![manifest_digest.clone(), config_digest.clone()];
    for layer in &manifest.layers {
        if !blobs.contains(&layer.digest) {
            blobs.push(layer.digest.clone());
        }
    }
    tracing::debug!(manifest = %manifest_digest, config = %config_digest, layers = manifest.layers.len(), "image written");
    Ok(BuiltImage {
        manifest: manifest_digest,
        config: config_digest,
        blobs,
    })
}

/// The base image's layers as its manifest lists them, their diff_ids from
/// its config, and its history if that matches its layers.
struct BaseParts {
    layers: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
    history: Option<Vec<History>>,
}

fn read_base(store: &Store, base: &BaseImage) -> Result<BaseParts> {
    let image = format!("base image {}", base.manifest);
    let damaged = |source| Error::DamagedImage {
        image: image.clone(),
        source,
    };
    let manifest: ManifestIn = parse(
        &store.read_blob(&base.manifest).map_err(damaged)?,
        &image,
        "manifest",
    )?;
    let config: BaseConfigIn = parse(
        &store.read_blob(&manifest.config.digest).map_err(damaged)?,
        &image,
        &format!("config {}", manifest.config.digest),
    )?;
    let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::BadImage {
            image,
            why: format!(
                "its manifest lists {} layers but its config has {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }
    for layer in &manifest.layers {
        if store.blob_size(&layer.digest).is_none() {
            return Err(Error::BadImage {
                image,
                why: format!(
                    "layer blob {} is not in the store; import or pull the base image again",
                    layer.digest
                ),
            });
        }
    }
    let history = config
        .history
        .and_then(|v| serde_json::from_value::<Vec<History>>(v).ok())
        .filter(|entries| {
            let with_layer = entries
                .iter()
                .filter(|h| h.empty_layer != Some(true))
                .count();
            with_layer == manifest.layers.len()
        });
    if history.is_none() {
        tracing::debug!(%image, "base history missing or inconsistent; the new image gets none");
    }
    Ok(BaseParts {
        layers: manifest.layers,
        diff_ids,
        history,
    })
}

// ---- documents ------------------------------------------------------------

/// A content descriptor, with the fields in the order the OCI spec shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// An image manifest as read from the store: only what building and saving
/// need, leniently (Docker's schema 2 manifests have the same shape).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestIn {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOut<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct BaseConfigIn {
    #[serde(default)]
    rootfs: Option<RootFs>,
    /// Kept as a value so a malformed history only costs the history.
    #[serde(default)]
    history: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct ConfigFileOut<'a> {
    created: String,
    architecture: &'a str,
    os: &'a str,
    config: RunConfigOut<'a>,
    rootfs: RootFs,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<History>>,
}

/// The run settings, in the order of the OCI image spec; empty ones are
/// left out.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfigOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    env: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    cmd: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<&'a str>,
}

#[derive(Serialize, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    empty_layer: Option<bool>,
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], image: &str, what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadImage {
        image: image.to_owned(),
        why: format!("{what} is not valid: {e}"),
    })
}

fn to_json(value: &impl Serialize, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::BuildImage {
        why: format!("cannot encode the {what}: {e}"),
    })
}

fn non_empty(setting: &Option<String>) -> Option<&str> {
    setting.as_deref().filter(|s| !s.is_empty())
}

/// `seconds` since 1970 as RFC 3339 in UTC, e.g. `2023-11-14T22:13:20Z`.
pub(crate) fn rfc3339(seconds: u64) -> Result<String> {
    if seconds > MAX_CREATED {
        return Err(Error::BuildImage {
            why: format!(
                "creation time {seconds} is after the year 9999, which image configs cannot express"
            ),
        });
    }
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let secs = seconds % 86_400;
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    ))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199).unwrap(), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400).unwrap(), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339(MAX_CREATED).unwrap(), "9999-12-31T23:59:59Z");
        assert!(matches!(
            rfc3339(MAX_CREATED + 1),
            Err(Error::BuildImage { .. })
        ));
    }

    #[test]
    fn run_config_leaves_out_empty_settings() {
        let config = RunConfigOut {
            user: None,
            env: &["A=1".to_owned()],
            entrypoint: &[],
            cmd: &["sh".to_owned()],
            working_dir: Some("/app"),
        };
        assert_eq!(
            serde_json::to_string(&config).unwrap(),
            r#"{"Env":["A=1"],"Cmd":["sh"],"WorkingDir":"/app"}"#
        );
    }
}
