//! The agent's loop: poll, deploy what the server asks for, report, and pick up honestly
//! after being killed mid-deploy.

use std::path::PathBuf;
use std::time::Duration;

use conveyor_protocol::{HealthCheck, Outcome, POLL_PATH, Poll, PollAnswer, REPORT_PATH, Release, Report};
use serde::{Deserialize, Serialize};

use crate::hooks::{Hooks, Stage};
use crate::releases::Releases;

/// Everything the agent needs, from flags or its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The Conveyor API base URL (`https://...execute-api...` or `http://127.0.0.1:3000`).
    pub server: String,
    /// The environment's token (`conveyor token create --environment`). Without one, the
    /// agent proves its instance with the instance profile (see [`crate::proof`]).
    pub token_file: Option<PathBuf>,
    pub environment: String,
    pub app_dir: PathBuf,
    /// Run after `current` switches, e.g. `systemctl restart shop`.
    pub restart_command: Option<String>,
    /// Local health URL checked after the restart, e.g. `http://127.0.0.1:8080/health`.
    pub health_url: Option<String>,
    #[serde(default = "default_attempts")]
    pub health_attempts: u32,
    #[serde(default = "default_interval")]
    pub health_interval_ms: u64,
    /// From IMDSv2 when unset.
    pub instance_id: Option<String>,
    /// Releases kept on disk.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// The user the release's hooks run as; the agent's own when unset. The restart command
    /// always runs as the agent (root under the systemd unit: restarting a unit takes it).
    pub run_as: Option<String>,
}

fn default_attempts() -> u32 {
    5
}
fn default_interval() -> u64 {
    1000
}
fn default_keep() -> usize {
    5
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("the server at {url} answered {status}: {body}")]
    Server { url: String, status: u16, body: String },
    #[error("cannot reach {url}: {message}")]
    Network { url: String, message: String },
    #[error(transparent)]
    Release(#[from] crate::releases::ReleaseError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error("{0}")]
    Deploy(String),
    /// The server stopped wanting the release before the switch.
    #[error("{0}")]
    Abandoned(String),
    /// The server could not confirm the release before the switch: nothing switched, and
    /// nothing is reported; the next poll decides again.
    #[error("{0}")]
    Unconfirmed(String),
}

/// The longest an artifact download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Written before a deploy starts and replaced by its [`PendingReport`] when it ends: after a
/// kill, the agent knows which deploy was interrupted.
#[derive(Debug, Serialize, Deserialize)]
struct InFlight {
    version: String,
}

/// A deploy's outcome, kept on disk until the server acknowledges it: a report lost to a
/// network error or a busy server is sent again, so a healthy host is never asked to deploy
/// the same release twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingReport {
    version: String,
    succeeded: bool,
    healthy: bool,
    log: String,
}

/// How often a download is tried before the deploy fails.
const DOWNLOAD_ATTEMPTS: u32 = 3;
/// How long the restart command may run before its process group is killed.
const RESTART_TIMEOUT: u64 = 120;

pub struct Agent {
    config: AgentConfig,
    instance_id: String,
    /// None: the agent proves its instance instead.
    token: Option<String>,
    http: reqwest::Client,
    releases: Releases,
    run_as: Option<crate::hooks::RunAs>,
    /// Releases whose deploy failed here: how often in a row, and when last.
    failures: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
}

/// The pause after the server refused the instance's proof.
const PROOF_REFUSED_PAUSE: u64 = 300;

/// Whether the server refused to enrol this instance on its proof (its role, its tags, its
/// signature): an operator's fix, not a transient failure.
fn refused_proof(err: &AgentError) -> bool {
    let AgentError::Server { status: 403, body, .. } = err else { return false };
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    matches!(code.as_deref(), Some("proof_refused" | "not_in_environment"))
}

/// The longest pause before trying a release that keeps failing here again.
const MAX_RETRY_PAUSE: u64 = 600;

