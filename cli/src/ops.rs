//! Operator commands that change the ledger: tokens and image rollbacks.

use conveyor_shared::config::{ArtifactFields, ArtifactTemplate, Config, Environment};
use conveyor_shared::domain::alert::{Alert, DeliveryState};
use conveyor_shared::domain::packer::ImageChange;
use conveyor_shared::domain::rollout::{self, Instruction, TargetState};
use conveyor_shared::domain::{DeploymentRecord, DeploymentState};
use conveyor_shared::ec2::Ec2;
use conveyor_shared::s3::Artifacts;
use conveyor_shared::secret::Secret;
use conveyor_shared::store::{Put, StoreError, Table};
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
    Images(#[from] conveyor_shared::provider_images::ImagesError),
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
pub async fn create_provider_token(
    table: &Table,
    config: &Config,
    provider: &str,
    expires_at: Option<i64>,
) -> Result<Secret, OpsError> {
    let provider = known_provider(config, provider)?;
    let secret = token::generate()?;
    let scope = Scope::Provider(provider.name.clone()).as_string();
    match table.create_token(&token::hash(secret.expose()), &scope, conveyor_shared::unix_now(), expires_at).await? {
        Put::Created => Ok(secret),
        Put::AlreadyExists => Err(OpsError::Collision),
    }
}

/// Creates a token for the agents of `environment`; the table keeps only its hash.
pub async fn create_environment_token(
    table: &Table,
    config: &Config,
    environment: &str,
    expires_at: Option<i64>,
) -> Result<Secret, OpsError> {
    let env = config.environment(environment).ok_or_else(|| OpsError::UnknownEnvironment {
        name: environment.to_owned(),
        known: config.environments.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let secret = token::generate()?;
    let scope = Scope::Environment(env.name.clone()).as_string();
    match table.create_token(&token::hash(secret.expose()), &scope, conveyor_shared::unix_now(), expires_at).await? {
        Put::Created => Ok(secret),
        Put::AlreadyExists => Err(OpsError::Collision),
    }
}

/// Where a build's artifact goes: the environment's `artifact` template (or the default one)
/// rendered exactly as the intake renders it when it creates the deployment.
#[derive(Debug, Clone, Copy)]
pub struct ArtifactTarget<'a> {
    pub bucket: &'a str,
    pub repository: &'a str,
    /// The full 40-digit commit sha.
    pub sha: &'a str,
    /// The environment whose template names the key; the default template without one.
    pub environment: Option<&'a Environment>,
}

impl ArtifactTarget<'_> {
    /// The `s3://` URL the intake will look for, after checking the sha and the repository.
    pub fn url(&self) -> Result<String, OpsError> {
        let full_sha = self.sha.len() == 40 && self.sha.bytes().all(|b| b.is_ascii_hexdigit());
        if !full_sha {
            return Err(OpsError::Invalid(format!(
                "--sha `{}` is not a full commit sha: give all 40 hex digits (git rev-parse HEAD)",
                self.sha
            )));
        }
        let parts: Vec<&str> = self.repository.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(OpsError::Invalid(format!("--repository `{}` must look like owner/name", self.repository)));
        }
        if self.bucket.len() < 3 {
            return Err(OpsError::Invalid(format!("`{}` is not an S3 bucket name", self.bucket)));
        }
        let sha = self.sha.to_ascii_lowercase();
        let default = ArtifactTemplate::default();
        let (template, branch, environment) = match self.environment {
            Some(env) => (&env.artifact, env.branch.as_str(), env.name.as_str()),
            None => (&default, "", ""),
        };
        Ok(template.render(&ArtifactFields {
            bucket: self.bucket,
            repository: self.repository,
            sha: &sha,
            version: &DeploymentRecord::version_for(&sha),
            branch,
            environment,
        }))
    }
}

/// Uploads a build's artifact (bytes in memory) where the intake will look for it, with its
/// SHA-256 and version as metadata. Returns the URL and the SHA-256.
pub async fn push_artifact(
    artifacts: &Artifacts,
    target: &ArtifactTarget<'_>,
    bytes: Vec<u8>,
) -> Result<(String, String), OpsError> {
    let url = target.url()?;
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    let version = DeploymentRecord::version_for(target.sha);
    artifacts.put(&url, bytes, &sha256, &version).await.map_err(|e| OpsError::Invalid(e.to_string()))?;
    Ok((url, sha256))
}

