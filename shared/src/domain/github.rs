//! The parts of GitHub's webhook payloads that Conveyor reads. Parsing is the validation:
//! a payload that deserialises into these types is one Conveyor can act on.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Repository {
    pub full_name: String,
    /// Unix seconds in push payloads (an ISO string elsewhere): when the repository was
    /// last pushed to, which orders pushes.
    #[serde(default)]
    pub pushed_at: Option<Timestamp>,
}

/// A time GitHub writes as Unix seconds or as ISO 8601, depending on the payload.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Timestamp {
    Unix(i64),
    Text(String),
}

impl Timestamp {
    pub fn unix(&self) -> Option<i64> {
        use time::format_description::well_known::Rfc3339;
        match self {
            Timestamp::Unix(seconds) => Some(*seconds),
            Timestamp::Text(text) => time::OffsetDateTime::parse(text, &Rfc3339).ok().map(|t| t.unix_timestamp()),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct PushEvent {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub before: String,
    pub after: String,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub forced: bool,
    #[serde(default)]
    pub commits: Vec<PushCommit>,
    pub head_commit: Option<PushCommit>,
    pub repository: Repository,
}

#[derive(Debug, Deserialize)]
pub struct PushCommit {
    pub id: String,
    /// ISO 8601 with an offset, e.g. `2019-05-15T15:20:30-05:00`.
    pub timestamp: String,
    #[serde(default)]
    pub message: String,
    pub author: Option<Person>,
}

#[derive(Debug, Deserialize)]
pub struct Person {
    pub name: Option<String>,
    pub username: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WorkflowRunEvent {
    pub action: String,
    pub workflow_run: WorkflowRun,
    pub repository: Repository,
}

#[derive(Debug, Deserialize)]
pub struct WorkflowRun {
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    pub workflow_id: Option<u64>,
    pub head_branch: Option<String>,
    pub head_sha: String,
    /// The workflow's file, `.github/workflows/ci.yml`.
    #[serde(default)]
    pub path: Option<String>,
    pub run_attempt: Option<u64>,
    pub conclusion: Option<String>,
    pub html_url: Option<String>,
    pub updated_at: Option<String>,
    /// The repository the run's commit comes from: a fork for pull requests from forks.
    pub head_repository: Option<Repository>,
}

#[derive(Debug, Deserialize)]
pub struct CheckSuiteEvent {
    pub action: String,
    pub check_suite: CheckSuite,
    pub repository: Repository,
}

#[derive(Debug, Deserialize)]
pub struct CheckSuite {
    pub id: u64,
    pub head_branch: Option<String>,
    pub head_sha: String,
    pub conclusion: Option<String>,
    pub updated_at: Option<String>,
    pub url: Option<String>,
    pub app: Option<App>,
}

#[derive(Debug, Deserialize)]
pub struct App {
    pub slug: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PingEvent {
    pub zen: Option<String>,
    pub hook_id: Option<u64>,
}
