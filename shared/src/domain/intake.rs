//! The intake decision: from a verified GitHub delivery to the facts to record.
//!
//! `payload_json` unwraps the body, `plan` reads the event and decides; both are pure so the
//! whole decision path is unit-tested and benchmarked without a table.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::alert::{Alert, AlertKind, AlertSource, Severity};
use super::gate::{RunKind, RunRecord, RunStatus};
use super::github::{CheckSuiteEvent, PingEvent, PushCommit, PushEvent, WorkflowRunEvent};
use super::records::{
    BranchHead, BuildRecord, CommitRecord, DeploymentRecord, DeploymentState, PushRecord, RefKind, RunState,
};
use crate::config::{ArtifactFields, Config, Environment};

/// GitHub's own cap on a webhook payload.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// A delivery that cannot be acted on. Each maps to an HTTP status and a stable code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntakeError {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("content type `{0}` is not supported: send application/json or application/x-www-form-urlencoded")]
    UnsupportedContentType(String),
    #[error("the form body has no `payload` field")]
    MissingPayloadField,
    #[error("the {event} payload is not valid: {detail}")]
    InvalidPayload { event: String, detail: String },
}

/// The JSON document inside the body: the body itself, or the `payload` form field.
pub fn payload_json<'a>(content_type: Option<&str>, body: &'a [u8]) -> Result<Cow<'a, [u8]>, IntakeError> {
    let media_type = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" => Ok(Cow::Borrowed(body)),
        "application/x-www-form-urlencoded" => form_urlencoded::parse(body)
            .find(|(name, _)| name == "payload")
            .map(|(_, value)| Cow::Owned(value.into_owned().into_bytes()))
            .ok_or(IntakeError::MissingPayloadField),
        "" => Err(IntakeError::UnsupportedContentType("(none)".into())),
        other => Err(IntakeError::UnsupportedContentType(other.into())),
    }
}

/// What the delivery amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The hook was just created: answer, record nothing.
    Ping { zen: Option<String> },
    /// Facts were recorded.
    Recorded,
    /// Nothing Conveyor acts on; the delivery is still logged, with the reason.
    Ignored(String),
}

/// Everything the delivery asks Conveyor to record. Every entry is keyed by a natural key,
/// so applying a plan twice changes nothing the second time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outcome: Outcome,
    pub commits: Vec<CommitRecord>,
    pub push: Option<PushRecord>,
    pub build: Option<BuildRecord>,
    /// The CI run the delivery reports, for the deploy gate ([`super::gate`]).
    pub run: Option<RunRecord>,
    /// The deployments the commit gets if the gate passes: at most one per environment that
    /// tracks the run's branch and repository. The store creates each only if (environment,
    /// sha) is new, after checking it against its branch's head ([`order_build`]).
    pub deployments: Vec<DeploymentRecord>,
    /// The branch head a push moves (not for tags or deletions).
    pub head: Option<BranchHead>,
}

impl Plan {
    fn outcome(outcome: Outcome) -> Self {
        Self { outcome, commits: Vec::new(), push: None, build: None, run: None, deployments: Vec::new(), head: None }
    }

    /// A run of CI, finished (`build`) or not, and the deployments the gate may create.
    fn run(run: Option<RunRecord>, build: Option<BuildRecord>, deployments: Vec<DeploymentRecord>) -> Self {
        Self { build, run, deployments, ..Self::outcome(Outcome::Recorded) }
    }
}

/// Where a successful build stands against its branch's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOrder {
    /// Deploy it; `pushed_at` is when it became the head, when the ledger knows.
    Head { pushed_at: Option<i64> },
    /// An older commit of the branch: recorded with this reason, never deployed.
    Stale(String),
}

