//! Image fixtures on disk in the three formats kiln imports: OCI image
//! layout directories, OCI archives (a layout in a tar) and `docker save`
//! tarballs. Everything is generated here; nothing is downloaded.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::layer::{busybox_layer, compress, decompress, Compression};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The PATH that real base images set, and that the busybox fixture uses.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An image to write.
#[derive(Clone, Debug)]
pub struct ImageFixture {
    /// Each layer as an UNCOMPRESSED tar, and the compression to store it with.
    pub layers: Vec<(Vec<u8>, Compression)>,
    /// The `config` member of the image configuration: `Env`, `WorkingDir`,
    /// `User`, `Entrypoint`, `Cmd`.
    pub config: Value,
    /// The `org.opencontainers.image.ref.name` annotation (OCI) or the
    /// `RepoTags` entry (docker save).
    pub ref_name: Option<String>,
    /// `rootfs.diff_ids` to write instead of the layers' real ones, for
    /// tests of images whose config does not match their layers.
    pub diff_ids: Option<Vec<String>>,
}

impl ImageFixture {
    pub fn new(config: Value, ref_name: Option<&str>) -> ImageFixture {
        ImageFixture {
            layers: Vec::new(),
            config,
            ref_name: ref_name.map(str::to_owned),
            diff_ids: None,
        }
    }

    /// Writes these `rootfs.diff_ids` into the config (any number, right or
    /// wrong) instead of the sha256 of each layer's tar.
    pub fn diff_ids(mut self, diff_ids: Vec<String>) -> ImageFixture {
        self.diff_ids = Some(diff_ids);
        self
    }

    /// Adds a layer given as an uncompressed tar.
    pub fn layer(mut self, tar: Vec<u8>, compression: Compression) -> ImageFixture {
        self.layers.push((tar, compression));
        self
    }
}

/// What a fixture writer produced, for tests to compare against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenImage {
    /// The OCI manifest digest; `None` for `docker save`, which has no
    /// manifest blob (kiln synthesises one).
    pub manifest_digest: Option<String>,
    pub config_digest: String,
    /// Digests of the layer blobs as stored (compressed).
    pub layer_digests: Vec<String>,
    /// Config plus layer blob sizes.
    pub size_bytes: u64,
}

/// The OCI name of the host's CPU architecture (`amd64`, `arm64`, ...).
pub fn host_oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Files making up one image's blobs.
struct Blobs {
    config: Vec<u8>,
    layers: Vec<(Vec<u8>, Compression)>,
    manifest: Vec<u8>,
    written: WrittenImage,
}

fn image_blobs(image: &ImageFixture, arch: &str) -> Blobs {
    let layers: Vec<(Vec<u8>, Compression)> = image
        .layers
        .iter()
        .map(|(tar, c)| {
            assert!(
                decompress(tar) == *tar,
                "ImageFixture layers are uncompressed tars; the writer compresses them"
            );
            (compress(tar, *c), *c)
        })
        .collect();
    let diff_ids: Vec<String> = image.diff_ids.clone().unwrap_or_else(|| {
        image
            .layers
            .iter()
            .map(|(tar, _)| sha256_digest(tar))
            .collect()
    });
    let config = serde_json::to_vec(&json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": image.config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": image.layers.iter().map(|_| json!({"created_by": "kiln-testkit"})).collect::<Vec<_>>(),
    }))
    .expect("serialize config");
    let config_digest = sha256_digest(&config);
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|(bytes, c)| {
            json!({"mediaType": c.layer_media_type(), "digest": sha256_digest(bytes), "size": bytes.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))
    .expect("serialize manifest");
    let written = WrittenImage {
        manifest_digest: Some(sha256_digest(&manifest)),
        config_digest,
        layer_digests: layers.iter().map(|(b, _)| sha256_digest(b)).collect(),
        size_bytes: config.len() as u64 + layers.iter().map(|(b, _)| b.len() as u64).sum::<u64>(),
    };
    Blobs {
        config,
        layers,
        manifest,
        written,
    }
}

