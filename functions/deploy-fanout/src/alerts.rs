//! The alerts a rollout raises: a rollback (with where the fleet goes back to), a restore
//! wave whose hosts did not come back in time, and a host whose own rollback failed.

use conveyor_shared::config::Environment;
use conveyor_shared::domain::DeploymentRecord;
use conveyor_shared::domain::alert::{Alert, AlertKind, AlertSource, Severity};
use conveyor_shared::domain::rollout::TargetRecord;
use conveyor_shared::domain::text::some_of;

use crate::{Fanout, FanoutError};

impl Fanout {
    pub(crate) async fn rollback_alert(
        &self,
        env: &Environment,
        deployment: &DeploymentRecord,
        reason: &str,
        now: i64,
    ) -> Result<Alert, FanoutError> {
        let previous = self.table.last_release(&env.name).await?;
        let impact = match &previous {
            Some(previous) => format!(
                "The instances of the waves so far are going back to {}; the rest never left it",
                previous.version
            ),
            None => format!(
                "There is no earlier good release to go back to: the instances of the waves so far keep {}",
                deployment.version
            ),
        };
        let mut alert = Alert::new(
            AlertSource::Deploy,
            format!("{}-{}", env.name, deployment.sha),
            AlertKind::DeploymentRolledBack,
            Severity::Critical,
            now,
        )
        .summary(format!("Deployment of {} to {} rolled back", deployment.version, env.name))
        .cause(reason)
        .impact(impact)
        .action("Read the failing instance's log tail in `conveyor status`, fix the build and push again")
        .label("environment", env.name.clone())
        .label("release", deployment.version.clone())
        .label("commit", deployment.sha.clone());
        if let Some(previous) = previous {
            alert = alert.label("back_to", previous.version);
        }
        Ok(alert)
    }

    /// A restore wave whose time ran out: names the hosts that are not back on the last good
    /// release (silent agents never report a failure), once per wave.
    pub(crate) async fn alert_not_back(
        &self,
        env: &Environment,
        deployment: &DeploymentRecord,
        wave: usize,
        now: i64,
    ) -> Result<(), FanoutError> {
        let progress = deployment.progress();
        let count = |counts: &[usize]| counts.get(wave).copied().unwrap_or(0);
        if count(&progress.restored) + count(&progress.dropped) >= count(&progress.sizes) {
            return Ok(());
        }
        let missing: Vec<String> = self
            .table
            .deployment_targets(&env.name, &deployment.id())
            .await?
            .into_iter()
            .filter(|t| t.wave == wave && !t.state.is_settled())
            .map(|t| t.instance)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let alert = Alert::new(
            AlertSource::Deploy,
            format!("{}-{}-wave{}-not-back", env.name, deployment.sha, wave + 1),
            AlertKind::RollbackIncomplete,
            Severity::Critical,
            now,
        )
        .summary(format!("Rolling {} back in {}: wave {} is not back", deployment.version, env.name, wave + 1))
        .cause(format!(
            "{} did not come back to the last good release within the wave's timeout",
            some_of(&missing, ", ")
        ))
        .impact("Those hosts may still run the release that was rolled back")
        .action("Check those hosts' agents (journalctl -u conveyor-agent); they go back at their next poll")
        .label("environment", env.name.clone())
        .label("release", deployment.version.clone())
        .label("instances", some_of(&missing, ","));
        if self.table.record_alert(&alert).await? == conveyor_shared::store::Put::Created {
            tracing::error!(environment = %env.name, hosts = %some_of(&missing, ", "), "hosts not back after a rollback wave");
        }
        Ok(())
    }

    /// A host that was told to go back to the last good release and failed: the fleet is not
    /// where the rollback said it would be, so a person must look.
    pub(crate) async fn alert_failed_rollback(
        &self,
        env: &Environment,
        deployment: &DeploymentRecord,
        target: &TargetRecord,
        version: &str,
        log: Option<&str>,
        now: i64,
    ) -> Result<(), FanoutError> {
        let going_back = target.previous.as_ref().is_some_and(|previous| previous.version == version);
        if !going_back {
            return Ok(());
        }
        let alert = Alert::new(
            AlertSource::Deploy,
            format!("{}-{}-{}-rollback", env.name, deployment.sha, target.instance),
            AlertKind::RollbackFailed,
            Severity::Critical,
            now,
        )
        .summary(format!("{} could not go back to {version}", target.instance))
        .cause(format!("Its agent's last words: {}", log.unwrap_or("none")))
        .impact(format!("{} was rolled back in {}, but this host is not on {version}", deployment.version, env.name))
        .action(format!(
            "Look at {} (the agent's log: journalctl -u conveyor-agent) and bring it back to {version} by hand",
            target.instance
        ))
        .label("environment", env.name.clone())
        .label("instance", target.instance.clone())
        .label("release", version.to_owned());
        if self.table.record_alert(&alert).await? == conveyor_shared::store::Put::Created {
            tracing::error!(environment = %env.name, instance = %target.instance, %version, "rollback failed on an instance");
        }
        Ok(())
    }
}

/// A deployment event for the team's chat: started, succeeded, or failed before it started.
/// Its id holds the deployment's creation time, so each deployment (a commit deployed
/// again is another) is told once.
pub(crate) fn deployment_event(
    env: &Environment,
    deployment: &DeploymentRecord,
    kind: AlertKind,
    what: &str,
    now: i64,
) -> Alert {
    let (event, severity, impact, action) = match kind {
        AlertKind::DeploymentStarted => (
            "started",
            Severity::Info,
            format!("{} moves to {} wave by wave; a failing wave rolls back by itself", env.name, deployment.version),
            "Nothing to do: follow it with `conveyor wait` or `conveyor status`".to_owned(),
        ),
        AlertKind::DeploymentSucceeded => (
            "succeeded",
            Severity::Info,
            format!("{} runs {}", env.name, deployment.version),
            "Nothing to do".to_owned(),
        ),
        _ => (
            "failed",
            Severity::Warning,
            format!("{} stays on the release it had; {} never started", env.name, deployment.version),
            "Read the reason, fix it (the artifact, the fleet's tags), and push again".to_owned(),
        ),
    };
    Alert::new(
        AlertSource::Deploy,
        format!("{}-{}-{}-{event}", env.name, deployment.sha, deployment.created_at),
        kind,
        severity,
        now,
    )
    .summary(format!("Deployment of {} to {} {event}", deployment.version, env.name))
    .cause(what)
    .impact(impact)
    .action(action)
    .label("environment", env.name.clone())
    .label("release", deployment.version.clone())
    .label("commit", deployment.sha.clone())
    .label("repository", deployment.repository.clone())
}