/// Whether a successful build of `sha` may deploy, given the branch's head as the ledger
/// knows it and whether the ledger saw `sha` in a push. A commit the ledger never saw
/// deploys (its push may still be on its way, or predate Conveyor): only a commit known to
/// be behind the head is refused.
pub fn order_build(head: Option<&BranchHead>, sha: &str, commit_known: bool) -> BuildOrder {
    match head {
        Some(head) if head.sha == sha => BuildOrder::Head { pushed_at: Some(head.pushed_at) },
        Some(head) if commit_known => BuildOrder::Stale(format!(
            "not deployed: {} is no longer the head of {} ({} is, since the push of delivery {}); deploy an older release on purpose by hand",
            DeploymentRecord::version_for(sha),
            head.branch,
            DeploymentRecord::version_for(&head.sha),
            head.delivery
        )),
        _ => BuildOrder::Head { pushed_at: None },
    }
}

/// What the decision needs besides the delivery.
pub struct PlanContext<'a> {
    pub config: &'a Config,
    pub artifacts_bucket: &'a str,
    /// Unix seconds, for facts without a time of their own.
    pub now: i64,
}

/// Decides what a delivery of `event` with the JSON `payload` records.
pub fn plan(event: &str, delivery: &str, payload: &[u8], ctx: &PlanContext<'_>) -> Result<Plan, IntakeError> {
    match event {
        "ping" => {
            let ping: PingEvent = parse(event, payload)?;
            Ok(Plan::outcome(Outcome::Ping { zen: ping.zen }))
        }
        "push" => plan_push(parse(event, payload)?, delivery, ctx),
        "workflow_run" => plan_workflow_run(parse(event, payload)?, ctx),
        "check_suite" => plan_check_suite(parse(event, payload)?, ctx),
        other => {
            // Still a JSON document, or it is not a webhook delivery at all.
            serde_json::from_slice::<serde::de::IgnoredAny>(payload)
                .map_err(|err| IntakeError::InvalidPayload { event: other.to_owned(), detail: err.to_string() })?;
            Ok(Plan::outcome(Outcome::Ignored(format!("Conveyor does not act on `{other}` events"))))
        }
    }
}

fn parse<T: DeserializeOwned>(event: &str, payload: &[u8]) -> Result<T, IntakeError> {
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let detail = if path == "." { inner.to_string() } else { format!("at `{path}`: {inner}") };
        IntakeError::InvalidPayload { event: event.to_owned(), detail }
    })
}

fn timestamp(event: &str, field: &str, value: &str) -> Result<i64, IntakeError> {
    OffsetDateTime::parse(value, &Rfc3339).map(OffsetDateTime::unix_timestamp).map_err(|_| {
        IntakeError::InvalidPayload {
            event: event.to_owned(),
            detail: format!("at `{field}`: `{value}` is not an ISO 8601 timestamp"),
        }
    })
}

const TITLE_LIMIT: usize = 200;

fn commit_record(push: &PushEvent, commit: &PushCommit, index: usize) -> Result<CommitRecord, IntakeError> {
    let title: String = commit.message.lines().next().unwrap_or("").chars().take(TITLE_LIMIT).collect();
    Ok(CommitRecord {
        repository: push.repository.full_name.clone(),
        sha: commit.id.clone(),
        committed_at: timestamp("push", &format!("commits[{index}].timestamp"), &commit.timestamp)?,
        git_ref: push.git_ref.clone(),
        title,
        author: commit.author.as_ref().and_then(|a| a.name.clone().or_else(|| a.username.clone())),
    })
}

