//! The rollout's items: the environment's lock, a deployment's run, one target per instance,
//! what each agent last said, and the environment's last good release.
//!
//! # One deployment per environment
//! `ENV#<env>/LOCK` names the one deployment of the environment that is being planned or
//! runs, and changes only in the same transactions as that deployment's state:
//! - **planning**: taken with the planning claim ([`Table::claim_planning`]), with an expiry,
//!   so a planner that crashed is replaced after the claim's time, and given up at once when
//!   planning fails ([`Table::release_planning`]);
//! - **running**: set by the transaction that starts the deployment
//!   ([`Table::start_deployment`]); it has no expiry;
//! - **gone**: deleted by the transaction that ends the deployment ([`Table::end_deployment`]),
//!   which also writes the last good release or the alert.
//!
//! So a deployment is `in_progress` exactly while the lock names it as running: no reader can
//! see one without the other, an ended deployment never holds the lock, and a deployment
//! whose tick failed for an hour still owns its environment until the tick drives it to an
//! end. Nothing waits for a lock to expire but a planner that crashed.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put as TxPut, TransactWriteItem};
use serde::{Deserialize, Serialize};

use super::{Backoff, Conditional, Key, StoreError, Table, Transition, decode, encode, n, retry_conflicts, s};
use crate::domain::alert::Alert;
use crate::domain::rollout::{Release, TargetRecord, TargetState};
use crate::domain::{DeploymentRecord, DeploymentState};

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

fn target_state(state: TargetState) -> AttributeValue {
    s(state.as_str())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockPhase {
    Planning,
    Running,
}

impl LockPhase {
    fn as_str(self) -> &'static str {
        match self {
            LockPhase::Planning => "planning",
            LockPhase::Running => "running",
        }
    }
}

/// The environment's lock, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The deployment's id.
    pub holder: String,
    /// Absent on locks written by versions before phases: those expire like a planning one.
    pub phase: Option<LockPhase>,
    pub expires_at: Option<i64>,
}

impl Lock {
    /// Whether the lock still holds at `now`: a running one always does.
    pub fn live(&self, now: i64) -> bool {
        self.phase == Some(LockPhase::Running) || self.expires_at.is_some_and(|at| at >= now)
    }
}

/// What starting a planned deployment records on it.
#[derive(Debug, Clone)]
pub struct DeploymentStart<'a> {
    pub environment: &'a str,
    pub id: &'a str,
    /// The planning claim's token: only the planner that still holds the claim may start it.
    pub planner: &'a str,
    pub sizes: &'a [usize],
    pub sha256: &'a str,
    pub artifact_version: Option<&'a str>,
    pub reason: &'a str,
}

/// A deployment's last transition and everything that goes with it, written in one
/// transaction so that a crash never leaves a half-ended deployment.
#[derive(Debug, Clone)]
pub struct DeploymentEnd<'a> {
    pub environment: &'a str,
    pub id: &'a str,
    pub from: DeploymentState,
    pub to: DeploymentState,
    pub reason: &'a str,
    /// For a deployment that fails while it is planned: the planner's claim token.
    pub planner: Option<&'a str>,
    /// For a success: the environment's new last good release.
    pub last_release: Option<&'a Release>,
    pub alert: Option<&'a Alert>,
}

impl Table {
    /// The environment's lock, live or not.
    pub async fn lock(&self, environment: &str) -> Result<Option<Lock>, StoreError> {
        self.get(Key::lock(environment)).await?.map(|item| decode("lock", item)).transpose()
    }

    /// Elects one invocation to plan a pending deployment and takes the environment's lock
    /// for it, in one transaction. Several invocations can try at once (the stream and the
    /// tick); a planner that crashed is replaced after `ttl` seconds. Rejected while another
    /// deployment holds the lock or another planner holds the claim.
    pub async fn claim_planning(
        &self,
        environment: &str,
        id: &str,
        token: &str,
        now: i64,
        ttl: i64,
    ) -> Result<Transition, StoreError> {
        let claim = self.transaction_item(claim_change(environment, id, token, now, ttl))?;
        let lock = HashMap::from([
            ("pk".to_string(), s(Key::lock(environment).pk)),
            ("sk".to_string(), s(Key::lock(environment).sk)),
            ("holder".to_string(), s(id)),
            ("phase".to_string(), s(LockPhase::Planning.as_str())),
            ("planner".to_string(), s(token)),
            ("expires_at".to_string(), n(now + ttl)),
        ]);
        let lock = TxPut::builder()
            .table_name(self.name())
            .set_item(Some(lock))
            .condition_expression(
                "attribute_not_exists(pk) OR ((attribute_not_exists(phase) OR phase = :planning) AND expires_at < :now)",
            )
            .expression_attribute_values(":planning", s(LockPhase::Planning.as_str()))
            .expression_attribute_values(":now", n(now))
            .build()
            .map_err(|e| self.build_error("TransactWriteItems", e))?;
        let items = vec![claim, TransactWriteItem::builder().put(lock).build()];
        retry_conflicts(Backoff::default(), || self.transact(items.clone())).await
    }

