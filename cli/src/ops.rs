//! Operator commands that change the ledger: tokens and image rollbacks.

use conveyor_shared::config::Config;
use conveyor_shared::domain::rollout::{self, Instruction, TargetState};
use conveyor_shared::domain::{DeploymentRecord, DeploymentState};
use conveyor_shared::ec2::Ec2;
use conveyor_shared::s3::Artifacts;
use conveyor_shared::secret::Secret;
use conveyor_shared::store::{ImageChange, Put, StoreError, Table};
use conveyor_shared::token::{self, Scope, TokenError};
use sha2::Digest;

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
    #[error("no environment `{name}` in the configuration (known: {known})")]
    UnknownEnvironment { name: String, known: String },
    #[error("{0}")]
    Invalid(String),
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

/// Creates a token for the agents of `environment`; the table keeps only its hash.
pub async fn create_environment_token(table: &Table, config: &Config, environment: &str) -> Result<Secret, OpsError> {
    let env = config.environment(environment).ok_or_else(|| OpsError::UnknownEnvironment {
        name: environment.to_owned(),
        known: config.environments.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let secret = token::generate()?;
    let scope = Scope::Environment(env.name.clone()).as_string();
    match table.create_token(&token::hash(secret.expose()), &scope, conveyor_shared::unix_now()).await? {
        Put::Created => Ok(secret),
        Put::AlreadyExists => Err(OpsError::Collision),
    }
}

/// Uploads a build's artifact to `s3://<bucket>/<repository>/<sha>.tar.gz` with its
/// SHA-256 and version as metadata. Returns the URL and the SHA-256.
pub async fn push_artifact(
    artifacts: &Artifacts,
    bucket: &str,
    repository: &str,
    sha: &str,
    version: Option<&str>,
    bytes: Vec<u8>,
) -> Result<(String, String), OpsError> {
    let sha_ok = (7..=64).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    if !sha_ok {
        return Err(OpsError::Invalid(format!("--sha `{sha}` is not a commit sha")));
    }
    let parts: Vec<&str> = repository.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(OpsError::Invalid(format!("--repository `{repository}` must look like owner/name")));
    }
    let version = version.map(str::to_owned).unwrap_or_else(|| DeploymentRecord::version_for(sha));
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    let url = format!("s3://{bucket}/{repository}/{sha}.tar.gz");
    artifacts.put(&url, bytes, &sha256, &version).await.map_err(|e| OpsError::Invalid(e.to_string()))?;
    Ok((url, sha256))
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

/// What `conveyor status` prints for one environment: recent deployments with why each
/// stopped, and which instance runs which version.
pub async fn status(table: &Table, environment: &str) -> Result<String, OpsError> {
    use std::fmt::Write;
    let mut out = String::new();
    let deployments = table.recent_deployments(environment, 5).await?;
    let _ = writeln!(out, "environment {environment}");
    if deployments.is_empty() {
        let _ = writeln!(out, "  no deployments yet");
    }
    for d in &deployments {
        let _ = writeln!(out, "  {:<12} {:<11} {}", d.version, d.state.as_str(), d.reason);
    }
    // The latest deployment's targets by instance, and its progress.
    let mut plan = None;
    if let Some(latest) = deployments.first() {
        let targets = table.deployment_targets(environment, &latest.id()).await?;
        let progress = latest.progress();
        if !targets.is_empty() {
            let _ = writeln!(out, "deployment {} by wave", latest.version);
        }
        for t in &targets {
            let running = latest.state == DeploymentState::InProgress;
            let state = match t.state {
                TargetState::Waiting if running && t.wave <= progress.wave => "deploying",
                // Its agent has not polled since the deployment ended.
                TargetState::Waiting if !running && t.wave > progress.wave => "untouched",
                state => state.as_str(),
            };
            let _ = writeln!(
                out,
                "  wave {} {:<22} {:<11} {}",
                t.wave + 1,
                t.instance,
                state,
                t.detail.as_deref().unwrap_or("")
            );
        }
        let by_instance: std::collections::HashMap<String, _> =
            targets.into_iter().map(|t| (t.instance.clone(), t)).collect();
        plan = Some((by_instance, progress));
    }
    let instances = table.environment_instances(environment).await?;
    if !instances.is_empty() {
        let _ = writeln!(out, "instances");
        for i in &instances {
            // What the agent will be told at its next poll.
            let target = plan.as_ref().and_then(|(targets, progress)| Some((targets.get(&i.instance)?, progress)));
            let desired = target.and_then(|(target, progress)| {
                match rollout::instruct(target, Some(progress), i.current.as_deref()).instruction {
                    Instruction::Deploy { release, .. } => Some(release.version),
                    _ => None,
                }
            });
            let health = match i.healthy {
                Some(true) => "healthy",
                Some(false) => "unhealthy",
                None => "unknown",
            };
            let _ = writeln!(
                out,
                "  {:<22} runs {:<12} {:<18} {health}",
                i.instance,
                i.current.as_deref().unwrap_or("-"),
                desired.map(|v| format!("next {v}")).unwrap_or_default(),
            );
        }
    }
    Ok(out)
}
