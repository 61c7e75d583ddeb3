//! Cache keys for graph values.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::key::{Key, KeyBuilder};
use crate::node::*;

/// The keys of leaves, which need I/O to know: the engine supplies them.
pub trait LeafKeys {
    type Error;
    /// The key of an image reference: derived from its manifest digest, so a
    /// tag that moves changes the key.
    fn image(&mut self, reference: &str) -> Result<Key, Self::Error>;
    /// The key of a host directory: derived from the content of its files.
    fn host_directory(&mut self, path: &Path, filter: &Filter) -> Result<Key, Self::Error>;
    /// A keyed hash of a secret's value (keyed with the store's salt), so the
    /// key changes when the value does but reveals nothing about it.
    fn secret(&mut self, secret: &SecretNode) -> Result<Key, Self::Error>;
}

/// Computes keys, remembering each node's key so a shared subgraph is keyed once.
pub struct Keyer<L> {
    leaves: L,
    memo: HashMap<usize, Key>,
    // Nodes are remembered by address; holding them keeps an address from
    // being reused by a new node while it is in the memo.
    keep_alive: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

impl<L: LeafKeys> Keyer<L> {
    pub fn new(leaves: L) -> Keyer<L> {
        Keyer {
            leaves,
            memo: HashMap::new(),
            keep_alive: Vec::new(),
        }
    }

    pub fn leaves(&mut self) -> &mut L {
        &mut self.leaves
    }

    fn remembered<T: Send + Sync + 'static>(&self, node: &Arc<T>) -> Option<Key> {
        self.memo
            .get(&(Arc::as_ptr(node) as *const () as usize))
            .copied()
    }