fn plan_push(push: PushEvent, delivery: &str, ctx: &PlanContext<'_>) -> Result<Plan, IntakeError> {
    let mut commits = Vec::with_capacity(push.commits.len() + 1);
    for (index, commit) in push.commits.iter().enumerate() {
        commits.push(commit_record(&push, commit, index)?);
    }
    if let Some(head) = &push.head_commit
        && !commits.iter().any(|c| c.sha == head.id)
    {
        commits.push(commit_record(&push, head, push.commits.len())?);
    }
    let (ref_kind, ref_name) = if let Some(name) = push.git_ref.strip_prefix("refs/heads/") {
        (RefKind::Branch, name)
    } else if let Some(name) = push.git_ref.strip_prefix("refs/tags/") {
        (RefKind::Tag, name)
    } else {
        (RefKind::Other, push.git_ref.as_str())
    };
    let pushed_at = push.repository.pushed_at.as_ref().and_then(|t| t.unix()).unwrap_or(ctx.now);
    let head = (ref_kind == RefKind::Branch && !push.deleted).then(|| BranchHead {
        repository: push.repository.full_name.clone(),
        branch: ref_name.to_owned(),
        sha: push.after.clone(),
        pushed_at,
        delivery: delivery.to_owned(),
        before: push.before.clone(),
    });
    let record = PushRecord {
        repository: push.repository.full_name.clone(),
        delivery: delivery.to_owned(),
        git_ref: push.git_ref.clone(),
        ref_kind,
        ref_name: ref_name.to_owned(),
        before: push.before.clone(),
        after: push.after.clone(),
        created: push.created,
        deleted: push.deleted,
        forced: push.forced,
        commit_count: push.commits.len(),
        received_at: ctx.now,
        pushed_at,
    };
    Ok(Plan {
        outcome: Outcome::Recorded,
        commits,
        push: Some(record),
        build: None,
        run: None,
        deployments: Vec::new(),
        head,
    })
}

fn plan_workflow_run(event: WorkflowRunEvent, ctx: &PlanContext<'_>) -> Result<Plan, IntakeError> {
    let status = match event.action.as_str() {
        "requested" => RunStatus::Requested,
        "in_progress" => RunStatus::InProgress,
        "completed" => RunStatus::Completed,
        other => return Ok(Plan::outcome(Outcome::Ignored(format!("workflow run {other}")))),
    };
    let run = &event.workflow_run;
    let name = run.name.clone().unwrap_or_default();
    let updated_at = match &run.updated_at {
        Some(at) => timestamp("workflow_run", "workflow_run.updated_at", at)?,
        None => ctx.now,
    };
    let attempt = run.run_attempt.unwrap_or(1);
    let record = RunRecord {
        repository: event.repository.full_name.clone(),
        sha: run.head_sha.clone(),
        branch: run.head_branch.clone(),
        key: format!("workflow:{}:{}", run.workflow_id.unwrap_or(0), run.id),
        kind: RunKind::Workflow,
        name: name.clone(),
        path: run.path.clone(),
        attempt,
        status,
        conclusion: run.conclusion.clone().filter(|_| status == RunStatus::Completed),
        updated_at,
    };
    let build = (status == RunStatus::Completed).then(|| BuildRecord {
        repository: record.repository.clone(),
        sha: record.sha.clone(),
        branch: record.branch.clone(),
        source: format!("workflow_run:{}:{}:{attempt}", run.workflow_id.unwrap_or(0), run.id),
        name,
        conclusion: run.conclusion.clone().unwrap_or_else(|| "unknown".into()),
        url: run.html_url.clone(),
        completed_at: updated_at,
    });
    // A run on a fork's branch of the same name must never deploy this repository, nor
    // hold its deployments back: its result is kept in the ledger, and that is all.
    if run.head_repository.as_ref().is_some_and(|head| head.full_name != event.repository.full_name) {
        return Ok(Plan::run(None, build, Vec::new()));
    }
    let deployments = deployments_for(&record, ctx);
    Ok(Plan::run(Some(record), build, deployments))
}

