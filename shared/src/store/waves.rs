//! A deployment's run through its waves: reading it, moving its wave on, and rolling back.

use aws_sdk_dynamodb::types::AttributeValue;

use super::{Backoff, Conditional, Key, StoreError, Table, Transition, decode, n, retry_conflicts, s};
use crate::domain::alert::Alert;
use crate::domain::{DeploymentRecord, DeploymentState};

impl Table {
    /// The deployment with `id`; `consistent: false` for polls (see [`Table::target`]).
    pub async fn deployment(
        &self,
        environment: &str,
        id: &str,
        consistent: bool,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        self.read(Key::deployment(environment, id), consistent)
            .await?
            .map(|item| decode("deployment", item))
            .transpose()
    }

    /// Starts rolling `deployment` back from its current wave (the one that failed), and
    /// raises its alert, in one transaction: the team hears at once, and exactly once.
    pub async fn begin_rollback(
        &self,
        deployment: &DeploymentRecord,
        reason: &str,
        alert: &Alert,
        now: i64,
    ) -> Result<Transition, StoreError> {
        let (wave, waves) = (deployment.run.wave.unwrap_or(0), deployment.run.sizes.len());
        let zeros = AttributeValue::L(vec![n(0); waves]);
        let change = Conditional::transition(
            Key::deployment(&deployment.environment, &deployment.id()),
            DeploymentState::InProgress,
            DeploymentState::RollingBack,
            reason,
            now,
        )
        .set("rollback_wave", n(wave as i64))
        .set("rollback_wave_started_at", n(now))
        .set("restored", zeros);
        let mut items = vec![self.transaction_item(change)?];
        items.extend(self.alert_writes(alert)?);
        retry_conflicts(Backoff::default(), || self.transact(items.clone())).await
    }

    /// Moves a rolling-back deployment from restoring wave `from` to the one before, once.
    pub async fn restore_wave(
        &self,
        environment: &str,
        id: &str,
        from: usize,
        now: i64,
    ) -> Result<Transition, StoreError> {
        let key = Key::deployment(environment, id);
        self.move_wave(key, DeploymentState::RollingBack, "rollback_wave", from, from.saturating_sub(1), now).await
    }

    /// Moves a running deployment from wave `from` to the next, once.
    pub async fn advance_wave(
        &self,
        environment: &str,
        id: &str,
        from: usize,
        now: i64,
    ) -> Result<Transition, StoreError> {
        let key = Key::deployment(environment, id);
        self.move_wave(key, DeploymentState::InProgress, "wave", from, from + 1, now).await
    }

    /// Moves a deployment's wave pointer `field` (`wave`, `rollback_wave`) from `from` to `to`
    /// and restarts its clock (`<field>_started_at`), once, while the deployment is in `state`.
    async fn move_wave(
        &self,
        key: Key,
        state: DeploymentState,
        field: &'static str,
        from: usize,
        to: usize,
        now: i64,
    ) -> Result<Transition, StoreError> {
        self.update_if(
            key,
            &format!("SET {field} = :to, {field}_started_at = :now, updated_at = :now"),
            &format!("#state = :state AND {field} = :from"),
            &[],
            vec![(":state", s(state.as_str())), (":from", n(from as i64)), (":to", n(to as i64)), (":now", n(now))],
        )
        .await
    }
}
