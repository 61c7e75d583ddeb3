//! Saving images from the store into one tar that is both an OCI archive
//! and a `docker save` tarball.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use kiln_store::{Digest, DigestWriter, Store};
use serde::Serialize;
use tar::{EntryType, Header};

use crate::build::{ManifestIn, MANIFEST_MEDIA_TYPE};
use crate::error::{Error, IoContext, Result};
use crate::{Reference, DEFAULT_DOMAIN};

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// containerd's and Docker 25+'s annotation for an image's full name.
const FULL_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation; in an image layout it holds just the tag.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const COPY_BUFFER: usize = 256 * 1024;

/// Writes `images` (canonical name, manifest digest) from the store to
/// `out` as one tar that is an OCI archive (`oci-layout`, `index.json`,
/// `blobs/sha256/...`) and loadable by `docker load` (`manifest.json`).
///
/// The tar is deterministic: members sorted by path, mtime 0, owned by
/// root, each blob once. It is written next to `out` and renamed into
/// place, so a failure leaves `out` as it was. Every blob is checked
/// against its digest as it is copied.
pub fn save(store: &Store, images: &[(String, Digest)], out: &Path) -> Result<()> {
    if images.is_empty() {
        return Err(Error::BadImage {
            image: out.display().to_string(),
            why: "no images given to save".into(),
        });
    }
    let plan = plan(store, images)?;
    let index = to_json(&plan.index())?;
    let docker_manifest = to_json(&plan.docker_manifest())?;

    if out.is_dir() {
        return Err(Error::Io {
            action: "save images to",
            path: out.to_owned(),
            source: io::Error::other("it is a directory; give a file name"),
        });
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".kiln-tmp")
        .tempfile_in(dir)
        .ctx("create a temporary file in", dir)?;
    let mut builder = tar::Builder::new(BufWriter::with_capacity(COPY_BUFFER, staging));

    // Member paths sort as: blobs/, blobs/sha256/, blobs/sha256/<hex>...,
    // index.json, manifest.json, oci-layout.
    append_dir(&mut builder, "blobs/", out)?;
    append_dir(&mut builder, "blobs/sha256/", out)?;
    for (digest, image) in &plan.blobs {
        copy_blob(&mut builder, store, digest, image, out)?;
    }
    append_bytes(&mut builder, "index.json", &index, out)?;
    append_bytes(&mut builder, "manifest.json", &docker_manifest, out)?;
    append_bytes(&mut builder, "oci-layout", OCI_LAYOUT, out)?;

    let buffered = builder.into_inner().ctx("write", out)?;
    let staging = buffered.into_inner().map_err(|e| Error::Io {
        action: "write",
        path: out.to_owned(),
        source: e.into_error(),
    })?;
    staging.as_file().sync_all().ctx("sync", staging.path())?;
    set_mode(staging.path(), 0o644)?;
    staging
        .persist(out)
        .map_err(|e| e.error)
        .ctx("put in place", out)?;
    // The rename is only durable once the directory is on disk too.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("sync", dir)?;
    tracing::debug!(out = %out.display(), images = images.len(), blobs = plan.blobs.len(), "images saved");
    Ok(())
}

/// One image as it goes into the archive.
struct SavedImage {
    reference: Reference,
    manifest: Digest,
    manifest_size: u64,
    manifest_media_type: String,
    config: Digest,
    layers: Vec<Digest>,
}

struct Plan {
    images: Vec<SavedImage>,
    /// Every blob, each once, sorted, with the first image that needs it
    /// (for messages).
    blobs: BTreeMap<Digest, String>,
}

