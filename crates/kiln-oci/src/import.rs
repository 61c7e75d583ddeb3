//! Importing images from files: OCI image layout directories, OCI archives
//! and `docker save` tarballs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_store::{Digest, Store};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType};
use serde::Deserialize;

use crate::compression::{self, Compression};
use crate::error::{Error, IoContext, Result};
use crate::limits::{ImageBudget, Meter, MeteredReader, UnpackLimits};
use crate::{host_platform, Reference};

/// Annotations naming an image in an index, most specific first: containerd
/// and Docker 25+ put the full name in their own key and only the tag in
/// the OCI one.
const NAME_ANNOTATIONS: &[&str] = &[
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
];
/// Upper bound for JSON documents (index, manifest, config) read into memory.
const MAX_JSON: u64 = 16 << 20;
/// How deep image indexes may nest before the import gives up.
const MAX_INDEX_DEPTH: usize = 4;

const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// One image tag created by [`import`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedImage {
    /// The canonical name it is stored under.
    pub name: String,
    pub manifest_digest: Digest,
    /// Config plus layer blob sizes.
    pub size_bytes: u64,
}

/// Imports the images in `path`: an OCI image layout directory, an OCI
/// archive, or a `docker save` tarball (told apart by their contents; the
/// archive may itself be gzip- or zstd-compressed).
///
/// Every blob is copied into the store and checked against its digest.
/// Images are tagged with `tag` when given (which must then pick out a
/// single image), else with the names the archive records. From an image
/// index, only the host platform's manifest is imported.
///
/// Each layer is decompressed and hashed before the image is tagged: its
/// uncompressed tar must hash to the diff_id the config lists for it
/// (`rootfs.diff_ids`, one per layer, base first), as `docker load`
/// insists. Layers are held to the default [`UnpackLimits`]; see
/// [`import_with`].
pub fn import(store: &Store, path: &Path, tag: Option<&str>) -> Result<Vec<ImportedImage>> {
    import_with(store, path, tag, &UnpackLimits::default())
}

/// [`import`] with explicit limits: a layer whose uncompressed tar is over
/// `max_layer_bytes`, an image whose layers together are over
/// `max_image_bytes`, or a compressed archive that decompresses to more than
/// `max_image_bytes`, is refused with [`Error::TooLarge`] as soon as the
/// count passes the limit, and nothing is tagged.
pub fn import_with(
    store: &Store,
    path: &Path,
    tag: Option<&str>,
    limits: &UnpackLimits,
) -> Result<Vec<ImportedImage>> {
    let tag = tag
        .map(|t| t.parse::<Reference>().map(|r| r.name_in_store()))
        .transpose()?;
    let meta = std::fs::metadata(path).ctx("read", path)?;
    // Kept alive until the import ends: a decompressed copy of the archive.
    let mut _staged = None;
    let source = if meta.is_dir() {
        Source::Dir(path.to_owned())
    } else {
        let (source, staged) = Source::open_archive(store, path, limits)?;
        _staged = staged;
        source
    };
    if source.exists("index.json") {
        import_oci(store, &source, tag.as_deref(), limits)
    } else if source.exists("manifest.json") {
        import_docker(store, &source, tag.as_deref(), limits)
    } else {
        Err(Error::UnknownFormat {
            path: path.to_owned(),
            why: "it has neither index.json nor manifest.json".into(),
        })
    }
}

// ---- sources ------------------------------------------------------------------

