//! Health checks' state and incidents, in one small partition read once per run.
//!
//! | item      | `pk`     | `sk`                              |
//! |-----------|----------|-----------------------------------|
//! | state     | `CHECKS` | `STATE#<check>`                   |
//! | incident  | `CHECKS` | `INCIDENT#<check>#<down since>`   |
//! | reboot    | `CHECKS` | `REBOOT#<instance>`               |
//!
//! A state is written only when it changes, conditional on the version that was read, and
//! together with the incident it opens or resolves and the message it gives (one
//! transaction): two runs that overlap cannot both report one transition, and a run that
//! dies after its decision either stored all of it or none.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::{Put as TxPut, Update};
use serde::Deserialize;

use super::*;
use crate::domain::checks::{CheckAlert, CheckState, CheckWrite, Incident, RunPlan, StoredCheck};

const CHECKS: &str = "CHECKS";
/// Transactions of one run in flight at once.
const WRITES_AT_ONCE: usize = 16;

impl Key {
    pub fn check_state(check: &str) -> Self {
        Self { pk: CHECKS.into(), sk: format!("STATE#{check}") }
    }
    pub fn reboot(instance: &str) -> Self {
        Self { pk: CHECKS.into(), sk: format!("REBOOT#{instance}") }
    }
    pub fn incident(check: &str, since: i64) -> Self {
        Self { pk: CHECKS.into(), sk: format!("INCIDENT#{check}#{}", time_key(since)) }
    }
}

/// An incident as stored: from when a check went down to when it came back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IncidentRecord {
    pub check: String,
    pub since: i64,
    #[serde(default)]
    pub cause: Option<String>,
    #[serde(default)]
    pub resolved_at: Option<i64>,
}

/// What a run's writes came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunWritten {
    /// The checks whose new state this run stored.
    pub stored: std::collections::BTreeSet<String>,
    /// Writes (and the messages that went with them) stored.
    pub applied: usize,
    /// Writes another run had made first: this run's decision about them was dropped whole.
    pub lost: usize,
    /// Writes DynamoDB refused (logged): the next run decides them again.
    pub failed: usize,
}

#[derive(Deserialize)]
struct StoredState {
    check: String,
    version: u64,
    #[serde(flatten)]
    state: CheckState,
}

impl Table {
    /// Every check's stored state, by name.
    pub async fn check_states(&self) -> Result<BTreeMap<String, StoredCheck>, StoreError> {
        self.partition(CHECKS, "STATE#", None, false)
            .await?
            .into_iter()
            .map(|item| {
                let stored: StoredState = decode("check state", item)?;
                Ok((stored.check, StoredCheck { state: stored.state, version: stored.version }))
            })
            .collect()
    }

    /// Takes the right to reboot `instance` now, unless it was rebooted within the last
    /// `window` seconds: self-healing reboots an instance at most once per window, however
    /// many runs find it down.
    pub async fn claim_reboot(&self, instance: &str, check: &str, now: i64, window: i64) -> Result<Put, StoreError> {
        let mut item = Key::reboot(instance).into_item();
        item.extend([("check".into(), s(check)), ("at".into(), n(now))]);
        self.put_if(
            item,
            "attribute_not_exists(pk) OR #at <= :window_start",
            HashMap::from([("#at".to_owned(), "at".to_owned())]),
            HashMap::from([(":window_start".to_owned(), n(now - window))]),
        )
        .await
    }

    /// A check's incidents, newest first.
    pub async fn incidents(&self, check: &str, limit: i32) -> Result<Vec<IncidentRecord>, StoreError> {
        self.partition(CHECKS, &format!("INCIDENT#{check}#"), Some(limit), true)
            .await?
            .into_iter()
            .map(|item| decode("incident", item))
            .collect()
    }

