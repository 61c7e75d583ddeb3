//! Human-readable tables of jobs and repositories.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

#[derive(Deserialize, Debug)]
pub struct JobRow {
    pub id: i64,
    pub status: String,
    pub repo: String,
    pub git_ref: String,
    pub commit: Option<String>,
    pub runner: Option<i64>,
    #[serde(default)]
    pub runner_name: Option<String>,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct RepoRow {
    pub name: String,
    pub url: String,
    pub branch: String,
    pub poll_seconds: i64,
    pub has_webhook_secret: bool,
    #[serde(default)]
    pub limits: kiln_server::RepoLimits,
}

/// A repository's job defaults, as the flags that set them:
/// `memory 1g, cpus 2, step 10m, job 30m`, or `-` when none is set.
fn limits_cell(limits: &kiln_server::RepoLimits) -> String {
    let mut parts = Vec::new();
    if let Some(bytes) = limits.step_memory_bytes {
        parts.push(format!("memory {}", memory(bytes)));
    }
    if let Some(millis) = limits.step_cpu_millis {
        parts.push(format!("cpus {}", millis as f64 / 1000.0));
    }
    if let Some(ms) = limits.step_timeout_ms {
        parts.push(format!("step {}", duration_ms(ms)));
    }
    if let Some(ms) = limits.job_timeout_ms {
        parts.push(format!("job {}", duration_ms(ms)));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Bytes in the largest unit that divides them, as `--memory` reads them.
fn memory(bytes: i64) -> String {
    for (shift, unit) in [(30, "g"), (20, "m"), (10, "k")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Milliseconds in the largest unit that divides them.
fn duration_ms(ms: i64) -> String {
    for (unit_ms, unit) in [(3_600_000, "h"), (60_000, "m"), (1000, "s")] {
        if ms >= unit_ms && ms % unit_ms == 0 {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

/// `ID STATUS REPO REF COMMIT RUNNER QUEUED DURATION`, one job a line.
pub fn jobs(rows: &[JobRow], now: SystemTime) -> String {
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|job| {
            [
                job.id.to_string(),
                job.status.clone(),
                job.repo.clone(),
                job.git_ref.clone(),
                job.commit
                    .as_deref()
                    .map(|sha| sha.chars().take(12).collect())
                    .unwrap_or_else(|| "-".to_owned()),
                match (&job.runner_name, job.runner) {
                    (Some(name), _) => name.clone(),
                    (None, Some(id)) => format!("#{id}"),
                    (None, None) => "-".to_owned(),
                },
                queued(&job.queued_at),
                duration(job, now),
            ]
        })
        .collect();
    render(
        &[
            "ID", "STATUS", "REPO", "REF", "COMMIT", "RUNNER", "QUEUED", "DURATION",
        ],
        &cells,
    )
}

/// `NAME URL BRANCH POLL WEBHOOK`, one repository a line.
pub fn repos(rows: &[RepoRow]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|repo| {
            [
                repo.name.clone(),
                repo.url.clone(),
                repo.branch.clone(),
                if repo.poll_seconds > 0 {
                    format!("{}s", repo.poll_seconds)
                } else {
                    "off".to_owned()
                },
                if repo.has_webhook_secret {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                },
                limits_cell(&repo.limits),
            ]
        })
        .collect();
    render(
        &["NAME", "URL", "BRANCH", "POLL", "WEBHOOK", "LIMITS"],
        &cells,
    )
}

/// Left-aligned columns two spaces apart; the last one is not padded.
fn render<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `2026-11-30 14:00:05` (UTC) from the API's RFC 3339 time.
fn queued(at: &str) -> String {
    match humantime::parse_rfc3339(at) {
        Ok(time) => {
            let seconds = humantime::format_rfc3339_seconds(time).to_string();
            seconds.trim_end_matches('Z').replacen('T', " ", 1)
        }
        Err(_) => at.to_owned(),
    }
}

/// How long the job ran, or has been running so far; `-` before it starts.
fn duration(job: &JobRow, now: SystemTime) -> String {
    let parse = |at: &Option<String>| {
        at.as_deref()
            .and_then(|at| humantime::parse_rfc3339(at).ok())
    };
    let Some(started) = parse(&job.started_at) else {
        return "-".to_owned();
    };
    let end = parse(&job.finished_at).unwrap_or(now);
    short_duration(end.duration_since(started).unwrap_or_default())
}

/// `812ms`, `4.2s`, `3m12s`, `1h02m`.
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(started: Option<&str>, finished: Option<&str>) -> JobRow {
        JobRow {
            id: 12,
            status: "succeeded".to_owned(),
            repo: "app".to_owned(),
            git_ref: "main".to_owned(),
            commit: Some("0123456789abcdef0123".to_owned()),
            runner: Some(3),
            runner_name: None,
            queued_at: "2026-11-30T14:00:00.123456Z".to_owned(),
            started_at: started.map(str::to_owned),
            finished_at: finished.map(str::to_owned),
        }
    }

    #[test]
    fn repo_limits_read_as_the_flags_that_set_them() {
        let limits = kiln_server::RepoLimits {
            step_memory_bytes: Some(3 << 29),
            step_cpu_millis: Some(1500),
            step_timeout_ms: Some(90_000),
            job_timeout_ms: Some(7_200_000),
        };
        assert_eq!(
            limits_cell(&limits),
            "memory 1536m, cpus 1.5, step 90s, job 2h"
        );
        assert_eq!(limits_cell(&kiln_server::RepoLimits::default()), "-");
        let odd = kiln_server::RepoLimits {
            step_memory_bytes: Some(1000),
            job_timeout_ms: Some(1500),
            ..kiln_server::RepoLimits::default()
        };
        assert_eq!(limits_cell(&odd), "memory 1000, job 1500ms");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(short_duration(Duration::from_millis(812)), "812ms");
        assert_eq!(short_duration(Duration::from_millis(4_240)), "4.2s");
        assert_eq!(short_duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(short_duration(Duration::from_secs(3_720)), "1h02m");
    }

    #[test]
    fn the_jobs_table_has_its_columns() {
        let now = humantime::parse_rfc3339("2026-11-30T14:10:00Z").unwrap();
        let rows = [
            job(
                Some("2026-11-30T14:00:01.000000Z"),
                Some("2026-11-30T14:00:05.500000Z"),
            ),
            job(Some("2026-11-30T14:09:00.000000Z"), None),
            job(None, None),
        ];
        let table = jobs(&rows, now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "STATUS", "REPO", "REF", "COMMIT", "RUNNER", "QUEUED", "DURATION"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "12",
                "succeeded",
                "app",
                "main",
                "0123456789ab",
                "#3",
                "2026-11-30",
                "14:00:00",
                "4.5s"
            ]
        );
        assert!(lines[2].ends_with("1m00s"), "{table}");
        assert!(lines[3].ends_with(" -"), "{table}");
    }
}
