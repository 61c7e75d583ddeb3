//! `kiln server`: the service in this process, until Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_server::{Server, ServerConfig};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::ServerArgs;

/// How long open connections (log streams, runners' long polls) get to
/// finish after a shutdown signal before the server stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub async fn run(args: ServerArgs) -> Result<ExitCode> {
    let data_dir = args.data.clone().unwrap_or_else(default_data_dir);
    let mut config = ServerConfig::new(&data_dir);
    config.listen = args.listen;
    config.lost_after = args.runner_timeout;
    config.header_read_timeout = args.header_timeout;
    config.idle_timeout = args.idle_timeout;
    config.body_read_timeout = args.body_timeout;
    config.max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    config.local_repo_roots = args
        .allow_local_repos
        .iter()
        // Roots are compared with absolute paths: a relative DIR means one here.
        .map(|dir| {
            std::path::absolute(dir)
                .with_context(|| format!("--allow-local-repos {}", dir.display()))
        })
        .collect::<Result<_>>()?;
    if let Some(db) = &args.db {
        // The parser's errors never repeat the URL, which may hold a password.
        config.db = kiln_server::parse_db_url(db.expose()).context("--db")?;
    }
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "kiln server: warning: listening on {}, beyond this machine; put TLS in front of it \
             (tokens travel in plain HTTP otherwise)",
            args.listen
        );
    }
    // Before binding: a signal that arrives once we said we listen must
    // shut down gracefully, not kill the process.
    let mut signals = Signals::new()?;

    let mut server = Server::bind(config)
        .await
        .with_context(|| format!("starting the server on {}", data_dir.display()))?;
    let addr = server
        .local_addr()
        .context("reading the address the server listens on")?;
    let url = format!("http://{}", reachable(addr));
    let mut out = std::io::stdout().lock();
    if let Some(token) = server.take_initial_admin_token() {
        // Shown this once; the file is the only other copy.
        writeln!(out, "admin token (shown once):")?;
        writeln!(out, "{}", token.expose())?;
        writeln!(
            out,
            "saved in {} (mode 0600); for the client commands:",
            data_dir.join("admin.token").display()
        )?;
        writeln!(
            out,
            "export KILN_SERVER={url} KILN_TOKEN={}",
            token.expose()
        )?;
    }
    writeln!(out, "listening on http://{addr}")?;
    out.flush()?;
    drop(out);

    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let serving = server.serve_until({
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    });
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => served.context("serving")?,
        signal = signals.next() => {
            eprintln!("kiln server: {signal}: shutting down");
            let _ = stopping_tx.send(true);
            tokio::select! {
                served = &mut serving => served.context("serving")?,
                _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                    eprintln!(
                        "kiln server: closing the connections still open after {}",
                        humantime::format_duration(SHUTDOWN_GRACE)
                    );
                }
                signal = signals.next() => {
                    eprintln!("kiln server: {signal} again: stopping now");
                }
            }
        }
    }
    eprintln!("kiln server: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Where the service keeps its database and admin token by default.
pub fn default_data_dir() -> PathBuf {
    if effective_uid() == Some(0) {
        return PathBuf::from("/var/lib/kiln-server");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("kiln-server");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/share/kiln-server")
}

/// The effective uid from /proc (kiln runs on Linux; no libc call needed).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// An address clients on this machine can use: 0.0.0.0 and [::] accept
/// connections but are not places to connect to.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, registered up front.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "interrupted",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_shown_as_loopback() {
        let any: SocketAddr = "0.0.0.0:8420".parse().unwrap();
        assert_eq!(reachable(any).to_string(), "127.0.0.1:8420");
        let lan: SocketAddr = "10.1.2.3:8420".parse().unwrap();
        assert_eq!(reachable(lan), lan);
    }

    #[test]
    fn the_effective_uid_is_read() {
        assert!(effective_uid().is_some());
    }
}