/// Uploads the artifact file at `path`, streamed from disk (multipart above `part_size`),
/// telling `progress` the bytes sent. Returns the URL and the SHA-256.
pub async fn push_artifact_file(
    artifacts: &Artifacts,
    target: &ArtifactTarget<'_>,
    path: &std::path::Path,
    part_size: u64,
    progress: impl FnMut(u64),
) -> Result<(String, String), OpsError> {
    let url = target.url()?;
    let sha256 = conveyor_shared::s3::file_sha256(path)
        .map_err(|e| OpsError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let version = DeploymentRecord::version_for(target.sha);
    artifacts
        .upload_file(&url, path, &sha256, &version, part_size, progress)
        .await
        .map_err(|e| OpsError::Invalid(e.to_string()))?;
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
    let change = conveyor_shared::provider_images::rollback(table, provider, to, conveyor_shared::unix_now()).await?;
    let (templates, ok) = conveyor_shared::provider_images::sync_launch_templates(ec2, provider, &change.images).await;
    Ok((change, templates, ok))
}

/// `conveyor status --json`: the same facts as [`status`], as data.
pub async fn status_json(table: &Table, environment: &str) -> Result<serde_json::Value, OpsError> {
    let now = conveyor_shared::unix_now();
    let deployments = table.recent_deployments(environment, 20).await?;
    let lock = table.lock(environment).await?.filter(|lock| lock.live(now));
    let shown = lock
        .as_ref()
        .and_then(|lock| deployments.iter().find(|d| d.id() == lock.holder))
        .or_else(|| deployments.iter().find(|d| d.run.wave.is_some()));
    let targets = match shown {
        Some(d) => table.deployment_targets(environment, &d.id()).await?,
        None => Vec::new(),
    };
    let tick_error =
        table.tick_error(environment, now).await?.map(|(error, at)| serde_json::json!({"error": error, "at": at}));
    Ok(serde_json::json!({
        "environment": environment,
        "deployments": deployments,
        "lock": lock,
        "shown": shown.map(|d| d.id()),
        "targets": targets,
        "tick_error": tick_error,
        "instances": table.environment_instances(environment).await?,
    }))
}

/// What `conveyor status` prints for one environment: the running deployment and the queued
/// ones, recent deployments with why each stopped, the tick's last error, and which instance
/// runs which version.
pub async fn status(table: &Table, environment: &str) -> Result<String, OpsError> {
    use std::fmt::Write;
    let mut out = String::new();
    let now = conveyor_shared::unix_now();
    let deployments = table.recent_deployments(environment, 20).await?;
    let _ = writeln!(out, "environment {environment}");
    if deployments.is_empty() {
        let _ = writeln!(out, "  no deployments yet");
    }
    // The one that holds the environment (running or being planned), else the latest started.
    let lock = table.lock(environment).await?.filter(|lock| lock.live(now));
    let shown = lock
        .as_ref()
        .and_then(|lock| deployments.iter().find(|d| d.id() == lock.holder))
        .or_else(|| deployments.iter().find(|d| d.run.wave.is_some()));
    if let Some(running) = shown.filter(|d| !d.state.is_final()) {
        let progress = running.progress();
        // While rolling back, the wave being restored (the failed one first, down to the first).
        let wave = progress.rollback_wave.unwrap_or(progress.wave);
        let _ = writeln!(
            out,
            "  running  {} ({}, wave {} of {})",
            running.version,
            running.state.as_str(),
            wave + 1,
            progress.sizes.len().max(1)
        );
    }
    let queued: Vec<&str> =
        deployments.iter().filter(|d| d.state == DeploymentState::Pending).map(|d| d.version.as_str()).collect();
    if !queued.is_empty() {
        let _ = writeln!(out, "  queued   {}", queued.join(", "));
    }
    if let Some((error, at)) = table.tick_error(environment, now).await? {
        let _ = writeln!(out, "  the tick failed {} s ago: {error}", now - at);
    }
    for d in deployments.iter().take(5) {
        let _ = writeln!(out, "  {:<12} {:<11} {}", d.version, d.state.as_str(), d.reason);
    }
    // The shown deployment's targets by instance, and its progress.
    let mut plan = None;
    if let Some(latest) = shown {
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

/// An alert as a few lines: when, severity, what; then why, what it affects, what to do.
pub fn alert_text(alert: &Alert) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let resolved = alert.resolved_at.map(|at| format!(", resolved {}", when(at))).unwrap_or_default();
    let _ = writeln!(
        out,
        "{}  {:<8} {}/{}  {}{resolved}",
        when(alert.created_at),
        format!("{:?}", alert.severity).to_lowercase(),
        alert.source.as_str(),
        alert.kind.as_str(),
        alert.summary
    );
    for (label, text) in [("cause", &alert.cause), ("impact", &alert.impact), ("action", &alert.action)] {
        if !text.is_empty() {
            let _ = writeln!(out, "    {label:<7} {text}");
        }
    }
    if !alert.labels.is_empty() {
        let labels: Vec<String> = alert.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "    {:<7} {}", "about", labels.join(" "));
    }
    let delivery = match alert.delivery {
        DeliveryState::Pending => "pending (alert-dispatch sends it)",
        DeliveryState::Delivered => "delivered",
        DeliveryState::Undeliverable => "undeliverable: a channel refused it for good (see alert-dispatch's log)",
        DeliveryState::Unknown => "unknown",
    };
    let _ = writeln!(out, "    {:<7} {delivery}", "sent");
    out
}

/// Health checks' states, down ones first: a line each, and the cause under a down one.
pub fn checks_text(
    states: &std::collections::BTreeMap<String, conveyor_shared::domain::checks::StoredCheck>,
) -> String {
    use conveyor_shared::domain::checks::Health;
    use std::fmt::Write;
    let mut ordered: Vec<_> = states.iter().collect();
    ordered.sort_by_key(|(name, stored)| (stored.state.health != Health::Down, name.as_str()));
    let width = ordered.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, stored) in ordered {
        let state = &stored.state;
        let line = match (state.health, state.down_since, state.failing_since) {
            (Health::Down, since, _) => {
                let muted = if state.announced { "" } else { " (muted: a check it depends on is down)" };
                format!("down since {}{muted}", since.map_or_else(|| "?".into(), when))
            }
            (Health::Up, _, Some(since)) => format!("up, failing since {} ({} in a row)", when(since), state.failures),
            (Health::Up, _, None) => "up".to_owned(),
        };
        let _ = writeln!(out, "{name:<width$}  {line}");
        if let Some(cause) = state.cause.as_deref().filter(|_| state.health == Health::Down || state.failures > 0) {
            let _ = writeln!(out, "{:<width$}    cause {cause}", "");
        }
    }
    out
}