fn blob_file(files: &mut Vec<(String, Vec<u8>)>, bytes: Vec<u8>) -> Value {
    let digest = sha256_digest(&bytes);
    let path = format!("blobs/sha256/{}", hex_of(&digest));
    let size = bytes.len();
    if !files.iter().any(|(p, _)| *p == path) {
        files.push((path, bytes));
    }
    json!({"digest": digest, "size": size})
}

fn descriptor(media_type: &str, blob: Value, extra: Value) -> Value {
    let mut d = json!({"mediaType": media_type});
    for (k, v) in blob
        .as_object()
        .into_iter()
        .flatten()
        .chain(extra.as_object().into_iter().flatten())
    {
        d[k] = v.clone();
    }
    d
}

fn ref_annotation(name: &Option<String>) -> Value {
    match name {
        Some(name) => json!({"annotations": {REF_NAME_ANNOTATION: name}}),
        None => json!({}),
    }
}

fn layout_files(images: &[ImageFixture]) -> (Vec<(String, Vec<u8>)>, Vec<WrittenImage>) {
    let mut files = Vec::new();
    let mut manifests = Vec::new();
    let mut written = Vec::new();
    for image in images {
        let blobs = image_blobs(image, host_oci_arch());
        blob_file(&mut files, blobs.config);
        for (bytes, _) in blobs.layers {
            blob_file(&mut files, bytes);
        }
        let m = blob_file(&mut files, blobs.manifest);
        manifests.push(descriptor(
            MANIFEST_MEDIA_TYPE,
            m,
            ref_annotation(&image.ref_name),
        ));
        written.push(blobs.written);
    }
    finish_layout(&mut files, manifests);
    (files, written)
}

fn finish_layout(files: &mut Vec<(String, Vec<u8>)>, manifests: Vec<Value>) {
    files.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    let index = json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests});
    files.push((
        "index.json".into(),
        serde_json::to_vec_pretty(&index).expect("serialize index"),
    ));
}

fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (path, bytes) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create fixture dir");
        }
        std::fs::write(&path, bytes).expect("write fixture file");
    }
}

fn tar_files(tar_path: &Path, files: &[(String, Vec<u8>)]) {
    let file = std::fs::File::create(tar_path).expect("create fixture archive");
    let mut builder = tar::Builder::new(file);
    let mut dirs: Vec<String> = Vec::new();
    for (path, bytes) in files {
        // Real archivers list parent directories; include them so the
        // importer sees the usual shape.
        let mut parent = String::new();
        for comp in path
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            parent.push_str(comp);
            parent.push('/');
            if !dirs.contains(&parent) {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(crate::layer::DEFAULT_MTIME);
                builder
                    .append_data(&mut h, &parent, std::io::empty())
                    .expect("write fixture archive");
                dirs.push(parent.clone());
            }
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(crate::layer::DEFAULT_MTIME);
        builder
            .append_data(&mut h, path, bytes.as_slice())
            .expect("write fixture archive");
    }
    builder.into_inner().expect("finish fixture archive");
}

/// Writes an OCI image layout directory holding one image.
pub fn write_oci_layout(dir: &Path, image: &ImageFixture) -> WrittenImage {
    write_oci_layout_images(dir, std::slice::from_ref(image)).remove(0)
}

/// Writes an OCI image layout directory holding several images, listed in
/// `index.json` in the order given.
pub fn write_oci_layout_images(dir: &Path, images: &[ImageFixture]) -> Vec<WrittenImage> {
    let (files, written) = layout_files(images);
    write_files(dir, &files);
    written
}

/// Writes an OCI archive: an OCI image layout in a tar (what
/// `skopeo copy ... oci-archive:` and `buildah push` produce).
pub fn write_oci_archive(tar_path: &Path, image: &ImageFixture) -> WrittenImage {
    write_oci_archive_images(tar_path, std::slice::from_ref(image)).remove(0)
}

pub fn write_oci_archive_images(tar_path: &Path, images: &[ImageFixture]) -> Vec<WrittenImage> {
    let (files, written) = layout_files(images);
    tar_files(tar_path, &files);
    written
}

