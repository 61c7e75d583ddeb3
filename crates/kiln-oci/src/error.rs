use std::path::PathBuf;

/// Errors from image handling. Each names the image, layer, archive entry or
/// path at fault, and where there is an obvious next step, says it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] kiln_store::Error),

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid image reference {reference:?}: {why}")]
    InvalidReference { reference: String, why: String },

    #[error("{path} is not an image kiln can import: {why} (expected an OCI image layout directory, an OCI archive or a `docker save` tarball)")]
    UnknownFormat { path: PathBuf, why: String },

    #[error("image {image}: {why}")]
    BadImage { image: String, why: String },

    #[error("image {image}: blob {digest} does not match its digest (its content hashes to {actual}); the image is damaged and the blob was not stored")]
    BlobMismatch {
        image: String,
        digest: String,
        actual: String,
    },

    #[error("image {image} has no manifest for {wanted}; it has: {available}")]
    NoPlatform {
        image: String,
        wanted: String,
        available: String,
    },

    #[error("{path} holds {} images ({}); {why}", names.len(), names.join(", "))]
    AmbiguousImage {
        path: PathBuf,
        names: Vec<String>,
        why: String,
    },

    #[error("{path}: image {manifest} has no name (no org.opencontainers.image.ref.name annotation or RepoTags); pass a tag to import it under")]
    UnnamedImage { path: PathBuf, manifest: String },

    #[error("{path} holds no image")]
    NoImages { path: PathBuf },

    #[error("image {reference} is not in the store at {} (looked for {name}); import it first with `kiln image import PATH`, where PATH is an OCI layout directory, an OCI archive or a `docker save` tarball", store.display())]
    ImageNotFound {
        reference: String,
        name: String,
        store: PathBuf,
    },

    #[error("image {image} is damaged in the store: {source}; re-import the image")]
    DamagedImage {
        image: String,
        #[source]
        source: kiln_store::Error,
    },

    #[error("layer {layer} cannot be read from the store: {source}; re-import the image that uses this layer")]
    LayerBlob {
        layer: String,
        #[source]
        source: kiln_store::Error,
    },

    #[error("layer {layer}: {source}")]
    Layer {
        layer: String,
        #[source]
        source: Box<Error>,
    },

    #[error("refusing layer entry {entry:?}: {why}")]
    UnsafeEntry { entry: String, why: String },

    #[error("layer entry {entry:?}: {action} {path:?}: {source}")]
    Unpack {
        entry: String,
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("layer data is truncated or corrupt ({context}): {source}")]
    CorruptLayer {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A layer or image passed one of the [`crate::UnpackLimits`]; `at`
    /// says where unpacking stopped.
    #[error("{}", crate::limits::limit_message(*.limit, *.value, .at))]
    TooLarge {
        limit: crate::Limit,
        value: u64,
        at: String,
    },

    #[error("{var}={value:?} is not a valid limit ({why}); use a number of bytes such as 17179869184 or 16G, or `unlimited`")]
    InvalidLimit {
        var: &'static str,
        value: String,
        why: String,
    },

    #[error("image {image}: layer {index} ({layer}) does not match the image config: rootfs.diff_ids[{index}] is {expected}, but the layer's uncompressed tar hashes to {actual}; the image is damaged or was put together wrongly (docker load refuses it too), so it was not imported")]
    DiffIdMismatch {
        image: String,
        /// The layer's position in the manifest, base layer 0.
        index: usize,
        layer: String,
        expected: String,
        actual: String,
    },

    #[error("the layer does not match its image config: its uncompressed tar hashes to {actual}, but the config's rootfs.diff_ids lists {expected} for it; the image is damaged or was put together wrongly, so the layer was not unpacked")]
    LayerDiffIdMismatch { expected: String, actual: String },

    #[error("layer is {0}-compressed, which kiln does not read; use an uncompressed, gzip or zstd layer")]
    UnsupportedCompression(&'static str),

    #[error("invalid layer id {layer:?}: {why}")]
    InvalidLayerId { layer: String, why: &'static str },

    #[error("layer {layer} is not in the store at {}", store.display())]
    LayerNotFound { layer: String, store: PathBuf },

    #[error("cannot pack layer {layer}: {path:?} {why}")]
    PackRefused {
        layer: String,
        path: String,
        why: String,
    },

    #[error("packing layer {layer}: {action} {path:?}: {source}")]
    Pack {
        layer: String,
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot build image: {why}")]
    BuildImage { why: String },

    #[error("cannot save image {image}: blob {blob} {problem}")]
    SaveBlob {
        image: String,
        blob: String,
        problem: String,
    },

    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970 ({why}); unset it or set it to an integer like 1700000000")]
    InvalidSourceDateEpoch { value: String, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            action,
            path: path.into(),
            source,
        })
    }
}
