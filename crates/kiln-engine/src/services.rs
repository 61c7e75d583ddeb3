//! Services: long-running containers (a database, a web server) that steps
//! bind by alias.
//!
//! An engine gives its services and the steps bound to them one private
//! network namespace (`kiln_exec::NetNamespace`), made when the first
//! service starts: a step reaches a service on `127.0.0.1` under its alias,
//! two runs on one machine never see each other's ports, and outbound
//! network goes through slirp4netns. A service starts when the first step
//! that binds it runs (a cached step starts nothing), is waited for until
//! its ports accept connections (and a log line or a command, if asked),
//! serves every later step bound to the same service (same key), and stops
//! when the engine shuts down or is cancelled. Its output is a step of its
//! own in the progress events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use kiln_graph::{Key, Service};
use tokio::sync::watch;

use crate::engine::{lock, Inner};
use crate::error::{Error, Result};
use crate::events::{Event, Outcome, Stream};
use crate::solve::{tail_lines, Capture, FsState, RunParts, Solver};

/// How long a service may take to become ready unless it says otherwise.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many lines of a service's output its errors show.
const SERVICE_TAIL_LINES: usize = 20;

/// Where network namespaces are bound: tmpfs, so a reboot clears them.
pub(crate) const NETNS_DIR: &str = "/run/kiln/netns";

type StartFuture = Shared<BoxFuture<'static, Result<Arc<Running>>>>;

/// An engine's services.
#[derive(Default)]
pub(crate) struct Services {
    network: tokio::sync::Mutex<Option<Arc<kiln_exec::NetNamespace>>>,
    started: Mutex<HashMap<Key, StartFuture>>,
    /// Which service listens on each port: one per port in a namespace.
    ports: Mutex<HashMap<u16, String>>,
    /// Every service task, for shutdown.
    tasks: Mutex<Vec<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
}

/// A started service.
pub(crate) struct Running {
    /// "service `redis-server --port 6379`": what messages and progress
    /// call it.
    pub name: String,
    /// The name every bound step resolves it by, besides its alias.
    pub hostname: String,
    /// Set once the process has ended: how.
    ended: watch::Receiver<Option<String>>,
    capture: Arc<Mutex<Capture>>,
}

impl Running {
    /// How it ended, if it has.
    pub fn ended(&self) -> Option<String> {
        self.ended.borrow().clone()
    }

    pub fn log_tail(&self) -> String {
        tail_lines(&lock(&self.capture).tail(), SERVICE_TAIL_LINES)
    }

    /// For a failed step: what happened to this service, if it ended.
    pub fn ended_note(&self) -> Option<String> {
        let ended = self.ended()?;
        let tail = self.log_tail();
        Some(if tail.trim().is_empty() {
            format!(
                "{} {ended} while the step ran (it printed nothing)",
                self.name
            )
        } else {
            format!(
                "{} {ended} while the step ran\n--- last lines of its output ---\n{}",
                self.name,
                tail.trim_end()
            )
        })
    }
}

/// The hostname of a service in every step bound to it: from its key, so
/// it is the same in every run and on every machine.
pub fn service_hostname(key: &Key) -> String {
    format!("svc-{}", key.short())
}

