//! The deploy gate: all green, not first green.
//!
//! Every CI run GitHub reports for a commit (workflow runs from `requested` on, check suites
//! of other apps when they complete) is recorded as a [`RunRecord`], one per run or check
//! suite, the latest attempt replacing earlier ones. Runs count for an environment when they
//! ran on its branch in its repository. A commit deploys there when every run that counts
//! has completed and passed; a run that fails cancels a deployment that has not started.
//! Without `require_workflow` every such run counts; with it, only runs of the named
//! workflows, and each named workflow must have passed.

use serde::{Deserialize, Serialize};

use crate::config::Environment;

/// How far a run has got, in GitHub's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Requested,
    InProgress,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Workflow,
    CheckSuite,
}

/// One CI run of a commit, as last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub repository: String,
    pub sha: String,
    pub branch: Option<String>,
    /// `workflow:<workflow id>:<run id>` or `check_suite:<app>:<suite id>`: a re-run keeps
    /// its key, so its latest attempt is what counts; separate runs of one workflow (a push
    /// and a pull request on the same commit) each count.
    pub key: String,
    pub kind: RunKind,
    /// The workflow's name, or the checking app's.
    pub name: String,
    /// The workflow's file (`.github/workflows/ci.yml`); none for check suites.
    pub path: Option<String>,
    pub attempt: u64,
    pub status: RunStatus,
    /// success, failure, cancelled, ... once completed.
    pub conclusion: Option<String>,
    pub updated_at: i64,
}

impl RunRecord {
    /// Orders two reports of one run: a later attempt wins, then a later stage. A report
    /// that ranks no higher than the recorded one changes nothing (redeliveries, events
    /// that arrive out of order).
    pub fn rank(&self) -> i64 {
        let stage = match self.status {
            RunStatus::Requested => 1,
            RunStatus::InProgress => 2,
            RunStatus::Completed => 3,
        };
        // A workflow re-run counts its attempts; a re-requested check suite keeps its id and
        // only its time moves on.
        let round = match self.kind {
            RunKind::Workflow => i64::try_from(self.attempt).unwrap_or(i64::MAX / 4),
            RunKind::CheckSuite => self.updated_at,
        };
        round.saturating_mul(4).saturating_add(stage)
    }

    /// Completed, and nothing in it failed (GitHub's `neutral` and `skipped` pass).
    pub fn passed(&self) -> bool {
        self.status == RunStatus::Completed
            && matches!(self.conclusion.as_deref(), Some("success" | "neutral" | "skipped"))
    }

    fn failed(&self) -> bool {
        self.status == RunStatus::Completed && !self.passed()
    }

    /// `workflow CI (.github/workflows/ci.yml)` or `check suite circleci`.
    pub fn label(&self) -> String {
        match (&self.kind, &self.path) {
            (RunKind::Workflow, Some(path)) => format!("workflow {} ({path})", self.name),
            (RunKind::Workflow, None) => format!("workflow {}", self.name),
            (RunKind::CheckSuite, _) => format!("check suite {}", self.name),
        }
    }
}

/// Whether `run` is a run of the workflow `wanted` names (its file, or its name).
fn names(wanted: &str, run: &RunRecord) -> bool {
    run.kind == RunKind::Workflow
        && (wanted == run.name || run.path.as_deref() == Some(wanted.trim_start_matches("./")))
}

/// Whether `run` decides anything for `env`: a run on the environment's branch in its
/// repository (a tag's release run or a pull request's run of the same commit does not),
/// of a required workflow when some are required.
pub fn counts_for(env: &Environment, run: &RunRecord) -> bool {
    run.branch.as_deref() == Some(env.branch.as_str())
        && env.repository.admits(&run.repository)
        && (env.require_workflow.is_empty() || env.require_workflow.iter().any(|wanted| names(wanted, run)))
}

/// Whether `a` and `b` are runs of one workflow (or one app's check suites).
fn same_workflow(a: &RunRecord, b: &RunRecord) -> bool {
    a.kind == b.kind && a.name == b.name && a.path == b.path
}

/// What the runs of a commit say for one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Every run that counts passed: deploy, with this reason.
    Deploy(String),
    /// Runs that count are still going (named), or none has been seen.
    Wait(Vec<String>),
    /// A run that counts failed: no deployment of this commit here, for this reason.
    Cancel(String),
}

