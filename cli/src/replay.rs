//! `conveyor replay`: sign a sample webhook and post it, as GitHub or Stripe would.

use std::path::Path;

use bytes::Bytes;
use conveyor_shared::secret::Secret;
use conveyor_shared::signature::{sign_github, sign_stripe};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "cannot tell the event of {0}: put it in a folder named after the event (events/github/push/) or pass --event"
    )]
    UnknownEvent(String),
    #[error("`{0}` is not a URL conveyor can post to: use http://HOST:PORT/webhooks/...")]
    BadUrl(String),
    #[error("posting to {url} failed: {message}")]
    Send { url: String, message: String },
}

/// Who sends a sample, by where it lives: anything under a `stripe` folder is a Stripe
/// event; otherwise a GitHub delivery whose event is its folder's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    GitHub { event: String },
    Stripe,
}

impl Sender {
    pub fn of(path: &Path) -> Result<Self, ReplayError> {
        if path.ancestors().skip(1).any(|dir| dir.file_name().is_some_and(|name| name == "stripe")) {
            return Ok(Sender::Stripe);
        }
        event_of(path).map(|event| Sender::GitHub { event })
    }

    /// The dev server's route for this sender.
    pub fn path(&self) -> &'static str {
        match self {
            Sender::GitHub { .. } => "/webhooks/github",
            Sender::Stripe => "/webhooks/stripe",
        }
    }
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// The event a sample file stands for: the folder it sits in, as in GitHub's own samples
/// (`events/github/push/tag.json` is a `push`).
pub fn event_of(path: &Path) -> Result<String, ReplayError> {
    path.parent()
        .and_then(|p| p.file_name())
        .and_then(|p| p.to_str())
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ReplayError::UnknownEvent(path.display().to_string()))
}

/// Signs `body` with `secret` and posts it to `url` as delivery `delivery` of `event`.
pub async fn post(
    url: &str,
    event: &str,
    delivery: &str,
    body: Vec<u8>,
    secret: &Secret,
) -> Result<Reply, ReplayError> {
    let signature = sign_github(secret.expose(), &body);
    let headers = [
        ("user-agent", "GitHub-Hookshot/conveyor-replay"),
        ("x-github-event", event),
        ("x-github-delivery", delivery),
        ("x-github-hook-id", "replay"),
        ("x-hub-signature-256", &signature),
    ];
    send(url, &headers, body).await
}

/// Signs `body` as Stripe does now (`Stripe-Signature: t=...,v1=...`) and posts it to `url`.
pub async fn post_stripe(url: &str, body: Vec<u8>, secret: &Secret) -> Result<Reply, ReplayError> {
    let signature = sign_stripe(secret.expose(), conveyor_shared::unix_now(), &body);
    send(url, &[("user-agent", "Stripe/1.0 (conveyor-replay)"), ("stripe-signature", &signature)], body).await
}

async fn send(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Reply, ReplayError> {
    let uri: hyper::Uri = url.parse().map_err(|_| ReplayError::BadUrl(url.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(ReplayError::BadUrl(url.to_owned()));
    }
    let send_error = |message: String| ReplayError::Send { url: url.to_owned(), message };
    let mut request = hyper::Request::post(uri).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|err| send_error(err.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.map_err(|err| send_error(err.to_string()))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|err| send_error(err.to_string()))?.to_bytes();
    Ok(Reply { status, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Reads a sample file.
pub fn read(path: &Path) -> Result<Vec<u8>, ReplayError> {
    std::fs::read(path).map_err(|source| ReplayError::Read { path: path.display().to_string(), source })
}

/// A fresh delivery GUID.
pub fn new_delivery_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(std::time::SystemTime::now());
    let b = RandomState::new().hash_one(std::process::id());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        a & 0xffff,
        (b >> 48) & 0xffff,
        (b >> 32) & 0xffff,
        b & 0xffff_ffff_ffff
    )
}

/// Records a GitHub delivery straight into the table with the intake's own code, in this
/// process: for a delivery AWS refused to hand the function (over Lambda's 6 MB), saved from
/// GitHub's delivery log. Keyed by its `delivery` GUID like any other, so recording it twice
/// is a duplicate.
pub async fn record_github(
    table: conveyor_shared::store::Table,
    config: std::sync::Arc<conveyor_shared::config::Config>,
    artifacts_bucket: &str,
    event: &str,
    delivery: &str,
    body: Vec<u8>,
) -> Result<Reply, String> {
    use conveyor_shared::http::HttpFunction;
    // Signed and verified in this process: a throwaway secret proves nothing but keeps the
    // intake's path exactly as in AWS.
    let secret = conveyor_shared::token::generate().map_err(|e| e.to_string())?;
    let secrets =
        conveyor_shared::secret::SecretSet::from_secret(&secret).ok_or("cannot make a throwaway signing secret")?;
    let intake = webhook_intake::Intake::new(table, secrets, config, artifacts_bucket);
    let signature = sign_github(secret.expose(), &body);
    let request = http::Request::post("/webhooks/github")
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(Bytes::from(body));
    let Ok(request) = request else {
        return Ok(Reply { status: 400, body: "the event or delivery is not a valid header value".into() });
    };
    let response = intake.respond(request).await;
    Ok(Reply { status: response.status().as_u16(), body: String::from_utf8_lossy(response.body()).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_follows_the_folder() {
        assert_eq!(Sender::of(Path::new("events/stripe/invoice-paid.json")).unwrap(), Sender::Stripe);
        assert_eq!(
            Sender::of(Path::new("events/github/push/main.json")).unwrap(),
            Sender::GitHub { event: "push".into() }
        );
        assert!(Sender::of(Path::new("main.json")).is_err());
    }
}