fn plan_check_suite(event: CheckSuiteEvent, ctx: &PlanContext<'_>) -> Result<Plan, IntakeError> {
    let status = match event.action.as_str() {
        "requested" | "rerequested" => RunStatus::Requested,
        "completed" => RunStatus::Completed,
        other => return Ok(Plan::outcome(Outcome::Ignored(format!("check suite {other}")))),
    };
    let suite = &event.check_suite;
    let app = suite
        .app
        .as_ref()
        .and_then(|app| app.slug.clone().or_else(|| app.name.clone()))
        .unwrap_or_else(|| "unknown-app".into());
    let updated_at = match &suite.updated_at {
        Some(at) => timestamp("check_suite", "check_suite.updated_at", at)?,
        None => ctx.now,
    };
    // GitHub Actions makes a check suite of each workflow run; its `workflow_run` events
    // already tell the gate (with attempts), so its suites are ledger entries only.
    let actions = app == "github-actions";
    let record = RunRecord {
        repository: event.repository.full_name.clone(),
        sha: suite.head_sha.clone(),
        branch: suite.head_branch.clone(),
        key: format!("check_suite:{app}:{}", suite.id),
        kind: RunKind::CheckSuite,
        name: app.clone(),
        path: None,
        attempt: 1,
        status,
        conclusion: suite.conclusion.clone().filter(|_| status == RunStatus::Completed),
        updated_at,
    };
    let build = (status == RunStatus::Completed).then(|| BuildRecord {
        repository: record.repository.clone(),
        sha: record.sha.clone(),
        branch: record.branch.clone(),
        source: format!("check_suite:{app}:{}", suite.id),
        name: app,
        conclusion: suite.conclusion.clone().unwrap_or_else(|| "unknown".into()),
        url: suite.url.clone(),
        completed_at: updated_at,
    });
    if actions {
        return Ok(Plan::run(None, build, Vec::new()));
    }
    let deployments = deployments_for(&record, ctx);
    Ok(Plan::run(Some(record), build, deployments))
}

/// Whether `env` deploys the commits of `run`'s branch and repository, and `run` counts in
/// its gate.
fn tracks(env: &Environment, run: &RunRecord) -> bool {
    super::gate::counts_for(env, run)
}

/// The deployments `run`'s commit gets where the gate passes. Its reason is set when the
/// gate passes (which runs passed).
fn deployments_for(run: &RunRecord, ctx: &PlanContext<'_>) -> Vec<DeploymentRecord> {
    let version = DeploymentRecord::version_for(&run.sha);
    ctx.config
        .environments
        .iter()
        .filter(|env| tracks(env, run))
        .map(|env| DeploymentRecord {
            environment: env.name.clone(),
            repository: run.repository.clone(),
            sha: run.sha.clone(),
            branch: env.branch.clone(),
            artifact: env.artifact.render(&ArtifactFields {
                bucket: ctx.artifacts_bucket,
                repository: &run.repository,
                sha: &run.sha,
                version: &version,
                branch: &env.branch,
                environment: &env.name,
            }),
            version: version.clone(),
            state: DeploymentState::Pending,
            reason: format!("{} passed on {}", run.name, env.branch),
            build: run.key.clone(),
            created_at: ctx.now,
            pushed_at: None,
            run: RunState::default(),
        })
        .collect()
}

