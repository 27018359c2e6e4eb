//! Targets: one item per instance of a deployment, and the counts of their outcomes in the
//! deployment's run, changed in one transaction.

use aws_sdk_dynamodb::types::AttributeValue;

use super::{Backoff, Conditional, Key, StoreError, Table, Transition, decode, encode, n, retry_conflicts, s};
use crate::domain::DeploymentState;
use crate::domain::rollout::{TargetRecord, TargetState};

/// Which per-wave counter of a deployment a target's outcome goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Succeeded,
    Failed,
    Dropped,
    /// Back on the last good release while its deployment rolls back.
    Restored,
    /// Terminated while its deployment rolls back: nothing to bring back.
    DroppedWhileRollingBack,
}

impl Counter {
    fn attribute(self) -> &'static str {
        match self {
            Counter::Succeeded => "succeeded",
            Counter::Failed => "failed",
            Counter::Dropped | Counter::DroppedWhileRollingBack => "dropped",
            Counter::Restored => "restored",
        }
    }

    fn state(self) -> TargetState {
        match self {
            Counter::Succeeded => TargetState::Succeeded,
            Counter::Failed => TargetState::Failed,
            Counter::Dropped | Counter::DroppedWhileRollingBack => TargetState::Dropped,
            Counter::Restored => TargetState::RolledBack,
        }
    }

    /// The state the deployment must be in for the outcome to count.
    fn deployment_state(self) -> DeploymentState {
        match self {
            Counter::Restored | Counter::DroppedWhileRollingBack => DeploymentState::RollingBack,
            _ => DeploymentState::InProgress,
        }
    }
}

/// How much of a failure's text the deployment record keeps (it is read by every poll).
const FAILURE_ON_DEPLOYMENT: usize = 300;
/// How much of an agent's report (its hooks' output) the target keeps.
pub const MAX_DETAIL_CHARS: usize = 8000;

fn target_state(state: TargetState) -> AttributeValue {
    s(state.as_str())
}

impl Table {
    /// Writes a deployment's targets in batches: one item per instance, replacing the
    /// instance's target of an earlier deployment (which has ended: the lock says so).
    pub async fn write_targets(&self, targets: &[TargetRecord]) -> Result<(), StoreError> {
        let items = targets
            .iter()
            .map(|t| encode("target", t, Key::target(&t.environment, &t.instance)))
            .collect::<Result<Vec<_>, _>>()?;
        self.batch_put(items).await
    }

    /// The instance's target in its latest deployment. Polls read it eventually consistent:
    /// half the cost, and an agent that misses a write of the last second polls again.
    pub async fn target(
        &self,
        environment: &str,
        instance: &str,
        consistent: bool,
    ) -> Result<Option<TargetRecord>, StoreError> {
        self.read(Key::target(environment, instance), consistent).await?.map(|item| decode("target", item)).transpose()
    }

    /// The targets of deployment `id`, by wave, then instance.
    pub async fn deployment_targets(&self, environment: &str, id: &str) -> Result<Vec<TargetRecord>, StoreError> {
        let items = self.partition(&format!("ENV#{environment}"), "TARGET#", None, false).await?;
        let mut targets: Vec<TargetRecord> = items
            .into_iter()
            .map(|item| decode("target", item))
            .filter(|t: &Result<TargetRecord, _>| t.as_ref().map_or(true, |t| t.deployment == id))
            .collect::<Result<_, _>>()?;
        targets.sort_by(|a, b| (a.wave, &a.instance).cmp(&(b.wave, &b.instance)));
        Ok(targets)
    }

    /// Records a target's outcome and counts it in its deployment's wave, in one transaction:
    /// only if the target is still in the state it was read in (`target.state`) in deployment
    /// `target.deployment`, and that deployment still runs (or, for [`Counter::Restored`],
    /// still rolls back). A failure also becomes the deployment's failure reason, if it is
    /// the first.
    pub async fn count_outcome(
        &self,
        target: &TargetRecord,
        counter: Counter,
        detail: Option<&str>,
        now: i64,
    ) -> Result<Transition, StoreError> {
        let mut target_change = Conditional {
            key: Key::target(&target.environment, &target.instance),
            set: vec!["#state = :to".into(), "updated_at = :now".into()],
            remove: Vec::new(),
            condition: "deployment = :id AND #state = :from".into(),
            names: Vec::new(),
            values: vec![
                (":to".into(), target_state(counter.state())),
                (":now".into(), n(now)),
                (":id".into(), s(&target.deployment)),
                (":from".into(), target_state(target.state)),
            ],
        };
        if let Some(detail) = detail {
            // The tail of the agent's hook output: bounded here whatever the agent sent.
            target_change.set.push("detail = :detail".into());
            target_change.values.push((":detail".into(), s(crate::domain::text::cut(detail, MAX_DETAIL_CHARS))));
        }
        // Counters are lists indexed by wave; `wave` comes from our own plan.
        let wave = target.wave;
        let mut deployment_change = Conditional {
            key: Key::deployment(&target.environment, &target.deployment),
            set: vec![format!("#counter[{wave}] = #counter[{wave}] + :one"), "updated_at = :now".into()],
            remove: Vec::new(),
            condition: "#state = :running".into(),
            names: vec![("#counter".into(), counter.attribute().into())],
            values: vec![
                (":running".into(), s(counter.deployment_state().as_str())),
                (":one".into(), n(1)),
                (":now".into(), n(now)),
            ],
        };
        if counter == Counter::Failed {
            // The deployment record is read by every poll of the rollout: it carries the start
            // of the failure; the whole log tail stays on the target.
            let detail: String = detail.unwrap_or("no detail reported").chars().take(FAILURE_ON_DEPLOYMENT).collect();
            let failure = format!("{} failed in wave {}: {detail}", target.instance, wave + 1);
            deployment_change.set.push("failure = if_not_exists(failure, :failure)".into());
            deployment_change.values.push((":failure".into(), s(failure)));
        }
        let items = vec![self.transaction_item(target_change)?, self.transaction_item(deployment_change)?];
        // Reports of one wave arrive together and all update the deployment's counters: in
        // DynamoDB such transactions cancel each other (`TransactionConflict`); send again.
        retry_conflicts(Backoff::default(), || self.transact(items.clone())).await
    }

    /// Settles a target once its deployment has ended (see [`crate::domain::rollout::instruct`]).
    pub async fn settle_target(
        &self,
        target: &TargetRecord,
        to: TargetState,
        now: i64,
    ) -> Result<Transition, StoreError> {
        self.update_if(
            Key::target(&target.environment, &target.instance),
            "SET #state = :to, updated_at = :now",
            "deployment = :id AND #state = :from",
            &[],
            vec![
                (":to", target_state(to)),
                (":now", n(now)),
                (":id", s(&target.deployment)),
                (":from", target_state(target.state)),
            ],
        )
        .await
    }
}
