//! The facts Conveyor keeps in its ledger. How they are keyed in the table is the store's
//! business ([`crate::store`]); these types only say what each fact is.

use serde::{Deserialize, Serialize};

/// A commit seen in a push: the start of lead time for changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub repository: String,
    pub sha: String,
    /// Committed at, Unix seconds (from the commit's own ISO 8601 timestamp).
    pub committed_at: i64,
    /// The ref of the push that brought the commit (`refs/heads/main`).
    pub git_ref: String,
    /// First line of the message, shortened.
    pub title: String,
    pub author: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefKind {
    Branch,
    Tag,
    Other,
}

/// One push: a branch or tag created, moved or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    pub repository: String,
    pub delivery: String,
    pub git_ref: String,
    pub ref_kind: RefKind,
    /// The branch or tag name without `refs/heads/` or `refs/tags/`.
    pub ref_name: String,
    pub before: String,
    pub after: String,
    pub created: bool,
    pub deleted: bool,
    pub forced: bool,
    pub commit_count: usize,
    pub received_at: i64,
    /// When GitHub says the push happened (`repository.pushed_at`); orders pushes that arrive
    /// out of order. `received_at` when the payload has none.
    #[serde(default)]
    pub pushed_at: i64,
}

/// The head of a branch as the latest push the ledger saw says: what "the newest build" is
/// measured against, so that an older commit's late CI success never deploys over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchHead {
    pub repository: String,
    pub branch: String,
    pub sha: String,
    pub pushed_at: i64,
    /// The push delivery that moved it.
    pub delivery: String,
    /// The sha the push moved the branch from (not kept: it only chains same-second pushes).
    #[serde(default, skip_serializing)]
    pub before: String,
}

/// A finished CI build (a workflow run or a check suite) for one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub repository: String,
    pub sha: String,
    pub branch: Option<String>,
    /// `workflow_run:<workflow id>:<run id>:<attempt>` or `check_suite:<app>:<suite id>`:
    /// unique per build attempt, so a re-run is a new record and a redelivery is not.
    pub source: String,
    /// The workflow's name or the checking app's slug.
    pub name: String,
    /// success, failure, cancelled, timed_out, ... as GitHub reports it.
    pub conclusion: String,
    pub url: Option<String>,
    pub completed_at: i64,
}

impl BuildRecord {
    pub fn succeeded(&self) -> bool {
        self.conclusion == "success"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Pending,
    InProgress,
    /// A wave failed: the waves reached so far go back to the last good release one wave at
    /// a time, newest first, as `min_healthy` allows. It still holds the environment.
    RollingBack,
    Succeeded,
    Failed,
    RolledBack,
    Superseded,
    /// Recorded, never run: the build's commit was no longer its branch's head.
    Skipped,
}

impl DeploymentState {
    /// A deployment in a final state never changes again.
    pub fn is_final(self) -> bool {
        !matches!(self, DeploymentState::Pending | DeploymentState::InProgress | DeploymentState::RollingBack)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Pending => "pending",
            DeploymentState::InProgress => "in_progress",
            DeploymentState::RollingBack => "rolling_back",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::RolledBack => "rolled_back",
            DeploymentState::Superseded => "superseded",
            DeploymentState::Skipped => "skipped",
        }
    }
}

/// A release of one build to one environment. Exactly one exists per (environment, sha).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub environment: String,
    pub repository: String,
    pub sha: String,
    pub branch: String,
    pub version: String,
    /// Where the build's artifact is (an `s3://` URL).
    pub artifact: String,
    pub state: DeploymentState,
    /// Why the deployment is in its state, in words.
    pub reason: String,
    /// The build that triggered it ([`BuildRecord::source`]).
    pub build: String,
    pub created_at: i64,
    /// When its commit became the branch's head (the push's time), when the ledger saw that
    /// push: queued deployments are ordered by it, so commit order wins over arrival order.
    #[serde(default)]
    pub pushed_at: Option<i64>,
    /// How it runs, once started; empty while pending.
    #[serde(flatten)]
    pub run: RunState,
}

/// A started deployment's progress, kept on its record (top-level attributes in the table,
/// which the store's conditional updates name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunState {
    /// The current wave (from 0) and when it started.
    pub wave: Option<usize>,
    pub wave_started_at: Option<i64>,
    /// The artifact's SHA-256, known once the deployment starts.
    pub sha256: Option<String>,
    /// The artifact's S3 version, pinned when the deployment starts: a re-upload to the same
    /// key during the rollout does not change what later waves download.
    pub artifact_version: Option<String>,
    /// Per wave: planned targets, and those that succeeded, failed or were dropped (counted
    /// by the agents' reports, so deciding never reads the targets).
    pub sizes: Vec<usize>,
    pub succeeded: Vec<usize>,
    pub failed: Vec<usize>,
    pub dropped: Vec<usize>,
    /// While rolling back: the wave being restored (from the failed one down to the first),
    /// since when, and per wave how many targets are back on the last good release.
    pub rollback_wave: Option<usize>,
    pub rollback_wave_started_at: Option<i64>,
    pub restored: Vec<usize>,
    /// The first failure an agent reported, in words. Absent, not null, until then: the
    /// store sets it with `if_not_exists`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A deployment's id within its environment: the repository (lower case, as GitHub
/// compares names) and the commit, so two repositories never share a deployment.
pub fn deployment_id(repository: &str, sha: &str) -> String {
    format!("{}#{sha}", repository.to_ascii_lowercase())
}

impl DeploymentRecord {
    pub fn id(&self) -> String {
        deployment_id(&self.repository, &self.sha)
    }

    /// Which of two queued deployments is newer: commit order (the push that made each the
    /// branch's head) where the ledger knows it, then creation time.
    pub fn queue_order(&self) -> (i64, i64, &str) {
        (self.pushed_at.unwrap_or(self.created_at), self.created_at, &self.sha)
    }

    /// Where the deployment stands, as [`crate::domain::rollout`] decides on it.
    pub fn progress(&self) -> crate::domain::rollout::Progress {
        let run = &self.run;
        crate::domain::rollout::Progress {
            state: self.state,
            started: run.wave.is_some(),
            wave: run.wave.unwrap_or(0),
            wave_started_at: run.wave_started_at.unwrap_or(self.created_at),
            sizes: run.sizes.clone(),
            succeeded: run.succeeded.clone(),
            failed: run.failed.clone(),
            dropped: run.dropped.clone(),
            failure: run.failure.clone(),
            rollback_wave: run.rollback_wave,
            rollback_wave_started_at: run.rollback_wave_started_at.unwrap_or(self.created_at),
            restored: run.restored.clone(),
        }
    }

    /// The version a build of `sha` is deployed as: its first 12 hex digits, which stay unique
    /// within a repository and name the release directory on every instance.
    pub fn version_for(sha: &str) -> String {
        sha.chars().take(12).collect()
    }
}
