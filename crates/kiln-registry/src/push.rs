//! Pushing an image of the store to a registry.

use futures::{Stream, StreamExt, TryStreamExt};
use kiln_oci::Reference;
use kiln_store::{Digest, Store};
use oci_client::errors::OciDistributionError;
use tokio::io::AsyncReadExt;

use crate::manifest::{self, Blob, Manifest, Rejected};
use crate::session::{classify, Access, Failure, Session};
use crate::{host::RegistryHost, Error, RegistryOptions};

/// How much of a blob is read from the store per piece of the upload.
const UPLOAD_CHUNK: usize = 1 << 20;

/// Pushes the image whose manifest is `manifest` (a blob in the store) to
/// `target`, and returns the manifest digest, which is the stored one: the
/// manifest goes up byte for byte with its own media type.
///
/// Each blob (config, layers) is first looked for with `HEAD`; only the
/// ones the registry lacks are uploaded, each streamed from the store
/// (verified first) without holding it in memory.
pub async fn push(
    store: &Store,
    manifest: &Digest,
    target: &Reference,
    options: &RegistryOptions,
) -> Result<Digest, Error> {
    let label = target.to_string();
    let bytes = store.read_blob(manifest)?;
    let image = match manifest::parse(&bytes) {
        Ok(Manifest::Image(image)) => image,
        Ok(Manifest::Index(_)) => {
            return Err(Error::BadManifest {
                reference: label,
                why: format!("{manifest} is an image index; kiln pushes single images"),
            })
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
                why: format!("manifest {manifest} in the store: {why}"),
            })
        }
    };
    if let Some(named) = target.digest() {
        if named != manifest {
            return Err(Error::BadManifest {
                reference: label,
                why: format!(
                    "the target names digest {named} but the image's manifest is {manifest}"
                ),
            });
        }
    }
    let content_type = reqwest::header::HeaderValue::from_str(&image.media_type).map_err(|_| {
        Error::BadManifest {
            reference: label.clone(),
            why: format!("its media type {:?} cannot be sent", image.media_type),
        }
    })?;
    let blobs = image.blobs();
    for blob in &blobs {
        if !store.has_blob(&blob.digest) {
            return Err(kiln_store::Error::MissingBlob(blob.digest.to_string()).into());
        }
    }

    let host = RegistryHost::for_domain(target.domain())?;
    let session = Session::open(host, target.path(), Access::Push, options).await?;
    let blob_ref = session.reference(target.path(), "latest");
    futures::stream::iter(
        blobs
            .iter()
            .map(|blob| push_blob(&session, store, &blob_ref, blob, &label)),
    )
    .buffer_unordered(options.parallel_blobs.max(1))
    .try_collect::<Vec<()>>()
    .await?;

    let tag_or_digest = target
        .tag()
        .map(str::to_owned)
        .unwrap_or_else(|| manifest.to_string());
    let manifest_ref = &session.reference(target.path(), &tag_or_digest);
    let body = bytes::Bytes::from(bytes);
    let what = format!("manifest {label}");
    let location = session
        .retry("uploading the manifest", &what, |client, _| {
            let body = body.clone();
            let content_type = content_type.clone();
            async move {
                client
                    .push_manifest_raw(manifest_ref, body, content_type)
                    .await
                    .map_err(classify)
            }
        })
        .await?;
    // The registry names what it stored; it must be what was sent.
    if let Some(stored) = location
        .rsplit('/')
        .next()
        .and_then(|last| last.parse::<Digest>().ok())
    {
        if &stored != manifest {
            return Err(Error::DigestMismatch {
                what: format!("the manifest stored at {label}"),
                expected: manifest.to_string(),
                actual: stored.to_string(),
            });
        }
    }
    tracing::info!(image = %label, manifest = %manifest, "pushed");
    Ok(manifest.clone())
}

async fn push_blob(
    session: &Session<'_>,
    store: &Store,
    oci_ref: &oci_client::Reference,
    blob: &Blob,
    label: &str,
) -> Result<(), Error> {
    let digest = &blob.digest.to_string();
    let what = format!("blob {} of {label}", blob.digest);
    let present = session
        .retry("checking for a blob", &what, |client, _| async move {
            client.blob_exists(oci_ref, digest).await.map_err(classify)
        })
        .await?;
    if present {
        tracing::debug!(blob = %blob.digest, "the registry has it already");
        return Ok(());
    }
    session
        .retry("uploading a blob", &what, |client, _| async move {
            // Opening verifies the blob: a damaged one is never sent.
            let file = store.open_blob(&blob.digest)?;
            let size = file
                .metadata()
                .map_err(|e| Failure::Fatal(format!("cannot read blob {}: {e}", blob.digest)))?
                .len();
            if size != blob.size {
                return Err(Failure::Error(Error::BadManifest {
                    reference: label.to_owned(),
                    why: format!(
                        "blob {} is {size} bytes but the manifest lists {}",
                        blob.digest, blob.size
                    ),
                }));
            }
            tracing::debug!(blob = %blob.digest, size, "uploading");
            client
                .push_blob_stream(oci_ref, read_chunks(file), digest, Some(size))
                .await
                .map_err(classify)?;
            Ok(())
        })
        .await
}

/// A file as a stream of pieces, one buffer in memory at a time.
fn read_chunks(
    file: std::fs::File,
) -> impl Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static {
    futures::stream::try_unfold(tokio::fs::File::from_std(file), |mut file| async move {
        let mut buf = bytes::BytesMut::with_capacity(UPLOAD_CHUNK);
        let n = file.read_buf(&mut buf).await?;
        Ok((n > 0).then(|| (buf.freeze(), file)))
    })
}
