//! Synchronous versions of the registry calls.
//!
//! Each runs its async counterpart on a fresh single-threaded runtime in a
//! new OS thread and waits for it. The extra thread is what makes them safe
//! to call from anywhere: tokio refuses to block on a runtime from inside
//! another one, and a caller on a runtime's worker or blocking pool thread
//! is inside one.

use std::future::Future;

use kiln_oci::Reference;
use kiln_store::{Digest, Store};

use crate::{Error, PullProgress, Pulled, RegistryOptions};

fn run<T, F, Fut>(make: F) -> Result<T, Error>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T, Error>>,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("kiln-registry".into())
            .spawn_scoped(scope, || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        Error::Internal(format!("cannot start the registry client's runtime: {e}"))
                    })?;
                runtime.block_on(make())
            })
            .map_err(|e| {
                Error::Internal(format!("cannot start the registry client's thread: {e}"))
            })?;
        worker.join().unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal(format!(
                "the registry client panicked: {message}"
            )))
        })
    })
}

/// [`crate::pull`], blocking.
pub fn pull(
    store: &Store,
    reference: &Reference,
    options: &RegistryOptions,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<Pulled, Error> {
    run(|| crate::pull(store, reference, options, progress))
}

/// [`crate::resolve`], blocking.
pub fn resolve(reference: &Reference, options: &RegistryOptions) -> Result<Digest, Error> {
    run(|| crate::resolve(reference, options))
}

/// [`crate::push`], blocking.
pub fn push(
    store: &Store,
    manifest: &Digest,
    target: &Reference,
    options: &RegistryOptions,
) -> Result<Digest, Error> {
    run(|| crate::push(store, manifest, target, options))
}

/// [`crate::login`], blocking.
pub fn login(
    host: &str,
    username: &str,
    password: &str,
    options: &RegistryOptions,
) -> Result<(), Error> {
    run(|| crate::login(host, username, password, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine calls these from its runtime's threads; that must not
    /// panic ("Cannot start a runtime from within a runtime").
    #[test]
    fn callable_from_inside_a_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = RegistryOptions {
            credentials_file: Some(dir.path().join("auth.json")),
            docker_config_file: None,
            ..RegistryOptions::default()
        };
        let refused = |r: Result<(), Error>| match r {
            Err(Error::PlainHttpRefused { .. }) => true,
            other => panic!("{other:?}"),
        };
        // From a worker thread, and from the blocking pool.
        let from_worker = runtime.block_on(async {
            tokio::spawn({
                let options = options.clone();
                async move { login("http://registry.invalid:5000", "u", "p", &options) }
            })
            .await
            .unwrap()
        });
        assert!(refused(from_worker));
        let from_pool = runtime.block_on(async {
            let options = options.clone();
            tokio::task::spawn_blocking(move || {
                login("http://registry.invalid:5000", "u", "p", &options)
            })
            .await
            .unwrap()
        });
        assert!(refused(from_pool));
    }

    #[test]
    fn a_panic_becomes_an_error() {
        let result: Result<(), Error> = run(|| async { panic!("boom") });
        match result {
            Err(Error::Internal(message)) => assert!(message.contains("boom"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