impl Agent {
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let token = config.token_file.as_deref().map(read_token).transpose()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| AgentError::Config(e.to_string()))?;
        let instance_id = match &config.instance_id {
            Some(id) => id.clone(),
            None => instance_id_from_imds(&http).await?,
        };
        let releases = Releases::open(&config.app_dir)?;
        let run_as =
            config.run_as.as_deref().map(crate::hooks::RunAs::lookup).transpose().map_err(AgentError::Config)?;
        Ok(Self { config, instance_id, token, http, releases, run_as, failures: Default::default() })
    }

    fn in_flight_file(&self) -> PathBuf {
        self.config.app_dir.join("agent-in-flight.json")
    }

    fn report_file(&self) -> PathBuf {
        self.config.app_dir.join("agent-report.json")
    }

    /// The credential the server issued to this agent for its instance (mode 0600).
    fn credential_file(&self) -> PathBuf {
        self.config.app_dir.join("agent-credential")
    }

    /// Writes `value` to `path` whole or not at all (a temporary file, then a rename).
    fn write_atomically(&self, path: &std::path::Path, value: &impl Serialize) -> Result<(), AgentError> {
        let bytes = serde_json::to_vec(value).map_err(|e| AgentError::Deploy(e.to_string()))?;
        write_file_atomically(path, &bytes)
            .map_err(|e| AgentError::Deploy(format!("cannot write {}: {e}", path.display())))
    }

    /// Keeps a credential the server issued; the agent sends it with every message from now on.
    fn keep_credential(&self, credential: &str) -> Result<(), AgentError> {
        let path = self.credential_file();
        write_file_atomically(&path, credential.as_bytes())
            .map_err(|e| AgentError::Config(format!("cannot keep the credential in {}: {e}", path.display())))?;
        tracing::info!(instance = %self.instance_id, "enrolled: this agent now speaks for its instance");
        Ok(())
    }

    /// Polls and deploys until the process is stopped. A report the server has not
    /// acknowledged is sent before anything else.
    pub async fn run(&self) -> Result<(), AgentError> {
        self.record_interrupted()?;
        let mut failures = 0u32;
        loop {
            let result = match self.send_pending_report().await {
                Ok(()) => self.poll_once().await,
                // Not enrolled yet (a first report after an upgrade, a lost or refused
                // credential): the poll enrols it, and the report goes with the next round.
                Err(AgentError::Server { status: 401 | 403, .. }) => self.poll_once().await.map(|_| 1),
                Err(err) => Err(err),
            };
            let wait = match result {
                Ok(wait) => {
                    failures = 0;
                    wait
                }
                Err(err) if refused_proof(&err) => {
                    // Not something a retry fixes soon (the instance's role or tags): every
                    // proof costs the server an STS and an EC2 call, so ask rarely.
                    tracing::error!(error = %err, "the server refused this instance's proof; trying again in 5 minutes");
                    PROOF_REFUSED_PAUSE
                }
                Err(err) => {
                    failures += 1;
                    tracing::warn!(error = %err, "talking to the server failed; trying again");
                    // 2, 4, 8 ... up to 60 s between attempts.
                    2u64.saturating_pow(failures.min(6)).min(60)
                }
            };
            tokio::time::sleep(Duration::from_secs(wait.clamp(1, 300))).await;
        }
    }

    /// Sends the report kept on disk, if any, and forgets it once the server took it.
    async fn send_pending_report(&self) -> Result<(), AgentError> {
        let Ok(bytes) = std::fs::read(self.report_file()) else { return Ok(()) };
        let Ok(pending) = serde_json::from_slice::<PendingReport>(&bytes) else {
            tracing::warn!(file = %self.report_file().display(), "an unreadable pending report is dropped");
            let _ = std::fs::remove_file(self.report_file());
            return Ok(());
        };
        self.report(&pending.version, pending.succeeded, pending.healthy, &pending.log).await?;
        let _ = std::fs::remove_file(self.report_file());
        Ok(())
    }

    /// Remembers that `version` failed here.
    fn note_failure(&self, version: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            let entry = failures.entry(version.to_owned()).or_insert((0, std::time::Instant::now()));
            *entry = (entry.0 + 1, std::time::Instant::now());
        }
    }

    /// How long to wait before trying `version` again, while it keeps failing here: 10 s,
    /// 20 s, 40 s ... up to 10 minutes after its latest failure.
    fn backing_off(&self, version: &str) -> Option<u64> {
        let failures = self.failures.lock().ok()?;
        let (count, at) = failures.get(version)?;
        let pause = retry_pause(*count);
        let waited = at.elapsed().as_secs();
        (waited < pause).then(|| pause - waited)
    }

    /// Asks the server what this instance should run. Without a token or a credential, the
    /// poll carries a fresh proof of the instance.
    async fn ask(&self) -> Result<PollAnswer, AgentError> {
        let mut poll = Poll {
            instance_id: self.instance_id.clone(),
            environment: self.config.environment.clone(),
            current: self.releases.current(),
            proof: None,
        };
        if self.token.is_none() && std::fs::read_to_string(self.credential_file()).is_err() {
            let signer = crate::proof::Signer::discover(&self.http).await?;
            poll.proof = Some(signer.prove(&self.config.environment, std::time::SystemTime::now())?);
        }
        let body = self.post(POLL_PATH, &poll).await?;
        let answer: PollAnswer =
            serde_json::from_value(body).map_err(|e| AgentError::Deploy(format!("unexpected poll answer: {e}")))?;
        if let Some(credential) = &answer.credential {
            self.keep_credential(credential)?;
        }
        Ok(answer)
    }

    /// One poll, and the deploy it asks for. Answers how long to wait before the next.
    pub async fn poll_once(&self) -> Result<u64, AgentError> {
        let answer = self.ask().await?;
        if let Some(release) = answer.deploy().cloned() {
            if let Some(wait) = self.backing_off(&release.version) {
                tracing::warn!(version = %release.version, wait, "this release failed here recently; waiting before trying it again");
                return Ok(wait);
            }
            if answer.rollback {
                tracing::info!(version = %release.version, "going back to the last good release");
            }
            let health = answer.health.or_else(|| self.own_health_check());
            self.write_atomically(&self.in_flight_file(), &InFlight { version: release.version.clone() })?;
            let result = self.deploy(&release, health.as_ref()).await;
            let report = match result {
                Ok(log) => PendingReport { version: release.version.clone(), succeeded: true, healthy: true, log },
                Err(AgentError::Abandoned(reason)) => {
                    // The server no longer wants it: nothing to report, nothing switched.
                    tracing::info!(version = %release.version, %reason, "deploy abandoned before the switch");
                    let _ = self.releases.remove(&release.version);
                    let _ = std::fs::remove_file(self.in_flight_file());
                    return Ok(1);
                }
                Err(err @ AgentError::Unconfirmed(_)) => {
                    // Installed but not switched: the release stays on disk for the next poll.
                    let _ = std::fs::remove_file(self.in_flight_file());
                    return Err(err);
                }
                Err(err) => {
                    // A release that failed here is not kept (unless it is what runs now), and
                    // the server's asking for it again is answered more slowly each time.
                    let _ = self.releases.remove(&release.version);
                    self.note_failure(&release.version);
                    PendingReport {
                        version: release.version.clone(),
                        succeeded: false,
                        healthy: false,
                        log: err.to_string(),
                    }
                }
            };
            tracing::info!(version = %release.version, healthy = report.healthy, "deploy finished");
            self.write_atomically(&self.report_file(), &report)?;
            let _ = std::fs::remove_file(self.in_flight_file());
            self.send_pending_report().await?;
            return Ok(1);
        }
        Ok(answer.poll_after)
    }

    /// Asks the server whether it still wants `version` on this instance (the deployment may
    /// have been rolled back while the release downloaded and its hooks ran).
    async fn still_wanted(&self, version: &str) -> Result<bool, AgentError> {
        let answer = self.ask().await?;
        Ok(answer.deploy().is_some_and(|r| r.version == version))
    }

    /// A deploy the agent did not finish (it was killed) is reported as failed, with the
    /// release `current` points at now: the old one or the new one, never half of one.
    fn record_interrupted(&self) -> Result<(), AgentError> {
        let Ok(bytes) = std::fs::read(self.in_flight_file()) else { return Ok(()) };
        // Killed after the outcome was written but before the in-flight record went: the
        // written outcome is the truth.
        let finished = self.report_file().exists();
        if let (false, Ok(in_flight)) = (finished, serde_json::from_slice::<InFlight>(&bytes)) {
            let current = self.releases.current();
            let log = format!(
                "the agent was stopped while deploying {}; it restarted on {}",
                in_flight.version,
                current.as_deref().unwrap_or("no release")
            );
            tracing::warn!(%log);
            let report = PendingReport { version: in_flight.version, succeeded: false, healthy: false, log };
            self.write_atomically(&self.report_file(), &report)?;
        }
        let _ = std::fs::remove_file(self.in_flight_file());
        Ok(())
    }

    /// The health check from the agent's own flags, used when the server sends none.
    fn own_health_check(&self) -> Option<HealthCheck> {
        self.config.health_url.as_ref().map(|url| HealthCheck {
            url: url.clone(),
            expect_status: None,
            timeout_seconds: 5,
            attempts: self.config.health_attempts,
            interval_seconds: 0,
        })
    }

    async fn deploy(&self, release: &Release, health: Option<&HealthCheck>) -> Result<String, AgentError> {
        let mut log = Vec::new();
        if self.releases.installed(&release.version) {
            log.push(format!("{} is on disk: switching without a download", release.version));
        } else {
            let file = self.releases.download_path(&release.version)?;
            let mut downloaded = self.download(&release.url, &file).await;
            for attempt in 1..DOWNLOAD_ATTEMPTS {
                let Err(err) = &downloaded else { break };
                tracing::warn!(error = %err, attempt, "download failed; trying again");
                tokio::time::sleep(Duration::from_secs(2u64.pow(attempt))).await;
                downloaded = self.download(&release.url, &file).await;
            }
            let installed = downloaded.and_then(|size| {
                self.releases.install(&release.version, &file, &release.sha256)?;
                Ok(size)
            });
            let _ = std::fs::remove_file(&file);
            log.push(format!("installed {} ({} bytes, sha256 verified)", release.version, installed?));
        }
        let dir = self.releases.path(&release.version);
        let hooks = Hooks::load(&dir)?.run_as(self.run_as);
        for stage in [Stage::BeforeInstall, Stage::AfterInstall] {
            log.push(hooks.run(stage, &dir, &release.version).await?);
        }
        // Downloading and the hooks take time: switch only if the server still wants it.
        match self.still_wanted(&release.version).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(AgentError::Abandoned(format!("the server no longer asks for {}", release.version)));
            }
            Err(err) => {
                return Err(AgentError::Unconfirmed(format!(
                    "could not confirm {} with the server before switching: {err}",
                    release.version
                )));
            }
        }
        let rollback_target = self.releases.current();
        self.releases.activate(&release.version)?;
        if let Some(command) = &self.config.restart_command {
            let dir = &self.config.app_dir;
            // As the agent itself, not `run_as`: restarting a system unit takes root.
            let restart = crate::hooks::run_command("restart", command, RESTART_TIMEOUT, dir, &release.version, None);
            log.push(restart.await?);
        }
        log.push(hooks.run(Stage::Start, &dir, &release.version).await?);
        if let Some(health) = health {
            log.push(self.check_health(health).await?);
        }
        log.push(hooks.run(Stage::Validate, &dir, &release.version).await?);
        let pruned = self.releases.prune(self.config.keep, rollback_target.as_deref())?;
        if !pruned.is_empty() {
            log.push(format!("removed old releases {}", pruned.join(", ")));
        }
        Ok(crate::hooks::tail(log.into_iter().filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n").as_bytes()))
    }

    async fn check_health(&self, check: &HealthCheck) -> Result<String, AgentError> {
        let url = &check.url;
        let interval = match check.interval_seconds {
            0 => Duration::from_millis(self.config.health_interval_ms),
            seconds => Duration::from_secs(seconds),
        };
        let timeout = Duration::from_secs(check.timeout_seconds.max(1));
        let mut last = String::new();
        for attempt in 1..=check.attempts.max(1) {
            match self.http.get(url).timeout(timeout).send().await {
                Ok(response) if check.passes(response.status().as_u16()) => {
                    return Ok(format!("health check passed ({url}, attempt {attempt})"));
                }
                Ok(response) => last = format!("health check {url} answered {}", response.status()),
                Err(err) => last = format!("health check {url} failed: {err}"),
            }
            if attempt < check.attempts {
                tokio::time::sleep(interval).await;
            }
        }
        Err(AgentError::Deploy(last))
    }

    /// Streams the artifact at `url` into `into`; answers its size. Nothing is held in memory
    /// beyond one chunk.
    async fn download(&self, url: &str, into: &std::path::Path) -> Result<u64, AgentError> {
        use tokio::io::AsyncWriteExt;
        let network = |message: String| AgentError::Network { url: "the artifact URL".into(), message };
        let disk = |e: std::io::Error| AgentError::Deploy(format!("cannot write {}: {e}", into.display()));
        // The client's 60 s limit is for messages; an artifact may take longer.
        let mut response =
            self.http.get(url).timeout(DOWNLOAD_TIMEOUT).send().await.map_err(|e| network(e.to_string()))?;
        if !response.status().is_success() {
            return Err(AgentError::Deploy(format!("the artifact download answered {}", response.status())));
        }
        let mut file = tokio::fs::File::create(into).await.map_err(disk)?;
        let mut size = 0;
        while let Some(chunk) = response.chunk().await.map_err(|e| network(e.to_string()))? {
            file.write_all(&chunk).await.map_err(disk)?;
            size += chunk.len() as u64;
        }
        file.flush().await.map_err(disk)?;
        Ok(size)
    }

    async fn report(&self, version: &str, succeeded: bool, healthy: bool, log: &str) -> Result<(), AgentError> {
        let report = Report {
            instance_id: self.instance_id.clone(),
            environment: self.config.environment.clone(),
            version: version.to_owned(),
            outcome: if succeeded { Outcome::Succeeded } else { Outcome::Failed },
            healthy,
            current: self.releases.current(),
            log: Some(log.to_owned()),
        };
        self.post(REPORT_PATH, &report).await.map(|_| ())
    }

    async fn post(&self, path: &str, message: &impl Serialize) -> Result<serde_json::Value, AgentError> {
        let url = format!("{}{path}", self.config.server.trim_end_matches('/'));
        let body = serde_json::to_string(message).map_err(|e| AgentError::Deploy(e.to_string()))?;
        let mut request = self.http.post(&url).header("content-type", "application/json").body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let credential = std::fs::read_to_string(self.credential_file()).ok();
        if let Some(credential) = &credential {
            request = request.header(conveyor_protocol::CREDENTIAL_HEADER, credential.trim());
        }
        let response =
            request.send().await.map_err(|e| AgentError::Network { url: url.clone(), message: e.to_string() })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if matches!(status, 401 | 403) && self.token.is_none() && credential.is_some() {
            // The credential no longer speaks for the instance (proven again elsewhere, or
            // forgotten): the next poll proves the instance anew.
            tracing::warn!(status, "the server refused this agent's credential; proving the instance again");
            let _ = std::fs::remove_file(self.credential_file());
        }
        if status >= 300 {
            return Err(AgentError::Server { url, status, body: text });
        }
        serde_json::from_str(&text).map_err(|e| AgentError::Deploy(format!("the server's answer is not JSON: {e}")))
    }
}

