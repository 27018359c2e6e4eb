//! Operator commands that change the ledger: tokens and image rollbacks.

use conveyor_shared::config::Config;
use conveyor_shared::ec2::Ec2;
use conveyor_shared::secret::Secret;
use conveyor_shared::store::{ImageChange, Put, StoreError, Table};
use conveyor_shared::token::{self, Scope, TokenError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("no provider `{name}` in the configuration (known: {known})")]
    UnknownProvider { name: String, known: String },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Images(#[from] manifest_ingest::ImagesError),
    #[error("a token with the same hash exists already; run the command again")]
    Collision,
}

/// The provider `name`, or an error that lists the known ones.
pub fn known_provider<'c>(config: &'c Config, name: &str) -> Result<&'c conveyor_shared::config::Provider, OpsError> {
    config.provider(name).ok_or_else(|| OpsError::UnknownProvider {
        name: name.to_owned(),
        known: if config.providers.is_empty() {
            "none: add a [[provider]] section".into()
        } else {
            config.providers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        },
    })
}

/// Creates a token for `provider`; the table keeps only its hash.
pub async fn create_provider_token(table: &Table, config: &Config, provider: &str) -> Result<Secret, OpsError> {
    let provider = known_provider(config, provider)?;
    let secret = token::generate()?;
    let scope = Scope::Provider(provider.name.clone()).as_string();
    match table.create_token(&token::hash(secret.expose()), &scope, conveyor_shared::unix_now()).await? {
        Put::Created => Ok(secret),
        Put::AlreadyExists => Err(OpsError::Collision),
    }
}

/// Rolls a provider's images back and points its launch templates at them.
pub async fn rollback_images(
    table: &Table,
    ec2: &Ec2,
    config: &Config,
    provider: &str,
    to: Option<i64>,
) -> Result<(ImageChange, Vec<serde_json::Value>, bool), OpsError> {
    let provider = known_provider(config, provider)?;
    let change = manifest_ingest::rollback(table, &provider.name, to, conveyor_shared::unix_now()).await?;
    let (templates, ok) = manifest_ingest::sync_launch_templates(ec2, provider, &change.images).await;
    Ok((change, templates, ok))
}
