//! CI runs of a commit, for the deploy gate ([`crate::domain::gate`]):
//! `REPO#<owner/name>` / `RUN#<sha>#<run key>`, kept 30 days.

use aws_sdk_dynamodb::types::AttributeValue;

use super::{Conditional, Key, Put, StoreError, Table, Transition, decode, encode, n};
use crate::domain::DeploymentState;
use crate::domain::gate::RunRecord;

/// How long a run is kept: the gate needs it while its commit may still deploy.
const RUN_TTL_SECONDS: i64 = 30 * 24 * 3600;

impl Key {
    pub fn run(repository: &str, sha: &str, run: &str) -> Self {
        Self { pk: format!("REPO#{repository}"), sk: format!("RUN#{sha}#{run}") }
    }
}

impl Table {
    /// Records `run` unless a report of it that ranks as high is recorded already (a
    /// redelivery, an `in_progress` that arrives after `completed`, an older attempt):
    /// [`Put::AlreadyExists`] then, and nothing changes.
    pub async fn record_run(&self, run: &RunRecord, now: i64) -> Result<Put, StoreError> {
        let mut item = encode("run", run, Key::run(&run.repository, &run.sha, &run.key))?;
        item.insert("run_rank".into(), n(run.rank()));
        item.insert("ttl".into(), n(now + RUN_TTL_SECONDS));
        let values = [(":rank".to_string(), AttributeValue::N(run.rank().to_string()))].into();
        self.put_if(item, "attribute_not_exists(pk) OR run_rank < :rank", Default::default(), values).await
    }

    /// Every run recorded for a commit (read consistently: the gate decides on it).
    pub async fn runs_of(&self, repository: &str, sha: &str) -> Result<Vec<RunRecord>, StoreError> {
        let items = self.partition(&format!("REPO#{repository}"), &format!("RUN#{sha}#"), None, false).await?;
        items.into_iter().map(|item| decode("run", item)).collect()
    }

    /// Cancels a commit's deployment that has not started (no live planning claim): a run
    /// of the commit failed. It ends `skipped` with `reason`; a re-run that passes creates
    /// it anew.
    pub async fn cancel_queued(
        &self,
        environment: &str,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Transition, StoreError> {
        let change = Conditional::transition(
            Key::deployment(environment, id),
            DeploymentState::Pending,
            DeploymentState::Skipped,
            reason,
            now,
        )
        .when("attribute_not_exists(planner) OR planning_until < :now", vec![(":now", n(now))]);
        self.apply(change).await
    }
}