/// Writes a `docker save` tarball (the pre-25 format): `manifest.json` with
/// `Config`, `RepoTags` and `Layers`, `<config hex>.json`, and
/// `<id>/layer.tar` per layer, plus the legacy `repositories` file.
pub fn write_docker_save(tar_path: &Path, image: &ImageFixture) -> WrittenImage {
    write_docker_save_images(tar_path, std::slice::from_ref(image)).remove(0)
}

pub fn write_docker_save_images(tar_path: &Path, images: &[ImageFixture]) -> Vec<WrittenImage> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifest = Vec::new();
    let mut repositories = serde_json::Map::new();
    let mut written = Vec::new();
    for image in images {
        let blobs = image_blobs(image, host_oci_arch());
        let config_name = format!("{}.json", hex_of(&blobs.written.config_digest));
        let mut layer_paths = Vec::new();
        for (bytes, _) in blobs.layers {
            let id = hex_of(&sha256_digest(&bytes)).to_owned();
            let path = format!("{id}/layer.tar");
            if !files.iter().any(|(p, _)| *p == path) {
                files.push((format!("{id}/VERSION"), b"1.0".to_vec()));
                files.push((
                    format!("{id}/json"),
                    format!(r#"{{"id":"{id}"}}"#).into_bytes(),
                ));
                files.push((path.clone(), bytes));
            }
            layer_paths.push(path);
        }
        files.push((config_name.clone(), blobs.config));
        let tags: Vec<String> = image.ref_name.iter().cloned().collect();
        if let Some((repo, tag)) = image.ref_name.as_deref().and_then(|n| n.rsplit_once(':')) {
            repositories.insert(
                repo.to_owned(),
                json!({ tag: layer_paths.last().map(|p| p.trim_end_matches("/layer.tar")) }),
            );
        }
        manifest.push(json!({"Config": config_name, "RepoTags": tags, "Layers": layer_paths}));
        written.push(WrittenImage {
            manifest_digest: None,
            ..blobs.written
        });
    }
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).expect("serialize manifest.json"),
    ));
    files.push((
        "repositories".into(),
        serde_json::to_vec(&repositories).expect("serialize repositories"),
    ));
    tar_files(tar_path, &files);
    written
}

/// How a multi-platform layout lists its platforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexStyle {
    /// `index.json` names one image index blob that lists the platform
    /// manifests (what `skopeo copy --all` and registries produce).
    Nested,
    /// `index.json` itself lists the platform manifests, each with its
    /// `platform` and the same ref name.
    Flat,
}

/// What [`write_oci_index_layout`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenIndex {
    /// The image index blob's digest (`None` for [`IndexStyle::Flat`]).
    pub index_digest: Option<String>,
    /// Each platform's architecture and image.
    pub platforms: Vec<(String, WrittenImage)>,
}

/// Writes an OCI layout holding one multi-platform image: one manifest per
/// `(architecture, image)` pair, all `linux`, tagged `ref_name`.
pub fn write_oci_index_layout(
    dir: &Path,
    ref_name: &str,
    platforms: &[(&str, ImageFixture)],
    style: IndexStyle,
) -> WrittenIndex {
    let mut files = Vec::new();
    let mut manifests = Vec::new();
    let mut written = Vec::new();
    for (arch, image) in platforms {
        let blobs = image_blobs(image, arch);
        blob_file(&mut files, blobs.config);
        for (bytes, _) in blobs.layers {
            blob_file(&mut files, bytes);
        }
        let m = blob_file(&mut files, blobs.manifest);
        let mut extra = json!({"platform": {"architecture": arch, "os": "linux"}});
        if style == IndexStyle::Flat {
            extra["annotations"] = json!({REF_NAME_ANNOTATION: ref_name});
        }
        manifests.push(descriptor(MANIFEST_MEDIA_TYPE, m, extra));
        written.push((arch.to_string(), blobs.written));
    }
    let index_digest = match style {
        IndexStyle::Flat => {
            finish_layout(&mut files, manifests);
            None
        }
        IndexStyle::Nested => {
            let index = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": INDEX_MEDIA_TYPE,
                "manifests": manifests,
            }))
            .expect("serialize index");
            let blob = blob_file(&mut files, index);
            let digest = blob["digest"].as_str().map(str::to_owned);
            let top = descriptor(
                INDEX_MEDIA_TYPE,
                blob,
                json!({"annotations": {REF_NAME_ANNOTATION: ref_name}}),
            );
            finish_layout(&mut files, vec![top]);
            digest
        }
    };
    write_files(dir, &files);
    WrittenIndex {
        index_digest,
        platforms: written,
    }
}