impl Services {
    /// The engine's namespace, made on first use.
    async fn network(&self) -> Result<Arc<kiln_exec::NetNamespace>> {
        let mut slot = self.network.lock().await;
        if let Some(ns) = slot.as_ref() {
            return Ok(ns.clone());
        }
        let ns = tokio::task::spawn_blocking(|| -> Result<kiln_exec::NetNamespace> {
            let dir = std::path::Path::new(NETNS_DIR);
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", dir.display())))?;
            }
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("{}-{n}", std::process::id()));
            let outbound = kiln_exec::Outbound::Slirp {
                binary: std::env::var_os("KILN_SLIRP4NETNS")
                    .map(Into::into)
                    .unwrap_or_else(|| "slirp4netns".into()),
            };
            kiln_exec::NetNamespace::create(&path, &outbound)
                .map_err(|e| Error::Invalid(format!("services need a network namespace: {e}")))
        })
        .await??;
        let ns = Arc::new(ns);
        *slot = Some(ns.clone());
        Ok(ns)
    }

    /// Stops every service and waits (bounded) for their containers to go.
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for (stop, _) in &tasks {
            stop.send_replace(true);
        }
        for (_, task) in tasks {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!("a service did not stop within 10 s");
            }
        }
        lock(&self.started).clear();
        lock(&self.ports).clear();
        // The namespace goes once nothing holds it (a step still running
        // keeps it, and it is removed when that step ends).
        self.network.lock().await.take();
    }

    /// Tells every service to stop, without waiting: for `Engine::cancel`,
    /// which may run on a thread without an async runtime.
    pub fn stop_all(&self) {
        for (stop, _) in lock(&self.tasks).iter() {
            stop.send_replace(true);
        }
    }
}

/// The key of a service (keying its container, which may hash host
/// directories: on a blocking thread).
pub(crate) async fn key_of(inner: Arc<Inner>, service: Service) -> Result<(Solver, Key)> {
    let keys = crate::solve::Keys::new(inner.clone());
    let key = {
        let keys = keys.clone();
        tokio::task::spawn_blocking(move || keys.service(&service)).await??
    };
    Ok((Solver { inner, keys }, key))
}

/// Starts a service (if it is not running yet) and waits until it is ready.
pub(crate) async fn start(inner: Arc<Inner>, service: Service) -> Result<String> {
    if inner.plan_only {
        return Err(Error::PlanOnly {
            what: "starting a service".into(),
        });
    }
    let (solver, _) = key_of(inner, service.clone()).await?;
    let running = solver.service(service).await?;
    Ok(running.hostname.clone())
}

