//! The durable state and every SQL statement kiln-server runs.
//!
//! The SQL is plain enough for PostgreSQL too: `BIGINT` microsecond
//! timestamps, `ON CONFLICT ... DO NOTHING` / `DO UPDATE SET ... = excluded.`,
//! `RETURNING`, `BOOLEAN` and `DOUBLE PRECISION` columns. The exceptions are
//! SQLite's connection pragmas, `PRAGMA user_version` for the schema version,
//! and `INTEGER PRIMARY KEY` (an identity column in PostgreSQL).

use crate::token::{Token, TokenHash, TokenKind};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The schema, one entry per version; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE repos (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    branch TEXT NOT NULL,
    poll_seconds BIGINT NOT NULL,
    webhook_secret TEXT
);
CREATE TABLE runners (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    registered_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    repo TEXT NOT NULL REFERENCES repos (name),
    git_ref TEXT NOT NULL,
    commit_sha TEXT,
    status TEXT NOT NULL,
    runner BIGINT REFERENCES runners (id),
    attempt BIGINT NOT NULL,
    queued_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE TABLE log_chunks (
    job BIGINT NOT NULL REFERENCES jobs (id),
    seq BIGINT NOT NULL,
    stream TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job, seq)
);
"#,
    // 2: what the poller last saw of each repo, steps, and logs kept per
    // attempt. SQLite cannot change a primary key, so log_chunks is rebuilt;
    // chunks stored before keep the attempt their job had.
    r#"
ALTER TABLE repos ADD COLUMN last_seen_commit TEXT;
CREATE TABLE steps (
    job BIGINT NOT NULL REFERENCES jobs (id),
    attempt BIGINT NOT NULL,
    step BIGINT NOT NULL,
    name TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    status TEXT NOT NULL,
    cached BOOLEAN NOT NULL,
    duration_ms DOUBLE PRECISION,
    PRIMARY KEY (job, attempt, step)
);
CREATE TABLE log_chunks_by_attempt (
    job BIGINT NOT NULL REFERENCES jobs (id),
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    stream TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job, attempt, seq)
);
INSERT INTO log_chunks_by_attempt (job, attempt, seq, stream, data)
    SELECT log_chunks.job, jobs.attempt, log_chunks.seq, log_chunks.stream, log_chunks.data
    FROM log_chunks JOIN jobs ON jobs.id = log_chunks.job;
DROP TABLE log_chunks;
ALTER TABLE log_chunks_by_attempt RENAME TO log_chunks;
"#,
    // 3: per-repository defaults for the limits of its jobs.
    r#"
ALTER TABLE repos ADD COLUMN step_memory_bytes BIGINT;
ALTER TABLE repos ADD COLUMN step_cpu_millis BIGINT;
ALTER TABLE repos ADD COLUMN step_timeout_ms BIGINT;
ALTER TABLE repos ADD COLUMN job_timeout_ms BIGINT;
"#,
];

/// A repository's defaults for its jobs: each step's memory, CPUs and
/// timeout (unless the pipeline sets its own), and the whole job's timeout.
/// Unset fields leave the runner's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepoLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_memory_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_cpu_millis: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_timeout_ms: Option<i64>,
}

impl RepoLimits {
    /// The first field that is not a positive number, by name.
    pub fn invalid_field(&self) -> Option<&'static str> {
        [
            ("step_memory_bytes", self.step_memory_bytes),
            ("step_cpu_millis", self.step_cpu_millis),
            ("step_timeout_ms", self.step_timeout_ms),
            ("job_timeout_ms", self.job_timeout_ms),
        ]
        .into_iter()
        .find(|(_, value)| value.is_some_and(|v| v <= 0))
        .map(|(name, _)| name)
    }

    fn from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<RepoLimits> {
        Ok(RepoLimits {
            step_memory_bytes: row.get(first)?,
            step_cpu_millis: row.get(first + 1)?,
            step_timeout_ms: row.get(first + 2)?,
            job_timeout_ms: row.get(first + 3)?,
        })
    }
}

const LIMIT_COLUMNS: &str = "step_memory_bytes, step_cpu_millis, step_timeout_ms, job_timeout_ms";

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this kiln knows ({known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("cannot write admin token file {path}: {source}")]
    AdminTokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot get random bytes for a token: {0}")]
    Random(getrandom::Error),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database holds a bad value: {0}")]
    Corrupt(String),
}

/// Microseconds since the Unix epoch, the unit of every timestamp stored.
pub fn now_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    fn parse(name: &str) -> Result<JobStatus, StoreError> {
        Ok(match name {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(StoreError::Corrupt(format!("job status {other:?}"))),
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A repository the server builds. The webhook secret stays in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repo {
    pub name: String,
    pub url: String,
    pub branch: String,
    pub poll_seconds: i64,
    pub has_webhook_secret: bool,
    pub limits: RepoLimits,
}

/// A repository to add.
pub struct NewRepo {
    pub name: String,
    pub url: String,
    pub branch: String,
    pub poll_seconds: i64,
    pub webhook_secret: Option<String>,
    pub limits: RepoLimits,
}

impl std::fmt::Debug for NewRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRepo")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("branch", &self.branch)
            .field("poll_seconds", &self.poll_seconds)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("limits", &self.limits)
            .finish()
    }
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub repo: String,
    pub git_ref: String,
    pub commit_sha: Option<String>,
    pub status: JobStatus,
    pub runner: Option<i64>,
    /// The name the runner registered with, while one holds (or held) the job.
    pub runner_name: Option<String>,
    pub attempt: i64,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A job handed to a runner, with what it needs to fetch the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedJob {
    pub job: Job,
    pub url: String,
    pub limits: RepoLimits,
}

/// One piece of a job's output. `seq` counts from 0 within an attempt.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogChunk {
    pub seq: i64,
    pub stream: String,
    pub data: String,
}

/// Where a step of a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Running,
    Cached,
    Succeeded,
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Cached => "cached",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
        }
    }

    fn parse(name: &str) -> Result<StepStatus, StoreError> {
        Ok(match name {
            "running" => StepStatus::Running,
            "cached" => StepStatus::Cached,
            "succeeded" => StepStatus::Succeeded,
            "failed" => StepStatus::Failed,
            other => return Err(StoreError::Corrupt(format!("step status {other:?}"))),
        })
    }
}

