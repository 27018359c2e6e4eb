//! The HTTP side of health checks: one GET per check, bounded in time, turned into what the
//! run observed. A check that cannot run at all (DNS, TLS, a refused connection, the time
//! running out) is a failure whose cause says so.

use std::time::{Duration, Instant};

use crate::config::Check;
use crate::domain::checks::Observation;

/// Bodies are read up to this size: enough for any health endpoint's JSON.
const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for checks: {0}")]
pub struct ProbeError(String);

#[derive(Clone, Debug)]
pub struct Prober {
    client: reqwest::Client,
}

impl Prober {
    pub fn new() -> Result<Self, ProbeError> {
        Self::build(None)
    }

    /// A prober that also trusts the certificate authority `root_der` (a private CA's, in
    /// DER), beside the usual roots.
    pub fn trusting(root_der: &[u8]) -> Result<Self, ProbeError> {
        Self::build(Some(reqwest::Certificate::from_der(root_der).map_err(|e| ProbeError(e.to_string()))?))
    }

    fn build(root: Option<reqwest::Certificate>) -> Result<Self, ProbeError> {
        let mut builder = reqwest::Client::builder()
            // A redirect is an answer of its own: `[STATUS] == 301` must be checkable.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("conveyor-check")
            // The server's certificate, for `[CERTIFICATE_EXPIRATION]`.
            .tls_info(true)
            // A fresh connection per run: a run a minute apart would otherwise keep one
            // open per host (a fleet of them runs out of file descriptors), and a renewed
            // certificate would not be seen while the old connection lives.
            .pool_max_idle_per_host(0);
        if let Some(root) = root {
            builder = builder.add_root_certificate(root);
        }
        let client = builder.build().map_err(|e| ProbeError(e.to_string()))?;
        Ok(Self { client })
    }

    /// What one GET of `url` shows within `timeout`; the error text when it could not run.
    pub async fn observe(&self, url: &str, timeout: Duration) -> (Observation, Option<String>) {
        let started = Instant::now();
        let sent = tokio::time::timeout(timeout, async {
            let mut response = self.client.get(url).send().await?;
            let status = response.status().as_u16();
            let ip = response.remote_addr().map(|addr| addr.ip().to_string());
            let expires_at = response
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|info| info.peer_certificate())
                .and_then(crate::domain::checks::certificate::not_after);
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                body.extend_from_slice(&chunk);
                if body.len() >= MAX_BODY_BYTES {
                    body.truncate(MAX_BODY_BYTES);
                    break;
                }
            }
            Ok::<_, reqwest::Error>((status, ip, body, expires_at))
        })
        .await;
        let response_time = started.elapsed();
        match sent {
            Ok(Ok((status, ip, body, expires_at))) => (
                Observation {
                    status: Some(status),
                    response_time,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    certificate_expiration: expires_at
                        .map(|at| Duration::from_secs(u64::try_from(at - crate::unix_now()).unwrap_or(0))),
                    connected: true,
                    ip,
                },
                None,
            ),
            Ok(Err(err)) => {
                let connected = !(err.is_connect() || err.is_timeout());
                (Observation { response_time, connected, ..Observation::default() }, Some(describe(&err.without_url())))
            }
            Err(_) => (
                Observation { response_time, ..Observation::default() },
                Some(format!("no answer within {} ms", timeout.as_millis())),
            ),
        }
    }

    /// One run of `check`: `Ok` when every condition held, else the cause (each failed
    /// condition with what was seen, or why the check could not run).
    pub async fn run(&self, check: &Check) -> Result<(), String> {
        let (seen, error) = self.observe(&check.url, Duration::from_secs(check.timeout.0)).await;
        if let Some(error) = error {
            return Err(bounded(format!("cannot check {}: {error}", crate::domain::checks::shown_url(&check.url))));
        }
        let failed: Vec<String> = check.conditions.iter().filter_map(|c| c.evaluate(&seen).err()).collect();
        if failed.is_empty() { Ok(()) } else { Err(bounded(failed.join("; "))) }
    }
}

/// A cause is stored with the check's state and sent in messages: a condition on a large
/// body must not make either too big.
const MAX_CAUSE_CHARS: usize = 1000;

fn bounded(cause: String) -> String {
    if cause.chars().count() <= MAX_CAUSE_CHARS {
        return cause;
    }
    let mut cut: String = cause.chars().take(MAX_CAUSE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// The error and its causes, the way a person reads them ("connection refused").
pub fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
