//! Deploy fan-out: rolls a pending deployment across its environment's EC2 instances in
//! waves, gates each wave on the agents' reports and health, and rolls back by itself.
//!
//! Three triggers, one function: a new deployment (table stream, INSERT of `DEPLOYMENT#`),
//! the agent channel (`POST /agent/v1/poll`, `POST /agent/v1/report`), and a periodic tick
//! that times waves out, drops terminated instances and resumes whatever a crashed
//! invocation left half-done. Nothing is remembered between invocations (but agent tokens,
//! for a few minutes): every step reads the ledger, decides with
//! [`conveyor_shared::domain::rollout`], and writes conditionally.
//!
//! Costs are per deployment, not per instance, wherever the fan-out acts by itself: targets
//! are written in batches, a wave starts with one update of the deployment's wave number,
//! and a wave's outcome is read from per-wave counters that each report updates in one
//! transaction with its target. Each agent learns its part at its next poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_shared::SdkConfig;
use conveyor_shared::config::{Config, Environment, LoadError, Settings};
use conveyor_shared::domain::rollout::{
    self, DeploymentPlan, Instruction, Release, ReportEffect, Step, TargetRecord, TargetState,
};
use conveyor_shared::domain::stripe::AlertRecord;
use conveyor_shared::domain::{DeploymentRecord, DeploymentState};
use conveyor_shared::ec2::{Ec2, Ec2Error};
use conveyor_shared::http::{self, BoxFuture, HttpFunction, Method, Request, Response, Route, StatusCode};
use conveyor_shared::s3::{Artifacts, S3Error};
use conveyor_shared::store::{Counter, Key, StoreError, Table, Transition};
use conveyor_shared::token::{self, Scope};
use conveyor_shared::triggers::{ScheduledFunction, StreamFunction};
use serde::Deserialize;
use serde_json::{Value, json};

pub const ROUTES: &[Route] =
    &[Route { method: "POST", path: "/agent/v1/poll" }, Route { method: "POST", path: "/agent/v1/report" }];

/// New deployments, as the template's stream mapping filters them.
pub const NEW_DEPLOYMENTS: &str =
    r#"{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"sk": {"S": [{"prefix": "DEPLOYMENT#"}]}}}}"#;

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(transparent)]
    S3(#[from] S3Error),
}

/// Timings, with production defaults; `conveyor dev` and tests shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long a deploy lock lives without renewal (a crashed run's lock expires).
    pub lock_ttl: i64,
    /// How long a presigned artifact URL is valid.
    pub presign: Duration,
    /// The poll interval an agent is told while it has work.
    pub busy_poll: u64,
    /// The poll interval an agent is told while idle.
    pub idle_poll: u64,
    /// How often the tick runs.
    pub tick: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lock_ttl: 900,
            presign: Duration::from_secs(900),
            busy_poll: 2,
            idle_poll: 20,
            tick: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// `CONVEYOR_TICK_SECONDS` and `CONVEYOR_IDLE_POLL_SECONDS` override the defaults.
    pub fn from_env() -> Self {
        let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0);
        let mut timing = Self::default();
        if let Some(tick) = read("CONVEYOR_TICK_SECONDS") {
            timing.tick = Duration::from_secs(tick);
        }
        if let Some(idle) = read("CONVEYOR_IDLE_POLL_SECONDS") {
            timing.idle_poll = idle;
        }
        timing
    }
}

/// How long a warm function trusts an agent token it found in the table. Polls come every few
/// seconds from every instance; with this an idle poll costs one table read, and a token
/// deleted from the table stops working within this time.
const TOKEN_CACHE: Duration = Duration::from_secs(300);
/// Tokens cached at most (one per environment in practice).
const TOKEN_CACHE_ENTRIES: usize = 256;

