//! Sending one message to one channel: Slack's incoming webhook (Block Kit with fallback
//! text), a generic JSON webhook signed with HMAC-SHA256 and a timestamp, or an email
//! through SES. Channel secrets are read from Secrets Manager by reference, kept for a few
//! minutes, and never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_shared::SdkConfig;
use conveyor_shared::config::{Channel, ChannelKind, SecretSource};
use conveyor_shared::domain::alert::Alert;
use conveyor_shared::domain::dispatch::{self, Answer};
use conveyor_shared::secret::Secret;
use conveyor_shared::ses::{MailError, Mailer};

/// How long a channel may take to answer one message.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a warm function trusts a channel secret it read (a rotated Slack URL is picked
/// up within this).
const SECRET_TTL: Duration = Duration::from_secs(300);
/// Waits the channel asks for up to this long are waited out in the invocation; longer ones
/// leave the message to a later run.
pub const WAIT_IN_RUN: i64 = 5;

#[derive(Clone)]
pub struct Channels {
    http: reqwest::Client,
    mailer: Mailer,
    sdk: SdkConfig,
    secrets: Arc<Mutex<HashMap<String, (Secret, Instant)>>>,
}

impl Channels {
    pub fn new(sdk: &SdkConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("conveyor-alert-dispatch")
            .build()?;
        Ok(Self { http, mailer: Mailer::new(sdk), sdk: sdk.clone(), secrets: Arc::default() })
    }

    /// Sends `alert` to `channel` once (no retry here); `delivery` identifies this message
    /// to the receiver, the same on every try.
    pub async fn send(&self, channel: &Channel, alert: &Alert, delivery: &str) -> Answer {
        match channel.kind {
            ChannelKind::Slack => {
                let url = match self.secret(channel).await {
                    Ok(url) => url,
                    Err(answer) => return answer,
                };
                let url = url.expose_str().trim();
                if !url.starts_with("https://") && !url.starts_with("http://") {
                    return Answer::Refused(format!(
                        "secret {} does not hold an incoming-webhook URL (https://hooks.slack.com/services/...)",
                        channel.secret.as_deref().unwrap_or_default()
                    ));
                }
                let body = dispatch::slack_payload(alert).to_string();
                self.post(url, body, Vec::new()).await
            }
            ChannelKind::Webhook => {
                let key = match self.secret(channel).await {
                    Ok(key) => key,
                    Err(answer) => return answer,
                };
                let Some(url) = channel.url.as_deref() else {
                    return Answer::Refused(format!("channel {} has no url", channel.name));
                };
                let body = dispatch::webhook_payload(alert).to_string();
                let signature = conveyor_shared::signature::sign_conveyor(
                    key.expose(),
                    conveyor_shared::unix_now(),
                    body.as_bytes(),
                );
                self.post(
                    url,
                    body,
                    vec![("conveyor-signature", signature), ("conveyor-delivery", delivery.to_owned())],
                )
                .await
            }
            ChannelKind::Email => {
                let Some(from) = channel.from.as_deref() else {
                    return Answer::Refused(format!("channel {} has no from", channel.name));
                };
                match self.mailer.send(from, &channel.to, &dispatch::headline(alert), &dispatch::text(alert)).await {
                    Ok(_) => Answer::Delivered,
                    Err(err @ MailError::Refused { .. }) => Answer::Refused(err.to_string()),
                    Err(err @ MailError::Unavailable { .. }) => Answer::Later { after: None, reason: err.to_string() },
                }
            }
        }
    }

    async fn post(&self, url: &str, body: String, headers: Vec<(&'static str, String)>) -> Answer {
        let mut request = self.http.post(url).header("content-type", "application/json").body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after =
                    response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let text = response.text().await.unwrap_or_default();
                dispatch::read_answer(status, retry_after.as_deref(), &text)
            }
            // The URL (a Slack webhook URL is a credential) stays out of the reason.
            Err(err) if err.is_builder() => Answer::Refused(format!(
                "the request cannot be made: {}",
                conveyor_shared::probe::describe(&err.without_url())
            )),
            Err(err) => Answer::NoAnswer(conveyor_shared::probe::describe(&err.without_url())),
        }
    }

    /// The channel's secret, from the cache or Secrets Manager. A secret that cannot be read
    /// is a "later" (Secrets Manager may be back next run), its reason naming the secret.
    async fn secret(&self, channel: &Channel) -> Result<Secret, Answer> {
        let Some(id) = channel.secret.as_deref() else {
            return Err(Answer::Refused(format!("channel {} has no secret", channel.name)));
        };
        if let Ok(cache) = self.secrets.lock()
            && let Some((secret, read_at)) = cache.get(id)
            && read_at.elapsed() < SECRET_TTL
        {
            return Ok(secret.clone());
        }
        let secret = conveyor_shared::secrets::resolve(&SecretSource::SecretsManager(id.to_owned()), &self.sdk)
            .await
            .map_err(|err| Answer::Later { after: None, reason: err.to_string() })?;
        if let Ok(mut cache) = self.secrets.lock() {
            cache.insert(id.to_owned(), (secret.clone(), Instant::now()));
        }
        Ok(secret)
    }
}