    /// Gives up a planning claim and the lock it took (the planner failed), so that the next
    /// trigger plans at once. Nothing happens if another planner took over meanwhile.
    pub async fn release_planning(&self, environment: &str, id: &str, token: &str) -> Result<(), StoreError> {
        let claim = Conditional {
            key: Key::deployment(environment, id),
            set: Vec::new(),
            remove: vec!["planner".into(), "planning_until".into()],
            condition: "#state = :pending AND planner = :token".into(),
            names: Vec::new(),
            values: vec![(":pending".into(), s(DeploymentState::Pending.as_str())), (":token".into(), s(token))],
        };
        let lock = Delete::builder()
            .table_name(self.name())
            .set_key(Some(Key::lock(environment).into_item()))
            .condition_expression("holder = :id AND planner = :token")
            .expression_attribute_values(":id", s(id))
            .expression_attribute_values(":token", s(token))
            .build()
            .map_err(|e| self.build_error("TransactWriteItems", e))?;
        let items = vec![self.transaction_item(claim)?, TransactWriteItem::builder().delete(lock).build()];
        retry_conflicts(Backoff::default(), || self.transact(items.clone())).await?;
        Ok(())
    }

    /// Starts a planned deployment at wave 0 with zeroed per-wave counters and turns its
    /// planning lock into the running lock, in one transaction; only the planner that holds
    /// the claim can.
    pub async fn start_deployment(&self, start: &DeploymentStart<'_>, now: i64) -> Result<Transition, StoreError> {
        let list = |values: Vec<i64>| AttributeValue::L(values.into_iter().map(n).collect());
        let zeros = || list(vec![0; start.sizes.len()]);
        let mut change = Conditional::transition(
            Key::deployment(start.environment, start.id),
            DeploymentState::Pending.as_str(),
            DeploymentState::InProgress.as_str(),
            start.reason,
            now,
        )
        .set("wave", n(0))
        .set("wave_started_at", n(now))
        .set("sha256", s(start.sha256))
        .set("sizes", list(start.sizes.iter().map(|&size| size as i64).collect()))
        .set("succeeded", zeros())
        .set("failed", zeros())
        .set("dropped", zeros())
        .remove("planning_until")
        .when("planner = :planner", vec![(":planner", s(start.planner))]);
        if let Some(version) = start.artifact_version {
            change = change.set("artifact_version", s(version));
        }
        let lock = Conditional {
            key: Key::lock(start.environment),
            set: vec!["phase = :running".into()],
            remove: vec!["expires_at".into()],
            condition: "holder = :id AND planner = :planner".into(),
            names: Vec::new(),
            values: vec![
                (":running".into(), s(LockPhase::Running.as_str())),
                (":id".into(), s(start.id)),
                (":planner".into(), s(start.planner)),
            ],
        };
        let items = vec![self.transaction_item(change)?, self.transaction_item(lock)?];
        retry_conflicts(Backoff::default(), || self.transact(items.clone())).await
    }

