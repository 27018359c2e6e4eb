//! The alerts a rollout raises: a rollback (with where the fleet goes back to), a restore
//! wave whose hosts did not come back in time, and a host whose own rollback failed.

use conveyor_shared::config::Environment;
use conveyor_shared::domain::DeploymentRecord;
use conveyor_shared::domain::rollout::TargetRecord;
use conveyor_shared::domain::stripe::AlertRecord;

use crate::{Fanout, FanoutError};

impl Fanout {
    pub(crate) async fn rollback_alert(
        &self,
        env: &Environment,
        deployment: &DeploymentRecord,
        reason: &str,
        now: i64,
    ) -> Result<AlertRecord, FanoutError> {
        let action = match self.table.last_release(&env.name).await? {
            Some(previous) => format!(
                "The instances of the waves so far are going back to {}; the failing instance's log tail is in `conveyor status`",
                previous.version
            ),
            None => format!(
                "There is no earlier good release to go back to: the instances of the waves so far keep {}; the failing instance's log tail is in `conveyor status`",
                deployment.version
            ),
        };
        Ok(AlertRecord {
            id: format!("{}-{}", env.name, deployment.sha),
            source: "deploy".into(),
            kind: "deployment_rolled_back".into(),
            summary: format!("Deployment of {} to {} rolled back: {reason}", deployment.version, env.name),
            action,
            customer: None,
            subscription: None,
            created_at: now,
        })
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
        let alert = AlertRecord {
            id: format!("{}-{}-wave{}-not-back", env.name, deployment.sha, wave + 1),
            source: "deploy".into(),
            kind: "rollback_incomplete".into(),
            summary: format!(
                "Rolling {} back in {}: {} of wave {} did not come back to the last good release within the wave's timeout",
                deployment.version,
                env.name,
                missing.join(", "),
                wave + 1
            ),
            action: "Check those hosts' agents (journalctl -u conveyor-agent); they go back at their next poll".into(),
            customer: None,
            subscription: None,
            created_at: now,
        };
        if self.table.record_alert(&alert).await? == conveyor_shared::store::Put::Created {
            tracing::error!(environment = %env.name, hosts = %missing.join(", "), "hosts not back after a rollback wave");
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
        let alert = AlertRecord {
            id: format!("{}-{}-{}-rollback", env.name, deployment.sha, target.instance),
            source: "deploy".into(),
            kind: "rollback_failed".into(),
            summary: format!(
                "{} could not go back to {version} after {} was rolled back in {}",
                target.instance, deployment.version, env.name
            ),
            action: format!(
                "Look at {} (the agent's log: journalctl -u conveyor-agent) and bring it back to {version} by hand; its last words: {}",
                target.instance,
                log.unwrap_or("none")
            ),
            customer: None,
            subscription: None,
            created_at: now,
        };
        if self.table.record_alert(&alert).await? == conveyor_shared::store::Put::Created {
            tracing::error!(environment = %env.name, instance = %target.instance, %version, "rollback failed on an instance");
        }
        Ok(())
    }
}
