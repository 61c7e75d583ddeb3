//! The manifest documents kiln pulls and pushes, read leniently: only the
//! fields kiln needs, so that registries' extra fields never get in the way,
//! and without tying the crate to one oci-spec version.

use kiln_store::Digest;
use serde::Deserialize;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What kiln asks registries for, in order of preference.
pub(crate) const ACCEPTED: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

/// Registries refuse manifests over 4 MiB; anything bigger is not one.
pub(crate) const MAX_MANIFEST: usize = 4 << 20;

/// A content descriptor whose digest kiln can address (sha256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Blob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// An image manifest: config and layers.
#[derive(Clone, Debug)]
pub(crate) struct ImageManifest {
    pub media_type: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl ImageManifest {
    /// The config and layers, each once, config first: what an image tag
    /// pins besides the manifest.
    pub(crate) fn blobs(&self) -> Vec<Blob> {
        let mut blobs: Vec<Blob> = Vec::with_capacity(self.layers.len() + 1);
        for blob in std::iter::once(&self.config).chain(&self.layers) {
            if !blobs.iter().any(|b| b.digest == blob.digest) {
                blobs.push(blob.clone());
            }
        }
        blobs
    }
}

/// One entry of an image index.
#[derive(Clone, Debug)]
pub(crate) struct IndexEntry {
    pub digest: Digest,
    pub media_type: String,
    pub platform: Option<(String, String, Option<String>)>,
}

pub(crate) enum Manifest {
    Image(ImageManifest),
    Index(Vec<IndexEntry>),
}

#[derive(Deserialize)]
struct RawDocument {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// Why a document is not a manifest kiln can use.
pub(crate) enum Rejected {
    Unsupported(String),
    Bad(String),
}

fn blob(d: &RawDescriptor, what: &str) -> Result<Blob, Rejected> {
    let digest = d.digest.parse::<Digest>().map_err(|_| {
        Rejected::Bad(format!(
            "{what} has digest {:?}; kiln handles sha256 digests only",
            d.digest
        ))
    })?;
    let size = u64::try_from(d.size)
        .map_err(|_| Rejected::Bad(format!("{what} {digest} has a negative size")))?;
    Ok(Blob {
        digest,
        size,
        media_type: d.media_type.clone(),
    })
}

/// Reads a manifest or index, telling them apart by media type (or, for
/// old OCI documents without one, by their fields).
pub(crate) fn parse(bytes: &[u8]) -> Result<Manifest, Rejected> {
    if bytes.len() > MAX_MANIFEST {
        return Err(Rejected::Bad(format!(
            "it is {} bytes, more than the {MAX_MANIFEST} a manifest may be",
            bytes.len()
        )));
    }
    let doc: RawDocument = serde_json::from_slice(bytes)
        .map_err(|e| Rejected::Bad(format!("it is not a valid manifest ({e})")))?;
    if doc.schema_version == Some(1) {
        return Err(Rejected::Unsupported(
            "application/vnd.docker.distribution.manifest.v1+json (Docker schema 1)".into(),
        ));
    }
    let media_type = match doc.media_type.as_deref() {
        Some(t) => t.to_owned(),
        None if doc.manifests.is_some() => OCI_INDEX.to_owned(),
        None if doc.config.is_some() => OCI_MANIFEST.to_owned(),
        None => {
            return Err(Rejected::Bad(
                "it has no mediaType, config or manifests".into(),
            ))
        }
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = doc
                .config
                .as_ref()
                .ok_or_else(|| Rejected::Bad("the image manifest has no config".into()))?;
            let config = blob(config, "the config")?;
            if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
                return Err(Rejected::Bad(format!(
                    "not a container image: its config has media type {:?}",
                    config.media_type
                )));
            }
            let layers = doc
                .layers
                .iter()
                .flatten()
                .map(|l| blob(l, "a layer"))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Manifest::Image(ImageManifest {
                media_type,
                config,
                layers,
            }))
        }
        OCI_INDEX | DOCKER_LIST => {
            let mut entries = Vec::new();
            for d in doc.manifests.iter().flatten() {
                let Ok(digest) = d.digest.parse::<Digest>() else {
                    tracing::debug!(digest = %d.digest, "skipping index entry with a non-sha256 digest");
                    continue;
                };
                entries.push(IndexEntry {
                    digest,
                    media_type: d.media_type.clone(),
                    platform: d
                        .platform
                        .as_ref()
                        .map(|p| (p.os.clone(), p.architecture.clone(), p.variant.clone())),
                });
            }
            Ok(Manifest::Index(entries))
        }
        other => Err(Rejected::Unsupported(other.to_owned())),
    }
}