/// Where an image's files are read from.
enum Source {
    Dir(PathBuf),
    /// A tar, indexed once so members can be read in any order.
    Tar {
        path: PathBuf,
        file: File,
        members: HashMap<String, (u64, u64)>,
    },
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Dir(p) => p,
            Source::Tar { path, .. } => path,
        }
    }

    fn open_archive(
        store: &Store,
        path: &Path,
        limits: &UnpackLimits,
    ) -> Result<(Source, Option<kiln_store::Staged>)> {
        let mut file = File::open(path).ctx("open", path)?;
        let mut head = [0u8; 10];
        let n = file.read_at(&mut head, 0).ctx("read", path)?;
        let compression = Compression::sniff(&head[..n]).map_err(|_| Error::UnknownFormat {
            path: path.to_owned(),
            why: "it is compressed with a format kiln does not read (only gzip and zstd)".into(),
        })?;
        let mut staged = None;
        if compression != Compression::None {
            // Reading members in any order needs seeking, so a compressed
            // archive is decompressed once to a scratch file in the store.
            let dir = store.stage_dir()?;
            let plain = dir.path().join("archive.tar");
            let (_, reader) = compression::decompress(File::open(path).ctx("open", path)?)?;
            // The archive holds the image's layers, so it is held to the
            // image limit: a gzip bomb stops here, not when the disk fills.
            let meter = Meter::new(
                UnpackLimits {
                    max_layer_bytes: u64::MAX,
                    ..*limits
                },
                None,
            )
            .without_digest();
            let mut reader = MeteredReader {
                inner: reader,
                meter: &meter,
            };
            let mut out = File::create(&plain).ctx("create", &plain)?;
            io::copy(&mut reader, &mut out).map_err(|e| match meter.tripped() {
                Some(limit) => Error::TooLarge {
                    limit,
                    value: meter.value(limit),
                    at: format!(
                        "decompressing the {} archive {}",
                        compression.name(),
                        path.display()
                    ),
                },
                None => Error::UnknownFormat {
                    path: path.to_owned(),
                    why: format!("its {} compression is corrupt: {e}", compression.name()),
                },
            })?;
            file = File::open(&plain).ctx("open", &plain)?;
            staged = Some(dir);
        }
        let members = index_tar(&file).map_err(|e| Error::UnknownFormat {
            path: path.to_owned(),
            why: format!("it is neither a directory nor a readable tar archive ({e})"),
        })?;
        Ok((
            Source::Tar {
                path: path.to_owned(),
                file,
                members,
            },
            staged,
        ))
    }

    fn exists(&self, rel: &str) -> bool {
        self.size(rel).ok().flatten().is_some()
    }

    /// The size of member `rel`, or `None` when it is not there.
    fn size(&self, rel: &str) -> Result<Option<u64>> {
        let rel = normalize(rel).ok_or_else(|| self.bad_member(rel))?;
        match self {
            Source::Dir(dir) => match std::fs::metadata(dir.join(&rel)) {
                Ok(m) if m.is_file() => Ok(Some(m.len())),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).ctx("read", dir.join(&rel)),
            },
            Source::Tar { members, .. } => Ok(members.get(&rel).map(|&(_, size)| size)),
        }
    }

    fn open(&self, rel: &str) -> Result<Box<dyn Read + '_>> {
        let norm = normalize(rel).ok_or_else(|| self.bad_member(rel))?;
        match self {
            Source::Dir(dir) => {
                let path = dir.join(&norm);
                Ok(Box::new(File::open(&path).ctx("open", &path)?))
            }
            Source::Tar {
                file,
                members,
                path,
                ..
            } => {
                let &(offset, size) = members.get(&norm).ok_or_else(|| Error::BadImage {
                    image: path.display().to_string(),
                    why: format!("{rel} is not in the archive"),
                })?;
                Ok(Box::new(RangeReader {
                    file,
                    pos: offset,
                    end: offset + size,
                }))
            }
        }
    }

    /// Reads a small member (a JSON document) into memory.
    fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        let size = self.size(rel)?.ok_or_else(|| Error::BadImage {
            image: self.path().display().to_string(),
            why: format!("{rel} is missing"),
        })?;
        if size > MAX_JSON {
            return Err(Error::BadImage {
                image: self.path().display().to_string(),
                why: format!(
                    "{rel} is {size} bytes, more than the {MAX_JSON} allowed for a JSON document"
                ),
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        self.open(rel)?
            .read_to_end(&mut bytes)
            .ctx("read", self.path().join(rel))?;
        Ok(bytes)
    }

    fn bad_member(&self, rel: &str) -> Error {
        Error::BadImage {
            image: self.path().display().to_string(),
            why: format!(
                "refusing member path {rel:?}: it must be relative and must not contain '..'"
            ),
        }
    }
}

/// Member paths as used for lookup: no `./`, no empty components; `None`
/// for absolute paths or ones with `..`, which never name a member.
fn normalize(rel: &str) -> Option<String> {
    if rel.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Maps each regular file member of a tar to its data offset and size.
fn index_tar(file: &File) -> io::Result<HashMap<String, (u64, u64)>> {
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    let mut any = false;
    for entry in archive.entries()? {
        let entry = entry?;
        any = true;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if let Some(name) = normalize(&name) {
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
    }
    if !any {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no tar members"));
    }
    Ok(members)
}

/// Reads a byte range of a file with positioned reads, so several members
/// can be open at once without sharing a cursor.
struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member is cut short",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

// ---- choosing images --------------------------------------------------------------

/// An image found in the source, before anything is stored.
struct Candidate<T> {
    names: Vec<String>,
    /// How the image is referred to in messages.
    label: String,
    item: T,
}

/// Applies the tagging rules: an explicit tag goes to the single image (or
/// the one already carrying that name); without one, every image must be
/// named.
fn choose<T>(
    path: &Path,
    mut candidates: Vec<Candidate<T>>,
    tag: Option<&str>,
) -> Result<Vec<Candidate<T>>> {
    if candidates.is_empty() {
        return Err(Error::NoImages {
            path: path.to_owned(),
        });
    }
    match tag {
        Some(tag) => {
            let chosen = if candidates.len() == 1 {
                candidates.remove(0)
            } else {
                let mut matching: Vec<_> = candidates
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.names.iter().any(|n| n == tag))
                    .map(|(i, _)| i)
                    .collect();
                if matching.len() != 1 {
                    return Err(Error::AmbiguousImage {
                        path: path.to_owned(),
                        names: candidates.iter().map(|c| c.label.clone()).collect(),
                        why: format!("the tag {tag} must name exactly one of them"),
                    });
                }
                candidates.swap_remove(matching.remove(0))
            };
            Ok(vec![Candidate {
                names: vec![tag.to_owned()],
                ..chosen
            }])
        }
        None => {
            if let Some(unnamed) = candidates.iter().find(|c| c.names.is_empty()) {
                return Err(Error::UnnamedImage {
                    path: path.to_owned(),
                    manifest: unnamed.label.clone(),
                });
            }
            Ok(candidates)
        }
    }
}

/// Normalises a name recorded in the archive. A malformed one is an error
/// only when it would be used: with an explicit tag it is ignored.
fn normalize_name(
    source: &Source,
    name: &str,
    origin: &str,
    tag: Option<&str>,
) -> Result<Option<String>> {
    match name.parse::<Reference>() {
        Ok(r) => Ok(Some(r.name_in_store())),
        Err(e) if tag.is_some() => {
            tracing::debug!(name, error = %e, "ignoring malformed image name; a tag was given");
            Ok(None)
        }
        Err(e) => Err(Error::BadImage {
            image: source.path().display().to_string(),
            why: format!("{origin} {name:?} is not a valid image reference ({e}); pass a tag to import it under"),
        }),
    }
}

// ---- OCI layouts and archives ------------------------------------------------------

fn import_oci(
    store: &Store,
    source: &Source,
    tag: Option<&str>,
    limits: &UnpackLimits,
) -> Result<Vec<ImportedImage>> {
    let where_ = source.path().display().to_string();
    if source.exists("oci-layout") {
        #[derive(Deserialize)]
        struct Layout {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let layout: Layout = parse_json(&source.read_small("oci-layout")?, &where_, "oci-layout")?;
        if !layout.version.starts_with("1.") {
            return Err(Error::BadImage {
                image: where_,
                why: format!("unsupported OCI layout version {}", layout.version),
            });
        }
    }
    let index: ImageIndex = parse_json(&source.read_small("index.json")?, &where_, "index.json")?;

    let (os, arch) = host_platform();
    let mut available = Vec::new();
    let mut candidates: Vec<Candidate<Descriptor>> = Vec::new();
    for desc in index.manifests() {
        let mut names = Vec::new();
        if let Some(annotations) = desc.annotations() {
            if let Some(name) = NAME_ANNOTATIONS.iter().find_map(|k| annotations.get(*k)) {
                names.extend(normalize_name(source, name, "annotated name", tag)?);
            }
        }
        let Some(manifest) = resolve_manifest(source, desc, &mut available, 0)? else {
            continue;
        };
        match candidates
            .iter_mut()
            .find(|c| c.item.digest() == manifest.digest())
        {
            Some(existing) => {
                for n in names {
                    if !existing.names.contains(&n) {
                        existing.names.push(n);
                    }
                }
            }
            None => candidates.push(Candidate {
                label: names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| manifest.digest().to_string()),
                names,
                item: manifest,
            }),
        }
    }
    if candidates.is_empty() && !available.is_empty() {
        available.sort();
        available.dedup();
        return Err(Error::NoPlatform {
            image: where_,
            wanted: format!("{os}/{arch}"),
            available: available.join(", "),
        });
    }
    let chosen = choose(source.path(), candidates, tag)?;
    let mut imported = Vec::new();
    for candidate in chosen {
        let (manifest_digest, size_bytes, pins) =
            store_oci_image(store, source, &candidate, limits)?;
        for name in &candidate.names {
            store.tag_image(name, &manifest_digest, &pins)?;
            imported.push(ImportedImage {
                name: name.clone(),
                manifest_digest: manifest_digest.clone(),
                size_bytes,
            });
        }
    }
    Ok(imported)
}

/// Follows a descriptor from index.json to an image manifest: itself, or
/// through (nested) indexes, the host platform's entry. Descriptors of other
/// kinds (signatures, attestations) and other platforms yield `None`;
/// platforms seen are added to `available` for the error message.
fn resolve_manifest(
    source: &Source,
    desc: &Descriptor,
    available: &mut Vec<String>,
    depth: usize,
) -> Result<Option<Descriptor>> {
    if let Some(platform) = desc.platform() {
        let (os, arch) = host_platform();
        let p_os = platform.os().to_string();
        let p_arch = platform.architecture().to_string();
        if p_os != os || p_arch != arch {
            available.push(match platform.variant() {
                Some(v) => format!("{p_os}/{p_arch}/{v}"),
                None => format!("{p_os}/{p_arch}"),
            });
            return Ok(None);
        }
    }
    match desc.media_type() {
        MediaType::ImageManifest => return Ok(Some(desc.clone())),
        MediaType::Other(t) if t == DOCKER_MANIFEST_V2 => return Ok(Some(desc.clone())),
        MediaType::ImageIndex => {}
        MediaType::Other(t) if t == DOCKER_MANIFEST_LIST => {}
        other => {
            tracing::debug!(media_type = %other, digest = %desc.digest(), "skipping non-image index entry");
            return Ok(None);
        }
    }
    let where_ = source.path().display().to_string();
    if depth >= MAX_INDEX_DEPTH {
        return Err(Error::BadImage {
            image: where_,
            why: format!("image indexes nest more than {MAX_INDEX_DEPTH} deep"),
        });
    }
    let digest = descriptor_digest(desc, &where_)?;
    let bytes = read_verified(source, &digest, desc.size(), &where_)?;
    let index: ImageIndex = parse_json(&bytes, &where_, &format!("image index {digest}"))?;
    // Several entries can match (variants); the first is the registry's
    // preferred one, as docker and containerd take it.
    let mut found = None;
    for child in index.manifests() {
        if let Some(m) = resolve_manifest(source, child, available, depth + 1)? {
            found.get_or_insert(m);
        }
    }
    Ok(found)
}

/// Copies one image's blobs into the store. Returns the manifest digest,
/// the image size and the blobs to pin.
fn store_oci_image(
    store: &Store,
    source: &Source,
    candidate: &Candidate<Descriptor>,
    limits: &UnpackLimits,
) -> Result<(Digest, u64, Vec<Digest>)> {
    let image = &candidate.label;
    let desc = &candidate.item;
    let manifest_digest = descriptor_digest(desc, image)?;
    copy_blob(store, source, &manifest_digest, Some(desc.size()), image)?;
    let manifest_bytes = store.read_blob(&manifest_digest)?;
    let manifest: ImageManifest = parse_json(
        &manifest_bytes,
        image,
        &format!("manifest {manifest_digest}"),
    )?;
    match manifest.config().media_type() {
        MediaType::ImageConfig => {}
        MediaType::Other(t) if t == DOCKER_CONFIG => {}
        other => {
            return Err(Error::BadImage {
                image: image.clone(),
                why: format!("not a container image: its config has media type {other}"),
            })
        }
    }
    let mut pins = vec![manifest_digest.clone()];
    let mut size = 0;
    for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let digest = descriptor_digest(blob, image)?;
        copy_blob(store, source, &digest, Some(blob.size()), image)?;
        size += blob.size();
        if !pins.contains(&digest) {
            pins.push(digest);
        }
    }
    let config_digest = descriptor_digest(manifest.config(), image)?;
    let config = store.read_blob(&config_digest)?;
    check_config(&config, image)?;
    let layers = manifest
        .layers()
        .iter()
        .map(|l| descriptor_digest(l, image))
        .collect::<Result<Vec<_>>>()?;
    verify_layers(store, image, &config, &layers, limits)?;
    Ok((manifest_digest, size, pins))
}

/// Checks an image's stored layers against its config, as `docker load`
/// does: one diff_id per layer, each the sha256 of the layer's uncompressed
/// tar. Each layer is decompressed through the limits, so a decompression
/// bomb is refused once it passes them, having written nothing.
fn verify_layers(
    store: &Store,
    image: &str,
    config: &[u8],
    layers: &[Digest],
    limits: &UnpackLimits,
) -> Result<()> {
    let file: crate::image::ConfigFile = parse_json(config, image, "image config")?;
    let rootfs = file.rootfs.ok_or_else(|| Error::BadImage {
        image: image.to_owned(),
        why: "its config has no rootfs (the diff_id of each layer)".into(),
    })?;
    let diff_ids = rootfs.diff_ids_for(layers.len(), image)?;
    let budget = ImageBudget::new();
    for (index, (layer, expected)) in layers.iter().zip(&diff_ids).enumerate() {
        let in_layer = |e: Error| Error::Layer {
            layer: format!("{index} ({layer}) of image {image}"),
            source: Box::new(e),
        };
        // Stored (and so checked against its digest) just now.
        let path = store.blob_path(layer);
        let blob = File::open(&path)
            .ctx("open blob", &path)
            .map_err(in_layer)?;
        let (compression, reader) =
            compression::decompress(io::BufReader::with_capacity(256 * 1024, blob))
                .map_err(in_layer)?;
        let meter = Meter::new(*limits, Some(budget.clone()));
        let mut reader = MeteredReader {
            inner: reader,
            meter: &meter,
        };
        io::copy(&mut reader, &mut io::sink()).map_err(|source| match meter.tripped() {
            Some(limit) => Error::TooLarge {
                limit,
                value: meter.value(limit),
                at: format!(
                    "in layer {index} ({layer}) of image {image}, after {} bytes",
                    meter.used()
                ),
            },
            None => in_layer(Error::CorruptLayer {
                context: compression.name().to_owned(),
                source,
            }),
        })?;
        let actual = meter
            .finish_digest()
            .expect("the meter hashes until finished");
        if &actual != expected {
            return Err(Error::DiffIdMismatch {
                image: image.to_owned(),
                index,
                layer: layer.to_string(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    // The entry count (max_layer_entries) is checked when the layers are
    // unpacked.
    Ok(())
}

fn descriptor_digest(desc: &Descriptor, image: &str) -> Result<Digest> {
    desc.digest()
        .to_string()
        .parse()
        .map_err(|_| Error::BadImage {
            image: image.to_owned(),
            why: format!(
                "unsupported digest {} (kiln handles sha256 only)",
                desc.digest()
            ),
        })
}

fn blob_member(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Copies blob `digest` from the source into the store, verifying it.
fn copy_blob(
    store: &Store,
    source: &Source,
    digest: &Digest,
    size: Option<u64>,
    image: &str,
) -> Result<()> {
    let member = blob_member(digest);
    let actual_size = source.size(&member)?.ok_or_else(|| Error::BadImage {
        image: image.to_owned(),
        why: format!("blob {digest} is missing from {}", source.path().display()),
    })?;
    if let Some(size) = size {
        if size != actual_size {
            return Err(Error::BadImage {
                image: image.to_owned(),
                why: format!("blob {digest} is {actual_size} bytes but its descriptor says {size}"),
            });
        }
    }
    let mut reader = source.open(&member)?;
    store
        .put_blob_from(&mut reader, Some(digest))
        .map_err(|e| blob_error(e, image, digest))?;
    Ok(())
}

fn blob_error(e: kiln_store::Error, image: &str, digest: &Digest) -> Error {
    match e {
        kiln_store::Error::DigestMismatch { actual, .. } => Error::BlobMismatch {
            image: image.to_owned(),
            digest: digest.to_string(),
            actual,
        },
        e => e.into(),
    }
}

/// Reads a small blob from the source and checks it against its digest.
fn read_verified(source: &Source, digest: &Digest, size: u64, image: &str) -> Result<Vec<u8>> {
    let bytes = source.read_small(&blob_member(digest))?;
    if bytes.len() as u64 != size {
        return Err(Error::BadImage {
            image: image.to_owned(),
            why: format!(
                "blob {digest} is {} bytes but its descriptor says {size}",
                bytes.len()
            ),
        });
    }
    let actual = Digest::of(&bytes);
    if &actual != digest {
        return Err(Error::BlobMismatch {
            image: image.to_owned(),
            digest: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], image: &str, what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadImage {
        image: image.to_owned(),
        why: format!("{what} is not valid: {e}"),
    })
}

/// Refuses configs that are not image configurations, and warns about a
/// foreign architecture (docker save archives carry no platform to filter on).
fn check_config(bytes: &[u8], image: &str) -> Result<()> {
    let config: crate::image::ConfigFile = parse_json(bytes, image, "image config")?;
    let (os, arch) = host_platform();
    if let (Some(o), Some(a)) = (&config.os, &config.architecture) {
        if o != os || a != arch {
            tracing::warn!(image, platform = %format!("{o}/{a}"), host = %format!("{os}/{arch}"),
                "image is for another platform");
        }
    }
    Ok(())
}

// ---- docker save --------------------------------------------------------------------

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn import_docker(
    store: &Store,
    source: &Source,
    tag: Option<&str>,
    limits: &UnpackLimits,
) -> Result<Vec<ImportedImage>> {
    let where_ = source.path().display().to_string();
    let entries: Vec<DockerManifestEntry> = parse_json(
        &source.read_small("manifest.json")?,
        &where_,
        "manifest.json",
    )?;
    let mut candidates = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let mut names = Vec::new();
        for name in entry.repo_tags.iter().flatten() {
            if let Some(name) = normalize_name(source, name, "RepoTags entry", tag)? {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        candidates.push(Candidate {
            label: names
                .first()
                .cloned()
                .unwrap_or_else(|| format!("#{} ({})", i + 1, entry.config)),
            names,
            item: entry,
        });
    }
    let chosen = choose(source.path(), candidates, tag)?;
    let mut imported = Vec::new();
    for candidate in chosen {
        let (manifest_digest, size_bytes, pins) =
            store_docker_image(store, source, &candidate, limits)?;
        for name in &candidate.names {
            store.tag_image(name, &manifest_digest, &pins)?;
            imported.push(ImportedImage {
                name: name.clone(),
                manifest_digest: manifest_digest.clone(),
                size_bytes,
            });
        }
    }
    Ok(imported)
}

/// The digest a docker save member name promises, if it encodes one
/// (`<hex>.json` configs, Docker 25+'s `blobs/sha256/<hex>`).
fn digest_in_name(member: &str) -> Option<Digest> {
    let file = member.rsplit('/').next()?;
    let hex = file.strip_suffix(".json").unwrap_or(file);
    let digest: Digest = format!("sha256:{hex}").parse().ok()?;
    (member.ends_with(".json") || member.starts_with("blobs/sha256/")).then_some(digest)
}

/// Stores a docker save image's config and layers, computing their digests,
/// and synthesises the OCI manifest docker save does not include.
fn store_docker_image(
    store: &Store,
    source: &Source,
    candidate: &Candidate<DockerManifestEntry>,
    limits: &UnpackLimits,
) -> Result<(Digest, u64, Vec<Digest>)> {
    let image = &candidate.label;
    let entry = &candidate.item;
    let store_member = |member: &str| -> Result<(Digest, u64)> {
        let size = source.size(member)?.ok_or_else(|| Error::BadImage {
            image: image.clone(),
            why: format!("{member} is listed in manifest.json but missing from the archive"),
        })?;
        let expected = digest_in_name(member);
        let mut reader = source.open(member)?;
        let digest = match &expected {
            Some(d) => store
                .put_blob_from(&mut reader, Some(d))
                .map_err(|e| blob_error(e, image, d))?,
            None => store.put_blob_from(&mut reader, None)?,
        };
        Ok((digest, size))
    };
    let (config_digest, config_size) = store_member(&entry.config)?;
    let config = store.read_blob(&config_digest)?;
    check_config(&config, image)?;
    let mut layers = Vec::new();
    let mut layer_digests = Vec::new();
    for member in &entry.layers {
        let (digest, size) = store_member(member)?;
        layer_digests.push(digest.clone());
        let mut head = Vec::new();
        source
            .open(member)?
            .take(10)
            .read_to_end(&mut head)
            .ctx("read", source.path().join(member))?;
        let compression = Compression::sniff(&head).map_err(|e| Error::Layer {
            layer: format!("{member} of {image}"),
            source: Box::new(e),
        })?;
        layers.push(Descriptor::new(
            MediaType::from(compression.layer_media_type()),
            size,
            oci_digest(&digest)?,
        ));
    }
    verify_layers(store, image, &config, &layer_digests, limits)?;
    let size_bytes = config_size + layers.iter().map(|l| l.size()).sum::<u64>();
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_size,
            oci_digest(&config_digest)?,
        ))
        .layers(layers)
        .build()
        .map_err(|e| Error::BadImage {
            image: image.clone(),
            why: format!("cannot build synthesised manifest: {e}"),
        })?;
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::BadImage {
        image: image.clone(),
        why: format!("cannot encode synthesised manifest: {e}"),
    })?;
    let manifest_digest = store.put_blob(&bytes)?;
    let mut pins = vec![manifest_digest.clone(), config_digest];
    for layer in manifest.layers() {
        let d = descriptor_digest(layer, image)?;
        if !pins.contains(&d) {
            pins.push(d);
        }
    }
    Ok((manifest_digest, size_bytes, pins))
}

fn oci_digest(d: &Digest) -> Result<oci_spec::image::Digest> {
    d.to_string().parse().map_err(|e| Error::BadImage {
        image: d.to_string(),
        why: format!("digest not accepted by oci-spec: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths() {
        assert_eq!(
            normalize("./blobs//sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("a/../b"), None);
        assert_eq!(normalize("./"), None);
    }

    #[test]
    fn digests_in_docker_names() {
        let hex = "a".repeat(64);
        assert!(digest_in_name(&format!("{hex}.json")).is_some());
        assert!(digest_in_name(&format!("blobs/sha256/{hex}")).is_some());
        assert!(digest_in_name(&format!("{hex}/layer.tar")).is_none());
        assert!(digest_in_name("config.json").is_none());
    }
}