#[derive(Clone)]
pub struct Fanout {
    table: Table,
    ec2: Ec2,
    artifacts: Artifacts,
    config: Arc<Config>,
    timing: Timing,
    /// Token hash to (scope, when it was read).
    tokens: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Fanout {
    pub fn new(table: Table, ec2: Ec2, artifacts: Artifacts, config: Arc<Config>, timing: Timing) -> Self {
        Self { table, ec2, artifacts, config, timing, tokens: Arc::default() }
    }

    /// The scope of a presented token's hash, from the cache or the table.
    async fn token_scope(&self, hash: String) -> Result<Option<String>, StoreError> {
        let cached = self.tokens.lock().ok().and_then(|cache| {
            cache.get(&hash).filter(|(_, read)| read.elapsed() < TOKEN_CACHE).map(|(scope, _)| scope.clone())
        });
        if cached.is_some() {
            return Ok(cached);
        }
        let scope = self.table.token_scope(&hash).await?;
        if let (Some(scope), Ok(mut cache)) = (&scope, self.tokens.lock()) {
            if cache.len() >= TOKEN_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(hash, (scope.clone(), Instant::now()));
        }
        Ok(scope)
    }

    pub fn from_settings(settings: &Settings, sdk: &SdkConfig) -> Result<Self, LoadError> {
        let config = Config::load(&settings.config_path)?;
        let table = Table::new(aws_sdk_dynamodb::Client::new(sdk), settings.table.clone());
        Ok(Self::new(table, Ec2::new(sdk), Artifacts::new(sdk), Arc::new(config), Timing::from_env()))
    }

    /// Starts the newest queued deployment of `env` when no other one runs; older queued
    /// ones are superseded by it.
    pub async fn start_next(&self, env: &Environment, now: i64) -> Result<(), FanoutError> {
        let recent = self.table.recent_deployments(&env.name, 100).await?;
        let Some(newest) = recent
            .iter()
            .filter(|d| d.state == DeploymentState::Pending)
            .max_by(|a, b| (a.created_at, &a.sha).cmp(&(b.created_at, &b.sha)))
            .cloned()
        else {
            return Ok(());
        };
        for sha in self.table.supersede_queued(&newest, recent, now).await? {
            tracing::info!(environment = %env.name, %sha, by = %newest.sha, "queued deployment superseded");
        }
        if !self.table.take_lock(&env.name, &newest.sha, now, self.timing.lock_ttl).await? {
            tracing::info!(environment = %env.name, sha = %newest.sha, "queued behind the running deployment");
            return Ok(());
        }
        match self.begin(env, &newest, now).await {
            Ok(()) => Ok(()),
            Err(err) => {
                // Leave it queued; the next tick tries again.
                self.table.release_lock(&env.name, &newest.sha).await?;
                Err(err)
            }
        }
    }

    async fn begin(&self, env: &Environment, deployment: &DeploymentRecord, now: i64) -> Result<(), FanoutError> {
        // The stream and the tick can both get here for one deployment: one plans it.
        let token = conveyor_shared::store::claim_token(&deployment.sha, now);
        if !self.table.claim_planning(&env.name, &deployment.sha, &token, now, 60).await? {
            return Ok(());
        }
        let planned = self.plan(env, deployment, now).await;
        if planned.is_err() {
            // Let the next tick plan it again at once rather than when the claim expires.
            self.table.release_planning(&env.name, &deployment.sha, &token).await?;
        }
        planned
    }

    async fn plan(&self, env: &Environment, deployment: &DeploymentRecord, now: i64) -> Result<(), FanoutError> {
        let fail = |reason: String| async move {
            tracing::warn!(environment = %env.name, sha = %deployment.sha, %reason, "deployment failed before it started");
            self.table
                .transition(Key::deployment(&env.name, &deployment.sha), "pending", "failed", &reason, now)
                .await?;
            self.table.release_lock(&env.name, &deployment.sha).await?;
            Ok::<_, FanoutError>(())
        };
        let artifact = match self.artifacts.head(&deployment.artifact).await {
            Ok(Some(artifact)) => artifact,
            Ok(None) => {
                return fail(format!(
                    "the build's artifact is missing at {}: upload it with `conveyor artifact push`",
                    deployment.artifact
                ))
                .await;
            }
            Err(S3Error::NoChecksum(url)) => {
                return fail(format!("the artifact at {url} has no sha256: upload it with `conveyor artifact push`"))
                    .await;
            }
            Err(err) => return Err(err.into()),
        };
        let instances = self.ec2.running_instances(None, &env.instances.tags).await?;
        let waves = match rollout::plan_waves(&instances, &env.rollout.waves, env.rollout.min_healthy) {
            Ok(waves) => waves,
            Err(err) => return fail(err.to_string()).await,
        };
        let release = Release {
            version: deployment.version.clone(),
            artifact: deployment.artifact.clone(),
            sha256: artifact.sha256,
        };
        // A rollback gives back the environment's last good release, whose artifact is known.
        let previous = self.table.last_release(&env.name).await?;
        let targets = DeploymentPlan {
            environment: &env.name,
            deployment: &deployment.sha,
            release: &release,
            previous: previous.as_ref(),
            now,
        }
        .targets(&waves);
        self.table.write_targets(&targets).await?;
        let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
        let reason = format!("rolling {} out to {} instances in {} waves", release.version, targets.len(), waves.len());
        let started =
            self.table.start_deployment(&env.name, &deployment.sha, &sizes, &release.sha256, &reason, now).await?;
        if started == Transition::Applied {
            tracing::info!(environment = %env.name, sha = %deployment.sha, %reason, "deployment started");
        }
        Ok(())
    }

    /// Takes the running deployment of `env` one step further, if there is one. The wave's
    /// hand-out needs no writes: each agent's poll sees the wave number on the deployment.
    pub async fn advance(
        &self,
        env: &Environment,
        sha: &str,
        now: i64,
        waiting_for: &[String],
    ) -> Result<Step, FanoutError> {
        let Some(deployment) = self.table.deployment(&env.name, sha).await? else { return Ok(Step::Wait) };
        if deployment.state != DeploymentState::InProgress {
            return Ok(Step::Wait);
        }
        let progress = deployment.progress();
        let step = rollout::next_step(&progress, env.rollout.wave_timeout.0 as i64, now, waiting_for);
        let key = Key::deployment(&env.name, sha);
        match &step {
            Step::Wait => {}
            Step::StartWave(next) => {
                if self.table.advance_wave(&env.name, sha, progress.wave, now).await? == Transition::Applied {
                    tracing::info!(environment = %env.name, %sha, wave = next + 1, "next wave");
                }
            }
            Step::Succeed => {
                let planned: usize = progress.sizes.iter().sum();
                let dropped: usize = progress.dropped.iter().sum();
                let reason = match dropped {
                    0 => format!("{} runs on all {planned} instances", deployment.version),
                    _ => format!("{} runs on {} instances ({dropped} dropped)", deployment.version, planned - dropped),
                };
                if self.table.transition(key, "in_progress", "succeeded", &reason, now).await? == Transition::Applied {
                    tracing::info!(environment = %env.name, %sha, %reason, "deployment succeeded");
                    let release = Release {
                        version: deployment.version.clone(),
                        artifact: deployment.artifact.clone(),
                        sha256: deployment.run.sha256.clone().unwrap_or_default(),
                    };
                    self.table.set_last_release(&env.name, &release).await?;
                    self.table.release_lock(&env.name, sha).await?;
                    Box::pin(self.start_next(env, now)).await?;
                }
            }
            Step::RollBack { reason } => {
                // Every instance of the waves so far goes back to `previous` at its next poll.
                if self.table.transition(key, "in_progress", "rolled_back", reason, now).await? == Transition::Applied {
                    tracing::warn!(environment = %env.name, %sha, %reason, "rolling back");
                    let action = match self.table.last_release(&env.name).await? {
                        Some(previous) => format!(
                            "The instances of the waves so far are going back to {}; the failing instance's log tail is in `conveyor status`",
                            previous.version
                        ),
                        None => format!(
                            "There is no earlier good release to go back to: the instances of the waves so far keep {}; the failing instance's log tail is in `conveyor status`",
                            deployment.version
                        ),
                    };
                    let alert = AlertRecord {
                        id: format!("{}-{sha}", env.name),
                        source: "deploy".into(),
                        kind: "deployment_rolled_back".into(),
                        summary: format!("Deployment of {} to {} rolled back: {reason}", deployment.version, env.name),
                        action,
                        customer: None,
                        subscription: None,
                        created_at: now,
                    };
                    self.table.record_alert(&alert).await?;
                    self.table.release_lock(&env.name, sha).await?;
                    Box::pin(self.start_next(env, now)).await?;
                }
            }
        }
        Ok(step)
    }

    /// Every environment: renew the running deployment's lock, drop its terminated
    /// instances, time its wave out; then start queued work.
    pub async fn tick(&self, now: i64) -> Result<(), FanoutError> {
        for env in &self.config.environments {
            if let Some(sha) = self.table.lock_holder(&env.name, now).await?
                && let Some(deployment) = self.table.deployment(&env.name, &sha).await?
                && deployment.state == DeploymentState::InProgress
            {
                self.table.renew_lock(&env.name, &sha, now, self.timing.lock_ttl).await?;
                let waiting = self.drop_terminated(env, &deployment, now).await?;
                self.advance(env, &sha, now, &waiting).await?;
            }
            self.start_next(env, now).await?;
        }
        Ok(())
    }

    /// Drops the current wave's unreported targets whose instances no longer run; answers the
    /// ones still waited for.
    async fn drop_terminated(
        &self,
        env: &Environment,
        deployment: &DeploymentRecord,
        now: i64,
    ) -> Result<Vec<String>, FanoutError> {
        let wave = deployment.run.wave.unwrap_or(0);
        let waiting: Vec<TargetRecord> = self
            .table
            .deployment_targets(&env.name, &deployment.sha)
            .await?
            .into_iter()
            .filter(|t| t.wave == wave && t.state == TargetState::Waiting)
            .collect();
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = waiting.iter().map(|t| t.instance.clone()).collect();
        let running = self.ec2.running_among(&ids).await?;
        let mut still = Vec::new();
        for target in waiting {
            if running.contains(&target.instance) {
                still.push(target.instance);
                continue;
            }
            tracing::info!(environment = %env.name, instance = %target.instance, "instance gone: dropped from the deployment");
            self.table.count_outcome(&target, Counter::Dropped, Some("no longer running"), now).await?;
        }
        Ok(still)
    }

    /// An agent's message, parsed (400, 413), and the environment its token and body agree
    /// on (401, 403, 404).
    async fn accept<T: serde::de::DeserializeOwned + AgentMessage>(
        &self,
        request: &Request,
    ) -> Result<(T, &Environment), Box<Response>> {
        let message: T = parse_body(request)?;
        let env = self.agent_environment(request, message.environment()).await.map_err(Box::new)?;
        Ok((message, env))
    }

    /// The environment a request's token and body agree on.
    async fn agent_environment(&self, request: &Request, claimed: &str) -> Result<&Environment, Response> {
        let Some(presented) = token::bearer(http::header(request, "authorization")) else {
            return Err(http::error(StatusCode::UNAUTHORIZED, "missing_token", "send Authorization: Bearer <token>"));
        };
        let scope = match self.token_scope(token::hash(presented.as_bytes())).await {
            Ok(Some(scope)) => scope,
            Ok(None) => return Err(http::error(StatusCode::UNAUTHORIZED, "invalid_token", "the token is not known")),
            Err(err) => return Err(http::unavailable(&err, "the ledger could not be read; poll again")),
        };
        if scope != Scope::Environment(claimed.to_owned()).as_string() {
            return Err(http::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token is not for environment `{claimed}`"),
            ));
        }
        self.config.environment(claimed).ok_or_else(|| {
            http::error(StatusCode::NOT_FOUND, "unknown_environment", format!("no environment `{claimed}`"))
        })
    }