/// Reads each image's manifest and works out what goes in the archive.
fn plan(store: &Store, images: &[(String, Digest)]) -> Result<Plan> {
    let mut saved = Vec::new();
    let mut blobs = BTreeMap::new();
    for (name, manifest_digest) in images {
        let reference: Reference = name.parse()?;
        if reference.digest().is_some_and(|d| d != manifest_digest) {
            return Err(Error::InvalidReference {
                reference: name.clone(),
                why: format!("its digest is not that of the manifest given ({manifest_digest})"),
            });
        }
        let label = reference.name_in_store();
        let bytes = store
            .read_blob(manifest_digest)
            .map_err(|e| blob_error(&label, manifest_digest, e))?;
        let manifest: ManifestIn = serde_json::from_slice(&bytes).map_err(|e| Error::BadImage {
            image: label.clone(),
            why: format!("manifest {manifest_digest} is not valid: {e}"),
        })?;
        for digest in std::iter::once(manifest_digest)
            .chain([&manifest.config.digest])
            .chain(manifest.layers.iter().map(|l| &l.digest))
        {
            blobs.entry(digest.clone()).or_insert_with(|| label.clone());
        }
        saved.push(SavedImage {
            reference,
            manifest: manifest_digest.clone(),
            manifest_size: bytes.len() as u64,
            manifest_media_type: manifest
                .media_type
                .unwrap_or_else(|| MANIFEST_MEDIA_TYPE.to_owned()),
            config: manifest.config.digest,
            layers: manifest.layers.into_iter().map(|l| l.digest).collect(),
        });
    }
    Ok(Plan {
        images: saved,
        blobs,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexOut<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<IndexEntry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry<'a> {
    media_type: &'a str,
    digest: &'a Digest,
    size: u64,
    /// A BTreeMap, so the keys come out sorted.
    annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

impl Plan {
    /// index.json: one entry per name, in the order given.
    fn index(&self) -> IndexOut<'_> {
        let mut seen = Vec::new();
        let mut manifests = Vec::new();
        for image in &self.images {
            let name = image.reference.name_in_store();
            if seen.contains(&(name.clone(), &image.manifest)) {
                continue;
            }
            seen.push((name.clone(), &image.manifest));
            let mut annotations = BTreeMap::new();
            annotations.insert(FULL_NAME_ANNOTATION, name);
            if let Some(tag) = image.reference.tag() {
                annotations.insert(REF_NAME_ANNOTATION, tag.to_owned());
            }
            manifests.push(IndexEntry {
                media_type: &image.manifest_media_type,
                digest: &image.manifest,
                size: image.manifest_size,
                annotations,
            });
        }
        IndexOut {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE,
            manifests,
        }
    }

    /// manifest.json: one entry per image (by manifest), listing all of its
    /// tags in the short form `docker images` shows.
    fn docker_manifest(&self) -> Vec<DockerManifestEntry> {
        let mut entries: Vec<DockerManifestEntry> = Vec::new();
        let mut by_manifest: HashMap<&Digest, usize> = HashMap::new();
        for image in &self.images {
            let i = *by_manifest.entry(&image.manifest).or_insert_with(|| {
                entries.push(DockerManifestEntry {
                    config: blob_member(&image.config),
                    repo_tags: Vec::new(),
                    layers: image.layers.iter().map(blob_member).collect(),
                });
                entries.len() - 1
            });
            if let Some(tag) = docker_repo_tag(&image.reference) {
                if !entries[i].repo_tags.contains(&tag) {
                    entries[i].repo_tags.push(tag);
                }
            }
        }
        entries
    }
}

/// `docker.io/library/app:1` as docker spells it: `app:1`. Names without
/// a tag (digest only) have no RepoTags entry.
fn docker_repo_tag(reference: &Reference) -> Option<String> {
    let tag = reference.tag()?;
    let repository = if reference.domain() == DEFAULT_DOMAIN {
        let path = reference.path();
        match path.strip_prefix("library/") {
            Some(short) if !short.contains('/') => short.to_owned(),
            _ => path.to_owned(),
        }
    } else {
        reference.repository()
    };
    Some(format!("{repository}:{tag}"))
}

fn blob_member(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::BuildImage {
        why: format!("cannot encode the archive index: {e}"),
    })
}

// ---- tar output ------------------------------------------------------------

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header.set_mtime(0);
    header
}

