//! The CI service from the command line: `kiln server` runs it; `kiln repo`,
//! `kiln trigger`, `kiln runner-token` and `kiln jobs` are its API clients
//! (the contract is crates/kiln-server/API.md).

mod client;
mod logs;
mod serve;
mod sse;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{json, Value};

pub use client::{ApiClient, ClientArgs, SecretArg};

/// `kiln server`.
#[derive(Args, Debug)]
#[command(
    after_help = "On its first start the server creates the admin token, prints it \
    once and saves it as DATA/admin.token (mode 0600). Runners need a registration token: \
    `kiln runner-token create`. Ctrl-C or SIGTERM stops the server; queued jobs are kept."
)]
pub struct ServerArgs {
    /// Address to listen on. Anything other than loopback exposes the API
    /// to the network: put TLS in front of it.
    #[arg(long, default_value = "127.0.0.1:8420", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Data directory: the database and admin.token
    /// [default: /var/lib/kiln-server for root, else $XDG_DATA_HOME/kiln-server]
    #[arg(long, env = "KILN_SERVER_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The database: sqlite://PATH or a file path [default: DATA/kiln.db].
    /// (Kept out of Debug output and errors: other URLs may hold a password.)
    #[arg(long, value_name = "URL")]
    pub db: Option<SecretArg>,
    /// A runner not heard from for this long is lost; its running jobs are
    /// queued again (e.g. 4s, 1m). Busy runners send a heartbeat a second;
    /// shorter requeues a killed runner's job sooner, longer tolerates a
    /// stalled machine or network longer (bench/requeue measures both).
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub runner_timeout: Duration,
    /// A client must send a whole request head (request line and headers)
    /// within this long, from connecting or from the head's first byte;
    /// slower clients are disconnected.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after
    /// this long. A held runner `next` or a followed log is never idle.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// A request body must arrive within this long after its head, else the
    /// answer is 408 and the connection is closed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub body_timeout: Duration,
    /// The most connections served at once; more wait until one closes.
    /// Each idle runner holds one or two. Keep `ulimit -n` above it.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_connections: u32,
    /// Let API tokens (not only the admin token) add repositories whose URL
    /// is a local path or file:// URL under DIR. Repeatable.
    #[arg(long = "allow-local-repos", value_name = "DIR")]
    pub allow_local_repos: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Add a repository for the server to build.
    #[command(
        after_help = "Jobs come from `kiln trigger`, from polling (--poll) or from a \
        push webhook: point GitHub, Gitea or Forgejo at http://SERVER/hooks/github with the \
        same secret. Pass the secret with --webhook-secret-file or KILN_WEBHOOK_SECRET so it \
        stays out of your shell history."
    )]
    Add {
        /// Short name, used by `kiln trigger NAME` (A-Z a-z 0-9 - _ .).
        name: String,
        /// The git URL runners clone.
        #[arg(long, value_name = "GIT_URL")]
        url: String,
        /// The branch polling watches and jobs build by default [server default: main].
        #[arg(long, value_name = "BRANCH")]
        branch: Option<String>,
        /// Check the branch for new commits every SECONDS (0: never; webhooks or
        /// triggers only).
        #[arg(long = "poll", value_name = "SECONDS")]
        poll_seconds: Option<u32>,
        /// The webhook secret (prefer --webhook-secret-file or the environment).
        #[arg(
            long,
            env = "KILN_WEBHOOK_SECRET",
            hide_env_values = true,
            value_name = "SECRET",
            conflicts_with = "webhook_secret_file"
        )]
        webhook_secret: Option<SecretArg>,
        /// Read the webhook secret from this file (one line; the newline is dropped).
        #[arg(long, value_name = "FILE")]
        webhook_secret_file: Option<PathBuf>,
        #[command(flatten)]
        limits: RepoLimitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the repositories.
    Ls {
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A repository's defaults for its jobs. Each replaces the runner's own
/// default (`kiln runner --memory ...`); a pipeline's own limits on a step
/// still come first.
#[derive(Args, Debug, Default)]
pub struct RepoLimitArgs {
    /// Memory of each step that sets none, swap included (e.g. 512m, 4g).
    #[arg(long, value_name = "SIZE", value_parser = kiln_engine::parse_memory)]
    pub memory: Option<u64>,
    /// CPUs of each step that sets none (e.g. 2, 0.5).
    #[arg(long, value_name = "CPUS", value_parser = kiln_engine::parse_cpus)]
    pub cpus: Option<u64>,
    /// Time each step that sets none may run (e.g. 30m, 90s).
    #[arg(long, value_name = "DURATION", value_parser = kiln_engine::parse_duration)]
    pub step_timeout: Option<std::time::Duration>,
    /// Time a whole job may run (e.g. 20m); a runner with a shorter
    /// --job-timeout keeps its own.
    #[arg(long, value_name = "DURATION", value_parser = kiln_engine::parse_duration)]
    pub job_timeout: Option<std::time::Duration>,
}

impl RepoLimitArgs {
    /// The `limits` of the API's `CreateRepo`. A sub-millisecond timeout
    /// counts as 1 ms, so it is not sent as "none".
    fn limits(&self) -> kiln_server::RepoLimits {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let millis = |d: std::time::Duration| count(d.as_millis().max(1) as u64);
        kiln_server::RepoLimits {
            step_memory_bytes: self.memory.map(count),
            step_cpu_millis: self.cpus.map(count),
            step_timeout_ms: self.step_timeout.map(millis),
            job_timeout_ms: self.job_timeout.map(millis),
        }
    }
}

/// `kiln trigger`.
#[derive(Args, Debug)]
pub struct TriggerArgs {
    /// The repository (as in `kiln repo ls`).
    pub name: String,
    /// The branch or ref to build [default: the repository's branch].
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// Build this commit [default: the ref's head when a runner takes the job].
    #[arg(long, value_name = "SHA")]
    pub commit: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum RunnerTokenCommand {
    /// Make a registration token and print it alone on stdout, for
    /// `kiln runner --token` (a runner shows it once, to register; it stays valid for more runners until revoked).
    Create {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print it alone on stdout: an API token (the admin
    /// token's powers except making API tokens; admin token only) or a
    /// runner registration token (as `kiln runner-token create`).
    Create {
        #[arg(long, value_enum, default_value_t = TokenKind::Api)]
        kind: TokenKind,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token read from standard input (an API, registration or
    /// runner token): every later request with it gets 401. Reading it from
    /// stdin keeps it out of shell history and process lists.
    #[command(after_help = "Example:\n  kiln token revoke < old-runner.token")]
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// For scripts and people: everything but making API tokens.
    Api,
    /// For `kiln runner --token`.
    RunnerRegistration,
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// List the jobs, newest first (times in UTC).
    Ls {
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print one job as JSON: status, times, runner and steps.
    Show {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a job's log: its output on stdout, kiln's system lines on stderr.
    #[command(
        after_help = "The job's stdout and stderr go to stdout as captured, in order; \
        kiln's own lines (steps, images, runner) go to stderr. With --follow the exit \
        status is 0 when the job succeeds and 1 when it fails or is cancelled."
    )]
    Logs {
        id: i64,
        /// Keep printing until the job finishes (resumes if the connection drops).
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a queued or running job.
    Cancel {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Queue a finished job again; prints the new job's id.
    Retry {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Deserialize)]
struct Created {
    id: i64,
}

#[derive(Deserialize)]
struct NewToken {
    token: String,
}

pub async fn server(args: ServerArgs) -> Result<ExitCode> {
    serve::run(args).await
}

pub async fn repo(cmd: RepoCommand) -> Result<ExitCode> {
    match cmd {
        RepoCommand::Add {
            name,
            url,
            branch,
            poll_seconds,
            webhook_secret,
            webhook_secret_file,
            limits,
            client,
        } => {
            let api = ApiClient::new(&client)?;
            let secret = match (webhook_secret, webhook_secret_file) {
                (_, Some(path)) => Some(read_secret_file(&path)?),
                (Some(secret), None) => Some(secret.expose().to_owned()),
                (None, None) => None,
            };
            if secret.as_deref().is_some_and(str::is_empty) {
                bail!("the webhook secret is empty");
            }
            let mut body = json!({ "name": name, "url": url });
            if let Some(branch) = branch {
                body["branch"] = json!(branch);
            }
            if let Some(poll) = poll_seconds {
                body["poll_seconds"] = json!(poll);
            }
            if let Some(secret) = secret {
                body["webhook_secret"] = json!(secret);
            }
            body["limits"] = json!(limits.limits());
            let _: Value = api.post("/api/repos", Some(&body)).await?;
            eprintln!("added repository {name}");
        }
        RepoCommand::Ls { json, client } => {
            let api = ApiClient::new(&client)?;
            let repos: Value = api.get("/api/repos").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&repos)?);
            } else {
                let rows: Vec<table::RepoRow> = serde_json::from_value(repos)
                    .context("the server's repository list is not in the expected shape")?;
                print!("{}", table::repos(&rows));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The secret in `path`, without the trailing newline editors add.
fn read_secret_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the webhook secret from {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

pub async fn trigger(args: TriggerArgs) -> Result<ExitCode> {
    let api = ApiClient::new(&args.client)?;
    let mut body = json!({});
    if let Some(git_ref) = args.git_ref {
        body["git_ref"] = json!(git_ref);
    }
    if let Some(commit) = args.commit {
        body["commit"] = json!(commit);
    }
    let created: Created = api
        .post(
            &format!("/api/repos/{}/jobs", path_segment(&args.name)?),
            Some(&body),
        )
        .await?;
    println!("{}", created.id);
    Ok(ExitCode::SUCCESS)
}

pub async fn runner_token(cmd: RunnerTokenCommand) -> Result<ExitCode> {
    match cmd {
        RunnerTokenCommand::Create { client } => {
            let api = ApiClient::new(&client)?;
            let created: NewToken = api.post("/api/runner-tokens", None).await?;
            println!("{}", created.token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn token(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Create { kind, client } => {
            let api = ApiClient::new(&client)?;
            let path = match kind {
                TokenKind::Api => "/api/api-tokens",
                TokenKind::RunnerRegistration => "/api/runner-tokens",
            };
            let created: NewToken = api.post(path, None).await?;
            println!("{}", created.token);
        }
        TokenCommand::Revoke { client } => {
            let mut presented = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut presented)
                .context("reading the token to revoke from standard input")?;
            let presented = presented.trim();
            if presented.is_empty() {
                bail!("no token on standard input: pipe in the token to revoke");
            }
            let api = ApiClient::new(&client)?;
            let _: Value = api
                .post(
                    "/api/tokens/revoke",
                    Some(&serde_json::json!({ "token": presented })),
                )
                .await?;
            eprintln!("revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn jobs(cmd: JobsCommand) -> Result<ExitCode> {
    match cmd {
        JobsCommand::Ls { json, client } => {
            let api = ApiClient::new(&client)?;
            let jobs: Value = api.get("/api/jobs").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                let rows: Vec<table::JobRow> = serde_json::from_value(jobs)
                    .context("the server's job list is not in the expected shape")?;
                print!("{}", table::jobs(&rows, SystemTime::now()));
            }
        }
        JobsCommand::Show { id, client } => {
            let api = ApiClient::new(&client)?;
            let job: Value = api.get(&format!("/api/jobs/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobsCommand::Logs { id, follow, client } => {
            let api = ApiClient::new(&client)?;
            return if follow {
                logs::follow(&api, id).await
            } else {
                logs::print(&api, id).await
            };
        }
        JobsCommand::Cancel { id, client } => {
            let api = ApiClient::new(&client)?;
            let _: Value = api.post(&format!("/api/jobs/{id}/cancel"), None).await?;
            eprintln!("cancelled job {id}");
        }
        JobsCommand::Retry { id, client } => {
            let api = ApiClient::new(&client)?;
            let created: Created = api.post(&format!("/api/jobs/{id}/retry"), None).await?;
            println!("{}", created.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A repository name as one URL path segment. Names are plain (the server
/// allows A-Z a-z 0-9 - _ .), so anything else is refused here rather than
/// escaped into a different path.
fn path_segment(name: &str) -> Result<&str> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(name)
    } else {
        bail!("repository name {name:?} must be made of A-Z a-z 0-9 - _ .")
    }
}
