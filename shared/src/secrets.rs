//! Secrets Manager adapter: reads any configured secret ([`resolve`]) and keeps webhook
//! signing keys fresh ([`KeyRing`]). Locally a secret may come from the environment instead.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::SecretSource;
use crate::secret::{Secret, SecretSet};

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secret {secret_id} from Secrets Manager: {message}")]
    Fetch { secret_id: String, message: String },
    #[error("secret {secret_id} holds no secret string (store the value as text)")]
    Empty { secret_id: String },
    #[error("{0} holds no signing key: store the webhook secrets as text, comma-separated")]
    NoKeys(String),
}

/// The secret a source stands for; read from Secrets Manager when it must.
pub async fn resolve(source: &SecretSource, sdk: &aws_config::SdkConfig) -> Result<Secret, SecretsError> {
    match source {
        SecretSource::Inline(secret) => Ok(secret.clone()),
        SecretSource::SecretsManager(secret_id) => fetch(&aws_sdk_secretsmanager::Client::new(sdk), secret_id).await,
    }
}

/// The signing keys a secret holds.
fn keys(secret: &Secret, source: &SecretSource) -> Result<SecretSet, SecretsError> {
    SecretSet::from_secret(secret).ok_or_else(|| {
        SecretsError::NoKeys(match source {
            SecretSource::Inline(_) => "the secret given in the environment".into(),
            SecretSource::SecretsManager(secret_id) => format!("secret {secret_id}"),
        })
    })
}

/// How long a warm function trusts the secrets it read from Secrets Manager.
const SECRETS_TTL: Duration = Duration::from_secs(300);
/// A signature that matches no secret re-reads them at most this often (a flood of bad
/// signatures costs at most one read per interval).
const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed read, the secrets read before are used this long before the next try.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Webhook signing keys as a function holds them: fixed (given inline), or read from Secrets
/// Manager and kept fresh: re-read after 5 minutes, and at once (at most every 10 s) when a
/// signature matches none of them. So "add the new secret, switch the sender to it, remove the
/// old one" needs no redeploy and loses no delivery.
#[derive(Clone)]
pub struct KeyRing {
    source: Arc<Source>,
    cache: Arc<Mutex<Cached>>,
}

enum Source {
    Fixed,
    Manager { client: aws_sdk_secretsmanager::Client, secret_id: String },
}

struct Cached {
    set: SecretSet,
    /// When to read them again (5 minutes after a read, 30 s after a failed one).
    next_read: Instant,
    forced_at: Option<Instant>,
}

impl From<SecretSet> for KeyRing {
    fn from(set: SecretSet) -> Self {
        let cache = Cached { set, next_read: Instant::now() + SECRETS_TTL, forced_at: None };
        Self { source: Arc::new(Source::Fixed), cache: Arc::new(Mutex::new(cache)) }
    }
}

impl KeyRing {
    /// Reads the keys once (a missing secret, or one without a key, fails the cold start,
    /// with its name).
    pub async fn load(source: &SecretSource, sdk: &aws_config::SdkConfig) -> Result<Self, SecretsError> {
        let set = keys(&resolve(source, sdk).await?, source)?;
        let SecretSource::SecretsManager(secret_id) = source else { return Ok(set.into()) };
        let source = Source::Manager { client: aws_sdk_secretsmanager::Client::new(sdk), secret_id: secret_id.clone() };
        let cache = Cached { set, next_read: Instant::now() + SECRETS_TTL, forced_at: None };
        Ok(Self { source: Arc::new(source), cache: Arc::new(Mutex::new(cache)) })
    }

    /// Runs `check` with the current secrets; when it fails and the secrets may have changed
    /// since they were read, reads them again once and runs it again.
    pub async fn verify<T, E>(&self, check: impl Fn(&SecretSet) -> Result<T, E>) -> Result<T, E> {
        let first = check(&self.current(false).await);
        if first.is_ok() || !self.may_force() {
            return first;
        }
        let fresh = self.current(true).await;
        check(&fresh)
    }

    fn may_force(&self) -> bool {
        let Source::Manager { .. } = *self.source else { return false };
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.forced_at.is_some_and(|at| at.elapsed() < FORCED_REFRESH_INTERVAL) {
            return false;
        }
        cache.forced_at = Some(Instant::now());
        true
    }

    /// The secrets, read again when `force`d or older than the TTL. A failed read keeps the
    /// secrets read before (logged): deliveries go on being verified with them.
    async fn current(&self, force: bool) -> SecretSet {
        let (cached, stale) = {
            let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (cache.set.clone(), Instant::now() >= cache.next_read)
        };
        let Source::Manager { client, secret_id } = &*self.source else { return cached };
        if !(force || stale) {
            return cached;
        }
        let source = SecretSource::SecretsManager(secret_id.clone());
        match fetch(client, secret_id).await.and_then(|secret| keys(&secret, &source)) {
            Ok(set) => {
                let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                cache.set = set.clone();
                cache.next_read = Instant::now() + SECRETS_TTL;
                set
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot re-read the webhook secrets; using the ones read before, trying again in 30 s");
                let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                cache.next_read = Instant::now() + RETRY_AFTER_FAILURE;
                cached
            }
        }
    }
}

async fn fetch(client: &aws_sdk_secretsmanager::Client, secret_id: &str) -> Result<Secret, SecretsError> {
    let output = client.get_secret_value().secret_id(secret_id).send().await.map_err(|err| SecretsError::Fetch {
        secret_id: secret_id.to_owned(),
        // The error names the failure (not found, denied), never the value.
        message: aws_sdk_secretsmanager::error::DisplayErrorContext(err).to_string(),
    })?;
    output
        .secret_string()
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(Secret::new)
        .ok_or_else(|| SecretsError::Empty { secret_id: secret_id.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline() -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build()
    }

    #[tokio::test]
    async fn any_secret_resolves_from_the_environment_without_aws() {
        let url = Secret::new("https://hooks.slack.example/services/T0/B0/x");
        let resolved = resolve(&SecretSource::Inline(url.clone()), &offline()).await.unwrap();
        assert_eq!(resolved, url);
        assert!(!format!("{resolved:?}").contains("hooks"), "a secret never prints its value");
    }

    #[tokio::test]
    async fn a_key_ring_needs_at_least_one_key() {
        let err = KeyRing::load(&SecretSource::Inline(Secret::new(" , ")), &offline()).await.err().unwrap();
        assert!(err.to_string().contains("no signing key"), "{err}");
        let ring = KeyRing::load(&SecretSource::Inline(Secret::new("old, new")), &offline()).await.unwrap();
        let seen = ring.verify(|keys| if keys.len() == 2 { Ok(()) } else { Err(keys.len()) }).await;
        assert_eq!(seen, Ok(()));
    }
}