fn append_dir<W: Write>(builder: &mut tar::Builder<W>, path: &str, out: &Path) -> Result<()> {
    let mut header = header(EntryType::Directory, 0o755, 0);
    builder
        .append_data(&mut header, path, io::empty())
        .ctx("write", out)
}

fn append_bytes<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    out: &Path,
) -> Result<()> {
    let mut header = header(EntryType::Regular, 0o644, bytes.len() as u64);
    builder
        .append_data(&mut header, path, bytes)
        .ctx("write", out)
}

/// Copies one blob from the store into the archive, hashing it on the way;
/// a blob that is missing, unreadable or does not match its digest fails
/// the save with an error naming the image and the blob.
fn copy_blob<W: Write>(
    builder: &mut tar::Builder<W>,
    store: &Store,
    digest: &Digest,
    image: &str,
    out: &Path,
) -> Result<()> {
    let path = store.blob_path(digest);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(blob_error(
                image,
                digest,
                kiln_store::Error::MissingBlob(digest.to_string()),
            ))
        }
        Err(e) => {
            return Err(blob_problem(
                image,
                digest,
                format!("cannot be opened: {e}"),
            ))
        }
    };
    let size = file
        .metadata()
        .map_err(|e| blob_problem(image, digest, format!("cannot be read: {e}")))?
        .len();
    let mut reader = VerifyingReader {
        inner: file,
        remaining: size,
        digest: DigestWriter::default(),
        failed: None,
    };
    let mut header = header(EntryType::Regular, 0o644, size);
    if let Err(e) = builder.append_data(&mut header, blob_member(digest), &mut reader) {
        return Err(match reader.failed.take() {
            Some(why) => blob_problem(image, digest, format!("cannot be read: {why}")),
            None => Error::Io {
                action: "write",
                path: out.to_owned(),
                source: e,
            },
        });
    }
    let actual = reader.digest.finish();
    if &actual != digest {
        // Let the store see it too: it removes a corrupt blob, so the next
        // pull or import fetches it again.
        let _ = store.verify_blob(digest);
        return Err(blob_problem(
            image,
            digest,
            format!(
                "is corrupt in the store (its content hashes to {actual}); it was removed, pull or import the image again"
            ),
        ));
    }
    Ok(())
}

fn blob_error(image: &str, digest: &Digest, e: kiln_store::Error) -> Error {
    let problem = match e {
        kiln_store::Error::MissingBlob(_) => {
            "is not in the store; pull or import the image again".to_owned()
        }
        kiln_store::Error::CorruptBlob { actual, .. } => format!(
            "is corrupt in the store (its content hashes to {actual}); it was removed, pull or import the image again"
        ),
        other => format!("cannot be read: {other}"),
    };
    blob_problem(image, digest, problem)
}

fn blob_problem(image: &str, digest: &Digest, problem: String) -> Error {
    Error::SaveBlob {
        image: image.to_owned(),
        blob: digest.to_string(),
        problem,
    }
}

/// Reads exactly the size the tar header promised, hashing as it goes, and
/// remembers a read failure so it is reported against the blob rather than
/// the output file.
struct VerifyingReader {
    inner: File,
    remaining: u64,
    digest: DigestWriter,
    failed: Option<String>,
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(0) => {
                let why = "it shrank while being copied".to_owned();
                self.failed = Some(why.clone());
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failed = Some(e.to_string());
                return Err(e);
            }
        };
        self.digest.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .ctx("set permissions on", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_in_docker_spelling() {
        let tag = |s: &str| docker_repo_tag(&s.parse().unwrap());
        assert_eq!(tag("app:1").as_deref(), Some("app:1"));
        assert_eq!(tag("docker.io/library/app:1").as_deref(), Some("app:1"));
        assert_eq!(tag("team/app").as_deref(), Some("team/app:latest"));
        assert_eq!(
            tag("localhost:5000/app:2").as_deref(),
            Some("localhost:5000/app:2")
        );
        let digest = format!("app@sha256:{}", "a".repeat(64));
        assert_eq!(tag(&digest), None);
    }
}