    /// Ends a deployment: its last transition, the lock's release, and the last good release
    /// or the alert, all or nothing. Rejected when the deployment is not in `from` (another
    /// invocation ended it first).
    pub async fn end_deployment(&self, end: &DeploymentEnd<'_>, now: i64) -> Result<Transition, StoreError> {
        let mut change = Conditional::transition(
            Key::deployment(end.environment, end.id),
            end.from.as_str(),
            end.to.as_str(),
            end.reason,
            now,
        );
        if let Some(planner) = end.planner {
            change = change.when("planner = :planner", vec![(":planner", s(planner))]);
        }
        let lock = Delete::builder()
            .table_name(self.name())
            .set_key(Some(Key::lock(end.environment).into_item()))
            .condition_expression("attribute_not_exists(pk) OR holder = :id")
            .expression_attribute_values(":id", s(end.id))
            .build()
            .map_err(|e| self.build_error("TransactWriteItems", e))?;
        let mut items = vec![self.transaction_item(change)?, TransactWriteItem::builder().delete(lock).build()];
        if let Some(release) = end.last_release {
            let put = TxPut::builder()
                .table_name(self.name())
                .set_item(Some(encode("release", release, Key::last_release(end.environment))?))
                .build()
                .map_err(|e| self.build_error("TransactWriteItems", e))?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        if let Some(alert) = end.alert {
            let put = TxPut::builder()
                .table_name(self.name())
                .set_item(Some(super::alerts::alert_item(alert)?))
                .build()
                .map_err(|e| self.build_error("TransactWriteItems", e))?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        retry_conflicts(Backoff::default(), || self.transact(items.clone())).await
    }

    /// Gives up a lock whose deployment has ended (left by an earlier version of Conveyor,
    /// which released locks in a separate step).
    pub async fn release_stale_lock(&self, environment: &str, holder: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(self.name())
            .set_key(Some(Key::lock(environment).into_item()))
            .condition_expression("holder = :holder")
            .expression_attribute_values(":holder", s(holder))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if super::is_condition_failure(&err) => Ok(()),
            Err(err) => Err(self.aws_error("DeleteItem", err)),
        }
    }

    /// Marks every deployment of `recent` (the environment's, as just read) that is still
    /// queued, of the same repository as `newest` and older than it as superseded by it. A
    /// deployment that a planner has claimed is left alone. Returns the ids it superseded.
    pub async fn supersede_queued(
        &self,
        newest: &DeploymentRecord,
        recent: &[DeploymentRecord],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut superseded = Vec::new();
        for queued in recent {
            let same_repository = queued.repository.eq_ignore_ascii_case(&newest.repository);
            let older = queued.queue_order() < newest.queue_order();
            if queued.state != DeploymentState::Pending || !same_repository || !older {
                continue;
            }
            let reason = format!("superseded by {} ({})", newest.version, newest.reason);
            let change = Conditional::transition(
                Key::deployment(&queued.environment, &queued.id()),
                DeploymentState::Pending.as_str(),
                DeploymentState::Superseded.as_str(),
                &reason,
                now,
            )
            .when("attribute_not_exists(planner) OR planning_until < :now", vec![(":now", n(now))]);
            if self.apply(change).await? == Transition::Applied {
                superseded.push(queued.id());
            }
        }
        Ok(superseded)
    }

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
            target_change.set.push("detail = :detail".into());
            target_change.values.push((":detail".into(), s(detail)));
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
            DeploymentState::InProgress.as_str(),
            DeploymentState::RollingBack.as_str(),
            reason,
            now,
        )
        .set("rollback_wave", n(wave as i64))
        .set("rollback_wave_started_at", n(now))
        .set("restored", zeros);
        let put = TxPut::builder()
            .table_name(self.name())
            .set_item(Some(super::alerts::alert_item(alert)?))
            .build()
            .map_err(|e| self.build_error("TransactWriteItems", e))?;
        let items = vec![self.transaction_item(change)?, TransactWriteItem::builder().put(put).build()];
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

    pub async fn last_release(&self, environment: &str) -> Result<Option<Release>, StoreError> {
        self.get(Key::last_release(environment)).await?.map(|item| decode("release", item)).transpose()
    }

    /// Records that the tick failed for `environment` (kept a day, shown by `conveyor status`).
    pub async fn record_tick_error(&self, environment: &str, error: &str, now: i64) -> Result<(), StoreError> {
        let mut item = Key::tick_error(environment).into_item();
        item.extend([("error".into(), s(error)), ("at".into(), n(now)), ("ttl".into(), n(now + 24 * 3600))]);
        self.client
            .put_item()
            .table_name(self.name())
            .set_item(Some(item))
            .send()
            .await
            .map_err(|err| self.aws_error("PutItem", err))?;
        Ok(())
    }

    /// The tick's last error for `environment` and when it happened, if it failed in the last day.
    pub async fn tick_error(&self, environment: &str, now: i64) -> Result<Option<(String, i64)>, StoreError> {
        let Some(item) = self.get(Key::tick_error(environment)).await? else { return Ok(None) };
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        let number = |name: &str| item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok());
        let live = number("ttl").is_some_and(|ttl| ttl >= now);
        Ok(text("error").zip(number("at")).filter(|_| live))
    }
}

/// The deployment side of a planning claim.
fn claim_change(environment: &str, id: &str, token: &str, now: i64, ttl: i64) -> Conditional {
    Conditional {
        key: Key::deployment(environment, id),
        set: vec!["planner = :token".into(), "planning_until = :until".into()],
        remove: Vec::new(),
        condition: "#state = :pending AND (attribute_not_exists(planner) OR planning_until < :now)".into(),
        names: Vec::new(),
        values: vec![
            (":pending".into(), s(DeploymentState::Pending.as_str())),
            (":token".into(), s(token)),
            (":until".into(), n(now + ttl)),
            (":now".into(), n(now)),
        ],
    }
}