/// The instance id from the instance metadata service (IMDSv2).
async fn instance_id_from_imds(http: &reqwest::Client) -> Result<String, AgentError> {
    let fail =
        |e: String| AgentError::Config(format!("cannot read the instance id from IMDSv2 ({e}); pass --instance-id"));
    let id = crate::proof::imds_get(http, "meta-data/instance-id").await.map_err(fail)?;
    instance_id_or_error(&id).map_err(fail)
}

/// The environment's token, from its file.
fn read_token(path: &std::path::Path) -> Result<String, AgentError> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| AgentError::Config(format!("cannot read the token file {}: {e}", path.display())))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(AgentError::Config(format!("the token file {} is empty", path.display())));
    }
    Ok(token.to_owned())
}

/// Writes `bytes` to `path` whole or not at all, readable by the agent's user only, and
/// durably: a new file (never through a link someone left at the temporary name), synced,
/// renamed into place, and the directory synced so the rename survives a crash.
fn write_file_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("new");
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The pause after `failures` failures of one release in a row.
fn retry_pause(failures: u32) -> u64 {
    match failures {
        0 => 0,
        n => 10u64.saturating_mul(1 << (n - 1).min(10)).min(MAX_RETRY_PAUSE),
    }
}

/// An answer that is an instance id, not an error page a proxy or a broken IMDS sent.
fn instance_id_or_error(text: &str) -> Result<String, String> {
    let id = text.trim();
    let valid = id.starts_with("i-") && id.len() <= 64 && id[2..].bytes().all(|b| b.is_ascii_alphanumeric());
    if valid {
        Ok(id.to_owned())
    } else {
        Err(format!("the answer `{}` is not an instance id", id.chars().take(60).collect::<String>()))
    }
}

#[cfg(test)]
mod tests;