/// Seconds as people say them: `90s`, `30m`, `2h`.
pub fn duration(seconds: u64) -> String {
    match seconds {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A Unix time as people read it in a terminal: `2026-11-22 21:03 UTC`.
pub fn when(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|at| at.format(&format).ok())
        .unwrap_or_else(|| format!("{unix} (Unix time)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_shared::domain::alert::{AlertKind, AlertSource, Severity};

    #[test]
    fn an_alert_reads_as_what_why_impact_and_action() {
        let alert = Alert::new(
            AlertSource::Deploy,
            "production-abc",
            AlertKind::DeploymentRolledBack,
            Severity::Critical,
            1_795_381_200,
        )
        .summary("Deployment of abc to production rolled back")
        .cause("wave 1: i-1 failed health")
        .action("Read the log tail in `conveyor status`")
        .label("environment", "production");
        let text = alert_text(&alert);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "2026-11-22 21:00 UTC  critical deploy/deployment_rolled_back  Deployment of abc to production rolled back"
        );
        assert_eq!(
            lines[1..],
            [
                "    cause   wave 1: i-1 failed health",
                "    action  Read the log tail in `conveyor status`",
                "    about   environment=production",
                "    sent    pending (alert-dispatch sends it)"
            ]
        );
    }

    #[test]
    fn checks_read_down_first_with_since_and_cause() {
        use conveyor_shared::domain::checks::{CheckState, Health, StoredCheck};
        let states = std::collections::BTreeMap::from([
            ("api".to_string(), StoredCheck { state: CheckState::default(), version: 3 }),
            (
                "edge".to_string(),
                StoredCheck {
                    state: CheckState {
                        health: Health::Down,
                        down_since: Some(1_795_381_200),
                        cause: Some("[STATUS] == 200 (was 503)".into()),
                        announced: true,
                        ..CheckState::default()
                    },
                    version: 7,
                },
            ),
        ]);
        assert_eq!(
            checks_text(&states),
            "edge  down since 2026-11-22 21:00 UTC\n        cause [STATUS] == 200 (was 503)\napi   up\n"
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!((duration(90), duration(1800), duration(7200)), ("90s".into(), "30m".into(), "2h".into()));
    }
}