/// One step of a job's attempt, as the runner reports it. A runner sends a
/// step again as it changes (running, then succeeded); the last one wins.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub step: i64,
    pub name: String,
    /// The step's cache key (`blake3:...`); empty until the runner knows it.
    #[serde(default)]
    pub key: String,
    pub status: StepStatus,
    #[serde(default)]
    pub cached: bool,
    #[serde(default)]
    pub duration_ms: Option<f64>,
}

/// A job as a runner names it: by id, and by attempt when the runner says
/// which (runners from before attempts were reported do not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerJob {
    pub id: i64,
    pub attempt: Option<i64>,
}

impl RunnerJob {
    /// A job named by id only: whatever attempt is current.
    pub fn any_attempt(id: i64) -> RunnerJob {
        RunnerJob { id, attempt: None }
    }

    pub fn attempt(id: i64, attempt: i64) -> RunnerJob {
        RunnerJob {
            id,
            attempt: Some(attempt),
        }
    }

    /// Whether this names attempt `current` of job `id`.
    fn names(&self, id: i64, current: i64) -> bool {
        self.id == id && self.attempt.is_none_or(|attempt| attempt == current)
    }
}

/// How a runner's `finish` went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishOutcome {
    /// The job ended with the status given.
    Finished,
    /// The runner does not hold the job, or named an attempt that is not
    /// the current one.
    NotHeld,
    /// The job is the runner's but no longer running (cancelled, finished).
    NotRunning(JobStatus),
}

/// What a heartbeat tells and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Jobs the runner listed that it must stop: cancelled, finished, no
    /// longer its own, or an attempt that is not the current one. Each as
    /// the runner listed it, once.
    pub cancel: Vec<RunnerJob>,
    /// Jobs assigned to the runner that it did not list, put back in the queue.
    pub requeued: Vec<i64>,
}

/// A repo's webhook secret. `Debug` never shows it.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The repo a webhook delivery is for.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    pub name: String,
    pub branch: String,
    pub secret: Option<WebhookSecret>,
}

/// Who a presented token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Api,
    RunnerRegistration,
    Runner { runner_id: i64 },
}

/// What [`Store::open`] found or made.
pub struct Opened {
    pub store: Store,
    /// The admin token, when this open created it; it is never available again.
    pub new_admin_token: Option<Token>,
}

/// The database. Methods are synchronous; callers on an async runtime run
/// them on the blocking pool.
pub struct Store {
    conn: Connection,
}

/// A job with its runner's name; follow with `WHERE jobs.id = ...` or `ORDER BY`.
const JOB_SELECT: &str = "SELECT jobs.id, jobs.repo, jobs.git_ref, jobs.commit_sha, jobs.status, \
                          jobs.runner, runners.name, jobs.attempt, jobs.queued_at, \
                          jobs.started_at, jobs.finished_at \
                          FROM jobs LEFT JOIN runners ON runners.id = jobs.runner";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<(Job, String)> {
    let status: String = row.get(4)?;
    Ok((
        Job {
            id: row.get(0)?,
            repo: row.get(1)?,
            git_ref: row.get(2)?,
            commit_sha: row.get(3)?,
            status: JobStatus::Queued,
            runner: row.get(5)?,
            runner_name: row.get(6)?,
            attempt: row.get(7)?,
            queued_at: row.get(8)?,
            started_at: row.get(9)?,
            finished_at: row.get(10)?,
        },
        status,
    ))
}

fn job_in(conn: &Connection, id: i64) -> Result<Option<Job>, StoreError> {
    conn.query_row(
        &format!("{JOB_SELECT} WHERE jobs.id = ?1"),
        params![id],
        job_from_row,
    )
    .optional()?
    .map(finish_job)
    .transpose()
}

/// The current attempt of `job` if `runner_id` holds it (assigned to it and
/// running) and it is the attempt the runner named, if it named one.
fn held_attempt(
    conn: &Connection,
    runner_id: i64,
    job: RunnerJob,
) -> Result<Option<i64>, StoreError> {
    let current: Option<i64> = conn
        .query_row(
            "SELECT attempt FROM jobs WHERE id = ?1 AND runner = ?2 AND status = 'running'",
            params![job.id, runner_id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(current.filter(|&current| job.names(job.id, current)))
}

fn insert_job(
    conn: &Connection,
    repo: &str,
    git_ref: &str,
    commit_sha: Option<&str>,
    queued_at: i64,
) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "INSERT INTO jobs (repo, git_ref, commit_sha, status, attempt, queued_at) \
         VALUES (?1, ?2, ?3, 'queued', 1, ?4) RETURNING id",
        params![repo, git_ref, commit_sha, queued_at],
        |row| row.get(0),
    )?)
}

fn finish_job((mut job, status): (Job, String)) -> Result<Job, StoreError> {
    job.status = JobStatus::parse(&status)?;
    Ok(job)
}

impl Store {
    /// Opens (creating and migrating) `DATA/kiln.db`. On a data directory
    /// without an admin token, makes one and writes it to `DATA/admin.token`
    /// (mode 0600).
    pub fn open(data_dir: &Path) -> Result<Opened, StoreError> {
        Store::open_file(&data_dir.join("kiln.db"), data_dir)
    }

