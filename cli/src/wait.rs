//! `conveyor wait`: follows one deployment wave by wave until it ends, so a CI job can wait
//! on its deploy. Exit 0 when it succeeded; 1 when it ended any other way (rolled back,
//! failed, superseded, skipped); 3 when the time ran out first; 4 when the ledger cannot be
//! read at all (no such table); 2 is a usage error, as for every command. A read that fails
//! for a while (throttling, a network blip) is retried until the time runs out.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use conveyor_shared::domain::{DeploymentRecord, DeploymentState};
use conveyor_shared::store::{StoreError, Table};

/// How often the ledger is read while waiting.
pub const POLL: Duration = Duration::from_secs(2);

/// Which deployment to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The environment's newest deployment that has not ended when waiting starts, or else
    /// the next one created after that (never one that had ended before: its outcome is
    /// not news).
    Newest,
    /// The deployment of this commit (a full sha, or a prefix of at least 7 digits); it may
    /// not exist yet when waiting starts (the webhook is on its way).
    Commit(String),
}

impl Target {
    pub fn parse(sha: Option<&str>) -> Result<Self, String> {
        match sha.map(str::trim) {
            None => Ok(Self::Newest),
            Some(sha) if sha.len() >= 7 && sha.len() <= 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Self::Commit(sha.to_ascii_lowercase()))
            }
            Some(sha) => {
                Err(format!("--sha `{sha}` is not a commit sha (7 to 40 hex digits, as git rev-parse prints)"))
            }
        }
    }

    /// The deployment this target names among `recent` (newest first), for a wait that
    /// started at `since` (Unix seconds).
    pub fn pick<'d>(&self, recent: &'d [DeploymentRecord], since: i64) -> Option<&'d DeploymentRecord> {
        match self {
            Self::Newest => recent.iter().find(|d| !d.state.is_final() || d.created_at >= since),
            Self::Commit(sha) => recent.iter().find(|d| d.sha.starts_with(sha.as_str())),
        }
    }
}

/// How long to wait and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub timeout: Duration,
    /// Between reads of the ledger.
    pub poll: Duration,
    /// When waiting began (Unix seconds): what ended before is not news.
    pub since: i64,
}

/// How waiting ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    Ended(Box<DeploymentRecord>),
    TimedOut {
        last: Option<Box<DeploymentRecord>>,
    },
    /// The ledger cannot be read at all (the table does not exist).
    Unreadable(String),
}

impl Waited {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Ended(d) if d.state == DeploymentState::Succeeded => 0,
            Self::Ended(_) => 1,
            Self::TimedOut { .. } => 3,
            Self::Unreadable(_) => 4,
        }
    }
}

/// One line about where `deployment` stands: its state, and the wave it is in with counts.
pub fn progress_line(deployment: &DeploymentRecord) -> String {
    let progress = deployment.progress();
    let waves = progress.sizes.len();
    let head = format!("{} {} in {}", deployment.version, deployment.state.as_str(), deployment.environment);
    if deployment.state.is_final() {
        return if deployment.reason.is_empty() { head } else { format!("{head}: {}", deployment.reason) };
    }
    if !progress.started || waves == 0 {
        return format!("{head}: waiting to start");
    }
    let wave = progress.rollback_wave.unwrap_or(progress.wave).min(waves - 1);
    let count = |counts: &[usize]| counts.get(wave).copied().unwrap_or(0);
    if progress.rollback_wave.is_some() {
        return format!(
            "{head}: restoring wave {} of {waves} ({}/{} back)",
            wave + 1,
            count(&progress.restored) + count(&progress.dropped),
            count(&progress.sizes)
        );
    }
    format!(
        "{head}: wave {} of {waves} ({}/{} done, {} failed)",
        wave + 1,
        count(&progress.succeeded) + count(&progress.dropped),
        count(&progress.sizes),
        count(&progress.failed)
    )
}