impl Solver {
    /// The network a step runs on: its own setting, or, when it binds
    /// services, the engine's namespace with every service started and
    /// ready, each named by its alias and its hostname.
    pub(crate) async fn network_of(
        &self,
        cfg: &crate::config::RunConfig,
    ) -> Result<(kiln_exec::Network, Vec<Arc<Running>>)> {
        if cfg.services.is_empty() {
            let network = match cfg.network {
                kiln_graph::NetworkMode::Host => kiln_exec::Network::Host,
                kiln_graph::NetworkMode::None => kiln_exec::Network::None,
            };
            return Ok((network, Vec::new()));
        }
        if cfg.network == kiln_graph::NetworkMode::None {
            return Err(Error::Invalid(
                "a step bound to a service cannot also be without network \
                 (with_network(False)): it reaches its services over the network"
                    .into(),
            ));
        }
        let started = futures::future::try_join_all(
            cfg.services
                .iter()
                .map(|(_, service)| self.service(service.clone())),
        )
        .await?;
        if let Some((alias, _)) = cfg
            .services
            .iter()
            .find(|(alias, _)| !kiln_exec::valid_hostname(alias))
        {
            return Err(Error::Invalid(format!(
                "service alias {alias:?} is not a hostname: use letters, digits and inner hyphens"
            )));
        }
        let mut names = Vec::new();
        for ((alias, _), running) in cfg.services.iter().zip(&started) {
            if let Some(ended) = running.ended() {
                return Err(Error::Service {
                    service: running.name.clone(),
                    why: format!("(bound as {alias}) {ended} before this step started"),
                    log_tail: running.log_tail(),
                });
            }
            for name in [alias, &running.hostname] {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        let ns = self.inner.services.network().await?;
        let network = kiln_exec::Network::Joined(kiln_exec::JoinedNetwork {
            netns: ns.path().to_owned(),
            hosts: vec![("127.0.0.1".into(), names)],
            nameservers: ns.nameservers(),
        });
        Ok((network, started))
    }

    /// Starts a service, once per key for the engine's life; callers that
    /// come while it starts wait for the same start.
    pub(crate) fn service(&self, service: Service) -> BoxFuture<'static, Result<Arc<Running>>> {
        let key = match self.keys.service(&service) {
            Ok(key) => key,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let start = lock(&self.inner.services.started)
            .entry(key)
            .or_insert_with(|| {
                let this = self.clone();
                async move { this.start_service(service, key).await.map(Arc::new) }
                    .boxed()
                    .shared()
            })
            .clone();
        let inner = self.inner.clone();
        async move {
            let result = start.await;
            if result.is_err() {
                lock(&inner.services.started).remove(&key);
            }
            result
        }
        .boxed()
    }

    async fn start_service(&self, service: Service, key: Key) -> Result<Running> {
        let inner = self.inner.clone();
        inner.check_cancelled()?;
        let cfg = self.config(&service.container)?;
        let args = if service.args.is_empty() {
            cfg.entrypoint.iter().chain(&cfg.cmd).cloned().collect()
        } else {
            service.args.clone()
        };
        let name = format!(
            "service `{}`",
            self.step_name(&args).trim_start_matches("exec ")
        );
        if args.is_empty() {
            return Err(Error::Service {
                service: name,
                why: "has no command: pass as_service(args=[...]) or use an image with an \
                      entrypoint or default command"
                    .into(),
                log_tail: String::new(),
            });
        }
        let mut ports = service.ports.clone();
        for port in &cfg.exposed_ports {
            if !ports.contains(port) {
                ports.push(*port);
            }
        }
        // The services it binds itself come first.
        let hosts = if cfg.services.is_empty() {
            Vec::new()
        } else {
            match self.network_of(&cfg).await?.0 {
                kiln_exec::Network::Joined(joined) => joined.hosts,
                _ => Vec::new(),
            }
        };
        let ns = inner.services.network().await?;
        let network = kiln_exec::JoinedNetwork {
            netns: ns.path().to_owned(),
            hosts,
            nameservers: ns.nameservers(),
        };
        self.run_service(service, key, cfg, args, ports, name, network, ns)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_service(
        &self,
        service: Service,
        key: Key,
        mut cfg: crate::config::RunConfig,
        args: Vec<String>,
        ports: Vec<u16>,
        name: String,
        network: kiln_exec::JoinedNetwork,
        ns: Arc<kiln_exec::NetNamespace>,
    ) -> Result<Running> {
        let inner = self.inner.clone();
        let base: Arc<FsState> = self.container(service.container.clone()).await?;
        let hostname = service_hostname(&key);
        if cfg.hostname.is_none() {
            cfg.hostname = Some(hostname.clone());
        }
        claim_ports(&inner, &ports, &name)?;
        let release = PortClaim {
            inner: inner.clone(),
            ports: ports.clone(),
        };
        // A service runs until stopped: a per-step timeout is not for it.
        let mut limits = cfg.effective_limits(inner.default_limits);
        limits.timeout = None;
        let inputs = self.run_inputs(&cfg).await?;
        let upper = inner.store.stage_dir()?;
        let work = inner.store.stage_dir()?;
        let spec = self.run_spec(RunParts {
            base: &base,
            inputs: &inputs,
            cfg: &cfg,
            args,
            limits: &limits,
            network: kiln_exec::Network::Joined(network),
            upper: upper.path(),
            work: work.path(),
        });
        let step = inner.next_step();
        let started = Instant::now();
        inner.emit(Event::Started {
            step,
            name: name.clone(),
            key: key.short(),
        });
        let capture = Arc::new(Mutex::new(Capture::new(inner.redactor(), &inner.store)));
        let wanted_line = service.readiness.log_line.clone();
        let (line_seen_tx, line_seen) = watch::channel(wanted_line.is_none());
        let sink = {
            let capture = capture.clone();
            let inner = inner.clone();
            // Lines are matched whole, also across chunk boundaries.
            let mut partial: Vec<u8> = Vec::new();
            move |stream: kiln_exec::OutputStream, bytes: &[u8]| {
                let stream = match stream {
                    kiln_exec::OutputStream::Stdout => Stream::Stdout,
                    kiln_exec::OutputStream::Stderr => Stream::Stderr,
                };
                let live = lock(&capture).push(stream, bytes);
                for (stream, data) in live {
                    if let Some(wanted) = &wanted_line {
                        if !*line_seen_tx.borrow() {
                            partial.extend_from_slice(&data);
                            let text = String::from_utf8_lossy(&partial);
                            if text.contains(wanted.as_str()) {
                                line_seen_tx.send_replace(true);
                                partial.clear();
                            } else if let Some(end) = partial.iter().rposition(|b| *b == b'\n') {
                                partial.drain(..=end);
                            } else if partial.len() > crate::LINE_CAP {
                                let excess = partial.len() - crate::LINE_CAP;
                                partial.drain(..excess);
                            }
                        }
                    }
                    inner.emit(Event::Output {
                        step,
                        stream,
                        data,
                        replayed: false,
                    });
                }
                None
            }
        };
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (ended_tx, ended_rx) = watch::channel(None);
        let task = {
            let inner = inner.clone();
            let capture = capture.clone();
            let name = name.clone();
            let ns = ns.clone();
            tokio::spawn(async move {
                let run = inner.runtime.run(spec, sink);
                let mut cancelled = inner.cancelled_watch();
                let result = tokio::select! {
                    result = run => Some(result),
                    _ = stop_rx.wait_for(|stop| *stop) => None,
                    _ = cancelled.wait_for(|c| *c) => None,
                };
                for (stream, data) in lock(&capture).finish() {
                    inner.emit(Event::Output {
                        step,
                        stream,
                        data,
                        replayed: false,
                    });
                }
                drop((inputs, upper, work, release, ns));
                let outcome = match result {
                    None => Outcome::Succeeded { exit_code: 0 },
                    Some(result) => {
                        let ended = match result {
                            Ok(status) if status.oom_killed => {
                                "ran out of memory and was killed".to_owned()
                            }
                            Ok(status) => match (status.code, status.signal) {
                                (_, Some(signal)) => format!("was killed by signal {signal}"),
                                (Some(code), None) => format!("exited with code {code}"),
                                (None, None) => "ended".to_owned(),
                            },
                            Err(e) => format!(
                                "could not run: {}",
                                inner.redactor().redact_str(&e.to_string())
                            ),
                        };
                        ended_tx.send_replace(Some(ended.clone()));
                        Outcome::Failed {
                            message: format!("{name} {ended}"),
                            ending: None,
                        }
                    }
                };
                inner.emit(Event::Finished {
                    step,
                    name,
                    duration: started.elapsed(),
                    outcome,
                });
            })
        };
        lock(&inner.services.tasks).push((stop_tx.clone(), task));
        let running = Running {
            name,
            hostname,
            ended: ended_rx,
            capture,
        };
        let ready = self
            .wait_ready(&service, &running, &ports, line_seen, &ns, &base, &cfg)
            .await;
        if let Err(e) = ready {
            stop_tx.send_replace(true);
            return Err(e);
        }
        Ok(running)
    }

    /// Waits until every port accepts connections, the log line (if any)
    /// was printed and the command (if any) succeeds; fails when the
    /// service ends first or the timeout passes.
    #[allow(clippy::too_many_arguments)]
    async fn wait_ready(
        &self,
        service: &Service,
        running: &Running,
        ports: &[u16],
        mut line_seen: watch::Receiver<bool>,
        ns: &Arc<kiln_exec::NetNamespace>,
        base: &Arc<FsState>,
        cfg: &crate::config::RunConfig,
    ) -> Result<()> {
        let readiness = &service.readiness;
        let timeout = readiness.timeout.unwrap_or(DEFAULT_READY_TIMEOUT);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pending: Vec<u16> = ports.to_vec();
        let mut command_ok = readiness.command.is_none();
        let mut ended = running.ended.clone();
        loop {
            self.inner.check_cancelled()?;
            if let Some(how) = running.ended() {
                return Err(Error::Service {
                    service: running.name.clone(),
                    why: format!("{how} before it was ready"),
                    log_tail: running.log_tail(),
                });
            }
            let mut still = Vec::new();
            for port in pending {
                let ns = ns.clone();
                let open = tokio::task::spawn_blocking(move || {
                    ns.accepts_tcp(port, Duration::from_millis(250))
                })
                .await?
                .unwrap_or(false);
                if !open {
                    still.push(port);
                }
            }
            pending = still;
            if pending.is_empty() && *line_seen.borrow() && !command_ok {
                if let Some(command) = &readiness.command {
                    command_ok = self.probe_command(command, base, cfg, ns).await?;
                }
            }
            if pending.is_empty() && *line_seen.borrow() && command_ok {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let mut waiting = Vec::new();
                for port in &pending {
                    waiting.push(format!("port {port} accepts no connections"));
                }
                if !*line_seen.borrow() {
                    if let Some(line) = &readiness.log_line {
                        waiting.push(format!("it printed no line containing {line:?}"));
                    }
                }
                if !command_ok {
                    if let Some(command) = &readiness.command {
                        waiting.push(format!("`{}` did not succeed", command.join(" ")));
                    }
                }
                return Err(Error::Service {
                    service: running.name.clone(),
                    why: format!(
                        "was not ready after {}: {}",
                        crate::error::seconds(timeout.as_secs_f64()),
                        waiting.join(", ")
                    ),
                    log_tail: running.log_tail(),
                });
            }
            let pause = tokio::time::sleep_until(
                (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline),
            );
            tokio::select! {
                _ = pause => {}
                _ = line_seen.changed() => {}
                _ = ended.changed() => {}
            }
        }
    }

    /// One try of a readiness command, in a container of the service's
    /// filesystem on its network; its output is not shown.
    async fn probe_command(
        &self,
        command: &[String],
        base: &Arc<FsState>,
        cfg: &crate::config::RunConfig,
        ns: &Arc<kiln_exec::NetNamespace>,
    ) -> Result<bool> {
        let inner = &self.inner;
        let inputs = self.run_inputs(cfg).await?;
        let upper = inner.store.stage_dir()?;
        let work = inner.store.stage_dir()?;
        let limits = kiln_graph::Limits {
            timeout: Some(Duration::from_secs(10)),
            ..kiln_graph::Limits::default()
        };
        let spec = self.run_spec(RunParts {
            base,
            inputs: &inputs,
            cfg,
            args: command.to_vec(),
            limits: &limits,
            network: kiln_exec::Network::Joined(kiln_exec::JoinedNetwork {
                netns: ns.path().to_owned(),
                hosts: Vec::new(),
                nameservers: ns.nameservers(),
            }),
            upper: upper.path(),
            work: work.path(),
        });
        let status = inner.runtime.run(spec, |_, _| None).await?;
        Ok(status.success())
    }
}

fn claim_ports(inner: &Inner, ports: &[u16], name: &str) -> Result<()> {
    let mut claimed = lock(&inner.services.ports);
    for port in ports {
        if let Some(other) = claimed.get(port) {
            return Err(Error::Service {
                service: name.to_owned(),
                why: format!(
                    "wants port {port}, which `{other}` already listens on: the services of \
                     one run share a network, so each port serves one of them (give one \
                     another port)"
                ),
                log_tail: String::new(),
            });
        }
    }
    for port in ports {
        claimed.insert(*port, name.to_owned());
    }
    Ok(())
}

/// Gives a service's ports back when it ends.
struct PortClaim {
    inner: Arc<Inner>,
    ports: Vec<u16>,
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        let mut claimed = lock(&self.inner.services.ports);
        for port in &self.ports {
            claimed.remove(port);
        }
    }
}
