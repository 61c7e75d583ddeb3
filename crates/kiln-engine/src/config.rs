//! The configuration a container's next step runs with: the image's config
//! folded with every configuration operation in the chain. Pure, apart from
//! reading the base image's config from the store.

use kiln_graph::{CacheVolume, Container, ContainerOp, Directory, NetworkMode, Secret, Sharing};

use crate::engine::Inner;
use crate::error::Result;

#[derive(Clone, Debug)]
pub(crate) enum Mount {
    Cache {
        path: String,
        volume: CacheVolume,
        sharing: Sharing,
    },
    Directory {
        path: String,
        dir: Directory,
    },
    Secret {
        path: String,
        secret: Secret,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct RunConfig {
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub network: NetworkMode,
    pub mounts: Vec<Mount>,
    pub secret_env: Vec<(String, Secret)>,
    /// From `with_limits`, for every later step.
    pub limits: kiln_graph::Limits,
    /// From `with_exec(..., timeout=...)` and the like: this step only.
    pub step_limits: kiln_graph::Limits,
    /// `(name, soft, hard)`, one per name.
    pub ulimits: Vec<(String, u64, u64)>,
    pub hostname: Option<String>,
    /// `(alias, service)`, one per alias, in binding order.
    pub services: Vec<(String, kiln_graph::Service)>,
    /// From `with_exposed_port`: what a service made of it listens on.
    pub exposed_ports: Vec<u16>,
}

impl RunConfig {
    fn scratch() -> RunConfig {
        RunConfig {
            env: Vec::new(),
            workdir: "/".into(),
            user: None,
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            network: NetworkMode::Host,
            mounts: Vec::new(),
            secret_env: Vec::new(),
            limits: kiln_graph::Limits::default(),
            step_limits: kiln_graph::Limits::default(),
            ulimits: Vec::new(),
            hostname: None,
            services: Vec::new(),
            exposed_ports: Vec::new(),
        }
    }

    /// The limits the next step runs with: its own, then the container's,
    /// then the engine's defaults.
    pub fn effective_limits(&self, defaults: kiln_graph::Limits) -> kiln_graph::Limits {
        self.step_limits.or(self.limits).or(defaults)
    }

    fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Resolves a container path against the working directory, lexically,
    /// never above `/`.
    pub fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            normalize(path)
        } else {
            normalize(&format!("{}/{path}", self.workdir))
        }
    }
}

pub(crate) fn config_of(inner: &Inner, container: &Container) -> Result<RunConfig> {
    let mut chain = vec![container];
    while let Some(parent) = chain.last().and_then(|c| c.op.parent()) {
        chain.push(parent);
    }
    let mut cfg = RunConfig::scratch();
    for node in chain.into_iter().rev() {
        match &node.op {
            ContainerOp::From { reference } => {
                let image = inner.load_image(reference)?;
                let c = &image.config;
                for pair in &c.env {
                    let (k, v) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
                    cfg.set_env(k, v);
                }
                if let Some(dir) = c.working_dir.as_deref().filter(|d| !d.is_empty()) {
                    cfg.workdir = normalize(dir);
                }
                cfg.user = c.user.clone().filter(|u| !u.is_empty());
                cfg.entrypoint = c.entrypoint.clone();
                cfg.cmd = c.cmd.clone();
            }
            ContainerOp::Scratch => {}
            // Per-step limits were for an earlier step, not the one asked about.
            ContainerOp::Exec { .. } => {
                if !std::sync::Arc::ptr_eq(node, container) {
                    cfg.step_limits = kiln_graph::Limits::default();
                }
            }
            ContainerOp::WithLimits {
                limits,
                next_exec_only,
                ..
            } => {
                if *next_exec_only {
                    cfg.step_limits = limits.or(cfg.step_limits);
                } else {
                    cfg.limits = limits.or(cfg.limits);
                }
            }
            ContainerOp::WithUlimit {
                name, soft, hard, ..
            } => {
                cfg.ulimits.retain(|(n, _, _)| n != name);
                cfg.ulimits.push((name.clone(), *soft, *hard));
            }
            ContainerOp::WithHostname { hostname, .. } => cfg.hostname = Some(hostname.clone()),
            ContainerOp::WithServiceBinding { alias, service, .. } => {
                cfg.services.retain(|(a, _)| a != alias);
                cfg.services.push((alias.clone(), service.clone()));
            }
            ContainerOp::WithExposedPort { port, .. } => {
                if !cfg.exposed_ports.contains(port) {
                    cfg.exposed_ports.push(*port);
                }
            }
            ContainerOp::WithDirectory { .. }
            | ContainerOp::WithFile { .. }
            | ContainerOp::WithNewFile { .. } => {}
            ContainerOp::WithEnv { name, value, .. } => cfg.set_env(name, value),
            ContainerOp::WithoutEnv { name, .. } => cfg.env.retain(|(k, _)| k != name),
            ContainerOp::WithWorkdir { path, .. } => cfg.workdir = cfg.absolute(path),
            ContainerOp::WithUser { user, .. } => cfg.user = Some(user.clone()),
            ContainerOp::WithEntrypoint { args, .. } => cfg.entrypoint = args.clone(),
            ContainerOp::WithNetwork { mode, .. } => cfg.network = mode.clone(),
            ContainerOp::WithMountedCache {
                path,
                volume,
                sharing,
                ..
            } => {
                let path = cfg.absolute(path);
                cfg.mounts.push(Mount::Cache {
                    path,
                    volume: volume.clone(),
                    sharing: *sharing,
                })
            }
            ContainerOp::WithMountedDirectory { path, dir, .. } => {
                let path = cfg.absolute(path);
                cfg.mounts.push(Mount::Directory {
                    path,
                    dir: dir.clone(),
                })
            }
            ContainerOp::WithSecretVariable { name, secret, .. } => {
                cfg.secret_env.retain(|(k, _)| k != name);
                cfg.env.retain(|(k, _)| k != name);
                cfg.secret_env.push((name.clone(), secret.clone()));
            }
            ContainerOp::WithMountedSecret { path, secret, .. } => {
                let path = cfg.absolute(path);
                cfg.mounts.push(Mount::Secret {
                    path,
                    secret: secret.clone(),
                })
            }
        }
    }
    Ok(cfg)
}

/// Lexical normalization of an absolute container path: collapses `.`, `..`
/// (never above `/`) and repeated slashes.
pub(crate) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Joins a relative or absolute path under a base, never escaping the base.
pub(crate) fn join_under(base: &str, path: &str) -> String {
    normalize(&format!("{base}/{}", normalize(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_never_escapes_root() {
        assert_eq!(normalize("/a/./b//c/"), "/a/b/c");
        assert_eq!(normalize("/../../etc"), "/etc");
        assert_eq!(normalize(""), "/");
        assert_eq!(join_under("/out", "../../etc/passwd"), "/out/etc/passwd");
        assert_eq!(join_under("/", "x"), "/x");
    }
}
