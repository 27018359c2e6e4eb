//! Secrets Manager adapter: resolves configured secrets at cold start and keeps them fresh
//! ([`Secrets`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::SecretSource;
use crate::secret::SecretSet;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secret {secret_id} from Secrets Manager: {message}")]
    Fetch { secret_id: String, message: String },
    #[error("secret {secret_id} holds no secret string (store the comma-separated webhook secrets as text)")]
    Empty { secret_id: String },
}

/// The secret set a source stands for; fetches from Secrets Manager when it must.
pub async fn resolve(source: &SecretSource, sdk: &aws_config::SdkConfig) -> Result<SecretSet, SecretsError> {
    match source {
        SecretSource::Inline(set) => Ok(set.clone()),
        SecretSource::SecretsManager(secret_id) => fetch(&aws_sdk_secretsmanager::Client::new(sdk), secret_id).await,
    }
}

/// How long a warm function trusts the secrets it read from Secrets Manager.
const SECRETS_TTL: Duration = Duration::from_secs(300);
/// A signature that matches no secret re-reads them at most this often (a flood of bad
/// signatures costs at most one read per interval).
const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed read, the secrets read before are used this long before the next try.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Webhook secrets as a function holds them: fixed (given inline), or read from Secrets
/// Manager and kept fresh: re-read after 5 minutes, and at once (at most every 10 s) when a
/// signature matches none of them. So "add the new secret, switch the sender to it, remove the
/// old one" needs no redeploy and loses no delivery.
#[derive(Clone)]
pub struct Secrets {
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

impl From<SecretSet> for Secrets {
    fn from(set: SecretSet) -> Self {
        let cache = Cached { set, next_read: Instant::now() + SECRETS_TTL, forced_at: None };
        Self { source: Arc::new(Source::Fixed), cache: Arc::new(Mutex::new(cache)) }
    }
}

impl Secrets {
    /// Reads the secrets once (a missing or empty secret fails the cold start, with its name).
    pub async fn load(source: &SecretSource, sdk: &aws_config::SdkConfig) -> Result<Self, SecretsError> {
        let set = resolve(source, sdk).await?;
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
        match fetch(client, secret_id).await {
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

async fn fetch(client: &aws_sdk_secretsmanager::Client, secret_id: &str) -> Result<SecretSet, SecretsError> {
    let output = client.get_secret_value().secret_id(secret_id).send().await.map_err(|err| SecretsError::Fetch {
        secret_id: secret_id.to_owned(),
        // The error names the failure (not found, denied), never the value.
        message: aws_sdk_secretsmanager::error::DisplayErrorContext(err).to_string(),
    })?;
    output
        .secret_string()
        .and_then(SecretSet::from_comma_separated)
        .ok_or_else(|| SecretsError::Empty { secret_id: secret_id.to_owned() })
}