/// The gate for `env` over every run seen for one commit.
pub fn decide(env: &Environment, runs: &[RunRecord]) -> Gate {
    let counted: Vec<&RunRecord> = runs.iter().filter(|run| counts_for(env, run)).collect();
    // A run cancelled because another run of its workflow replaced it (`concurrency:
    // cancel-in-progress`) is not a failure once that other run passed.
    let superseded = |run: &RunRecord| {
        run.conclusion.as_deref() == Some("cancelled")
            && counted.iter().any(|other| other.passed() && same_workflow(other, run))
    };
    if let Some(failed) = counted.iter().find(|run| run.failed() && !superseded(run)) {
        let conclusion = failed.conclusion.as_deref().unwrap_or("unknown");
        return Gate::Cancel(format!("{} concluded {conclusion}", failed.label()));
    }
    let running: Vec<String> =
        counted.iter().filter(|run| !run.passed() && !superseded(run)).map(|run| run.label()).collect();
    if !running.is_empty() || counted.is_empty() {
        return Gate::Wait(running);
    }
    // Every required workflow must have run and passed, not only those seen so far.
    let missing: Vec<String> = env
        .require_workflow
        .iter()
        .filter(|wanted| !counted.iter().any(|run| run.passed() && names(wanted, run)))
        .map(|wanted| format!("workflow {wanted} (not seen yet)"))
        .collect();
    if !missing.is_empty() {
        return Gate::Wait(missing);
    }
    let passed: Vec<&str> = counted.iter().filter(|run| run.passed()).map(|run| run.name.as_str()).collect();
    Gate::Deploy(format!("{} passed on {}", super::text::some_of(&passed, ", "), env.branch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn env(extra: &str) -> Environment {
        let text = format!("[[environment]]\nname = \"prod\"\nbranch = \"main\"\nrepository = \"o/r\"\n{extra}");
        Config::parse(&text, "t.toml").unwrap().environments.remove(0)
    }

    fn run(name: &str, status: RunStatus, conclusion: Option<&str>) -> RunRecord {
        RunRecord {
            repository: "o/r".into(),
            sha: "a".repeat(40),
            branch: Some("main".into()),
            key: format!("workflow:{name}"),
            kind: RunKind::Workflow,
            name: name.into(),
            path: Some(format!(".github/workflows/{}.yml", name.to_lowercase())),
            attempt: 1,
            status,
            conclusion: conclusion.map(str::to_owned),
            updated_at: 100,
        }
    }

    #[test]
    fn a_quick_green_run_waits_for_the_others() {
        let env = env("");
        let lint = run("Lint", RunStatus::Completed, Some("success"));
        let build = run("Build", RunStatus::InProgress, None);
        assert_eq!(
            decide(&env, &[lint.clone(), build]),
            Gate::Wait(vec!["workflow Build (.github/workflows/build.yml)".into()])
        );
        let built = run("Build", RunStatus::Completed, Some("success"));
        assert_eq!(decide(&env, &[lint, built]), Gate::Deploy("Lint, Build passed on main".into()));
    }

    #[test]
    fn any_failed_run_cancels() {
        let env = env("");
        let runs = [
            run("Build", RunStatus::Completed, Some("success")),
            run("Tests", RunStatus::Completed, Some("failure")),
            run("Lint", RunStatus::InProgress, None),
        ];
        assert_eq!(
            decide(&env, &runs),
            Gate::Cancel("workflow Tests (.github/workflows/tests.yml) concluded failure".into())
        );
        let cancelled = [run("Build", RunStatus::Completed, Some("cancelled"))];
        assert!(matches!(decide(&env, &cancelled), Gate::Cancel(_)));
        let neutral = [run("Build", RunStatus::Completed, Some("neutral"))];
        assert!(matches!(decide(&env, &neutral), Gate::Deploy(_)));
    }

    #[test]
    fn runs_of_other_branches_of_the_same_commit_do_not_count() {
        let env = env("");
        let mut tag_release = run("Release", RunStatus::InProgress, None);
        tag_release.branch = Some("v1.2.0".into());
        let mut pull_request = run("Tests", RunStatus::Completed, Some("failure"));
        pull_request.branch = Some("feature".into());
        let built = run("Build", RunStatus::Completed, Some("success"));
        assert!(matches!(decide(&env, &[tag_release, pull_request, built]), Gate::Deploy(_)));
    }

    #[test]
    fn a_run_cancelled_for_a_newer_run_of_its_workflow_is_no_failure() {
        let env = env("");
        let cancelled =
            RunRecord { key: "workflow:1:1".into(), ..run("Build", RunStatus::Completed, Some("cancelled")) };
        let replaced_by =
            RunRecord { key: "workflow:1:2".into(), ..run("Build", RunStatus::Completed, Some("success")) };
        assert!(matches!(decide(&env, &[cancelled.clone(), replaced_by]), Gate::Deploy(_)));
        assert!(matches!(decide(&env, &[cancelled]), Gate::Cancel(_)), "cancelled and nothing passed in its place");
    }

    #[test]
    fn every_required_workflow_must_have_passed() {
        let env = env("require_workflow = [\"Build\", \"Tests\"]\n");
        let built = run("Build", RunStatus::Completed, Some("success"));
        assert_eq!(
            decide(&env, std::slice::from_ref(&built)),
            Gate::Wait(vec!["workflow Tests (not seen yet)".into()])
        );
        let tested = run("Tests", RunStatus::Completed, Some("success"));
        assert!(matches!(decide(&env, &[built, tested]), Gate::Deploy(_)));
    }

    #[test]
    fn with_require_workflow_only_the_named_runs_count() {
        let env = env("require_workflow = \".github/workflows/build.yml\"\n");
        let failing_lint = run("Lint", RunStatus::Completed, Some("failure"));
        assert_eq!(
            decide(&env, std::slice::from_ref(&failing_lint)),
            Gate::Wait(vec![]),
            "nothing that counts was seen"
        );
        let built = run("Build", RunStatus::Completed, Some("success"));
        assert!(matches!(decide(&env, &[failing_lint, built]), Gate::Deploy(_)));
        let mut suite = run("circleci", RunStatus::Completed, Some("success"));
        suite.kind = RunKind::CheckSuite;
        suite.path = None;
        assert!(!counts_for(&env, &suite), "check suites never count when workflows are required");
    }

    #[test]
    fn a_later_attempt_or_stage_ranks_higher() {
        let failed = run("Build", RunStatus::Completed, Some("failure"));
        let rerun = RunRecord { attempt: 2, ..run("Build", RunStatus::Requested, None) };
        assert!(rerun.rank() > failed.rank(), "a re-run replaces the failed attempt");
        let late_in_progress = run("Build", RunStatus::InProgress, None);
        assert!(late_in_progress.rank() < failed.rank(), "an in_progress that arrives late changes nothing");
    }
}
