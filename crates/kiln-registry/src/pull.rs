//! Resolving references to manifest digests, and pulling images into the
//! store.

use std::io::Write;

use futures::{StreamExt, TryStreamExt};
use kiln_oci::Reference;
use kiln_store::{BlobWriter, Digest, Store};
use oci_client::client::BlobResponse;

use crate::manifest::{self, Blob, ImageManifest, Manifest, Rejected, ACCEPTED};
use crate::session::{classify, Access, Failure, Session};
use crate::{host::RegistryHost, Error, RegistryOptions};

/// How deep image indexes may nest before kiln gives up.
const MAX_INDEX_DEPTH: usize = 4;
/// Bytes between two [`PullProgress::Received`] events for one blob.
const PROGRESS_STEP: u64 = 256 << 10;

/// An image pulled into the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The canonical name it is tagged under (`Reference::name_in_store`).
    pub name: String,
    /// The host platform's image manifest (never an index).
    pub manifest: Digest,
}

/// What a pull is doing, for a front end to draw. Blob events carry the
/// blob's digest; a blob already in the store gets `Present` and nothing
/// else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullProgress {
    /// The manifest to pull is known: `blobs` blobs (config and layers)
    /// of `bytes` bytes in all.
    Resolved {
        manifest: Digest,
        blobs: usize,
        bytes: u64,
    },
    /// Already in the store: not fetched.
    Present { digest: Digest, size: u64 },
    /// A fetch begins.
    Started { digest: Digest, size: u64 },
    /// `received` of `size` bytes are in.
    Received {
        digest: Digest,
        received: u64,
        size: u64,
    },
    /// Fetched, verified and stored.
    Done { digest: Digest, size: u64 },
    /// Attempt `attempt` failed with `error`; the next one resumes where
    /// this one stopped when the registry allows it.
    Retrying {
        digest: Digest,
        attempt: u32,
        error: String,
    },
}

async fn open<'o>(
    reference: &Reference,
    access: Access,
    options: &'o RegistryOptions,
) -> Result<Session<'o>, Error> {
    let host = RegistryHost::for_domain(reference.domain())?;
    Session::open(host, reference.path(), access, options).await
}

/// The digest of the image manifest `reference` names for this machine's
/// platform. A tag naming an image index resolves to the host platform's
/// manifest in it, which is what kiln pins; so does a digest naming an
/// index. A digest naming an image manifest is returned once the registry
/// has shown it has it.
pub async fn resolve(reference: &Reference, options: &RegistryOptions) -> Result<Digest, Error> {
    let session = open(reference, Access::Pull, options).await?;
    Ok(fetch_image_manifest(&session, reference).await?.digest)
}

/// A verified image manifest, as served.
struct Fetched {
    digest: Digest,
    bytes: bytes::Bytes,
    manifest: ImageManifest,
}

async fn fetch_image_manifest(
    session: &Session<'_>,
    reference: &Reference,
) -> Result<Fetched, Error> {
    let label = reference.to_string();
    let mut target = match (reference.digest(), reference.tag()) {
        (Some(digest), _) => digest.to_string(),
        (None, Some(tag)) => tag.to_owned(),
        (None, None) => "latest".to_owned(),
    };
    let mut expected = reference.digest().cloned();
    for _ in 0..=MAX_INDEX_DEPTH {
        let (bytes, digest) = fetch_manifest(
            session,
            reference.path(),
            &target,
            expected.as_ref(),
            &label,
        )
        .await?;
        match manifest::parse(&bytes) {
            Ok(Manifest::Image(manifest)) => {
                return Ok(Fetched {
                    digest,
                    bytes,
                    manifest,
                })
            }
            Ok(Manifest::Index(entries)) => {
                let entry = manifest::choose_platform(&entries).map_err(|available| {
                    let (os, arch) = kiln_oci::host_platform();
                    Error::NoPlatform {
                        reference: label.clone(),
                        wanted: format!("{os}/{arch}"),
                        available,
                    }
                })?;
                tracing::debug!(image = %label, index = %digest, manifest = %entry.digest,
                    "chose the host platform's manifest");
                target = entry.digest.to_string();
                expected = Some(entry.digest.clone());
            }
            Err(Rejected::Unsupported(media_type)) => {
                return Err(Error::UnsupportedManifest {
                    reference: label,
                    media_type,
                })
            }
            Err(Rejected::Bad(why)) => {
                return Err(Error::BadManifest {
                    reference: label,
                    why: format!("manifest {digest}: {why}"),
                })
            }
        }
    }
    Err(Error::BadManifest {
        reference: label,
        why: format!("image indexes nest more than {MAX_INDEX_DEPTH} deep"),
    })
}