    /// Opens (creating and migrating) the SQLite database at `path`, with
    /// `admin.token` in `data_dir` as [`Store::open`] does.
    pub fn open_file(path: &Path, data_dir: &Path) -> Result<Opened, StoreError> {
        create_private_dir(data_dir)?;
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            create_private_dir(parent)?;
        }
        let path = path.to_owned();
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        restrict_to_owner(&path).map_err(|source| StoreError::CreateDir {
            path: path.clone(),
            source,
        })?;
        // WAL lets readers and the writer overlap; FULL syncs the WAL at every
        // commit, so a job the API accepted survives a power cut.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        let mut store = Store { conn };
        let new_admin_token = store.ensure_admin_token(data_dir)?;
        Ok(Opened {
            store,
            new_admin_token,
        })
    }

    fn ensure_admin_token(&mut self, data_dir: &Path) -> Result<Option<Token>, StoreError> {
        let existing: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM tokens WHERE kind = 'admin'",
            [],
            |row| row.get(0),
        )?;
        if existing > 0 {
            return Ok(None);
        }
        let token = Token::generate(TokenKind::Admin).map_err(StoreError::Random)?;
        // The file first: a crash before the insert leaves no admin in the
        // database, so the next open makes a fresh token and replaces the file.
        let path = data_dir.join("admin.token");
        // A trailing newline, as text files have; readers trim it.
        write_private_file(&path, format!("{}\n", token.expose()).as_bytes())
            .map_err(|source| StoreError::AdminTokenFile { path, source })?;
        self.insert_token(&token)?;
        tracing::info!(dir = %data_dir.display(), "created the admin token");
        Ok(Some(token))
    }

    /// Makes and records a token of `kind`.
    pub fn create_token(&mut self, kind: TokenKind) -> Result<Token, StoreError> {
        let token = Token::generate(kind).map_err(StoreError::Random)?;
        self.insert_token(&token)?;
        Ok(token)
    }

    fn insert_token(&self, token: &Token) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO tokens (kind, hash, created_at) VALUES (?1, ?2, ?3)",
            params![token.kind().as_str(), token.hash().as_str(), now_micros()],
        )?;
        Ok(())
    }

    /// Marks the token with this value revoked. Returns whether one was live.
    pub fn revoke_token(&mut self, presented: &str) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "UPDATE tokens SET revoked_at = ?1 WHERE hash = ?2 AND revoked_at IS NULL",
            params![now_micros(), TokenHash::of(presented).as_str()],
        )?;
        Ok(changed > 0)
    }

    /// Who holds `presented`, or `None` for an unknown or revoked token.
    /// Changes nothing: a token shown at the wrong endpoint leaves no trace.
    pub fn authenticate(&mut self, presented: &str) -> Result<Option<Principal>, StoreError> {
        let wanted = TokenHash::of(presented);
        let found: Option<(String, String, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT hash, kind, revoked_at FROM tokens WHERE hash = ?1",
                params![wanted.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        let Some((stored, kind, revoked_at)) = found else {
            return Ok(None);
        };
        // The lookup matched by index; this comparison is the check itself.
        if !TokenHash::from_stored(stored).constant_time_eq(&wanted) || revoked_at.is_some() {
            return Ok(None);
        }
        let kind = TokenKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("token kind {kind:?}")))?;
        Ok(Some(match kind {
            TokenKind::Admin => Principal::Admin,
            TokenKind::Api => Principal::Api,
            TokenKind::RunnerRegistration => Principal::RunnerRegistration,
            TokenKind::Runner => {
                let runner_id: Option<i64> = self
                    .conn
                    .query_row(
                        "SELECT id FROM runners WHERE token_hash = ?1",
                        params![wanted.as_str()],
                        |row| row.get(0),
                    )
                    .optional()?;
                match runner_id {
                    Some(runner_id) => Principal::Runner { runner_id },
                    None => return Ok(None),
                }
            }
        }))
    }

    /// Records that a runner was heard from.
    ///
    /// A runner seen less than `fresh_for` microseconds ago is left as it
    /// is: an UPDATE that matches no row writes nothing, so a busy runner's
    /// every request does not cost a commit and an fsync.
    pub fn touch_runner(&mut self, runner_id: i64, fresh_for: i64) -> Result<(), StoreError> {
        let now = now_micros();
        self.conn.execute(
            "UPDATE runners SET last_seen = ?1 WHERE id = ?2 AND last_seen <= ?3",
            params![now, runner_id, now.saturating_sub(fresh_for)],
        )?;
        Ok(())
    }

    /// Adds a repository; `Ok(false)` if one with that name exists.
    pub fn add_repo(&mut self, repo: &NewRepo) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "INSERT INTO repos (name, url, branch, poll_seconds, webhook_secret, \
             step_memory_bytes, step_cpu_millis, step_timeout_ms, job_timeout_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (name) DO NOTHING",
            params![
                repo.name,
                repo.url,
                repo.branch,
                repo.poll_seconds,
                repo.webhook_secret,
                repo.limits.step_memory_bytes,
                repo.limits.step_cpu_millis,
                repo.limits.step_timeout_ms,
                repo.limits.job_timeout_ms,
            ],
        )?;
        Ok(changed > 0)
    }

    pub fn repos(&self) -> Result<Vec<Repo>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT name, url, branch, poll_seconds, webhook_secret IS NOT NULL, {LIMIT_COLUMNS} \
             FROM repos ORDER BY name"
        ))?;
        let rows = stmt.query_map([], |row| {
            Ok(Repo {
                name: row.get(0)?,
                url: row.get(1)?,
                branch: row.get(2)?,
                poll_seconds: row.get(3)?,
                has_webhook_secret: row.get(4)?,
                limits: RepoLimits::from_row(row, 5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queues a job for `repo` at `git_ref` (the repo's branch if `None`).
    /// `None` if there is no such repo.
    pub fn queue_job(
        &mut self,
        repo: &str,
        git_ref: Option<&str>,
        commit_sha: Option<&str>,
        queued_at: i64,
    ) -> Result<Option<i64>, StoreError> {
        let branch: Option<String> = self
            .conn
            .query_row(
                "SELECT branch FROM repos WHERE name = ?1",
                params![repo],
                |row| row.get(0),
            )
            .optional()?;
        let Some(branch) = branch else {
            return Ok(None);
        };
        let git_ref = git_ref.map_or(branch, str::to_owned);
        insert_job(&self.conn, repo, &git_ref, commit_sha, queued_at).map(Some)
    }

    /// Records `commit` as the head of repo `name`'s branch, as `git ls-remote`
    /// saw it, and queues a job for it when it differs from the last one seen
    /// (the first one seen included). `None` when nothing was queued.
    pub fn record_polled_commit(
        &mut self,
        name: &str,
        commit: &str,
        queued_at: i64,
    ) -> Result<Option<i64>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT branch, last_seen_commit FROM repos WHERE name = ?1",
                params![name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((branch, last_seen)) = found else {
            return Ok(None);
        };
        if last_seen.as_deref() == Some(commit) {
            return Ok(None);
        }
        tx.execute(
            "UPDATE repos SET last_seen_commit = ?1 WHERE name = ?2",
            params![commit, name],
        )?;
        let id = insert_job(&tx, name, &branch, Some(commit), queued_at)?;
        tx.commit()?;
        Ok(Some(id))
    }

    /// The repo a webhook delivery names: the first whose url is one of
    /// `urls`, else the one called `name`.
    pub fn webhook_target(
        &self,
        urls: [Option<&str>; 3],
        name: Option<&str>,
    ) -> Result<Option<WebhookTarget>, StoreError> {
        let read = |row: &Row<'_>| {
            Ok(WebhookTarget {
                name: row.get(0)?,
                branch: row.get(1)?,
                secret: row.get::<_, Option<String>>(2)?.map(WebhookSecret),
            })
        };
        let by_url = self
            .conn
            .query_row(
                "SELECT name, branch, webhook_secret FROM repos \
                 WHERE url IN (?1, ?2, ?3) ORDER BY id LIMIT 1",
                params![urls[0], urls[1], urls[2]],
                read,
            )
            .optional()?;
        if by_url.is_some() {
            return Ok(by_url);
        }
        let Some(name) = name else {
            return Ok(None);
        };
        Ok(self
            .conn
            .query_row(
                "SELECT name, branch, webhook_secret FROM repos WHERE name = ?1",
                params![name],
                read,
            )
            .optional()?)
    }

    /// Queues a job for a push to `branch` of repo `name` at `commit`. A push
    /// to the repo's own branch also counts as seen by the poller, so polling
    /// does not queue the same commit again.
    pub fn queue_push(
        &mut self,
        name: &str,
        branch: &str,
        commit: &str,
        queued_at: i64,
    ) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        let id = insert_job(&tx, name, branch, Some(commit), queued_at)?;
        tx.execute(
            "UPDATE repos SET last_seen_commit = ?1 WHERE name = ?2 AND branch = ?3",
            params![commit, name, branch],
        )?;
        tx.commit()?;
        Ok(id)
    }

    pub fn job(&self, id: i64) -> Result<Option<Job>, StoreError> {
        job_in(&self.conn, id)
    }

    /// All jobs, newest first.
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{JOB_SELECT} ORDER BY jobs.id DESC"))?;
        let rows = stmt.query_map([], job_from_row)?;
        rows.map(|row| finish_job(row?)).collect()
    }

    /// Cancels a job that has not finished. `None` if there is no such job,
    /// `Some(false)` if it had finished already.
    pub fn cancel_job(&mut self, id: i64) -> Result<Option<bool>, StoreError> {
        let changed = self.conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?1 \
             WHERE id = ?2 AND status IN ('queued', 'running')",
            params![now_micros(), id],
        )?;
        if changed > 0 {
            return Ok(Some(true));
        }
        Ok(self.job(id)?.map(|_| false))
    }

    /// Queues a new job for the same repo, ref and commit as a finished one.
    /// `None` if there is no such job, `Some(Err(status))` if it has not finished.
    pub fn retry_job(
        &mut self,
        id: i64,
        queued_at: i64,
    ) -> Result<Option<Result<i64, JobStatus>>, StoreError> {
        let tx = self.conn.transaction()?;
        let Some(old) = job_in(&tx, id)? else {
            return Ok(None);
        };
        if !old.status.is_finished() {
            return Ok(Some(Err(old.status)));
        }
        let new_id = insert_job(
            &tx,
            &old.repo,
            &old.git_ref,
            old.commit_sha.as_deref(),
            queued_at,
        )?;
        tx.commit()?;
        Ok(Some(Ok(new_id)))
    }

    /// Records a runner and makes its token.
    pub fn register_runner(
        &mut self,
        name: &str,
        labels: &[String],
    ) -> Result<(i64, Token), StoreError> {
        let token = Token::generate(TokenKind::Runner).map_err(StoreError::Random)?;
        let labels = serde_json::to_string(labels)
            .map_err(|err| StoreError::Corrupt(format!("labels: {err}")))?;
        let now = now_micros();
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO tokens (kind, hash, created_at) VALUES ('runner', ?1, ?2)",
            params![token.hash().as_str(), now],
        )?;
        let id = tx.query_row(
            "INSERT INTO runners (name, labels, token_hash, registered_at, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?4) RETURNING id",
            params![name, labels, token.hash().as_str(), now],
            |row| row.get(0),
        )?;
        tx.commit()?;
        Ok((id, token))
    }

    /// Gives the oldest queued job to `runner_id`, in one transaction so no
    /// other runner can take it too.
    pub fn claim_next(&mut self, runner_id: i64) -> Result<Option<ClaimedJob>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let candidate: Option<i64> = tx
            .query_row(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let Some(id) = candidate else {
            return Ok(None);
        };
        let now = now_micros();
        let changed = tx.execute(
            "UPDATE jobs SET status = 'running', runner = ?1, started_at = ?2 \
             WHERE id = ?3 AND status = 'queued'",
            params![runner_id, now, id],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        // Claiming is a sign of life: a runner that waited in `next` longer
        // than the runner timeout must not lose the job to the reaper
        // before its first heartbeat for it arrives.
        tx.execute(
            "UPDATE runners SET last_seen = ?1 WHERE id = ?2",
            params![now, runner_id],
        )?;
        let job = job_in(&tx, id)?
            .ok_or_else(|| StoreError::Corrupt(format!("job {id} vanished while claimed")))?;
        let (url, limits) = tx.query_row(
            &format!("SELECT url, {LIMIT_COLUMNS} FROM repos WHERE name = ?1"),
            params![job.repo],
            |row| Ok((row.get(0)?, RepoLimits::from_row(row, 1)?)),
        )?;
        tx.commit()?;
        Ok(Some(ClaimedJob { job, url, limits }))
    }

    /// Runs `write` with the current attempt of a job `runner_id` holds, in
    /// one immediate transaction, so the check and the writes see the same
    /// attempt even if the reaper requeues the job meanwhile. `false` (and
    /// nothing written) if the runner does not hold the job, or names an
    /// attempt that is not the current one.
    fn write_held_attempt(
        &mut self,
        runner_id: i64,
        named: RunnerJob,
        write: impl FnOnce(&Connection, i64) -> rusqlite::Result<()>,
    ) -> Result<bool, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(attempt) = held_attempt(&tx, runner_id, named)? else {
            return Ok(false);
        };
        write(&tx, attempt)?;
        tx.commit()?;
        Ok(true)
    }

    /// Stores log chunks under the current attempt of a job `runner_id`
    /// holds (assigned and running); a chunk whose seq is already stored is
    /// skipped. `false` if the runner does not hold the job, or names an
    /// attempt that is not the current one.
    pub fn append_logs(
        &mut self,
        runner_id: i64,
        named: RunnerJob,
        chunks: &[LogChunk],
    ) -> Result<bool, StoreError> {
        self.write_held_attempt(runner_id, named, |tx, attempt| {
            let mut stmt = tx.prepare(
                "INSERT INTO log_chunks (job, attempt, seq, stream, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (job, attempt, seq) DO NOTHING",
            )?;
            for chunk in chunks {
                stmt.execute(params![
                    named.id,
                    attempt,
                    chunk.seq,
                    chunk.stream,
                    chunk.data
                ])?;
            }
            Ok(())
        })
    }

    /// The log of the current attempt of a job, in seq order.
    pub fn logs(&self, job: i64) -> Result<Vec<LogChunk>, StoreError> {
        let attempt: Option<i64> = self
            .conn
            .query_row(
                "SELECT attempt FROM jobs WHERE id = ?1",
                params![job],
                |row| row.get(0),
            )
            .optional()?;
        match attempt {
            Some(attempt) => self.logs_after(job, attempt, -1),
            None => Ok(Vec::new()),
        }
    }

    /// The chunks of one attempt of a job with `seq > after`, in seq order.
    pub fn logs_after(
        &self,
        job: i64,
        attempt: i64,
        after: i64,
    ) -> Result<Vec<LogChunk>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, stream, data FROM log_chunks \
             WHERE job = ?1 AND attempt = ?2 AND seq > ?3 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![job, attempt, after], |row| {
            Ok(LogChunk {
                seq: row.get(0)?,
                stream: row.get(1)?,
                data: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records steps of the current attempt of a job `runner_id` holds; a
    /// step sent again replaces the one stored. `false` if the runner does
    /// not hold the job, or names an attempt that is not the current one.
    pub fn record_steps(
        &mut self,
        runner_id: i64,
        named: RunnerJob,
        steps: &[Step],
    ) -> Result<bool, StoreError> {
        self.write_held_attempt(runner_id, named, |tx, attempt| {
            let mut stmt = tx.prepare(
                "INSERT INTO steps \
                 (job, attempt, step, name, cache_key, status, cached, duration_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (job, attempt, step) DO UPDATE SET \
                 name = excluded.name, cache_key = excluded.cache_key, \
                 status = excluded.status, cached = excluded.cached, \
                 duration_ms = excluded.duration_ms",
            )?;
            for step in steps {
                stmt.execute(params![
                    named.id,
                    attempt,
                    step.step,
                    step.name,
                    step.key,
                    step.status.as_str(),
                    step.cached,
                    step.duration_ms
                ])?;
            }
            Ok(())
        })
    }

    /// The steps of the current attempt of a job, in step order.
    pub fn steps(&self, job: i64) -> Result<Vec<Step>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT steps.step, steps.name, steps.cache_key, steps.status, steps.cached, \
             steps.duration_ms FROM steps JOIN jobs ON jobs.id = steps.job \
             WHERE steps.job = ?1 AND steps.attempt = jobs.attempt ORDER BY steps.step",
        )?;
        let rows = stmt.query_map(params![job], |row| {
            Ok((
                Step {
                    step: row.get(0)?,
                    name: row.get(1)?,
                    key: row.get(2)?,
                    status: StepStatus::Running,
                    cached: row.get(4)?,
                    duration_ms: row.get(5)?,
                },
                row.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (mut step, status) = row?;
            step.status = StepStatus::parse(&status)?;
            Ok(step)
        })
        .collect()
    }

    /// A runner's heartbeat, listing the jobs it `held`: says which of them to
    /// stop, and requeues (attempt + 1) the running jobs assigned to it before
    /// `assigned_before` that it did not list, since its `next` answer for
    /// them was lost. Listing an older attempt of a job is not listing the
    /// current one: that older attempt is stopped, and the current one is
    /// requeued like any other unlisted job.
    pub fn heartbeat(
        &mut self,
        runner_id: i64,
        held: &[RunnerJob],
        assigned_before: i64,
    ) -> Result<Heartbeat, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcome = Heartbeat::default();
        for &job in held {
            if held_attempt(&tx, runner_id, job)?.is_none() && !outcome.cancel.contains(&job) {
                outcome.cancel.push(job);
            }
        }
        let assigned: Vec<(i64, i64, Option<i64>)> = {
            let mut stmt = tx.prepare(
                "SELECT id, attempt, started_at FROM jobs \
                 WHERE runner = ?1 AND status = 'running' ORDER BY id",
            )?;
            let rows = stmt.query_map(params![runner_id], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, attempt, started_at) in assigned {
            let stale = started_at.is_none_or(|at| at < assigned_before);
            let listed = held.iter().any(|job| job.names(id, attempt));
            if stale && !listed {
                tx.execute(
                    "UPDATE jobs SET status = 'queued', runner = NULL, started_at = NULL, \
                     attempt = attempt + 1 \
                     WHERE id = ?1 AND runner = ?2 AND status = 'running'",
                    params![id, runner_id],
                )?;
                outcome.requeued.push(id);
            }
        }
        tx.commit()?;
        Ok(outcome)
    }

    /// Ends a running job held by `runner_id` (the attempt it names, if it
    /// names one), recording the commit the runner built if the job named none.
    pub fn finish_job(
        &mut self,
        runner_id: i64,
        named: RunnerJob,
        status: JobStatus,
        built_commit: Option<&str>,
    ) -> Result<FinishOutcome, StoreError> {
        // Immediate: the job is not requeued between the check and the update.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(job) = job_in(&tx, named.id)? else {
            return Ok(FinishOutcome::NotHeld);
        };
        if job.runner != Some(runner_id) || !named.names(job.id, job.attempt) {
            return Ok(FinishOutcome::NotHeld);
        }
        if job.status != JobStatus::Running {
            return Ok(FinishOutcome::NotRunning(job.status));
        }
        tx.execute(
            "UPDATE jobs SET status = ?1, finished_at = ?2, \
             commit_sha = COALESCE(commit_sha, ?5) \
             WHERE id = ?3 AND runner = ?4 AND status = 'running'",
            params![
                status.as_str(),
                now_micros(),
                job.id,
                runner_id,
                built_commit
            ],
        )?;
        tx.commit()?;
        Ok(FinishOutcome::Finished)
    }

    /// Puts back in the queue the running jobs of runners not seen since
    /// `cutoff`. Returns how many.
    pub fn requeue_lost(&mut self, cutoff: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE jobs SET status = 'queued', runner = NULL, started_at = NULL, \
             attempt = attempt + 1 \
             WHERE status = 'running' \
             AND runner IN (SELECT id FROM runners WHERE last_seen < ?1)",
            params![cutoff],
        )?)
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Creates `dir` closed to other users (0700), or closes an existing one
/// that an older kiln or a hand-made `mkdir` left open: the database holds
/// job logs and token hashes.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let failed = |source| StoreError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    let meta = std::fs::metadata(dir).map_err(failed)?;
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    Ok(())
}

/// The database holds webhook secrets, so only its owner may read it.
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Writes `bytes` to `path` (mode 0600 from the start) through a temporary
/// file and a rename, so a reader never sees half a token.
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_data_dir_left_open_is_closed_on_open() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(&data).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let opened = Store::open(dir.path()).unwrap();
        (dir, opened.store)
    }

    fn repo(store: &mut Store) {
        assert!(store
            .add_repo(&NewRepo {
                name: "app".into(),
                url: "https://example.test/app.git".into(),
                branch: "main".into(),
                poll_seconds: 60,
                webhook_secret: Some("hook".into()),
                limits: RepoLimits {
                    step_memory_bytes: Some(1 << 30),
                    job_timeout_ms: Some(600_000),
                    ..RepoLimits::default()
                },
            })
            .unwrap());
    }

    #[test]
    fn schema_is_migrated_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        assert!(first.new_admin_token.is_some());
        drop(first);
        let second = Store::open(dir.path()).unwrap();
        assert!(second.new_admin_token.is_none());
        let version: i64 = second
            .store
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = second
            .store
            .conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = second
            .store
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("kiln.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn a_runner_seen_recently_is_not_written_again() {
        let (_dir, mut store) = open();
        let (runner, _) = store.register_runner("r1", &[]).unwrap();
        let last_seen = |store: &Store| -> i64 {
            store
                .conn
                .query_row(
                    "SELECT last_seen FROM runners WHERE id = ?1",
                    params![runner],
                    |row| row.get(0),
                )
                .unwrap()
        };
        let registered = last_seen(&store);
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.touch_runner(runner, 60_000_000).unwrap();
        assert_eq!(last_seen(&store), registered, "fresh: left alone");
        store.touch_runner(runner, 1_000).unwrap();
        assert!(last_seen(&store) > registered, "stale: rewritten");
    }

    #[test]
    fn tokens_authenticate_by_kind_until_revoked() {
        let (_dir, mut store) = open();
        let api = store.create_token(TokenKind::Api).unwrap();
        assert_eq!(
            store.authenticate(api.expose()).unwrap(),
            Some(Principal::Api)
        );
        assert_eq!(store.authenticate("kiln_api_nope").unwrap(), None);
        assert!(store.revoke_token(api.expose()).unwrap());
        assert_eq!(store.authenticate(api.expose()).unwrap(), None);
        assert!(!store.revoke_token(api.expose()).unwrap());

        let (runner_id, runner) = store.register_runner("r1", &["linux".into()]).unwrap();
        assert_eq!(
            store.authenticate(runner.expose()).unwrap(),
            Some(Principal::Runner { runner_id })
        );
    }

    #[test]
    fn a_claimed_job_is_not_claimed_again_and_lost_ones_return() {
        let (_dir, mut store) = open();
        repo(&mut store);
        assert_eq!(store.queue_job("nope", None, None, 1).unwrap(), None);
        let id = store
            .queue_job("app", None, Some("abc"), 1)
            .unwrap()
            .unwrap();
        let (r1, _) = store.register_runner("r1", &[]).unwrap();
        let (r2, _) = store.register_runner("r2", &[]).unwrap();
        let claimed = store.claim_next(r1).unwrap().unwrap();
        assert_eq!(claimed.job.id, id);
        assert_eq!(claimed.job.git_ref, "main");
        assert_eq!(claimed.url, "https://example.test/app.git");
        // The repo's limits travel with the job.
        assert_eq!(claimed.limits.step_memory_bytes, Some(1 << 30));
        assert_eq!(claimed.limits.job_timeout_ms, Some(600_000));
        assert_eq!(claimed.limits.step_timeout_ms, None);
        assert_eq!(store.repos().unwrap()[0].limits, claimed.limits);
        assert!(store.claim_next(r2).unwrap().is_none());
        assert_eq!(
            store
                .finish_job(r2, RunnerJob::any_attempt(id), JobStatus::Succeeded, None)
                .unwrap(),
            FinishOutcome::NotHeld
        );

        assert_eq!(store.requeue_lost(0).unwrap(), 0);
        assert_eq!(store.requeue_lost(i64::MAX).unwrap(), 1);
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(
            (job.status, job.runner, job.attempt),
            (JobStatus::Queued, None, 2)
        );
        assert_eq!(store.claim_next(r2).unwrap().unwrap().job.id, id);
        assert_eq!(
            store
                .finish_job(
                    r2,
                    RunnerJob::any_attempt(id),
                    JobStatus::Failed,
                    Some("abc0")
                )
                .unwrap(),
            FinishOutcome::Finished
        );
        assert_eq!(
            store.job(id).unwrap().unwrap().commit_sha.as_deref(),
            Some("abc"),
            "a job's own commit is kept"
        );
        assert_eq!(store.job(id).unwrap().unwrap().status, JobStatus::Failed);
        assert_eq!(
            store
                .finish_job(r2, RunnerJob::attempt(id, 2), JobStatus::Succeeded, None)
                .unwrap(),
            FinishOutcome::NotRunning(JobStatus::Failed)
        );
    }

    #[test]
    fn logs_written_under_schema_1_keep_their_jobs_attempt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("kiln.db")).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO repos (name, url, branch, poll_seconds) VALUES ('app', 'u', 'main', 60);
                 INSERT INTO jobs (repo, git_ref, status, attempt, queued_at)
                     VALUES ('app', 'main', 'failed', 2, 1);
                 INSERT INTO log_chunks (job, seq, stream, data) VALUES (1, 0, 'stdout', 'kept\n');",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap().store;
        assert_eq!(
            store.logs(1).unwrap(),
            vec![LogChunk {
                seq: 0,
                stream: "stdout".into(),
                data: "kept\n".into()
            }]
        );
        assert_eq!(store.steps(1).unwrap(), vec![]);
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn each_new_polled_commit_queues_one_job_and_pushes_count_as_seen() {
        let (_dir, mut store) = open();
        repo(&mut store);
        assert_eq!(store.record_polled_commit("nope", "aa", 1).unwrap(), None);
        let first = store.record_polled_commit("app", "aa", 1).unwrap().unwrap();
        assert_eq!(store.record_polled_commit("app", "aa", 2).unwrap(), None);
        let job = store.job(first).unwrap().unwrap();
        assert_eq!(
            (job.git_ref.as_str(), job.commit_sha.as_deref()),
            ("main", Some("aa"))
        );
        assert!(store
            .record_polled_commit("app", "bb", 3)
            .unwrap()
            .is_some());

        // A push to another branch leaves the poller's view alone; one to the
        // repo's branch is what the poller would have found.
        store.queue_push("app", "dev", "cc", 4).unwrap();
        assert!(store
            .record_polled_commit("app", "cc", 5)
            .unwrap()
            .is_some());
        store.queue_push("app", "main", "dd", 6).unwrap();
        assert_eq!(store.record_polled_commit("app", "dd", 7).unwrap(), None);
        assert_eq!(store.jobs().unwrap().len(), 5);
    }

    #[test]
    fn webhook_targets_match_by_url_then_name_and_hide_the_secret() {
        let (_dir, mut store) = open();
        repo(&mut store);
        let by_url = store
            .webhook_target(
                [None, Some("https://example.test/app.git"), None],
                Some("x"),
            )
            .unwrap()
            .unwrap();
        assert_eq!(by_url.name, "app");
        assert_eq!(by_url.secret.as_ref().unwrap().expose(), b"hook");
        assert!(!format!("{by_url:?}").contains("hook\""));
        let by_name = store
            .webhook_target([None, None, None], Some("app"))
            .unwrap();
        assert_eq!(by_name.unwrap().branch, "main");
        assert!(store
            .webhook_target([Some("https://other.test/x.git"), None, None], Some("x"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn heartbeats_cancel_what_is_not_held_and_requeue_what_is_not_listed() {
        let (_dir, mut store) = open();
        repo(&mut store);
        let (r1, _) = store.register_runner("r1", &[]).unwrap();
        let (r2, _) = store.register_runner("r2", &[]).unwrap();
        let listed = store.queue_job("app", None, None, 1).unwrap().unwrap();
        let unlisted = store.queue_job("app", None, None, 1).unwrap().unwrap();
        let elsewhere = store.queue_job("app", None, None, 1).unwrap().unwrap();
        store.claim_next(r1).unwrap().unwrap();
        store.claim_next(r1).unwrap().unwrap();
        store.claim_next(r2).unwrap().unwrap();

        let any = RunnerJob::any_attempt;
        // Assigned after the cutoff: nothing is requeued yet.
        let beat = store
            .heartbeat(r1, &[any(listed), any(elsewhere), any(listed)], 0)
            .unwrap();
        assert_eq!(beat.cancel, vec![any(elsewhere)]);
        assert_eq!(beat.requeued, Vec::<i64>::new());

        let beat = store.heartbeat(r1, &[any(listed)], i64::MAX).unwrap();
        assert_eq!(
            beat,
            Heartbeat {
                cancel: vec![],
                requeued: vec![unlisted]
            }
        );
        let job = store.job(unlisted).unwrap().unwrap();
        assert_eq!(
            (job.status, job.runner, job.attempt),
            (JobStatus::Queued, None, 2)
        );
        assert_eq!(
            store.job(listed).unwrap().unwrap().status,
            JobStatus::Running
        );
        assert_eq!(store.job(elsewhere).unwrap().unwrap().runner, Some(r2));

        store.cancel_job(listed).unwrap();
        assert_eq!(
            store.heartbeat(r1, &[any(listed)], 0).unwrap().cancel,
            vec![any(listed)]
        );
    }

    #[test]
    fn an_old_attempt_neither_writes_nor_finishes_nor_keeps_the_current_one() {
        let (_dir, mut store) = open();
        repo(&mut store);
        let (r1, _) = store.register_runner("r1", &[]).unwrap();
        let id = store.queue_job("app", None, None, 1).unwrap().unwrap();
        let chunk = |data: &str| LogChunk {
            seq: 0,
            stream: "stdout".into(),
            data: data.into(),
        };
        let step = Step {
            step: 1,
            name: "test".into(),
            key: String::new(),
            status: StepStatus::Running,
            cached: false,
            duration_ms: None,
        };
        let (old, current) = (RunnerJob::attempt(id, 1), RunnerJob::attempt(id, 2));
        store.claim_next(r1).unwrap().unwrap();
        assert_eq!(store.requeue_lost(i64::MAX).unwrap(), 1);
        // The same runner takes the new attempt while the old one runs on.
        assert_eq!(store.claim_next(r1).unwrap().unwrap().job.attempt, 2);

        assert!(!store.append_logs(r1, old, &[chunk("old")]).unwrap());
        assert!(!store
            .record_steps(r1, old, std::slice::from_ref(&step))
            .unwrap());
        assert_eq!(
            store.finish_job(r1, old, JobStatus::Failed, None).unwrap(),
            FinishOutcome::NotHeld
        );
        assert_eq!(store.logs(id).unwrap(), vec![]);
        assert_eq!(store.steps(id).unwrap(), vec![]);
        assert_eq!(store.job(id).unwrap().unwrap().status, JobStatus::Running);

        // Listed with its old attempt only: that one stops, and the current
        // one, assigned long enough ago and not listed, goes back to the queue.
        let beat = store.heartbeat(r1, &[old], 0).unwrap();
        assert_eq!(
            beat,
            Heartbeat {
                cancel: vec![old],
                requeued: vec![]
            },
            "a fresh assignment stays"
        );
        let beat = store.heartbeat(r1, &[old, current], i64::MAX).unwrap();
        assert_eq!(
            beat,
            Heartbeat {
                cancel: vec![old],
                requeued: vec![]
            }
        );
        assert!(store.append_logs(r1, current, &[chunk("new")]).unwrap());
        assert!(store
            .record_steps(r1, current, std::slice::from_ref(&step))
            .unwrap());
        assert_eq!(store.logs(id).unwrap(), vec![chunk("new")]);
        assert_eq!(store.steps(id).unwrap(), vec![step]);
        let beat = store.heartbeat(r1, &[old], i64::MAX).unwrap();
        assert_eq!(
            beat,
            Heartbeat {
                cancel: vec![old],
                requeued: vec![id]
            }
        );
        let job = store.job(id).unwrap().unwrap();
        assert_eq!((job.status, job.attempt), (JobStatus::Queued, 3));
    }

    #[test]
    fn steps_and_logs_belong_to_the_attempt_and_only_the_holder_writes_them() {
        let (_dir, mut store) = open();
        repo(&mut store);
        let (r1, _) = store.register_runner("r1", &[]).unwrap();
        let (r2, _) = store.register_runner("r2", &[]).unwrap();
        let id = store.queue_job("app", None, None, 1).unwrap().unwrap();
        let step = |status, duration_ms| Step {
            step: 1,
            name: "test".into(),
            key: "blake3:aa".into(),
            status,
            cached: false,
            duration_ms,
        };
        let chunk = |data: &str| LogChunk {
            seq: 0,
            stream: "stdout".into(),
            data: data.into(),
        };
        let named = RunnerJob::any_attempt(id);
        assert!(!store
            .record_steps(r1, named, &[step(StepStatus::Running, None)])
            .unwrap());
        store.claim_next(r1).unwrap().unwrap();
        assert_eq!(
            store.job(id).unwrap().unwrap().runner_name.as_deref(),
            Some("r1")
        );
        assert!(!store.append_logs(r2, named, &[chunk("not mine")]).unwrap());
        assert!(store.append_logs(r1, named, &[chunk("one")]).unwrap());
        assert!(store.append_logs(r1, named, &[chunk("again")]).unwrap());
        assert!(store
            .record_steps(r1, named, &[step(StepStatus::Running, None)])
            .unwrap());
        assert!(store
            .record_steps(r1, named, &[step(StepStatus::Failed, Some(1.5))])
            .unwrap());
        assert_eq!(
            store.steps(id).unwrap(),
            vec![step(StepStatus::Failed, Some(1.5))]
        );
        assert_eq!(store.logs(id).unwrap(), vec![chunk("one")]);

        assert_eq!(store.requeue_lost(i64::MAX).unwrap(), 1);
        assert_eq!(store.steps(id).unwrap(), vec![]);
        assert_eq!(store.logs(id).unwrap(), vec![]);
        assert!(!store.append_logs(r1, named, &[chunk("late")]).unwrap());
        store.claim_next(r2).unwrap().unwrap();
        assert!(store.append_logs(r2, named, &[chunk("two")]).unwrap());
        assert_eq!(store.logs(id).unwrap(), vec![chunk("two")]);
        assert_eq!(store.logs_after(id, 1, -1).unwrap(), vec![chunk("one")]);
    }
}