    async fn poll(&self, request: Request) -> Response {
        let (poll, env) = match self.accept::<Poll>(&request).await {
            Ok(accepted) => accepted,
            Err(response) => return *response,
        };
        let decision = match self.decide_poll(env, &poll).await {
            Ok(decision) => decision,
            Err(err) => return http::unavailable(&err, "the ledger could not be read; poll again"),
        };
        let (release, rollback) = match decision {
            Instruction::Deploy { release, rollback } => (release, rollback),
            Instruction::Wait => {
                return http::json(StatusCode::OK, &json!({"action": "none", "poll_after": self.timing.busy_poll}));
            }
            Instruction::Nothing => {
                return http::json(StatusCode::OK, &json!({"action": "none", "poll_after": self.timing.idle_poll}));
            }
        };
        let url = match self.artifacts.presigned_get(&release.artifact, self.timing.presign).await {
            Ok(url) => url,
            Err(err) => return http::unavailable(&err, "the artifact URL could not be made; poll again"),
        };
        let mut answer = json!({
            "action": "deploy",
            "release": {"version": release.version, "url": url, "sha256": release.sha256},
            "rollback": rollback,
            "poll_after": self.timing.busy_poll,
        });
        if let Some(health) = &env.health {
            answer["health"] = json!({
                "url": health.url,
                "expect_status": health.expect_status,
                "timeout_seconds": health.timeout.0,
                "attempts": health.attempts,
                "interval_seconds": health.interval.0,
            });
        }
        http::json(StatusCode::OK, &answer)
    }

