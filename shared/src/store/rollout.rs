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

use super::{Backoff, Conditional, Key, StoreError, Table, Transition, decode, encode, n, retry_conflicts, s};
use crate::domain::alert::Alert;
use crate::domain::fleet::{Lock, LockPhase};
use crate::domain::rollout::Release;
use crate::domain::{DeploymentRecord, DeploymentState};

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
    /// The "deployment started" message, raised with the start.
    pub alert: Option<&'a Alert>,
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
            DeploymentState::Pending,
            DeploymentState::InProgress,
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
        let mut items = vec![self.transaction_item(change)?, self.transaction_item(lock)?];
        if let Some(alert) = start.alert {
            items.extend(self.alert_writes(alert)?);
        }
        retry_conflicts(Backoff::default(), || self.transact(items.clone())).await
    }

    /// Ends a deployment: its last transition, the lock's release, and the last good release
    /// or the alert, all or nothing. Rejected when the deployment is not in `from` (another
    /// invocation ended it first).
    pub async fn end_deployment(&self, end: &DeploymentEnd<'_>, now: i64) -> Result<Transition, StoreError> {
        let mut change =
            Conditional::transition(Key::deployment(end.environment, end.id), end.from, end.to, end.reason, now);
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
            items.extend(self.alert_writes(alert)?);
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
                DeploymentState::Pending,
                DeploymentState::Superseded,
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
