//! Secrets Manager adapter: resolves configured secrets once, at cold start.

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
        SecretSource::SecretsManager(secret_id) => {
            let client = aws_sdk_secretsmanager::Client::new(sdk);
            let output =
                client.get_secret_value().secret_id(secret_id).send().await.map_err(|err| SecretsError::Fetch {
                    secret_id: secret_id.clone(),
                    // The error names the failure (not found, denied), never the value.
                    message: aws_sdk_secretsmanager::error::DisplayErrorContext(err).to_string(),
                })?;
            output
                .secret_string()
                .and_then(SecretSet::from_comma_separated)
                .ok_or_else(|| SecretsError::Empty { secret_id: secret_id.clone() })
        }
    }
}