    /// An idle poll reads the instance's target only; the deployment is read while one
    /// involves the instance, and an ended deployment settles the target once.
    async fn decide_poll(&self, env: &Environment, poll: &Poll) -> Result<Instruction, StoreError> {
        let Some(target) = self.table.target(&env.name, &poll.instance_id).await? else {
            return Ok(Instruction::Nothing);
        };
        let progress = if rollout::needs_progress(&target) {
            self.table.deployment(&env.name, &target.deployment).await?.map(|d| d.progress())
        } else {
            None
        };
        let decision = rollout::instruct(&target, progress.as_ref(), poll.current.as_deref());
        if let Some(to) = decision.settle {
            self.table.settle_target(&target, to, conveyor_shared::unix_now()).await?;
        }
        Ok(decision.instruction)
    }

    async fn report(&self, request: Request) -> Response {
        let (report, env) = match self.accept::<Report>(&request).await {
            Ok(accepted) => accepted,
            Err(response) => return *response,
        };
        let now = conveyor_shared::unix_now();
        match self.record_report(env, &report, now).await {
            Ok(step) => http::json(StatusCode::OK, &json!({"ok": true, "step": format!("{step:?}")})),
            Err(err) => http::unavailable(&err, "the report could not be recorded; report again"),
        }
    }