/// The entry of an index for this machine, or the platforms offered.
/// Several entries can match (variants); the first is the registry's
/// preferred one, as docker and containerd take it. Entries that are not
/// images (attestations, signatures) are never chosen.
pub(crate) fn choose_platform(entries: &[IndexEntry]) -> Result<&IndexEntry, String> {
    let (os, arch) = kiln_oci::host_platform();
    let image_like =
        |e: &IndexEntry| e.media_type.is_empty() || ACCEPTED.contains(&e.media_type.as_str());
    if let Some(entry) = entries.iter().filter(|e| image_like(e)).find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|(o, a, _)| o == os && a == arch)
    }) {
        return Ok(entry);
    }
    let mut offered: Vec<String> = entries
        .iter()
        .filter(|e| image_like(e))
        .filter_map(|e| e.platform.as_ref())
        .filter(|(o, a, _)| o != "unknown" && a != "unknown")
        .map(|(o, a, v)| match v {
            Some(v) if !v.is_empty() => format!("{o}/{a}/{v}"),
            _ => format!("{o}/{a}"),
        })
        .collect();
    offered.sort();
    offered.dedup();
    Err(if offered.is_empty() {
        "no platforms".to_owned()
    } else {
        offered.join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn reads_image_manifests_of_both_kinds() {
        for media_type in [OCI_MANIFEST, DOCKER_MANIFEST] {
            let config_type = if media_type == OCI_MANIFEST {
                OCI_CONFIG
            } else {
                DOCKER_CONFIG
            };
            let doc = format!(
                r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"{config_type}","digest":"{}","size":3}},
                "layers":[{{"mediaType":"x","digest":"{}","size":5}},{{"mediaType":"x","digest":"{}","size":5}}],"extra":true}}"#,
                digest(1),
                digest(2),
                digest(2)
            );
            let Ok(Manifest::Image(m)) = parse(doc.as_bytes()) else {
                panic!("not read as an image manifest: {doc}");
            };
            assert_eq!(m.media_type, media_type);
            assert_eq!(m.config.size, 3);
            assert_eq!(m.layers.len(), 2);
            assert_eq!(m.blobs().len(), 2, "blobs are listed once");
        }
    }

    #[test]
    fn refuses_what_is_not_a_container_image() {
        let artifact = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{}","size":3}},"layers":[]}}"#,
            digest(1)
        );
        assert!(
            matches!(parse(artifact.as_bytes()), Err(Rejected::Bad(why)) if why.contains("helm"))
        );
        assert!(matches!(
            parse(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#),
            Err(Rejected::Unsupported(t)) if t.contains("schema 1")
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2,"mediaType":"application/x-other"}"#),
            Err(Rejected::Unsupported(t)) if t == "application/x-other"
        ));
        let sha512 = format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"sha512:ab","size":3}}}}"#
        );
        assert!(
            matches!(parse(sha512.as_bytes()), Err(Rejected::Bad(why)) if why.contains("sha256"))
        );
        assert!(matches!(parse(b"not json"), Err(Rejected::Bad(_))));
    }

    #[test]
    fn chooses_the_host_platform_or_lists_the_offered_ones() {
        let (os, arch) = kiln_oci::host_platform();
        let other = if arch == "amd64" { "arm64" } else { "amd64" };
        let entry = |n: u8, arch: &str, media_type: &str| IndexEntry {
            digest: digest(n).parse().unwrap(),
            media_type: media_type.into(),
            platform: Some((os.into(), arch.into(), None)),
        };
        let attestation = IndexEntry {
            platform: Some(("unknown".into(), "unknown".into(), None)),
            ..entry(9, "unknown", OCI_MANIFEST)
        };
        let entries = vec![
            attestation.clone(),
            entry(1, other, OCI_MANIFEST),
            entry(2, arch, "application/vnd.in-toto+json"),
            entry(3, arch, OCI_MANIFEST),
        ];
        assert_eq!(
            choose_platform(&entries).unwrap().digest,
            digest(3).parse().unwrap()
        );
        let offered =
            choose_platform(&[attestation, entry(1, other, DOCKER_MANIFEST)]).unwrap_err();
        assert_eq!(offered, format!("{os}/{other}"));
    }
}