/// The alert for a CI run that failed on a branch `environment` deploys from: the commit
/// will not deploy there. One per run, commit and environment.
pub fn ci_failed_alert(environment: &str, run: &RunRecord, reason: &str, now: i64) -> Alert {
    let short: String = run.sha.chars().take(7).collect();
    let branch = run.branch.as_deref().unwrap_or("its branch");
    Alert::new(
        AlertSource::Deploy,
        format!("{environment}-{}-{}-{}-ci-failed", run.repository, run.sha, run.key),
        AlertKind::CiFailed,
        Severity::Warning,
        now,
    )
    .summary(format!("CI failed on {branch} of {}: {}", run.repository, run.name))
    .cause(reason)
    .impact(format!("{short} will not deploy to {environment}"))
    .action(format!("Open the {} run of {short} on GitHub, fix what failed and push again", run.name))
    .label("environment", environment)
    .label("repository", run.repository.clone())
    .label("commit", run.sha.clone())
    .label("branch", branch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Problem;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/github");

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml").unwrap()
    }

    fn ctx(config: &Config) -> PlanContext<'_> {
        PlanContext { config, artifacts_bucket: "artifacts", now: 1_700_000_000 }
    }

    fn workflow_run(branch: &str, conclusion: &str, name: &str) -> Vec<u8> {
        serde_json::json!({
            "action": "completed",
            "workflow_run": {
                "id": 7, "name": name, "workflow_id": 3, "head_branch": branch,
                "head_sha": "0123456789abcdef0123456789abcdef01234567", "run_attempt": 2,
                "conclusion": conclusion, "html_url": "https://github.com/o/r/actions/runs/7",
                "updated_at": "2026-01-02T03:04:05Z", "head_repository": {"full_name": "o/r"}
            },
            "repository": {"full_name": "o/r"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn success_on_a_tracked_branch_creates_one_pending_deployment_per_environment() {
        let config = config(
            "[[environment]]\nname = \"prod\"\nbranch = \"main\"\nrepository = \"*\"\n\n[[environment]]\nname = \"canary\"\nbranch = \"main\"\nrepository = \"o/r\"\n\n[[environment]]\nname = \"dev\"\nbranch = \"develop\"\nrepository = \"*\"\n",
        );
        let plan = plan("workflow_run", "d1", &workflow_run("main", "success", "CI"), &ctx(&config)).unwrap();
        let build = plan.build.as_ref().unwrap();
        assert_eq!(build.source, "workflow_run:3:7:2");
        assert_eq!(build.completed_at, 1_767_323_045);
        let envs: Vec<_> = plan.deployments.iter().map(|d| d.environment.as_str()).collect();
        assert_eq!(envs, ["prod", "canary"]);
        let deployment = &plan.deployments[0];
        assert_eq!(deployment.state, DeploymentState::Pending);
        assert_eq!(deployment.version, "0123456789ab");
        assert_eq!(deployment.artifact, "s3://artifacts/o/r/0123456789abcdef0123456789abcdef01234567.tar.gz");
    }

    #[test]
    fn failures_untracked_branches_and_other_repositories_deploy_nothing() {
        let config = config(
            "[[environment]]\nname = \"prod\"\nbranch = \"main\"\nrepository = \"o/other\"\n\n[[environment]]\nname = \"dev\"\nbranch = \"develop\"\nrepository = \"*\"\n",
        );
        for (branch, conclusion) in [("main", "success"), ("feature", "success")] {
            let plan = plan("workflow_run", "d", &workflow_run(branch, conclusion, "CI"), &ctx(&config)).unwrap();
            assert!(plan.deployments.is_empty(), "{branch} {conclusion}");
            assert_eq!(plan.build.unwrap().conclusion, conclusion);
        }
        // A failure on a tracked branch: the gate cancels.
        let failed = plan("workflow_run", "d", &workflow_run("develop", "failure", "CI"), &ctx(&config)).unwrap();
        assert_eq!(failed.deployments.len(), 1, "a candidate, for the gate to cancel");
        let run = failed.run.unwrap();
        let gate = super::super::gate::decide(&config.environments[1], std::slice::from_ref(&run));
        let super::super::gate::Gate::Cancel(reason) = gate else { panic!("{gate:?}") };
        let alert = ci_failed_alert("dev", &run, &reason, 1);
        assert_eq!(alert.summary, "CI failed on develop of o/r: CI");
        assert_eq!(alert.kind, AlertKind::CiFailed);
        assert!(alert.impact.ends_with("will not deploy to dev"), "{}", alert.impact);
        assert_eq!(alert.cause, reason);
    }

    #[test]
    fn require_workflow_limits_what_deploys() {
        let config = config(
            "[[environment]]\nname = \"prod\"\nbranch = \"main\"\nrepository = \"*\"\nrequire_workflow = \"Release\"\n",
        );
        let other = plan("workflow_run", "d", &workflow_run("main", "success", "Lint"), &ctx(&config)).unwrap();
        assert!(other.deployments.is_empty());
        let release = plan("workflow_run", "d", &workflow_run("main", "success", "Release"), &ctx(&config)).unwrap();
        assert_eq!(release.deployments.len(), 1);
        let suite = std::fs::read(format!("{FIXTURES}/check_suite/completed.1.payload.json"));
        if let Ok(suite) = suite {
            assert!(plan("check_suite", "d", &suite, &ctx(&config)).unwrap().deployments.is_empty());
        }
    }

    #[test]
    fn require_workflow_names_workflows_by_file_or_name_one_or_several() {
        let run = |name: &str, path: &str, repository: &str| {
            let mut body: serde_json::Value = serde_json::from_slice(&workflow_run("main", "success", name)).unwrap();
            body["workflow_run"]["path"] = path.into();
            body["repository"]["full_name"] = repository.into();
            body["workflow_run"]["head_repository"]["full_name"] = repository.into();
            body.to_string().into_bytes()
        };
        let deploys =
            |config: &Config, body: &[u8]| plan("workflow_run", "d", body, &ctx(config)).unwrap().deployments.len();
        let by_file = config(
            "[[environment]]\nname = \"prod\"\nbranch = \"main\"\nrepository = \"o/r\"\nrequire_workflow = \".github/workflows/ci.yml\"\n",
        );
        assert_eq!(deploys(&by_file, &run("CI", ".github/workflows/ci.yml", "o/r")), 1);
        // Another workflow that happens to share the name does not count.
        assert_eq!(deploys(&by_file, &run("CI", ".github/workflows/lint.yml", "o/r")), 0);
        let several = config(
            "[[environment]]\nname = \"prod\"\nbranch = \"main\"\nrepository = \"o/r\"\nrequire_workflow = [\"Release\", \".github/workflows/ci.yml\"]\n",
        );
        assert_eq!(deploys(&several, &run("Release", ".github/workflows/release.yml", "o/r")), 1);
        assert_eq!(deploys(&several, &run("Build", ".github/workflows/ci.yml", "o/r")), 1);
        assert_eq!(deploys(&several, &run("Lint", ".github/workflows/lint.yml", "o/r")), 0);
        // GitHub keeps the repository's canonical casing; the config's may differ.
        assert_eq!(deploys(&by_file, &run("CI", ".github/workflows/ci.yml", "O/R")), 1);
        assert_eq!(deploys(&by_file, &run("CI", ".github/workflows/ci.yml", "o/other")), 0);
    }

    #[test]
    fn runs_from_forks_never_deploy() {
        let config = config("[[environment]]\nname = \"prod\"\nbranch = \"main\"\nrepository = \"*\"\n");
        let mut body: serde_json::Value = serde_json::from_slice(&workflow_run("main", "success", "CI")).unwrap();
        body["workflow_run"]["head_repository"]["full_name"] = "mallory/r".into();
        let plan = plan("workflow_run", "d", body.to_string().as_bytes(), &ctx(&config)).unwrap();
        assert!(plan.deployments.is_empty() && plan.run.is_none(), "never in the gate");
        assert!(plan.build.is_some(), "kept in the ledger");
    }

    #[test]
    fn unfinished_runs_enter_the_gate_and_are_not_builds() {
        let config = Config::default();
        let mut body: serde_json::Value = serde_json::from_slice(&workflow_run("main", "success", "CI")).unwrap();
        body["action"] = "in_progress".into();
        let running = plan("workflow_run", "d", body.to_string().as_bytes(), &ctx(&config)).unwrap();
        assert_eq!(running.outcome, Outcome::Recorded);
        assert!(running.build.is_none());
        let run = running.run.unwrap();
        assert_eq!((run.status, run.conclusion), (super::super::gate::RunStatus::InProgress, None));
        body["action"] = "waiting".into();
        let waiting = plan("workflow_run", "d", body.to_string().as_bytes(), &ctx(&config)).unwrap();
        assert!(matches!(waiting.outcome, Outcome::Ignored(_)));
    }

    #[test]
    fn push_records_commits_tags_and_deletions() {
        let config = Config::default();
        let body = serde_json::json!({
            "ref": "refs/heads/main", "before": "a".repeat(40), "after": "b".repeat(40),
            "created": false, "deleted": false, "forced": true,
            "commits": [
                {"id": "c1", "timestamp": "2019-05-15T15:20:30-05:00", "message": "First line\n\nbody", "author": {"name": "Ann"}},
                {"id": "c2", "timestamp": "2019-05-15T15:21:30-05:00", "message": "Second", "author": {"username": "bob"}}
            ],
            "head_commit": {"id": "c2", "timestamp": "2019-05-15T15:21:30-05:00", "message": "Second"},
            "repository": {"full_name": "o/r", "created_at": 1557933565}
        });
        let planned = plan("push", "d", body.to_string().as_bytes(), &ctx(&config)).unwrap();
        assert_eq!(planned.commits.len(), 2);
        assert_eq!(planned.commits[0].title, "First line");
        assert_eq!(planned.commits[0].committed_at, 1_557_951_630);
        assert_eq!(planned.commits[1].author.as_deref(), Some("bob"));
        let push = planned.push.unwrap();
        assert_eq!((push.ref_kind, push.ref_name.as_str(), push.forced), (RefKind::Branch, "main", true));

        let tag_deleted = serde_json::json!({
            "ref": "refs/tags/v1.2.3", "before": "a".repeat(40), "after": "0".repeat(40),
            "deleted": true, "commits": [], "head_commit": null, "repository": {"full_name": "o/r"}
        });
        let planned = plan("push", "d", tag_deleted.to_string().as_bytes(), &ctx(&config)).unwrap();
        let push = planned.push.unwrap();
        assert_eq!((push.ref_kind, push.ref_name.as_str(), push.deleted), (RefKind::Tag, "v1.2.3", true));
        assert!(planned.commits.is_empty());
    }

    #[test]
    fn malformed_payloads_name_the_problem() {
        let config = Config::default();
        let err = plan("push", "d", b"{not json", &ctx(&config)).unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        let err = plan(
            "push",
            "d",
            br#"{"ref": "refs/heads/main", "before": "a", "after": "b", "repository": {}}"#,
            &ctx(&config),
        )
        .unwrap_err();
        assert!(err.to_string().contains("repository"), "{err}");
        let bad_time = br#"{"ref":"refs/heads/main","before":"a","after":"b","commits":[{"id":"c","timestamp":"yesterday"}],"repository":{"full_name":"o/r"}}"#;
        let err = plan("push", "d", bad_time, &ctx(&config)).unwrap_err();
        assert!(err.to_string().contains("commits[0].timestamp"), "{err}");
        let err = plan("release", "d", b"[", &ctx(&config)).unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn content_types() {
        assert_eq!(payload_json(Some("application/json; charset=utf-8"), b"{}").unwrap().as_ref(), b"{}");
        let form = b"payload=%7B%22zen%22%3A%22x%22%7D";
        assert_eq!(payload_json(Some("application/x-www-form-urlencoded"), form).unwrap().as_ref(), br#"{"zen":"x"}"#);
        assert_eq!(
            payload_json(Some("application/x-www-form-urlencoded"), b"other=1"),
            Err(IntakeError::MissingPayloadField)
        );
        assert_eq!(payload_json(Some("text/plain"), b"{}").unwrap_err().status(), 415);
        assert_eq!(payload_json(None, b"{}").unwrap_err().status(), 415);
    }

    #[test]
    fn every_real_payload_is_planned() {
        let folders = std::fs::read_dir(FIXTURES).unwrap_or_else(|e| panic!("{FIXTURES}: {e}"));
        let config = config("[[environment]]\nname = \"prod\"\nbranch = \"master\"\nrepository = \"*\"\n");
        let mut planned = 0;
        for folder in folders.flatten() {
            let event = folder.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(folder.path()).unwrap().flatten() {
                let body = std::fs::read(file.path()).unwrap();
                let result = plan(&event, "d", &body, &ctx(&config));
                assert!(result.is_ok(), "{}: {:?}", file.path().display(), result);
                planned += 1;
            }
        }
        assert!(planned >= 40, "only {planned} fixtures found");
    }
}
