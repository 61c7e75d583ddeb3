//! `POST /hooks/github`: push events from GitHub, Gitea and Forgejo, which
//! all sign the raw body with HMAC-SHA256 of the repo's webhook secret.
//!
//! There is no bearer token: the signature is the credential, so nothing is
//! queued before it is checked, and a repo without a secret takes no hooks.

use crate::server::{ApiError, AppState};
use crate::store::now_micros;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The headers naming the event, one per forge.
const EVENT_HEADERS: [&str; 3] = ["x-github-event", "x-gitea-event", "x-forgejo-event"];
const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The parts of a push (or ping) payload kiln reads.
#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    deleted: Option<bool>,
    repository: Option<RepositoryField>,
}

#[derive(Deserialize)]
struct RepositoryField {
    name: Option<String>,
    clone_url: Option<String>,
    ssh_url: Option<String>,
    html_url: Option<String>,
}

pub(crate) async fn github_hook(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let queued_at = now_micros();
    let event = EVENT_HEADERS
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "no X-GitHub-Event, X-Gitea-Event or X-Forgejo-Event header".to_owned(),
            )
        })?;
    let payload: Payload = serde_json::from_slice(&body).map_err(|err| {
        ApiError::BadRequest(format!(
            "the {event} webhook body is not a JSON event: {err}"
        ))
    })?;
    let repository = payload.repository.as_ref().ok_or_else(|| {
        ApiError::NotFound(format!("repo for a {event} webhook without a repository"))
    })?;
    let urls = [
        repository.clone_url.clone(),
        repository.ssh_url.clone(),
        repository.html_url.clone(),
    ];
    let name = repository.name.clone();
    let target = shared
        .db(move |store| {
            store.webhook_target(
                [urls[0].as_deref(), urls[1].as_deref(), urls[2].as_deref()],
                name.as_deref(),
            )
        })
        .await?
        .ok_or_else(|| {
            let named = repository.name.as_deref().unwrap_or("?");
            ApiError::NotFound(format!("repo matching the {event} webhook for {named:?}"))
        })?;

    let secret = target.secret.as_ref().ok_or_else(|| {
        ApiError::BadSignature(format!(
            "repo {:?} has no webhook secret; add one to take webhooks",
            target.name
        ))
    })?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::BadSignature("no X-Hub-Signature-256 header".to_owned()))?;
    if !signature_matches(secret.expose(), &body, signature) {
        return Err(ApiError::BadSignature(format!(
            "the X-Hub-Signature-256 of this webhook does not match repo {:?}'s secret",
            target.name
        )));
    }

    match event.as_str() {
        "ping" => Ok(Json(serde_json::json!({ "pong": true })).into_response()),
        "push" => push(&shared, &target.name, &payload, queued_at).await,
        other => Ok(ignored(&format!("{other} events are not built"))),
    }
}

async fn push(
    shared: &AppState,
    repo: &str,
    payload: &Payload,
    queued_at: i64,
) -> Result<Response, ApiError> {
    let Some(branch) = payload
        .git_ref
        .as_deref()
        .and_then(|git_ref| git_ref.strip_prefix("refs/heads/"))
    else {
        return Ok(ignored("not a push to a branch"));
    };
    // Jobs hand the branch to git.
    if let Some(problem) = crate::repo_url::ref_problem(branch) {
        return Err(ApiError::BadRequest(format!(
            "push to branch {branch:?} cannot be built: the name {problem}"
        )));
    }
    let after = payload.after.as_deref().unwrap_or_default();
    if payload.deleted == Some(true) || (!after.is_empty() && after.bytes().all(|b| b == b'0')) {
        return Ok(ignored("branch deletion"));
    }
    if after.is_empty() || !after.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "push to {branch:?} has no commit in \"after\" ({after:?})"
        )));
    }
    let (repo, branch, commit) = (repo.to_owned(), branch.to_owned(), after.to_owned());
    let log_repo = repo.clone();
    let id = shared
        .db(move |store| store.queue_push(&repo, &branch, &commit, queued_at))
        .await?;
    shared.queued.notify_waiters();
    tracing::info!(repo = %log_repo, job = id, "queued a job for a pushed commit");
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

fn ignored(why: &str) -> Response {
    Json(serde_json::json!({ "ignored": why })).into_response()
}

/// Whether `header` (`sha256=HEX`) is the HMAC-SHA256 of `body` under
/// `secret`, compared in constant time.
fn signature_matches(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_signature) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(signature) = hex::decode(hex_signature) else {
        return false;
    };
    // HMAC takes a key of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked_against_the_raw_body() {
        // The example from GitHub's "Validating webhook deliveries".
        assert!(signature_matches(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ));
        let good = sign(b"secret", b"{\"a\":1}");
        assert!(signature_matches(b"secret", b"{\"a\":1}", &good));
        assert!(!signature_matches(b"secret", b"{\"a\":2}", &good));
        assert!(!signature_matches(b"other", b"{\"a\":1}", &good));
        assert!(!signature_matches(
            b"secret",
            b"{\"a\":1}",
            good.trim_start_matches("sha256=")
        ));
        assert!(!signature_matches(b"secret", b"{\"a\":1}", "sha256=zz"));
        assert!(!signature_matches(b"secret", b"{\"a\":1}", "sha256="));
        assert!(!signature_matches(
            b"secret",
            b"{\"a\":1}",
            &good[..good.len() - 2]
        ));
    }
}
