//! The parts of GitHub's webhook payloads that Conveyor reads. Parsing is the validation:
//! a payload that deserialises into these types is one Conveyor can act on.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Repository {
    pub full_name: String,
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