/// The `config` of the busybox fixture image.
pub fn busybox_config() -> Value {
    json!({"Env": [DEFAULT_PATH_ENV], "Cmd": ["sh"]})
}

/// The busybox image as a fixture: one layer of [`busybox_layer`], tagged
/// `busybox:test`.
pub fn busybox_fixture(compression: Compression) -> ImageFixture {
    ImageFixture::new(busybox_config(), Some("busybox:test"))
        .layer(busybox_layer(Compression::None), compression)
}

/// Writes an OCI layout of a one-layer busybox image tagged `busybox:test`
/// (config: `Env` PATH=..., `Cmd` ["sh"]) into a new directory under `dir`,
/// and returns that layout directory.
pub fn busybox_image(dir: &Path, compression: Compression) -> PathBuf {
    let layout = dir.join(format!("busybox-oci-{}", compression.name()));
    write_oci_layout(&layout, &busybox_fixture(compression));
    layout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn layout_blobs_match_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let layout = busybox_image(dir.path(), Compression::Gzip);
        let index = read_json(&layout.join("index.json"));
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME_ANNOTATION],
            "busybox:test"
        );
        for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let bytes = std::fs::read(entry.path()).unwrap();
            assert_eq!(
                sha256_digest(&bytes),
                format!("sha256:{}", entry.file_name().to_str().unwrap())
            );
        }
        let manifest_hex = index["manifests"][0]["digest"].as_str().unwrap();
        let manifest = read_json(&layout.join("blobs/sha256").join(hex_of(manifest_hex)));
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let config = read_json(
            &layout
                .join("blobs/sha256")
                .join(hex_of(manifest["config"]["digest"].as_str().unwrap())),
        );
        assert_eq!(config["config"]["Cmd"], json!(["sh"]));
        assert_eq!(config["architecture"], host_oci_arch());
    }

    #[test]
    fn docker_save_has_manifest_json() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("save.tar");
        let written = write_docker_save(&tar_path, &busybox_fixture(Compression::None));
        let mut archive = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
        let mut manifest = None;
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name == "manifest.json" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
                manifest = Some(serde_json::from_str::<Value>(&s).unwrap());
            }
            names.push(name);
        }
        let manifest = manifest.expect("manifest.json present");
        assert_eq!(manifest[0]["RepoTags"], json!(["busybox:test"]));
        let layer = manifest[0]["Layers"][0].as_str().unwrap();
        assert!(names.iter().any(|n| n == layer));
        assert_eq!(
            manifest[0]["Config"].as_str().unwrap(),
            format!("{}.json", hex_of(&written.config_digest))
        );
    }

    #[test]
    fn index_layout_lists_both_platforms() {
        let dir = tempfile::tempdir().unwrap();
        let img = |arch: &str| {
            ImageFixture::new(json!({"Env": [format!("ARCH={arch}")]}), None).layer(
                crate::LayerBuilder::new().file("arch", arch, 0o644).tar(),
                Compression::Gzip,
            )
        };
        let written = write_oci_index_layout(
            dir.path(),
            "multi:1",
            &[("amd64", img("amd64")), ("arm64", img("arm64"))],
            IndexStyle::Nested,
        );
        let index_hex = written.index_digest.unwrap();
        let index = read_json(&dir.path().join("blobs/sha256").join(hex_of(&index_hex)));
        let archs: Vec<_> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(archs, ["amd64", "arm64"]);
    }
}