/// Fetches one manifest and checks its bytes: against `expected` when it
/// was asked for by digest, else against the registry's
/// `Docker-Content-Digest`.
async fn fetch_manifest(
    session: &Session<'_>,
    repository: &str,
    target: &str,
    expected: Option<&Digest>,
    label: &str,
) -> Result<(bytes::Bytes, Digest), Error> {
    let oci_ref = &session.reference(repository, target);
    let what = if target.starts_with("sha256:") && !label.ends_with(target) {
        format!("manifest {target} of {label}")
    } else {
        format!("manifest {label}")
    };
    let (bytes, served) = session
        .retry("fetching the manifest", &what, |client, auth| async move {
            client
                .pull_manifest_raw(oci_ref, &auth, ACCEPTED)
                .await
                .map_err(classify)
        })
        .await?;
    let actual = Digest::of(&bytes);
    let promised = expected.cloned().or_else(|| served.parse::<Digest>().ok());
    if let Some(promised) = promised {
        if promised != actual {
            return Err(Error::DigestMismatch {
                what,
                expected: promised.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok((bytes, actual))
}

/// Pulls `reference` into the store: its host platform's manifest, config
/// and layers, each verified against its digest, then tags it under
/// `reference.name_in_store()` exactly as `kiln image import` would, so
/// `kiln_oci::load_image` finds it. Blobs already in the store are not
/// fetched; a blob whose transfer breaks is resumed with a `Range`
/// request. Nothing is tagged unless every blob arrived intact.
pub async fn pull(
    store: &Store,
    reference: &Reference,
    options: &RegistryOptions,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<Pulled, Error> {
    let session = open(reference, Access::Pull, options).await?;
    let image = fetch_image_manifest(&session, reference).await?;
    let blobs = image.manifest.blobs();
    progress(PullProgress::Resolved {
        manifest: image.digest.clone(),
        blobs: blobs.len(),
        bytes: blobs.iter().map(|b| b.size).sum(),
    });
    let label = reference.to_string();
    futures::stream::iter(
        blobs
            .iter()
            .map(|blob| fetch_blob(&session, store, reference.path(), &label, blob, progress)),
    )
    .buffer_unordered(options.parallel_blobs.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    store.put_blob_from(&mut image.bytes.as_ref(), Some(&image.digest))?;
    let mut pins = vec![image.digest.clone()];
    pins.extend(blobs.into_iter().map(|b| b.digest));
    let name = reference.name_in_store();
    store.tag_image(&name, &image.digest, &pins)?;
    tracing::info!(image = %name, manifest = %image.digest, "pulled");
    Ok(Pulled {
        name,
        manifest: image.digest,
    })
}

/// One blob's transfer, kept across attempts so a retry resumes it.
struct Download<'s> {
    writer: Option<BlobWriter<'s>>,
    reported: u64,
}

async fn fetch_blob(
    session: &Session<'_>,
    store: &Store,
    repository: &str,
    label: &str,
    blob: &Blob,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<(), Error> {
    let digest = &blob.digest;
    if store.has_blob(digest) {
        progress(PullProgress::Present {
            digest: digest.clone(),
            size: blob.size,
        });
        return Ok(());
    }
    progress(PullProgress::Started {
        digest: digest.clone(),
        size: blob.size,
    });
    let what = format!("blob {digest} of {label}");
    let oci_ref = session.reference(repository, "latest");
    let mut download = Download {
        writer: None,
        reported: 0,
    };
    let mut attempt = 1;
    let mut refreshed = false;
    loop {
        let (client, _) = session.current();
        match download.run(&client, &oci_ref, blob, store, progress).await {
            Ok(()) => break,
            Err(Failure::Transient(message)) if attempt < session.options().attempts => {
                let error = session.scrub(&message);
                tracing::warn!(blob = %digest, attempt, %error, "blob transfer failed; retrying");
                progress(PullProgress::Retrying {
                    digest: digest.clone(),
                    attempt,
                    error,
                });
                session.backoff(attempt).await;
                attempt += 1;
            }
            Err(Failure::Unauthorized) if !refreshed && session.refresh().await? => {
                refreshed = true;
            }
            // oci-client's own check failed; the store's check below says
            // what the bytes hash to.
            Err(Failure::Mismatch { .. }) if download.writer.is_some() => break,
            Err(failure) => return Err(session.error("fetching a blob", &what, failure, attempt)),
        }
    }
    let writer = download
        .writer
        .take()
        .ok_or_else(|| Error::Internal(format!("{what}: transfer ended without data")))?;
    match writer.commit(Some(digest)) {
        Ok(_) => {}
        Err(kiln_store::Error::DigestMismatch { expected, actual }) => {
            return Err(Error::DigestMismatch {
                what,
                expected,
                actual,
            })
        }
        Err(e) => return Err(e.into()),
    }
    progress(PullProgress::Done {
        digest: digest.clone(),
        size: blob.size,
    });
    Ok(())
}

impl<'s> Download<'s> {
    /// One attempt: from the start, or from the bytes already received.
    async fn run(
        &mut self,
        client: &oci_client::Client,
        oci_ref: &oci_client::Reference,
        blob: &Blob,
        store: &'s Store,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), Failure> {
        let digest = blob.digest.to_string();
        let offset = self.writer.as_ref().map_or(0, |w| w.len());
        let mut stream = if offset == 0 {
            self.writer = Some(store.blob_writer()?);
            client
                .pull_blob_stream(oci_ref, digest.as_str())
                .await
                .map_err(classify)?
        } else {
            let response = client
                .pull_blob_stream_partial(oci_ref, digest.as_str(), offset, None)
                .await
                .map_err(classify)?;
            match response {
                BlobResponse::Partial(stream) => {
                    let remaining = blob.size.saturating_sub(offset);
                    if let Some(length) = stream.content_length.filter(|&n| n != remaining) {
                        self.writer = None;
                        return Err(Failure::Transient(format!(
                            "asked for the last {remaining} bytes, the registry sent {length}; starting over"
                        )));
                    }
                    tracing::debug!(blob = %blob.digest, offset, "resuming blob transfer");
                    stream
                }
                BlobResponse::Full(stream) => {
                    tracing::debug!(blob = %blob.digest, "registry ignored the Range request; starting over");
                    self.writer = Some(store.blob_writer()?);
                    stream
                }
            }
        };
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| Failure::Error(Error::Internal("no blob writer".into())))?;
        if writer.len() < self.reported {
            self.reported = 0;
        }
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(e.into()))?;
            if writer.len() + chunk.len() as u64 > blob.size {
                return Err(Failure::Fatal(format!(
                    "it sent more than the {} bytes listed for blob {}",
                    blob.size, blob.digest
                )));
            }
            writer.write_all(&chunk).map_err(|source| {
                Failure::Error(Error::Store(kiln_store::Error::Io {
                    action: "write blob into",
                    path: store.root().join("tmp"),
                    source,
                }))
            })?;
            let received = writer.len();
            if received - self.reported >= PROGRESS_STEP || received == blob.size {
                self.reported = received;
                progress(PullProgress::Received {
                    digest: blob.digest.clone(),
                    received,
                    size: blob.size,
                });
            }
        }
        if writer.len() != blob.size {
            return Err(Failure::Fatal(format!(
                "it sent {} bytes of blob {}, whose descriptor lists {}",
                writer.len(),
                blob.digest,
                blob.size
            )));
        }
        Ok(())
    }
}