    fn remember<T: Send + Sync + 'static>(&mut self, node: &Arc<T>, key: Key) -> Key {
        self.memo
            .insert(Arc::as_ptr(node) as *const () as usize, key);
        self.keep_alive.push(node.clone());
        key
    }

    pub fn container(&mut self, c: &Container) -> Result<Key, L::Error> {
        if let Some(k) = self.remembered(c) {
            return Ok(k);
        }
        // Walk down to the nearest remembered ancestor iteratively: chains of
        // thousands of operations must not overflow the stack.
        let mut chain = vec![c.clone()];
        while let Some(parent) = chain.last().and_then(|n| n.op.parent()).cloned() {
            if self.remembered(&parent).is_some() {
                break;
            }
            chain.push(parent);
        }
        let mut key = Key([0; 32]);
        for node in chain.iter().rev() {
            key = self.container_op(&node.op)?;
            self.remember(node, key);
        }
        Ok(key)
    }

    fn container_op(&mut self, op: &ContainerOp) -> Result<Key, L::Error> {
        let parent = match op.parent() {
            Some(p) => Some(self.container(p)?),
            None => None,
        };
        // Limits decide whether a step finishes, not what it makes: the
        // node is keyed as its parent.
        if let (ContainerOp::WithLimits { .. }, Some(parent)) = (op, parent) {
            return Ok(parent);
        }
        let mut b = KeyBuilder::new(container_op_name(op));
        if let Some(p) = &parent {
            b.key(p);
        }
        match op {
            ContainerOp::From { reference } => {
                let image = self.leaves.image(reference)?;
                b.key(&image);
            }
            ContainerOp::Scratch => {}
            ContainerOp::Exec { args, expect, .. } => {
                b.strs(args).str(expect.as_str());
            }
            ContainerOp::WithDirectory { path, dir, .. } => {
                let dir = self.directory(dir)?;
                b.str(path).key(&dir);
            }
            ContainerOp::WithFile { path, file, .. } => {
                let file = self.file(file)?;
                b.str(path).key(&file);
            }
            ContainerOp::WithNewFile {
                path,
                contents,
                mode,
                ..
            } => {
                b.str(path).bytes(contents).u64(*mode as u64);
            }
            ContainerOp::WithEnv { name, value, .. } => {
                b.str(name).str(value);
            }
            ContainerOp::WithoutEnv { name, .. } => {
                b.str(name);
            }
            ContainerOp::WithWorkdir { path, .. } => {
                b.str(path);
            }
            ContainerOp::WithUser { user, .. } => {
                b.str(user);
            }
            ContainerOp::WithEntrypoint { args, .. } => {
                b.strs(args);
            }
            ContainerOp::WithNetwork { mode, .. } => {
                b.str(match mode {
                    NetworkMode::Host => "host",
                    NetworkMode::None => "none",
                });
            }
            // A cache volume's contents are never part of a key: only where it
            // is mounted, under which name and how it is shared.
            ContainerOp::WithMountedCache {
                path,
                volume,
                sharing,
                ..
            } => {
                b.str(path).str(&volume.name).str(sharing.as_str());
            }
            ContainerOp::WithMountedDirectory { path, dir, .. } => {
                let dir = self.directory(dir)?;
                b.str(path).key(&dir);
            }
            ContainerOp::WithSecretVariable { name, secret, .. } => {
                let secret = self.leaves.secret(secret)?;
                b.str(name).key(&secret);
            }
            ContainerOp::WithMountedSecret { path, secret, .. } => {
                let secret = self.leaves.secret(secret)?;
                b.str(path).key(&secret);
            }
            ContainerOp::WithLimits { .. } => {}
            ContainerOp::WithUlimit {
                name, soft, hard, ..
            } => {
                b.str(name).u64(*soft).u64(*hard);
            }
            ContainerOp::WithHostname { hostname, .. } => {
                b.str(hostname);
            }
            // A step that talks to a service is keyed by it: a new database
            // image re-runs the tests.
            ContainerOp::WithServiceBinding { alias, service, .. } => {
                let service = self.service(service)?;
                b.str(alias).key(&service);
            }
            ContainerOp::WithExposedPort { port, .. } => {
                b.u64(u64::from(*port));
            }
        }
        Ok(b.finish())
    }

    /// A service's key: its container's, its command and its ports.
    pub fn service(&mut self, s: &Service) -> Result<Key, L::Error> {
        if let Some(k) = self.remembered(s) {
            return Ok(k);
        }
        let container = self.container(&s.container)?;
        let mut b = KeyBuilder::new("service");
        b.key(&container).strs(&s.args);
        for port in &s.ports {
            b.u64(u64::from(*port));
        }
        let key = b.finish();
        Ok(self.remember(s, key))
    }

    pub fn directory(&mut self, d: &Directory) -> Result<Key, L::Error> {
        if let Some(k) = self.remembered(d) {
            return Ok(k);
        }
        let key = match &d.op {
            // The host path is not part of the key: the same files anywhere
            // give the same key, on this machine or another.
            DirectoryOp::Host { path, filter } => {
                let content = self.leaves.host_directory(path, filter)?;
                KeyBuilder::new("dir.host").key(&content).finish()
            }
            DirectoryOp::Empty => KeyBuilder::new("dir.empty").finish(),
            DirectoryOp::FromContainer { container, path } => {
                let c = self.container(container)?;
                KeyBuilder::new("dir.from_container")
                    .key(&c)
                    .str(path)
                    .finish()
            }
            DirectoryOp::Subdirectory { parent, path } => {
                let p = self.directory(parent)?;
                KeyBuilder::new("dir.subdirectory")
                    .key(&p)
                    .str(path)
                    .finish()
            }
            DirectoryOp::WithDirectory { parent, path, dir } => {
                let p = self.directory(parent)?;
                let d = self.directory(dir)?;
                KeyBuilder::new("dir.with_directory")
                    .key(&p)
                    .str(path)
                    .key(&d)
                    .finish()
            }
            DirectoryOp::WithFile { parent, path, file } => {
                let p = self.directory(parent)?;
                let f = self.file(file)?;
                KeyBuilder::new("dir.with_file")
                    .key(&p)
                    .str(path)
                    .key(&f)
                    .finish()
            }
            DirectoryOp::WithNewFile {
                parent,
                path,
                contents,
                mode,
            } => {
                let p = self.directory(parent)?;
                KeyBuilder::new("dir.with_new_file")
                    .key(&p)
                    .str(path)
                    .bytes(contents)
                    .u64(*mode as u64)
                    .finish()
            }
            DirectoryOp::Without { parent, path } => {
                let p = self.directory(parent)?;
                KeyBuilder::new("dir.without").key(&p).str(path).finish()
            }
        };
        Ok(self.remember(d, key))
    }

    pub fn file(&mut self, f: &File) -> Result<Key, L::Error> {
        if let Some(k) = self.remembered(f) {
            return Ok(k);
        }
        let key = match &f.op {
            FileOp::FromContainer { container, path } => {
                let c = self.container(container)?;
                KeyBuilder::new("file.from_container")
                    .key(&c)
                    .str(path)
                    .finish()
            }
            FileOp::FromDirectory { dir, path } => {
                let d = self.directory(dir)?;
                KeyBuilder::new("file.from_directory")
                    .key(&d)
                    .str(path)
                    .finish()
            }
        };
        Ok(self.remember(f, key))
    }
}

pub fn container_op_name(op: &ContainerOp) -> &'static str {
    match op {
        ContainerOp::From { .. } => "from",
        ContainerOp::Scratch => "scratch",
        ContainerOp::Exec { .. } => "exec",
        ContainerOp::WithDirectory { .. } => "with_directory",
        ContainerOp::WithFile { .. } => "with_file",
        ContainerOp::WithNewFile { .. } => "with_new_file",
        ContainerOp::WithEnv { .. } => "with_env_variable",
        ContainerOp::WithoutEnv { .. } => "without_env_variable",
        ContainerOp::WithWorkdir { .. } => "with_workdir",
        ContainerOp::WithUser { .. } => "with_user",
        ContainerOp::WithEntrypoint { .. } => "with_entrypoint",
        ContainerOp::WithNetwork { .. } => "with_network",
        ContainerOp::WithMountedCache { .. } => "with_mounted_cache",
        ContainerOp::WithMountedDirectory { .. } => "with_mounted_directory",
        ContainerOp::WithSecretVariable { .. } => "with_secret_variable",
        ContainerOp::WithMountedSecret { .. } => "with_mounted_secret",
        ContainerOp::WithLimits { .. } => "with_limits",
        ContainerOp::WithUlimit { .. } => "with_ulimit",
        ContainerOp::WithHostname { .. } => "with_hostname",
        ContainerOp::WithServiceBinding { .. } => "with_service_binding",
        ContainerOp::WithExposedPort { .. } => "with_exposed_port",
    }
}