    async fn record_report(&self, env: &Environment, report: &Report, now: i64) -> Result<Step, FanoutError> {
        let succeeded = report.outcome == Outcome::Succeeded && report.healthy;
        self.table
            .record_agent_state(&env.name, &report.instance_id, report.current.as_deref(), report.healthy, now)
            .await?;
        let Some(target) = self.table.target(&env.name, &report.instance_id).await? else { return Ok(Step::Wait) };
        let Some(deployment) = self.table.deployment(&env.name, &target.deployment).await? else {
            return Ok(Step::Wait);
        };
        let counter = match rollout::judge_report(&target, &deployment.progress(), &report.version, succeeded) {
            ReportEffect::Ignore => return Ok(Step::Wait),
            ReportEffect::Record(TargetState::Succeeded) => Counter::Succeeded,
            ReportEffect::Record(_) => Counter::Failed,
        };
        let detail = match counter {
            Counter::Succeeded => format!("runs {} and is healthy", report.version),
            _ => report.log.clone().unwrap_or_else(|| "failed without a log".into()),
        };
        if self.table.count_outcome(&target, counter, Some(&detail), now).await? == Transition::Rejected {
            // Counted before (a retried report), or the deployment ended meanwhile.
            return Ok(Step::Wait);
        }
        self.advance(env, &target.deployment, now, &[]).await
    }
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Succeeded,
    Failed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Poll {
    instance_id: String,
    environment: String,
    current: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    instance_id: String,
    environment: String,
    /// The release the agent tried.
    version: String,
    outcome: Outcome,
    healthy: bool,
    /// What `current` points at now.
    current: Option<String>,
    log: Option<String>,
}

trait AgentMessage {
    fn instance_id(&self) -> &str;
    fn environment(&self) -> &str;
}

impl AgentMessage for Poll {
    fn instance_id(&self) -> &str {
        &self.instance_id
    }
    fn environment(&self) -> &str {
        &self.environment
    }
}

impl AgentMessage for Report {
    fn instance_id(&self) -> &str {
        &self.instance_id
    }
    fn environment(&self) -> &str {
        &self.environment
    }
}

fn parse_body<T: serde::de::DeserializeOwned + AgentMessage>(request: &Request) -> Result<T, Box<Response>> {
    let bad = |status, code, message: String| Box::new(http::error(status, code, message));
    if request.body().len() > 64 * 1024 {
        return Err(bad(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "agent messages are at most 64 KB".into()));
    }
    let message: T = serde_json::from_slice(request.body())
        .map_err(|e| bad(StatusCode::BAD_REQUEST, "invalid_message", format!("the message is not valid: {e}")))?;
    let id = message.instance_id();
    let valid = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            "instance_id must look like i-0123456789abcdef0".into(),
        ));
    }
    Ok(message)
}

impl HttpFunction for Fanout {
    fn name(&self) -> &'static str {
        "deploy-fanout"
    }

    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    fn handle(&self, request: Request) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            let path = request.uri().path().trim_end_matches('/').to_owned();
            match (request.method(), path.as_str()) {
                (&Method::POST, "/agent/v1/poll") => self.poll(request).await,
                (&Method::POST, "/agent/v1/report") => self.report(request).await,
                (method, path) => {
                    http::error(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}"))
                }
            }
        })
    }
}

impl StreamFunction for Fanout {
    fn name(&self) -> &'static str {
        "deploy-fanout"
    }

    fn filters(&self) -> &'static [&'static str] {
        &[NEW_DEPLOYMENTS]
    }

    fn handle(&self, event: Value) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let now = conveyor_shared::unix_now();
            for record in event["Records"].as_array().into_iter().flatten() {
                let Some(name) = record["dynamodb"]["NewImage"]["environment"]["S"].as_str() else { continue };
                let Some(env) = self.config.environment(name) else {
                    tracing::warn!(environment = name, "a deployment for an environment not in conveyor.toml");
                    continue;
                };
                self.start_next(env, now).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}

impl ScheduledFunction for Fanout {
    fn name(&self) -> &'static str {
        "deploy-fanout"
    }

    fn every(&self) -> Duration {
        self.timing.tick
    }

    fn tick(&self, _event: Value) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { Fanout::tick(self, conveyor_shared::unix_now()).await.map_err(|e| e.to_string()) })
    }
}
