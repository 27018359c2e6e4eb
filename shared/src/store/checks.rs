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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunWritten {
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
        let mut written = RunWritten::default();
        let mut reported: Vec<&str> = Vec::new();
        for CheckAlert { alert, checks } in &plan.alerts {
            let mut items = Vec::new();
            for write in plan.writes.iter().filter(|w| checks.contains(&w.check)) {
                items.extend(self.check_write_items(write, now)?);
                reported.push(&write.check);
            }
            items.extend(self.alert_writes(alert)?);
            Self::count(
                &mut written,
                &alert.id,
                retry_conflicts(Backoff::default(), || self.transact(items.clone())).await,
            );
        }
        for write in plan.writes.iter().filter(|w| !reported.contains(&w.check.as_str())) {
            let items = self.check_write_items(write, now)?;
            Self::count(
                &mut written,
                &write.check,
                retry_conflicts(Backoff::default(), || self.transact(items.clone())).await,
            );
        }
        Ok(written)
    }

    /// One transaction's result; one that DynamoDB refuses does not stop the others.
    fn count(written: &mut RunWritten, what: &str, result: Result<Transition, StoreError>) {
        match result {
            Ok(Transition::Applied) => written.applied += 1,
            Ok(Transition::Rejected) => written.lost += 1,
            Err(err) => {
                tracing::error!(%what, error = %err, "a check's new state (and its message) could not be stored");
                written.failed += 1;
            }
        }
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