    /// Stores a run's decision: each message with the writes it reports (one transaction),
    /// then the writes no message goes with. A write whose version moved (an overlapping run
    /// stored it first) is dropped with its message.
    pub async fn write_check_run(&self, plan: &RunPlan, now: i64) -> Result<RunWritten, StoreError> {
        let mut transactions: Vec<(String, Vec<String>, Vec<TransactWriteItem>)> = Vec::new();
        let mut reported: std::collections::BTreeSet<&str> = Default::default();
        let writes: BTreeMap<&str, &CheckWrite> = plan.writes.iter().map(|w| (w.check.as_str(), w)).collect();
        for CheckAlert { alert, checks } in &plan.alerts {
            let mut items = Vec::new();
            for write in checks.iter().filter_map(|name| writes.get(name.as_str())) {
                items.extend(self.check_write_items(write, now)?);
                reported.insert(&write.check);
            }
            let mut alert_items = self.alert_writes(alert)?;
            if let Some(TransactWriteItem { put: Some(put), .. }) = alert_items.first_mut() {
                put.condition_expression = Some("attribute_not_exists(pk)".into());
            }
            items.extend(alert_items);
            transactions.push((alert.id.clone(), checks.clone(), items));
        }
        for write in plan.writes.iter().filter(|w| !reported.contains(w.check.as_str())) {
            transactions.push((write.check.clone(), vec![write.check.clone()], self.check_write_items(write, now)?));
        }
        // Many at once (a fleet's first run writes every check), a bounded number at a time.
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(WRITES_AT_ONCE));
        let mut running = tokio::task::JoinSet::new();
        for (what, checks, items) in transactions {
            let (table, limit) = (self.clone(), limit.clone());
            running.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let result = retry_conflicts(Backoff::default(), || table.transact(items.clone())).await;
                (what, checks, result)
            });
        }
        let mut written = RunWritten::default();
        while let Some(joined) = running.join_next().await {
            let Ok((what, checks, result)) = joined else { continue };
            match result {
                Ok(Transition::Applied) => {
                    written.applied += 1;
                    written.stored.extend(checks);
                }
                Ok(Transition::Rejected) => written.lost += 1,
                Err(err) => {
                    tracing::error!(%what, error = %err, "a check's new state (and its message) could not be stored");
                    written.failed += 1;
                }
            }
        }
        Ok(written)
    }

    /// Forgets the state of a check whose instance left the fleet (if it is still at
    /// `stored.version`), resolves its open incident, and raises `closing` with it.
    pub async fn forget_check(
        &self,
        check: &str,
        stored: &StoredCheck,
        closing: Option<&crate::domain::alert::Alert>,
        now: i64,
    ) -> Result<Transition, StoreError> {
        use aws_sdk_dynamodb::types::Delete;
        let build = |e| self.build_error("TransactWriteItems", e);
        let delete = Delete::builder()
            .table_name(self.name())
            .set_key(Some(Key::check_state(check).into_item()))
            .condition_expression("version = :version")
            .expression_attribute_values(":version", n(stored.version as i64))
            .build()
            .map_err(build)?;
        let mut items = vec![TransactWriteItem::builder().delete(delete).build()];
        if let Some(since) = stored.state.down_since {
            let resolve = CheckWrite {
                check: check.to_owned(),
                expected_version: stored.version,
                state: stored.state.clone(),
                incident: Some(Incident::Resolve { since, at: now }),
            };
            // Only the incident's item: the state is deleted above.
            items.extend(self.check_write_items(&resolve, now)?.into_iter().skip(1));
        }
        if let Some(alert) = closing {
            items.extend(self.alert_writes(alert)?);
        }
        retry_conflicts(Backoff::default(), || self.transact(items.clone())).await
    }

    fn check_write_items(&self, write: &CheckWrite, now: i64) -> Result<Vec<TransactWriteItem>, StoreError> {
        let build = |e| self.build_error("TransactWriteItems", e);
        let mut item = encode("check state", &write.state, Key::check_state(&write.check))?;
        item.insert("check".into(), s(&write.check));
        item.insert("version".into(), n(write.expected_version as i64 + 1));
        item.insert("updated_at".into(), n(now));
        let mut put = TxPut::builder().table_name(self.name()).set_item(Some(item));
        put = if write.expected_version == 0 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("version = :version")
                .expression_attribute_values(":version", n(write.expected_version as i64))
        };
        let mut items = vec![TransactWriteItem::builder().put(put.build().map_err(build)?).build()];
        // Incidents need no condition of their own: the state's version guards them.
        match &write.incident {
            Some(Incident::Open { since, cause }) => {
                let mut incident = Key::incident(&write.check, *since).into_item();
                incident.extend([
                    ("check".into(), s(&write.check)),
                    ("since".into(), n(*since)),
                    ("cause".into(), s(cause)),
                    ("opened_at".into(), n(now)),
                ]);
                let put = TxPut::builder().table_name(self.name()).set_item(Some(incident)).build().map_err(build)?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
            Some(Incident::Resolve { since, at }) => {
                let update = Update::builder()
                    .table_name(self.name())
                    .set_key(Some(Key::incident(&write.check, *since).into_item()))
                    .update_expression("SET #check = :check, since = :since, resolved_at = :at")
                    .expression_attribute_names("#check", "check")
                    .expression_attribute_values(":check", s(&write.check))
                    .expression_attribute_values(":since", n(*since))
                    .expression_attribute_values(":at", n(*at))
                    .build()
                    .map_err(build)?;
                items.push(TransactWriteItem::builder().update(update).build());
            }
            None => {}
        }
        Ok(items)
    }
}