/// Follows `target` in `environment` until it ends or `timeout` passes, telling `out` each
/// change: on a terminal one line rewritten in place, otherwise one line per change.
pub async fn follow(
    table: &Table,
    environment: &str,
    target: &Target,
    patience: Patience,
    out: &mut (dyn Write + Send),
    terminal: bool,
) -> Waited {
    let Patience { timeout, poll, since } = patience;
    let started = Instant::now();
    // The newest deployment is chosen once, so a later one does not take over the wait.
    let mut followed: Option<String> = None;
    let mut last_line = String::new();
    let mut last: Option<DeploymentRecord> = None;
    let mut failing_since: Option<Instant> = None;
    loop {
        let recent = match table.recent_deployments(environment, 50).await {
            Ok(recent) => {
                failing_since = None;
                recent
            }
            Err(err @ StoreError::NoTable(_)) => return Waited::Unreadable(err.to_string()),
            Err(err) => {
                // Said once per stretch of failures, then retried on the poll.
                if failing_since.is_none() {
                    show(out, &format!("cannot read the ledger ({err}); retrying"), terminal);
                    last_line.clear();
                }
                failing_since.get_or_insert_with(Instant::now);
                Vec::new()
            }
        };
        let current = match &followed {
            Some(id) => recent.iter().find(|d| &d.id() == id),
            None => target.pick(&recent, since),
        };
        if let Some(deployment) = current {
            followed = Some(deployment.id());
            let line = progress_line(deployment);
            if line != last_line {
                show(out, &line, terminal);
                last_line = line;
            }
            if deployment.state.is_final() {
                if terminal {
                    let _ = writeln!(out);
                }
                return Waited::Ended(Box::new(deployment.clone()));
            }
            last = Some(deployment.clone());
        } else if last_line.is_empty() && failing_since.is_none() {
            last_line = match target {
                Target::Newest => format!("no deployment in {environment} yet; waiting for one"),
                Target::Commit(sha) => format!("no deployment of {sha} in {environment} yet; waiting for it"),
            };
            show(out, &last_line, terminal);
        }
        if started.elapsed() + poll > timeout {
            if terminal {
                let _ = writeln!(out);
            }
            return Waited::TimedOut { last: last.map(Box::new) };
        }
        tokio::time::sleep(poll).await;
    }
}

fn show(out: &mut (dyn Write + Send), line: &str, terminal: bool) {
    if terminal {
        // Rewrite the line in place: carriage return, the text, clear to the end.
        let _ = write!(out, "\r{line}\x1b[K");
    } else {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// Whether stderr is a terminal (the progress display goes there; stdout keeps the result).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(sha: &str, state: DeploymentState, created_at: i64) -> DeploymentRecord {
        DeploymentRecord {
            environment: "production".into(),
            repository: "acme/shop".into(),
            sha: sha.into(),
            branch: "main".into(),
            version: sha[..7].into(),
            artifact: "s3://b/k".into(),
            state,
            reason: String::new(),
            build: "b".into(),
            created_at,
            pushed_at: None,
            run: Default::default(),
        }
    }

    #[test]
    fn without_a_sha_only_news_is_followed() {
        let ended = deployment("aaaaaaaa", DeploymentState::Succeeded, 100);
        let running = deployment("bbbbbbbb", DeploymentState::InProgress, 90);
        // Newest first: an ended deployment from before the wait is not what CI waits for.
        assert_eq!(Target::Newest.pick(&[ended.clone(), running.clone()], 150), Some(&running));
        assert_eq!(Target::Newest.pick(std::slice::from_ref(&ended), 150), None, "wait for the next one");
        assert_eq!(
            Target::Newest.pick(std::slice::from_ref(&ended), 100),
            Some(&ended),
            "created after the wait began"
        );
        let by_sha = Target::parse(Some("aaaaaaa")).unwrap();
        assert_eq!(by_sha.pick(&[running, ended.clone()], 150), Some(&ended), "a named commit, ended or not");
    }

    #[test]
    fn a_sha_is_a_full_sha_or_a_prefix_git_would_print() {
        assert_eq!(Target::parse(None), Ok(Target::Newest));
        assert_eq!(Target::parse(Some("ABCDEF1")), Ok(Target::Commit("abcdef1".into())));
        assert!(Target::parse(Some("abc")).unwrap_err().contains("7 to 40"));
        assert!(Target::parse(Some("main")).is_err());
        assert!(Target::parse(Some(&"a".repeat(41))).is_err());
    }
}
